"""Reading the server's text-protobuf configuration files.

``--model_config_file`` is a ``tensorflow.serving.ModelServerConfig`` (its
generated module ships with tensorflow-serving-api). ``--batching_parameters_file``
and ``--monitoring_config_file`` use TensorFlow Serving's ``BatchingParameters``
and ``MonitoringConfig`` messages, whose generated modules are not published
on PyPI; they are declared here with the same field names (text format only
depends on names), so the same files work with both servers.
``--tensorflow_session_config_file`` is TensorFlow's own ``ConfigProto``.
"""

import logging
import os
import urllib.parse
from dataclasses import dataclass, field
from typing import Optional

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2

from serving import protos

_LOG = logging.getLogger(__name__)

DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"
TENSORFLOW_PLATFORM = "tensorflow"


class ServerConfigError(ValueError):
    """A configuration file is missing, unreadable or invalid."""


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions found under a base path are served.

    Attributes:
        kind: ``"latest"``, ``"all"`` or ``"specific"``.
        num_versions: for ``latest``, how many of the highest versions.
        versions: for ``specific``, the versions to serve.
    """

    kind: str = "latest"
    num_versions: int = 1
    versions: frozenset = frozenset()


@dataclass(frozen=True)
class ServedModelConfig:
    """One served model: name, base path, version policy and version labels."""

    name: str
    base_path: str
    policy: VersionPolicy = VersionPolicy()
    labels: dict = field(default_factory=dict)


@dataclass(frozen=True)
class BatchingConfig:
    """Server-side batching parameters (TensorFlow Serving's defaults)."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = 4
    allowed_batch_sizes: tuple = ()


@dataclass(frozen=True)
class MonitoringConfig:
    """Prometheus export settings."""

    prometheus_enabled: bool = False
    prometheus_path: str = DEFAULT_PROMETHEUS_PATH


def read_text(path: str) -> str:
    """Returns a config file's text.

    Raises:
        ServerConfigError: the file cannot be read.
    """
    return _read(path, "config file")


def _read(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise ServerConfigError(f"cannot read {what} '{path}': {e}") from e


def _parse_text(text: str, message, path: str):
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as e:
        raise ServerConfigError(f"Invalid protobuf file: '{path}': {e}") from e
    return message


def single_model_config(name: str, base_path: str) -> list:
    """Returns the model configs for ``--model_name``/``--model_base_path``.

    Raises:
        ServerConfigError: the base path is relative (TensorFlow Serving
            validates the flags' config like a config file's).
    """
    config = protos.load().model_server_config_pb2.ModelServerConfig()
    config.model_config_list.config.add(name=name, base_path=base_path, model_platform=TENSORFLOW_PLATFORM)
    return models_from_proto(config)


def _is_relative(uri: str) -> bool:
    """True for a plain relative path (no scheme such as ``gs://``, not absolute)."""
    parsed = urllib.parse.urlsplit(uri)
    return not parsed.scheme and not parsed.netloc and not os.path.isabs(uri)


def _platform(model, where: str) -> str:
    """The model's platform, resolving the deprecated ``model_type`` as TF Serving does."""
    if model.model_type:  # ModelType.TENSORFLOW == 1; 0 is unspecified
        _LOG.warning("Deprecated ModelServerConfig::model_type field used. "
                     "Prefer ModelServerConfig::model_platform.")
        if model.model_platform:
            raise ServerConfigError(f"{where}Illegal setting both ModelServerConfig::model_type "
                                    "(deprecated) and ModelServerConfig::model_platform.")
        if model.model_type != 1:
            raise ServerConfigError(f"{where}ModelServerConfig::model_type choice "
                                    f"{model.model_type} not supported.")
        return TENSORFLOW_PLATFORM
    if not model.model_platform:
        raise ServerConfigError(f"{where}Illegal setting neither ModelServerConfig::model_type "
                                "(deprecated) nor ModelServerConfig::model_platform.")
    return model.model_platform


def models_from_proto(config, source: str = "") -> list:
    """Validates a ``ModelServerConfig`` message and returns its model configs.

    The checks and their texts are TensorFlow Serving's (``ServerCore::ReloadConfig``):
    only a ``model_config_list`` is served, names are unique, base paths are
    absolute paths or URIs, and every model names the ``tensorflow`` platform.
    A config with no models is valid and serves nothing.

    Args:
        config: a ``tensorflow.serving.ModelServerConfig``.
        source: where the config came from, prefixed to error messages.

    Returns:
        A list of :class:`ServedModelConfig`, in config order.

    Raises:
        ServerConfigError: the config is one TensorFlow Serving rejects.
    """
    where = f"'{source}': " if source else ""
    choice = config.WhichOneof("config")
    if choice == "custom_model_config":
        raise ServerConfigError(f"{where}ModelServer does not yet support custom model config.")
    if choice is None:
        _LOG.info("Taking no action for empty config.")
        return []
    configs = config.model_config_list.config
    names = set()
    for model in configs:
        if model.name in names:
            raise ServerConfigError(f"{where}Illegal to list model {model.name} multiple times in config list")
        names.add(model.name)
    for model in configs:
        if _is_relative(model.base_path):
            raise ServerConfigError(f"{where}Expected model {model.name} to have an absolute path or URI; "
                                    f"got base_path()={model.base_path}")
    models = []
    for model in configs:
        platform = _platform(model, where)
        if platform != TENSORFLOW_PLATFORM:
            raise ServerConfigError(f"{where}Model {model.name} requests unsupported platform {platform}")
        if not model.name:
            raise ServerConfigError(f"{where}a model config has no name (base_path {model.base_path})")
        if urllib.parse.urlsplit(model.base_path).scheme:
            raise ServerConfigError(f"{where}model {model.name}: base_path {model.base_path} is a URI; "
                                    "this server reads local paths only")
        choice = model.model_version_policy.WhichOneof("policy_choice")
        if choice == "all":
            policy = VersionPolicy(kind="all")
        elif choice == "specific":
            if not model.model_version_policy.specific.versions:
                raise ServerConfigError(f"{where}model '{model.name}' has an empty specific policy")
            policy = VersionPolicy(kind="specific",
                                   versions=frozenset(model.model_version_policy.specific.versions))
        else:
            num = model.model_version_policy.latest.num_versions if choice == "latest" else 1
            policy = VersionPolicy(kind="latest", num_versions=max(1, num))
        models.append(ServedModelConfig(name=model.name, base_path=model.base_path, policy=policy,
                                        labels=dict(model.version_labels)))
    return models


def read_model_server_config(path: str) -> list:
    """Reads a ModelServerConfig text proto into model configs.

    Args:
        path: the ``--model_config_file``.

    Returns:
        A list of :class:`ServedModelConfig`, in file order (empty for an
        empty config, which TensorFlow Serving accepts).

    Raises:
        ServerConfigError: unreadable file, bad syntax, or a config that
            :func:`models_from_proto` rejects.
    """
    pb2 = protos.load().model_server_config_pb2
    config = _parse_text(_read(path, "model config file"), pb2.ModelServerConfig(), path)
    return models_from_proto(config, path)


_EXTRA_POOL = None
_EXTRA_CLASSES = {}


def _extra_message(name: str):
    """Returns the class of one of this module's own config messages."""
    global _EXTRA_POOL
    if _EXTRA_POOL is None:
        pool = descriptor_pool.DescriptorPool()
        pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
        f = descriptor_pb2.FileDescriptorProto(
            name="koa/serving/config.proto", package="koa.serving", syntax="proto3",
            dependency=["google/protobuf/wrappers.proto"])
        msg_type = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
        optional = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
        batching = f.message_type.add(name="BatchingParameters")
        for number, (fname, wrapper) in enumerate([
                ("max_batch_size", "Int64Value"), ("batch_timeout_micros", "Int64Value"),
                ("max_enqueued_batches", "Int64Value"), ("num_batch_threads", "Int64Value"),
                ("thread_pool_name", "StringValue"), ("enable_large_batch_splitting", "BoolValue"),
                ("max_execution_batch_size", "Int64Value"), ("batch_padding_policy", "StringValue")],
                start=1):
            batching.field.add(name=fname, number=number, type=msg_type, label=optional,
                               type_name=f".google.protobuf.{wrapper}")
        batching.field.add(name="allowed_batch_sizes", number=20,
                           type=descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
                           label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED)
        batching.field.add(name="pad_variable_length_inputs", number=21,
                           type=descriptor_pb2.FieldDescriptorProto.TYPE_BOOL, label=optional)
        prometheus = f.message_type.add(name="PrometheusConfig")
        prometheus.field.add(name="enable", number=1, label=optional,
                             type=descriptor_pb2.FieldDescriptorProto.TYPE_BOOL)
        prometheus.field.add(name="path", number=2, label=optional,
                             type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING)
        monitoring = f.message_type.add(name="MonitoringConfig")
        monitoring.field.add(name="prometheus_config", number=1, label=optional, type=msg_type,
                             type_name=".koa.serving.PrometheusConfig")
        pool.Add(f)
        _EXTRA_POOL = pool
    if name not in _EXTRA_CLASSES:
        descriptor = _EXTRA_POOL.FindMessageTypeByName(f"koa.serving.{name}")
        _EXTRA_CLASSES[name] = message_factory.MessageFactory(_EXTRA_POOL).GetPrototype(descriptor)
    return _EXTRA_CLASSES[name]


def read_batching_parameters(path: Optional[str]) -> BatchingConfig:
    """Reads a BatchingParameters text proto; None or "" gives the defaults.

    Raises:
        ServerConfigError: unreadable file, bad syntax or non-positive sizes.
    """
    defaults = BatchingConfig()
    if not path:
        return defaults
    params = _parse_text(_read(path, "batching parameters file"), _extra_message("BatchingParameters")(), path)

    def value(name, default):
        return getattr(params, name).value if params.HasField(name) else default

    for ignored in ("thread_pool_name", "enable_large_batch_splitting", "max_execution_batch_size",
                    "batch_padding_policy"):
        if params.HasField(ignored):
            _LOG.warning("batching parameter %s in '%s' is not implemented and is ignored", ignored, path)
    if params.pad_variable_length_inputs:
        _LOG.warning("pad_variable_length_inputs in '%s' is not implemented and is ignored", path)
    result = BatchingConfig(
        max_batch_size=value("max_batch_size", defaults.max_batch_size),
        batch_timeout_micros=value("batch_timeout_micros", defaults.batch_timeout_micros),
        max_enqueued_batches=value("max_enqueued_batches", defaults.max_enqueued_batches),
        num_batch_threads=value("num_batch_threads", defaults.num_batch_threads),
        allowed_batch_sizes=tuple(params.allowed_batch_sizes))
    for name in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
        if getattr(result, name) <= 0:
            raise ServerConfigError(f"'{path}': {name} must be positive")
    if result.batch_timeout_micros < 0:
        raise ServerConfigError(f"'{path}': batch_timeout_micros must be >= 0")
    sizes = result.allowed_batch_sizes
    if sizes and (list(sizes) != sorted(set(sizes)) or sizes[-1] != result.max_batch_size):
        raise ServerConfigError(f"'{path}': allowed_batch_sizes must increase and end with max_batch_size")
    return result


def read_session_config(path: Optional[str], intra_op_threads: int = 0, inter_op_threads: int = 0):
    """The ``tensorflow.ConfigProto`` every model version's Session is created with.

    Args:
        path: ``--tensorflow_session_config_file``, a ConfigProto text proto (for instance
            ``experimental { disable_thread_spinning: true }``); None or "" for none.
        intra_op_threads, inter_op_threads: the ``--tensorflow_*_parallelism`` flags; a
            value above 0 overrides the file's thread count, as TensorFlow Serving's flag
            help says ("parts of the session config ... can be overridden ... via
            corresponding command line flags").

    Returns:
        the ConfigProto (``allow_soft_placement`` on, as TensorFlow 2 gives a Session
        created without one, unless the file says otherwise), or None when neither a file
        nor a thread count is given (the Session then takes TensorFlow's defaults).

    Raises:
        ServerConfigError: unreadable file or bad syntax (named with the file).
    """
    if not path and not intra_op_threads and not inter_op_threads:
        return None
    # Imported here, as the model loader does: the tensorflow package is heavy. (Its
    # config_pb2 imported on its own, after serving.protos.load(), clashes with the
    # descriptors that package's initialiser registers.)
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    # What TensorFlow 2 gives a Session created without a config; the file can change it.
    config = tf.compat.v1.ConfigProto(allow_soft_placement=True)
    if path:
        # text_format.Parse keeps fields already set (allow_soft_placement) unless the file
        # sets them, and rejects a field given twice, as upstream's parser does.
        _parse_text(_read(path, "TensorFlow session config file"), config, path)
    if intra_op_threads:
        config.intra_op_parallelism_threads = intra_op_threads
    if inter_op_threads:
        config.inter_op_parallelism_threads = inter_op_threads
    return config


def read_monitoring_config(path: Optional[str]) -> MonitoringConfig:
    """Reads a MonitoringConfig text proto; None or "" disables Prometheus.

    Raises:
        ServerConfigError: unreadable file or bad syntax.
    """
    if not path:
        return MonitoringConfig()
    config = _parse_text(_read(path, "monitoring config file"), _extra_message("MonitoringConfig")(), path)
    prometheus = config.prometheus_config
    metrics_path = prometheus.path or DEFAULT_PROMETHEUS_PATH
    if not metrics_path.startswith("/"):
        raise ServerConfigError(f"'{path}': prometheus_config.path must start with '/'")
    return MonitoringConfig(prometheus_enabled=prometheus.enable, prometheus_path=metrics_path)
