"""Version watching, policies, labels and corrupt versions, with real SavedModels in-process."""

import gc
import logging
import os
import shutil

import grpc
import numpy as np
import pytest

from serving import protos, warmup
from serving.server_config import ServedModelConfig, VersionPolicy
from serving.model_manager import AVAILABLE, END, ModelManager
from serving.servable import Servable
from serving.status import ServingStatusError


class CountingFactory:
    """Loads real servables and counts load attempts per version."""

    def __init__(self):
        self.attempts = {}

    def __call__(self, name, version, path):
        self.attempts[version] = self.attempts.get(version, 0) + 1
        return Servable(name, version, path)


@pytest.fixture()
def base(tmp_path, models_dir):
    path = tmp_path / "koa"
    path.mkdir()
    return path


def _copy(models_dir, base, source_version, target_version=None):
    shutil.copytree(os.path.join(models_dir, "koa", str(source_version)),
                    base / str(target_version or source_version))


def _manager(base, policy=VersionPolicy(), labels=None, factory=None, **kwargs):
    config = ServedModelConfig("koa", str(base), policy, labels or {})
    return ModelManager([config], poll_wait_seconds=0, load_retry_interval=3600,
                        servable_factory=factory or Servable, **kwargs)


def _spec(**fields):
    spec = protos.load().model_pb2.ModelSpec(name="koa")
    if "version" in fields:
        spec.version.value = fields["version"]
    if "label" in fields:
        spec.version_label = fields["label"]
    return spec


def _states(manager):
    return {s.version: s.state for s in manager.version_states(_spec())}


def test_latest_policy_swaps_to_new_version_and_unloads_old(base, models_dir, caplog):
    caplog.set_level(logging.INFO, logger="serving.servable")
    _copy(models_dir, base, 1)
    manager = _manager(base)
    assert manager.load_initial() == []
    old = manager.resolve(_spec())
    assert old.version == 1

    _copy(models_dir, base, 2)
    manager.poll_once()

    assert manager.resolve(_spec()).version == 2
    assert _states(manager) == {1: END, 2: AVAILABLE}
    # A request that resolved version 1 before the swap still completes on it.
    assert old.run("serving_default", {"image_bytes": np.array([], dtype=object)},
                   ["grade"])["grade"].shape == (0,)
    # Servables that earlier tests left in reference cycles also log their release
    # when collected: collect them now, and nothing more until the check is done.
    gc.collect()
    gc.disable()
    try:
        caplog.clear()
        # Once the last request holding version 1 is done, its session is released
        # at once (no garbage collection needed); version 2 keeps its session.
        del old
        assert [r.getMessage() for r in caplog.records] == ["Releasing the session of koa version 1"]
    finally:
        gc.enable()
    assert manager.resolve(_spec()).run("serving_default", {"image_bytes": np.array([], dtype=object)},
                                        ["grade"])["grade"].shape == (0,)


def test_closed_servable_refuses_to_run(models_dir):
    servable = Servable("koa", 1, os.path.join(models_dir, "koa", "1"))
    images = {"image_bytes": np.array([], dtype=object)}
    assert servable.run("serving_default", images, ["grade"])["grade"].shape == (0,)
    assert not servable.closed
    servable.close()
    servable.close()  # idempotent
    assert servable.closed
    with pytest.raises(ServingStatusError) as info:
        servable.run("serving_default", images, ["grade"])
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert info.value.message == "Servable koa version 1 has been unloaded"


def test_corrupt_version_is_skipped_and_retried_when_it_changes(base, models_dir):
    _copy(models_dir, base, 1)
    factory = CountingFactory()
    manager = _manager(base, factory=factory)
    manager.load_initial()

    corrupt = base / "2"
    _copy(models_dir, base, 2)
    (corrupt / "saved_model.pb").write_bytes(b"\x00garbage, not a SavedModel")
    manager.poll_once()
    manager.poll_once()

    assert manager.resolve(_spec()).version == 1
    status = manager.version_states(_spec(version=2))[0]
    assert status.state == END and status.error_code != grpc.StatusCode.OK and status.error_message
    assert factory.attempts[2] == 1  # unchanged directory: not retried on every poll

    shutil.copyfile(os.path.join(models_dir, "koa", "2", "saved_model.pb"), corrupt / "saved_model.pb")
    manager.poll_once()

    assert factory.attempts[2] == 2
    assert manager.resolve(_spec()).version == 2
    assert _states(manager) == {1: END, 2: AVAILABLE}


