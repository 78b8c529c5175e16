"""Special files in a version directory never hang the server (issue 13, item 8).

A named pipe (FIFO) blocks any reader forever; a socket or a device is no
SavedModel file either. Whatever such an entry replaces (``saved_model.pb``, a
variables file, an asset, the warmup file), the poll returns, GetModelStatus
reports the version END with an error naming the entry, the version already
serving keeps serving, and the version loads once the entry is replaced by
the right file. Every poll runs in a thread with a deadline, so a hang fails
the test (and the pipe is then opened for writing, which frees the reader)
instead of blocking the suite.
"""

import os
import shutil
import socket
import tempfile
import threading
import time

import grpc
import numpy as np
import pytest

from serving import protos, warmup
from serving.model_manager import AVAILABLE, END, ModelManager
from serving.server_config import ServedModelConfig
from serving.servable import (Servable, ServableLoadError, check_regular_files, read_signature_defs,
                              walk_version)
from serving_fixtures import LINEAR_VERSIONS, publish_version, start_server

SHARED_TFSERVING = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared",
                                "testdata", "tfserving")
# Generous: a load on a busy 2-core machine takes seconds, a hang never ends.
DEADLINE_SECONDS = 120.0
DATA_FILE = os.path.join("variables", "variables.data-00000-of-00001")
WARMUP_FILE = os.path.join(warmup.ASSETS_EXTRA_DIR, warmup.REQUESTS_FILE_NAME)


def _release_readers(paths):
    """Opens each named pipe for writing and closes it: a reader blocked in open() returns."""
    for path in paths:
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass  # no reader waiting, or no longer a pipe


