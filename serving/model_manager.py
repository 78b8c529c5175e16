"""Watching model base paths, loading and unloading versions, resolving requests.

Each configured model has a base path holding one directory per version,
named by a non-negative integer (TensorFlow Serving's layout). A poller scans
the base paths, loads versions the version policy asks for and unloads the
others. Swaps are atomic: the set of available versions is an immutable
mapping replaced in one assignment, only after the new version has loaded;
a request holds a reference to the version it resolved, so it completes even
if that version is unloaded meanwhile. The manager keeps no reference to an
unloaded version: its session is released as soon as the last such request
is done (see :class:`serving.servable.Servable`).

A version whose load fails, whatever the reason (truncated ``saved_model.pb``
or variables, missing files, unreadable files, a copy still in progress, or
any exception the loader raises), is reported in GetModelStatus as END with
its error and skipped: the policy falls back to the next-highest version that
loads, so the previous version keeps serving. It is retried as soon as the
directory's contents change, and otherwise up to ``max_num_load_retries``
times, ``load_retry_interval`` apart. Nothing a version directory holds can
stop the poller: every poll step is guarded, failures are logged and the next
poll runs as scheduled. No poll or load ever blocks on a version's files: the
change fingerprint only stats them, and an entry that is not a regular file
or directory (a named pipe would block its reader forever) fails the load
before anything is opened (:func:`serving.servable.check_regular_files`).
"""

import logging
import os
import stat
import threading
import time
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Optional

import grpc

from serving import status
from serving.server_config import ServedModelConfig
from serving.servable import Servable, walk_version

_LOG = logging.getLogger(__name__)

# ModelVersionStatus.State values (tensorflow_serving/apis/get_model_status.proto).
START, LOADING, AVAILABLE, UNLOADING, END = 10, 20, 30, 40, 50


@dataclass(frozen=True)
class VersionState:
    """What GetModelStatus reports for one version."""

    version: int
    state: int
    error_code: grpc.StatusCode = grpc.StatusCode.OK
    error_message: str = ""


def _describe(error: Exception, path: str) -> str:
    """The GetModelStatus message for an exception the loader did not classify."""
    text = str(error) or type(error).__name__
    return f"Failed to load SavedModel from {path}: {text}"


@dataclass
class _Failure:
    fingerprint: tuple
    attempts: int
    last_attempt: float


def _fingerprint(path: str) -> tuple:
    """Summarises a version directory's entries (names, types, sizes, mtimes and
    inodes) to notice changes, from ``stat`` alone: no file is opened."""
    return tuple((name, None) if st is None else
                 (name, stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns, st.st_ino)
                 for name, st in walk_version(path))


_MAX_VERSION = 2 ** 63 - 1  # versions are int64, as in TensorFlow Serving


def scan_versions(base_path: str) -> dict:
    """Returns {version: path} for the version directories under a base path.

    Names that are not a non-negative int64 in ASCII digits are ignored, as
    TensorFlow Serving's file-system source ignores them; an unreadable base
    path gives {}.
    """
    try:
        names = os.listdir(base_path)
    except OSError:
        return {}
    versions = {}
    for name in names:
        if not (name.isascii() and name.isdigit()) or int(name) > _MAX_VERSION:
            continue
        if os.path.isdir(os.path.join(base_path, name)):
            versions[int(name)] = os.path.join(base_path, name)
    return versions