def test_half_written_version_without_saved_model_pb(base, models_dir):
    _copy(models_dir, base, 1)
    manager = _manager(base)
    manager.load_initial()
    (base / "2" / "variables").mkdir(parents=True)

    manager.poll_once()

    assert manager.resolve(_spec()).version == 1
    status = manager.version_states(_spec(version=2))[0]
    assert status.error_code == grpc.StatusCode.NOT_FOUND
    assert "SavedModel not found" in status.error_message


def test_start_up_fails_when_no_version_loads(base):
    (base / "1").mkdir()
    (base / "1" / "saved_model.pb").write_bytes(b"junk")
    assert _manager(base).load_initial() == ["koa"]


def test_all_and_specific_policies_and_labels(base, models_dir):
    for version in (1, 2):
        _copy(models_dir, base, version)
    _copy(models_dir, base, 1, 3)
    everything = _manager(base, VersionPolicy(kind="all"))
    everything.load_initial()
    assert sorted(everything.models["koa"].available()) == [1, 2, 3]

    specific = _manager(base, VersionPolicy(kind="specific", versions=frozenset({1, 2})),
                        labels={"stable": 1, "canary": 2})
    specific.load_initial()
    assert sorted(specific.models["koa"].available()) == [1, 2]
    assert specific.resolve(_spec()).version == 2
    assert specific.resolve(_spec(label="stable")).version == 1
    with pytest.raises(ServingStatusError) as info:
        specific.resolve(_spec(label="beta"))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(ServingStatusError) as info:
        specific.resolve(_spec(version=3))
    assert info.value.code == grpc.StatusCode.NOT_FOUND

    latest_two = _manager(base, VersionPolicy(kind="latest", num_versions=2))
    latest_two.load_initial()
    assert sorted(latest_two.models["koa"].available()) == [2, 3]


def test_removed_version_is_unloaded_and_non_numeric_dirs_ignored(base, models_dir):
    for version in (1, 2):
        _copy(models_dir, base, version)
    (base / "tmp-upload").mkdir()
    manager = _manager(base)
    manager.load_initial()
    assert manager.resolve(_spec()).version == 2

    shutil.rmtree(base / "2")
    manager.poll_once()

    assert manager.resolve(_spec()).version == 1


def _linear_request(x: float, input_name: str = "x"):
    p = protos.load()
    request = p.predict_pb2.PredictRequest()
    request.model_spec.name = "linear"
    request.inputs[input_name].CopyFrom(p.tensor_pb2.TensorProto(
        dtype=1, float_val=[x], tensor_shape={"dim": [{"size": 1}]}))
    return request


def _linear_copy(linear_models, base, version):
    shutil.copytree(linear_models[version], base / str(version))
    return str(base / str(version))


def test_warmup_replays_the_recorded_requests(tmp_path, linear_models):
    export_dir = _linear_copy(linear_models, tmp_path, 1)
    path = warmup.write_warmup_requests(export_dir, [_linear_request(1.0), _linear_request(2.0)])
    assert path.endswith(os.path.join("assets.extra", "tf_serving_warmup_requests"))
    servable = Servable("linear", 1, export_dir)

    assert warmup.run_warmup(servable, num_request_iterations=3) == 2
    # A SavedModel without a warmup file loads as before.
    assert warmup.run_warmup(Servable("linear", 2, linear_models[2])) == 0


@pytest.mark.parametrize("content, code, text", [
    ("bad_request", grpc.StatusCode.INVALID_ARGUMENT, "Warmup request 0 (predict_log) failed"),
    ("not_tfrecord", grpc.StatusCode.DATA_LOSS, "Please verify your warmup data is in TFRecord format."),
])
def test_version_whose_warmup_fails_does_not_serve(tmp_path, linear_models, content, code, text):
    base = tmp_path / "linear"
    _linear_copy(linear_models, base, 1)
    export_dir = _linear_copy(linear_models, base, 2)
    if content == "bad_request":
        warmup.write_warmup_requests(export_dir, [_linear_request(1.0, input_name="no_such_input")])
    else:
        os.makedirs(os.path.join(export_dir, "assets.extra"))
        with open(warmup.warmup_path(export_dir), "wb") as f:
            f.write(b"these bytes are not TFRecord framing at all, " * 4)
    manager = ModelManager([ServedModelConfig("linear", str(base))], poll_wait_seconds=0,
                           load_retry_interval=3600,
                           warmup=lambda s: warmup.run_warmup(s, num_request_iterations=1))

    assert manager.load_initial() == []

    spec = protos.load().model_pb2.ModelSpec(name="linear")
    assert manager.resolve(spec).version == 1
    spec.version.value = 2
    failed = manager.version_states(spec)[0]
    assert failed.state == END and failed.error_code == code
    assert text in failed.error_message