def _within_deadline(function, pipes=()):
    """Runs ``function`` in a thread; fails the test if it has not returned by the deadline."""
    outcome = {}

    def run():
        try:
            outcome["value"] = function()
        except BaseException as e:  # noqa: BLE001 -- re-raised in the test's thread
            outcome["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(DEADLINE_SECONDS)
    if thread.is_alive():
        _release_readers(pipes)
        thread.join(10.0)
        pytest.fail(f"{function} did not return within {DEADLINE_SECONDS} s (blocked on a named pipe?)")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def _spec(name, version=None):
    spec = protos.load().model_pb2.ModelSpec(name=name)
    if version is not None:
        spec.version.value = version
    return spec


def _state(manager, name, version):
    return manager.version_states(_spec(name, version))[0]


def _manager(name, base, with_warmup=False):
    return ModelManager([ServedModelConfig(name, str(base))], poll_wait_seconds=0,
                        load_retry_interval=3600,
                        warmup=(lambda s: warmup.run_warmup(s)) if with_warmup else None)


def _linear_answer(manager, x=4.0):
    servable = manager.resolve(_spec("linear"))
    y = servable.run("serving_default", {"x": np.array([x], dtype=np.float32)}, ["y"])["y"]
    return servable.version, float(y[0])


def _linear_expected(version, x=4.0):
    slope, intercept = LINEAR_VERSIONS[version]
    return version, slope * x + intercept


def _fifo(path):
    if os.path.lexists(path):
        os.remove(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.mkfifo(path)


def _unix_socket(path):
    """Leaves a Unix socket file at ``path`` (bound in a short temporary directory, as
    socket paths are limited to about 100 bytes, then moved into place)."""
    if os.path.lexists(path):
        os.remove(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tempfile.TemporaryDirectory() as short:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.bind(os.path.join(short, "s"))
        os.rename(os.path.join(short, "s"), path)


def _symlink(target, path):
    os.remove(path)
    os.symlink(target, path)


def _warmup_file(tmp_path) -> str:
    """A real warmup file for the linear model (one Predict of x = 1)."""
    p = protos.load()
    request = p.predict_pb2.PredictRequest()
    request.model_spec.name = "linear"
    request.inputs["x"].CopyFrom(p.tensor_pb2.TensorProto(dtype=1, float_val=[1.0],
                                                          tensor_shape={"dim": [{"size": 1}]}))
    return warmup.write_warmup_requests(str(tmp_path / "warmup-source"), [request])


# kind -> (the special entry, relative to the version; how to make it; whether the
# server warms up). The right file for the entry comes from the reference version,
# or is an asset / a warmup file written for the test.
LINEAR_CASES = {
    "fifo_as_saved_model_pb": ("saved_model.pb", _fifo, False),
    "fifo_as_variables_data": (DATA_FILE, _fifo, False),
    "fifo_as_variables_index": (os.path.join("variables", "variables.index"), _fifo, False),
    "fifo_in_assets": (os.path.join("assets", "vocabulary.txt"), _fifo, False),
    "fifo_as_warmup_file": (WARMUP_FILE, _fifo, True),
    "socket_in_variables": (os.path.join("variables", "variables.lock"), _unix_socket, False),
}


def _right_file(linear_models, tmp_path, relative):
    """The regular file that belongs where a test put a special entry."""
    if relative == WARMUP_FILE:
        return _warmup_file(tmp_path)
    reference = os.path.join(linear_models[2], relative)
    if os.path.exists(reference):
        return reference
    asset = tmp_path / "asset.txt"
    asset.write_text("an asset\n")
    return str(asset)


@pytest.mark.parametrize("kind", sorted(LINEAR_CASES))
def test_special_file_fails_the_version_without_hanging(kind, base, tmp_path, linear_models):
    relative, make, with_warmup = LINEAR_CASES[kind]
    publish_version(linear_models, base, 1)
    manager = _manager("linear", base, with_warmup)
    assert manager.load_initial() == []
    special = os.path.join(base, "2", relative)
    publish_version(linear_models, base, 2, damage=lambda d: make(os.path.join(d, relative)))

    _within_deadline(manager.poll_once, [special])
    _within_deadline(manager.poll_once, [special])  # an unchanged bad version is not retried

    failed = _state(manager, "linear", 2)
    assert failed.state == END and failed.error_code == grpc.StatusCode.FAILED_PRECONDITION
    assert special in failed.error_message and "is not a regular file" in failed.error_message
    assert _state(manager, "linear", 1).state == AVAILABLE
    assert _linear_answer(manager) == _linear_expected(1)

    # The right file arrives (renamed over the special one): the version loads.
    os.replace(shutil.copy(_right_file(linear_models, tmp_path, relative), special + ".partial"), special)
    _within_deadline(manager.poll_once)

    assert _state(manager, "linear", 2).state == AVAILABLE
    assert _linear_answer(manager) == _linear_expected(2)


@pytest.mark.parametrize("target", ["/dev/null", "fifo"])
def test_symlink_to_a_special_file_is_refused(target, base, tmp_path, linear_models):
    if target == "fifo":
        target = str(tmp_path / "outside-fifo")
        os.mkfifo(target)
    publish_version(linear_models, base, 1)
    manager = _manager("linear", base)
    manager.load_initial()
    index = os.path.join(base, "2", "variables", "variables.index")
    publish_version(linear_models, base, 2, damage=lambda d: _symlink(
        target, os.path.join(d, "variables", "variables.index")))

    _within_deadline(manager.poll_once, [target])

    failed = _state(manager, "linear", 2)
    assert failed.error_code == grpc.StatusCode.FAILED_PRECONDITION
    assert index in failed.error_message and f"a symlink to {target}" in failed.error_message
    assert _linear_answer(manager) == _linear_expected(1)


def test_symlinks_to_regular_files_and_directories_load(base, tmp_path, linear_models):
    outside = tmp_path / "outside"
    shutil.copytree(linear_models[2], outside)
    version = os.path.join(base, "2")
    os.mkdir(version)
    os.symlink(outside / "saved_model.pb", os.path.join(version, "saved_model.pb"))
    os.symlink(outside / "variables", os.path.join(version, "variables"))
    os.symlink(".", os.path.join(version, "loop"))  # a symlink loop is listed once, not followed forever
    manager = _manager("linear", base)

    assert _within_deadline(manager.load_initial) == []

    assert _linear_answer(manager) == _linear_expected(2)
    names = [name for name, _ in walk_version(version)]
    assert os.path.join("variables", "variables.index") in names and "loop" in names


def test_check_regular_files_never_opens_the_pipe(tmp_path, linear_models):
    version = tmp_path / "1"
    shutil.copytree(linear_models[1], version)
    pipe = version / "assets.extra" / "pipe"
    _fifo(str(pipe))

    with pytest.raises(ServableLoadError, match="named pipe") as raised:
        _within_deadline(lambda: check_regular_files(str(version)), [str(pipe)])
    assert raised.value.code == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(ServableLoadError, match="named pipe"):
        _within_deadline(lambda: Servable("linear", 1, str(version)), [str(pipe)])


def test_each_reader_refuses_a_pipe_on_its_own(tmp_path, linear_models):
    # A pipe swapped in after the version's check: the signature reader and the
    # warmup reader still refuse it rather than block.
    version = tmp_path / "1"
    shutil.copytree(linear_models[1], version)
    servable = Servable("linear", 1, str(version))
    pipe = str(version / WARMUP_FILE)
    _fifo(pipe)
    with pytest.raises(warmup.WarmupError, match="not a regular file but a named pipe") as raised:
        _within_deadline(lambda: warmup.run_warmup(servable), [pipe])
    assert raised.value.code == grpc.StatusCode.FAILED_PRECONDITION

    pipe = str(version / "saved_model.pb")
    _fifo(pipe)
    with pytest.raises(ServableLoadError, match="not a regular file but a named pipe") as raised:
        _within_deadline(lambda: read_signature_defs(str(version)), [pipe])
    assert raised.value.code == grpc.StatusCode.FAILED_PRECONDITION


@pytest.fixture(scope="module")
def half_plus_three():
    path = os.path.join(SHARED_TFSERVING, "saved_model_half_plus_three", "00000123")
    if not os.path.isdir(path):
        pytest.skip(f"TensorFlow Serving's test models are not in {SHARED_TFSERVING}")
    return path


def test_fifo_as_the_asset_the_init_op_reads(tmp_path, half_plus_three):
    # saved_model_half_plus_three's legacy init op reads assets/foo.txt.
    base = tmp_path / "half_plus_three"
    shutil.copytree(half_plus_three, base / "1")
    manager = _manager("half_plus_three", base)
    assert manager.load_initial() == []
    shutil.copytree(half_plus_three, str(base) + ".staging")
    asset = os.path.join(str(base) + ".staging", "assets", "foo.txt")
    _fifo(asset)
    os.rename(str(base) + ".staging", base / "2")
    asset = str(base / "2" / "assets" / "foo.txt")

    _within_deadline(manager.poll_once, [asset])

    failed = _state(manager, "half_plus_three", 2)
    assert failed.error_code == grpc.StatusCode.FAILED_PRECONDITION and asset in failed.error_message
    servable = manager.resolve(_spec("half_plus_three"))
    assert servable.version == 1
    y = servable.run("serving_default", {"x": np.array([[2.0]], dtype=np.float32)}, ["y"])["y"]
    assert y.tolist() == [[4.0]]

    os.remove(asset)
    shutil.copy(os.path.join(half_plus_three, "assets", "foo.txt"), asset)
    _within_deadline(manager.poll_once)

    assert manager.resolve(_spec("half_plus_three")).version == 2


def _status(stub, p, version):
    """The version's ModelVersionStatus, or None while the server has not seen it."""
    request = p.get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "linear"
    request.model_spec.version.value = version
    try:
        return stub.GetModelStatus(request, timeout=30).model_version_status[0]
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return None


def _state_is(stub, p, version, state):
    status = _status(stub, p, version)
    return status is not None and status.state == state


def _wait_for(condition, timeout=DEADLINE_SECONDS):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.1)


def test_server_poller_survives_a_pipe_and_loads_the_repaired_version(tmp_path, linear_models):
    base = tmp_path / "linear"
    base.mkdir()
    publish_version(linear_models, base, 1)
    process, target, _ = start_server(tmp_path, [
        "--model_name=linear", f"--model_base_path={base}", "--file_system_poll_wait_seconds=1",
        "--enable_model_warmup"])
    pipe = os.path.join(base, "2", "saved_model.pb")
    try:
        p = protos.load()
        with grpc.insecure_channel(target) as channel:
            model_service = p.model_service_pb2_grpc.ModelServiceStub(channel)
            predict = p.prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict
            request = p.predict_pb2.PredictRequest()
            request.model_spec.name = "linear"
            request.inputs["x"].CopyFrom(p.tensor_pb2.TensorProto(
                dtype=1, float_val=[4.0], tensor_shape={"dim": [{"size": 1}]}))
            publish_version(linear_models, base, 2, damage=lambda d: _fifo(os.path.join(d, "saved_model.pb")))

            _wait_for(lambda: _state_is(model_service, p, 2, END))
            failed = _status(model_service, p, 2)
            assert failed.status.error_code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
            assert pipe in failed.status.error_message
            answer = predict(request, timeout=30)
            assert answer.model_spec.version.value == 1 and list(answer.outputs["y"].float_val) == [4.0]

            os.replace(shutil.copy(os.path.join(linear_models[2], "saved_model.pb"), pipe + ".partial"), pipe)
            _wait_for(lambda: _state_is(model_service, p, 2, AVAILABLE))
            answer = predict(request, timeout=30)
            assert answer.model_spec.version.value == 2 and list(answer.outputs["y"].float_val) == [5.0]
    finally:
        _release_readers([pipe])
        assert process.stop() == 0, process.log()[-3000:]