class ManagedModel:
    """The versions of one configured model."""

    def __init__(self, config: ServedModelConfig, *, max_num_load_retries: int, load_retry_interval: float,
                 servable_factory: Callable = Servable, on_change: Optional[Callable] = None):
        # A reload may replace the config (policy, labels) of a running model.
        self.config = config
        self._max_retries = max_num_load_retries
        self._retry_interval = load_retry_interval
        self._factory = servable_factory
        self._on_change = on_change
        self._available = MappingProxyType({})
        self._states = {}
        self._failures = {}
        self._state_lock = threading.Lock()
        self._warned_empty = False

    @property
    def name(self) -> str:
        """The model's name."""
        return self.config.name

    def available(self):
        """Returns the current {version: Servable} snapshot (immutable)."""
        return self._available

    def states(self) -> list:
        """Returns the known version states, highest version first."""
        with self._state_lock:
            return [self._states[v] for v in sorted(self._states, reverse=True)]

    def _set_state(self, state: VersionState):
        with self._state_lock:
            self._states[state.version] = state

    def _loadable(self, version: int, path: str, now: float) -> bool:
        failure = self._failures.get(version)
        if failure is None:
            return True
        if _fingerprint(path) != failure.fingerprint:
            return True
        return (failure.attempts <= self._max_retries
                and now - failure.last_attempt >= self._retry_interval)

    def _aspired(self, candidates: list) -> list:
        """Versions the policy wants, from loadable candidates, highest first."""
        policy = self.config.policy
        candidates = sorted(candidates, reverse=True)
        if policy.kind == "all":
            return candidates
        if policy.kind == "specific":
            return [v for v in candidates if v in policy.versions]
        return candidates

    def poll(self) -> bool:
        """Scans the base path once and loads/unloads versions.

        Returns:
            True when every version the policy currently wants has reached a
            final state (loaded, or failed and not due for a retry).
        """
        on_disk = scan_versions(self.config.base_path)
        if not on_disk and not self._warned_empty:
            _LOG.warning("No versions of servable %s found under base path %s",
                         self.name, self.config.base_path)
            self._warned_empty = True
        elif on_disk:
            self._warned_empty = False
        now = time.monotonic()
        available = dict(self._available)
        policy = self.config.policy
        wanted = self._aspired([v for v in on_disk])
        serving = []
        for version in wanted:
            if policy.kind == "latest" and len(serving) >= policy.num_versions:
                break
            if version in available:
                serving.append(version)
                continue
            path = on_disk[version]
            if not self._loadable(version, path, now):
                continue
            if self._load(version, path, available):
                serving.append(version)
        changed = False
        for version in list(available):
            if version not in serving:
                self._unload(version, available)
                changed = True
        if changed or set(available) != set(self._available):
            self._publish(available)
        return True

    def _load(self, version: int, path: str, available: dict) -> bool:
        fingerprint = _fingerprint(path)
        _LOG.info("Loading servable: {name: %s version: %d} from %s", self.name, version, path)
        self._set_state(VersionState(version, LOADING))
        started = time.monotonic()
        try:
            servable = self._factory(self.name, version, path)
        except Exception as e:  # noqa: BLE001 -- any loader failure must end in a reported state
            # ServableLoadError and WarmupError carry a status code; anything
            # else is an unexpected loader failure, reported as UNKNOWN.
            classified = isinstance(getattr(e, "code", None), grpc.StatusCode)
            code = e.code if classified else grpc.StatusCode.UNKNOWN
            message = str(e) if classified else _describe(e, path)
            failure = self._failures.get(version)
            attempts = 1 if failure is None or failure.fingerprint != fingerprint else failure.attempts + 1
            self._failures[version] = _Failure(fingerprint, attempts, time.monotonic())
            _LOG.error("Loading servable: {name: %s version: %d} failed: %s (attempt %d; it is "
                       "retried when %s changes)", self.name, version, message, attempts, path,
                       exc_info=not classified)
            self._set_state(VersionState(version, END, code, message))
            return False
        self._failures.pop(version, None)
        available[version] = servable
        # Publish right away so that the new version serves before the old
        # one is unloaded: requests never see an empty model.
        self._publish(available)
        self._set_state(VersionState(version, AVAILABLE))
        _LOG.info("Successfully loaded servable version {name: %s version: %d} in %.2fs",
                  self.name, version, time.monotonic() - started)
        return True

    def _unload(self, version: int, available: dict):
        _LOG.info("Unloading servable version {name: %s version: %d}", self.name, version)
        self._set_state(VersionState(version, UNLOADING))
        del available[version]
        self._publish(available)
        self._set_state(VersionState(version, END))

    def unload_all(self):
        """Unloads every version (the model was removed from the config)."""
        available = dict(self._available)
        for version in sorted(available):
            self._unload(version, available)

    def _publish(self, available: dict):
        self._available = MappingProxyType(dict(available))
        if self._on_change is not None:
            self._on_change(self.name, sorted(available))

    def resolve(self, version: Optional[int] = None, label: Optional[str] = None,
                allow_unavailable_labels: bool = False) -> Servable:
        """Returns the servable a ModelSpec asks for.

        Args:
            version: a specific version, or None.
            label: a version label, or None.
            allow_unavailable_labels: accept a label whose version is not loaded
                (it then fails as an unavailable specific version).

        Raises:
            status.ServingStatusError: NOT_FOUND for a missing version,
                INVALID_ARGUMENT for an unknown label.
        """
        del allow_unavailable_labels  # a label to an unloaded version fails below either way
        available = self._available
        if label:
            if label not in self.config.labels:
                raise status.invalid_argument(f"Unrecognized servable version label: {label}")
            version = self.config.labels[label]
        if version is not None:
            servable = available.get(version)
            if servable is None:
                raise status.not_found(f"Servable not found for request: Specific({self.name}, {version})")
            return servable
        if not available:
            raise status.not_found(f"Servable not found for request: Latest({self.name})")
        return available[max(available)]


