"""Reading the server's text-protobuf configuration files.

``--model_config_file`` is a ``tensorflow.serving.ModelServerConfig`` (its
generated module ships with tensorflow-serving-api). ``--batching_parameters_file``
and ``--monitoring_config_file`` use TensorFlow Serving's ``BatchingParameters``
and ``MonitoringConfig`` messages, whose generated modules are not published
on PyPI; they are declared here with the same field names (text format only
depends on names), so the same files work with both servers.
"""

import logging
from dataclasses import dataclass, field
from typing import Optional

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2

from serving import protos

_LOG = logging.getLogger(__name__)

DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"


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


def single_model_config(name: str, base_path: str) -> ServedModelConfig:
    """Returns the config for ``--model_name``/``--model_base_path``."""
    return ServedModelConfig(name=name, base_path=base_path)


def read_model_server_config(path: str) -> list:
    """Reads a ModelServerConfig text proto into model configs.

    Args:
        path: the ``--model_config_file``.

    Returns:
        A list of :class:`ServedModelConfig`, in file order.

    Raises:
        ServerConfigError: unreadable file, bad syntax, a custom config, a model
            without name or base path, a duplicate name, or a non-TensorFlow platform.
    """
    pb2 = protos.load().model_server_config_pb2
    config = _parse_text(_read(path, "model config file"), pb2.ModelServerConfig(), path)
    if config.WhichOneof("config") != "model_config_list":
        raise ServerConfigError(f"'{path}': only model_config_list is supported, not custom_model_config")
    models = []
    for model in config.model_config_list.config:
        if not model.name or not model.base_path:
            raise ServerConfigError(f"'{path}': every config needs a name and a base_path, got {model}")
        if model.model_platform not in ("", "tensorflow"):
            raise ServerConfigError(f"'{path}': model '{model.name}' has platform "
                              f"'{model.model_platform}'; only 'tensorflow' is served")
        if any(m.name == model.name for m in models):
            raise ServerConfigError(f"'{path}': model '{model.name}' is configured twice")
        choice = model.model_version_policy.WhichOneof("policy_choice")
        if choice == "all":
            policy = VersionPolicy(kind="all")
        elif choice == "specific":
            if not model.model_version_policy.specific.versions:
                raise ServerConfigError(f"'{path}': model '{model.name}' has an empty specific policy")
            policy = VersionPolicy(kind="specific",
                                   versions=frozenset(model.model_version_policy.specific.versions))
        else:
            num = model.model_version_policy.latest.num_versions if choice == "latest" else 1
            policy = VersionPolicy(kind="latest", num_versions=max(1, num))
        models.append(ServedModelConfig(name=model.name, base_path=model.base_path, policy=policy,
                                  labels=dict(model.version_labels)))
    if not models:
        raise ServerConfigError(f"'{path}': no models configured")
    return models


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
