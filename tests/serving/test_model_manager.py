"""Version watching, policies, labels and corrupt versions, with real SavedModels in-process."""

import os
import shutil

import grpc
import numpy as np
import pytest

from serving import protos
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


def test_latest_policy_swaps_to_new_version_and_unloads_old(base, models_dir):
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