def _model_spec_request(model_spec) -> tuple:
    """Returns (name, version or None, label or None) of a ModelSpec.

    Raises:
        status.ServingStatusError: INVALID_ARGUMENT for a ModelSpec without a
            name, in TensorFlow Serving's words.
    """
    if not model_spec.name:
        raise status.invalid_argument("ModelSpec has no name specified.")
    choice = model_spec.WhichOneof("version_choice")
    version = model_spec.version.value if choice == "version" else None
    label = model_spec.version_label if choice == "version_label" else None
    return model_spec.name, version, label


class ModelManager:
    """All configured models, and the poller that keeps them up to date.

    Args:
        configs: the :class:`ServedModelConfig` of each model.
        poll_wait_seconds: seconds between polls of the base paths; 0 polls
            only at start-up and on :meth:`reload`.
        max_num_load_retries: retries of an unchanged failed version.
        load_retry_interval: seconds between those retries.
        allow_unavailable_labels: labels may name versions that are not loaded.
        on_change: called with (model name, sorted loaded versions) on each swap.
        servable_factory: ``(name, version, path) -> Servable``; raises on a bad version.
        warmup: called with each freshly loaded servable before it serves; an
            exception fails that version's load (``--enable_model_warmup``).
    """

    def __init__(self, configs: list, *, poll_wait_seconds: float, max_num_load_retries: int = 5,
                 load_retry_interval: float = 60.0, allow_unavailable_labels: bool = False,
                 on_change: Optional[Callable] = None, servable_factory: Callable = Servable,
                 warmup: Optional[Callable] = None):
        self._model_args = dict(max_num_load_retries=max_num_load_retries,
                                load_retry_interval=load_retry_interval,
                                servable_factory=_with_warmup(servable_factory, warmup),
                                on_change=on_change)
        # Replaced as a whole on reload, so a request sees one consistent mapping.
        self.models = {c.name: ManagedModel(c, **self._model_args) for c in configs}
        self._poll_wait = poll_wait_seconds
        self._allow_unavailable_labels = allow_unavailable_labels
        # Polls and reloads never run at the same time.
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread = None

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` has been called."""
        return self._stop.is_set()

    def poll_once(self):
        """Polls every model's base path once.

        Never raises: a failure of one model's poll is logged and the other
        models are still polled (the poller thread must survive anything a
        base path holds).
        """
        with self._lock:
            for model in list(self.models.values()):
                try:
                    model.poll()
                except Exception:  # noqa: BLE001 -- logged; the next poll retries
                    _LOG.exception("Polling %s for servable %s failed", model.config.base_path, model.name)

    def _wait_for_versions(self, models: list):
        """Polls until each of ``models`` has a version or found none to try."""
        while models and not self._stop.is_set():
            self.poll_once()
            empty = [m for m in models if not m.available() and not scan_versions(m.config.base_path)]
            if not empty:
                return
            self._stop.wait(1.0)

    def load_initial(self) -> list:
        """Loads the initial versions.

        Like tensorflow_model_server, start-up waits while a base path holds no
        version at all; a model whose versions all fail to load is reported
        (and keeps being polled) without holding back the other models.

        Returns:
            Names of the models that have no available version after their
            versions were tried (empty on success).
        """
        models = list(self.models.values())
        self._wait_for_versions(models)
        return [m.name for m in models if not m.available()]

    def label_problems(self, models: Optional[list] = None) -> list:
        """Returns TensorFlow Serving's error for each label naming an unavailable version.

        Empty when ``allow_unavailable_labels`` is set.
        """
        if self._allow_unavailable_labels:
            return []
        problems = []
        for model in models if models is not None else self.models.values():
            for version in sorted(set(model.config.labels.values())):
                if version not in model.available():
                    problems.append(f"Request to assign label to version {version} of model "
                                    f"{model.name}, which is not currently available for inference")
        return problems

    def reload(self, configs: list) -> list:
        """Replaces the served model set, as TensorFlow Serving's ReloadConfig does.

        Models no longer listed are unloaded; kept models take the new version
        policy and labels, applied by an immediate poll; new models are loaded,
        waiting like start-up while their base path holds no version. The
        background poller keeps serving the other models during that wait.

        Args:
            configs: the new :class:`ServedModelConfig` list (already validated).

        Returns:
            Problems to report to the caller (new models that did not become
            available, labels naming unavailable versions); empty on success.
            The new config is in effect either way.
        """
        with self._lock:
            old = self.models
            models = {}
            added = []
            for config in configs:
                model = old.get(config.name)
                if model is None:
                    model = ManagedModel(config, **self._model_args)
                    added.append(model)
                else:
                    model.config = config
                models[config.name] = model
            self.models = models
            for name in set(old) - set(models):
                _LOG.info("Removing servable %s from the served models", name)
                old[name].unload_all()
            _LOG.info("Adding/updating models: %s", ", ".join(models) or "(none)")
        self._wait_for_versions(added)
        self.poll_once()
        failed = [f"{{name: {m.name}}}" for m in added if not m.available()]
        problems = [f"{len(failed)} model(s) did not become available: {{{', '.join(failed)}}}"] if failed else []
        return problems + self.label_problems(list(models.values()))

    def start_polling(self):
        """Starts the background poller (no-op if the poll interval is 0)."""
        if self._poll_wait <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="model-poller", daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(self._poll_wait):
            self.poll_once()

    def stop(self):
        """Stops the poller; loaded versions stay in memory until released."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def resolve(self, model_spec):
        """Returns the servable for a ``ModelSpec`` proto.

        Raises:
            status.ServingStatusError: INVALID_ARGUMENT for a ModelSpec without
                a name or an unknown label, NOT_FOUND for an unknown model or
                version (TensorFlow Serving's texts).
        """
        name, version, label = _model_spec_request(model_spec)
        model = self.models.get(name)
        if model is None:
            request = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
            raise status.not_found(f"Servable not found for request: {request}")
        return model.resolve(version, label, self._allow_unavailable_labels)

    def version_states(self, model_spec) -> list:
        """Returns VersionStates for a GetModelStatus ``ModelSpec``.

        Raises:
            status.ServingStatusError: NOT_FOUND as TensorFlow Serving words it.
        """
        model = self.models.get(model_spec.name)
        states = model.states() if model is not None else []
        choice = model_spec.WhichOneof("version_choice")
        if choice == "version_label":
            if model is None or model_spec.version_label not in model.config.labels:
                raise status.invalid_argument(
                    f"Unrecognized servable version label: {model_spec.version_label}")
            version = model.config.labels[model_spec.version_label]
        elif choice == "version":
            version = model_spec.version.value
        else:
            if not states:
                raise status.not_found(f"Could not find any versions of model {model_spec.name}")
            return states
        matching = [s for s in states if s.version == version]
        if not matching:
            raise status.not_found(f"Could not find version {version} of model {model_spec.name}")
        return matching


def _with_warmup(factory: Callable, warmup: Optional[Callable]) -> Callable:
    """Wraps a servable factory so that each servable is warmed up before it serves."""
    if warmup is None:
        return factory

    def load_and_warm_up(name, version, path):
        servable = factory(name, version, path)
        warmup(servable)
        return servable

    return load_and_warm_up
