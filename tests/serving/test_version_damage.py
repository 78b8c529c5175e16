"""Damaged and half-copied model versions never wedge the server (issue 13, item 8).

Whatever a new version directory holds, the poller survives, the version is
reported END with its error in GetModelStatus, the version already serving
keeps serving, later complete versions still load, a damaged version is
retried once its files change, and a restart with a good and a damaged
version serves the good one. The models are the tiny real SavedModels of the
``linear_models`` fixture (``y = slope * x + intercept``).
"""

import glob
import json
import os
import shutil
import time
import urllib.request

import grpc
import numpy as np
import pytest

from serving import protos
from serving.model_manager import AVAILABLE, END, ModelManager
from serving.server_config import ServedModelConfig
from serving.servable import Servable
from serving_fixtures import LINEAR_VERSIONS as VERSIONS, publish_version, start_server

def _truncate(path: str):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:len(data) // 2])


def _data_files(version_dir: str) -> list:
    return glob.glob(os.path.join(version_dir, "variables", "variables.data-*"))


def _replace_with_directory(path: str):
    os.remove(path)
    os.mkdir(path)


def _variables_dir_is_a_file(version_dir: str):
    shutil.rmtree(os.path.join(version_dir, "variables"))
    with open(os.path.join(version_dir, "variables"), "wb") as f:
        f.write(b"not a directory")


def _dangling_saved_model(version_dir: str):
    os.remove(os.path.join(version_dir, "saved_model.pb"))
    os.symlink(os.path.join(version_dir, "no-such-file"), os.path.join(version_dir, "saved_model.pb"))


def _empty_directory(version_dir: str):
    for name in os.listdir(version_dir):
        full = os.path.join(version_dir, name)
        shutil.rmtree(full) if os.path.isdir(full) else os.remove(full)


DAMAGE = {
    # The case: both files cut in half by an interrupted copy.
    "saved_model_and_data_truncated": lambda d: (_truncate(os.path.join(d, "saved_model.pb")),
                                                 [_truncate(p) for p in _data_files(d)]),
    "saved_model_truncated": lambda d: _truncate(os.path.join(d, "saved_model.pb")),
    # TensorFlow raises IndexError here, which once killed the poller thread.
    "variables_data_truncated": lambda d: [_truncate(p) for p in _data_files(d)],
    "variables_data_garbage": lambda d: [open(p, "wb").write(os.urandom(os.path.getsize(p)))
                                         for p in _data_files(d)],
    "variables_index_missing": lambda d: os.remove(os.path.join(d, "variables", "variables.index")),
    "variables_index_garbage": lambda d: open(os.path.join(d, "variables", "variables.index"),
                                              "wb").write(os.urandom(300)),
    "variables_missing": lambda d: shutil.rmtree(os.path.join(d, "variables")),
    "variables_is_a_file": _variables_dir_is_a_file,
    "saved_model_missing": lambda d: os.remove(os.path.join(d, "saved_model.pb")),
    "saved_model_empty": lambda d: open(os.path.join(d, "saved_model.pb"), "wb").close(),
    "saved_model_is_a_directory": lambda d: _replace_with_directory(os.path.join(d, "saved_model.pb")),
    "saved_model_dangling_symlink": _dangling_saved_model,
    "empty_directory": _empty_directory,
}


def _manager(base, poll_wait_seconds=0.0):
    config = ServedModelConfig("linear", str(base))
    return ModelManager([config], poll_wait_seconds=poll_wait_seconds, load_retry_interval=3600)


def _spec(version=None):
    spec = protos.load().model_pb2.ModelSpec(name="linear")
    if version is not None:
        spec.version.value = version
    return spec


def _answer(manager, x=4.0):
    servable = manager.resolve(_spec())
    y = servable.run("serving_default", {"x": np.array([x], dtype=np.float32)}, ["y"])["y"]
    return servable.version, float(y[0])


def _expected(version, x=4.0):
    slope, intercept = VERSIONS[version]
    return version, slope * x + intercept


def _state(manager, version):
    return manager.version_states(_spec(version))[0]


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damaged_version_is_reported_and_the_served_version_keeps_serving(kind, base, linear_models):
    publish_version(linear_models, base, 1)
    manager = _manager(base)
    assert manager.load_initial() == []

    publish_version(linear_models, base, 2, damage=DAMAGE[kind])
    manager.poll_once()
    manager.poll_once()

    assert _answer(manager) == _expected(1)
    failed = _state(manager, 2)
    assert failed.state == END
    assert failed.error_code != grpc.StatusCode.OK and failed.error_message
    assert _state(manager, 1).state == AVAILABLE

    publish_version(linear_models, base, 3)
    manager.poll_once()

    assert _answer(manager) == _expected(3)


@pytest.mark.parametrize("kind", ["saved_model_and_data_truncated", "variables_data_truncated",
                                  "variables_index_missing", "saved_model_missing"])
def test_damaged_version_is_retried_once_its_files_change(kind, base, linear_models):
    publish_version(linear_models, base, 1)
    manager = _manager(base)
    manager.load_initial()
    publish_version(linear_models, base, 2, damage=DAMAGE[kind])
    manager.poll_once()
    assert _state(manager, 2).state == END

    # The rest of the copy arrives: the same files, now complete.
    shutil.rmtree(base / "2")
    shutil.copytree(linear_models[2], base / "2")
    manager.poll_once()

    assert _answer(manager) == _expected(2)
    assert _state(manager, 2).state == AVAILABLE
    assert _state(manager, 1).state == END


def test_version_copied_file_by_file_loads_once_complete(base, linear_models):
    publish_version(linear_models, base, 1)
    manager = _manager(base)
    manager.load_initial()
    source, target = linear_models[2], base / "2"
    files = sorted(os.path.relpath(p, source) for p in glob.glob(os.path.join(source, "**"), recursive=True)
                   if os.path.isfile(p))
    for name in files:
        os.makedirs(os.path.dirname(target / name), exist_ok=True)
        shutil.copyfile(os.path.join(source, name), target / name)
        manager.poll_once()  # a poll after every file: never wedged, v1 serves until v2 is whole
        assert _answer(manager)[0] in (1, 2)

    assert _answer(manager) == _expected(2)


def test_poller_thread_survives_damage_and_loads_later_versions(base, linear_models):
    publish_version(linear_models, base, 1)
    manager = _manager(base, poll_wait_seconds=0.05)
    manager.load_initial()
    manager.start_polling()
    try:
        publish_version(linear_models, base, 2, damage=DAMAGE["variables_data_truncated"])
        _wait_for(lambda: _states(manager).get(2) == END)
        assert _answer(manager) == _expected(1)

        publish_version(linear_models, base, 3)
        _wait_for(lambda: _states(manager).get(3) == AVAILABLE)
        assert _answer(manager) == _expected(3)
    finally:
        manager.stop()


def test_extra_files_and_odd_names_do_not_disturb_loading(base, linear_models):
    publish_version(linear_models, base, 1)
    with open(base / "1" / "README.txt", "w") as f:
        f.write("pushed by hand")
    with open(base / "1" / "variables" / "variables.data-00000-of-00001.partial", "wb") as f:
        f.write(os.urandom(64))
    (base / "tmp-upload").mkdir()
    (base / "99999999999999999999").mkdir()  # beyond int64: not a version
    with open(base / "7", "w") as f:
        f.write("a file, not a version directory")
    manager = _manager(base)

    assert manager.load_initial() == []
    assert _answer(manager) == _expected(1)
    assert sorted(_states(manager)) == [1]


def test_unreadable_version_is_reported(base, linear_models):
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their permissions")
    publish_version(linear_models, base, 1)
    manager = _manager(base)
    manager.load_initial()
    publish_version(linear_models, base, 2)
    for path in [base / "2" / "saved_model.pb", *_data_files(str(base / "2"))]:
        os.chmod(path, 0)

    manager.poll_once()

    assert _answer(manager) == _expected(1)
    assert _state(manager, 2).state == END and _state(manager, 2).error_message


def _states(manager):
    try:
        return {s.version: s.state for s in manager.version_states(_spec())}
    except Exception:  # noqa: BLE001 -- NOT_FOUND before the first poll
        return {}


def _wait_for(condition, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def _status_json(rest_url, name):
    with urllib.request.urlopen(f"{rest_url}/v1/models/{name}", timeout=30) as response:
        return json.loads(response.read())


def test_restart_with_good_and_damaged_versions_serves_the_good_one(tmp_path, linear_models):
    base = tmp_path / "linear"
    base.mkdir()
    publish_version(linear_models, base, 1)
    publish_version(linear_models, base, 2, damage=DAMAGE["saved_model_and_data_truncated"])
    broken = tmp_path / "broken"
    broken.mkdir()
    publish_version(linear_models, broken, 1, damage=DAMAGE["variables_data_truncated"])
    config = tmp_path / "models.config"
    config.write_text(f"""model_config_list {{
      config {{ name: "linear" base_path: "{base}" model_platform: "tensorflow" }}
      config {{ name: "broken" base_path: "{broken}" model_platform: "tensorflow" }}
    }}""")
    # The launch line of TensorFlow Serving's own test suite, plus our config.
    process, target, rest_url = start_server(tmp_path, [
        f"--model_config_file={config}", "--rest_api_timeout_in_ms=5000",
        "--file_system_poll_wait_seconds=1"])
    try:
        p = protos.load()
        with grpc.insecure_channel(target) as channel:
            stub = p.prediction_service_pb2_grpc.PredictionServiceStub(channel)
            request = p.predict_pb2.PredictRequest()
            request.model_spec.name = "linear"
            request.inputs["x"].CopyFrom(p.tensor_pb2.TensorProto(
                dtype=1, float_val=[4.0], tensor_shape={"dim": [{"size": 1}]}))
            response = stub.Predict(request, timeout=30)
            assert response.model_spec.version.value == 1
            assert list(response.outputs["y"].float_val) == [4.0]

        linear = {s["version"]: s for s in _status_json(rest_url, "linear")["model_version_status"]}
        assert linear["1"]["state"] == "AVAILABLE"
        assert linear["2"]["state"] == "END" and linear["2"]["status"]["error_message"]
        broken_status = _status_json(rest_url, "broken")["model_version_status"][0]
        assert broken_status["state"] == "END" and broken_status["status"]["error_code"] != "OK"

        # Repairing the broken model's files brings it up without a restart.
        shutil.rmtree(broken / "1")
        shutil.copytree(linear_models[1], broken / "1")
        _wait_for(lambda: _status_json(rest_url, "broken")["model_version_status"][0]["state"] == "AVAILABLE")
    finally:
        assert process.stop() == 0, process.log()[-3000:]
