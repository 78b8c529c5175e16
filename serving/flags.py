"""Command-line flags, parsed the way ``tensorflow_model_server`` parses them.

Like TensorFlow's flag parser, values are given as ``--name=value``; a boolean
may also be given as a bare ``--name``. A malformed value of a known flag is an
error. An argument that matches no flag (an unknown flag, a non-boolean flag
without ``=value``, a stray word) does not stop the server: like
``tensorflow_model_server`` it is reported as ``unknown argument: ...``
followed by the usage text, and the server starts anyway.

Defaults are ``tensorflow_model_server``'s, so ``--rest_api_port`` defaults to
0 (REST disabled; the ``tensorflow/serving`` Docker image passes 8501) and the
servers listen on all interfaces. ``tensorflow_model_server`` flags this
server does not implement are accepted only with the value whose behaviour it
has (e.g. ``--saved_model_tags=serve``); any other value is an error naming
the flag. ``--bind_address`` is this server's own addition (``koa up`` uses
it to listen on the loopback interface only).
"""

import os
import re
from dataclasses import dataclass, field, fields
from typing import Optional

_INT32 = (-2 ** 31, 2 ** 31 - 1)
_INT64 = (-2 ** 63, 2 ** 63 - 1)
_INTEGER = re.compile(r"[+-]?[0-9]+")


class FlagError(ValueError):
    """The command line is invalid; the message names the offending argument."""


def _default_threads() -> int:
    return 4 * (os.cpu_count() or 1)


def _flag(default, help_text: str, kind: str = ""):
    """A dataclass field carrying its usage text and TensorFlow flag type."""
    return field(default=default, metadata={"help": help_text, "kind": kind})


@dataclass
class ServerOptions:
    """Server settings, one attribute per supported flag.

    ``unknown_arguments`` holds the arguments that matched no flag.
    """

    port: int = _flag(8500, "gRPC TCP port; 0 turns TCP gRPC off.")
    grpc_socket_path: str = _flag("", "Also serve gRPC on this UNIX socket path (relative or absolute).")
    rest_api_port: int = _flag(0, "HTTP/REST port; 0 turns REST off. Must differ from --port.")
    rest_api_num_threads: int = _flag(0, "Worker threads answering REST calls; 0 means 4 per CPU.")
    rest_api_timeout_in_ms: int = _flag(30000, "A REST call not answered within this many ms gets "
                                               "HTTP 504; 0 waits without limit.")
    model_name: str = _flag("default", "Model name when serving one model from --model_base_path.")
    model_base_path: str = _flag("", "Absolute directory holding the model's numbered versions; "
                                     "required unless --model_config_file is given.")
    model_config_file: str = _flag("", "ModelServerConfig text proto listing the models to serve "
                                       "(takes precedence over --model_name/--model_base_path).")
    model_config_file_poll_wait_seconds: int = _flag(
        0, "Re-read --model_config_file this often (seconds) and apply changes; 0 reads it once.")
    file_system_poll_wait_seconds: int = _flag(1, "Seconds between scans of the base paths for new or "
                                                  "removed versions; 0 scans once at start-up.")
    enable_batching: bool = _flag(False, "Batch concurrent requests together on the server.")
    batching_parameters_file: str = _flag("", "BatchingParameters text proto overriding the batching "
                                              "defaults (needs --enable_batching).")
    monitoring_config_file: str = _flag("", "MonitoringConfig text proto (Prometheus export).")
    grpc_max_threads: int = _flag(0, "gRPC worker threads; 0 means 4 per CPU.")
    grpc_channel_arguments: str = _flag("", "Comma-separated key=value gRPC server channel arguments.")
    max_num_load_retries: int = _flag(5, "Retries of a version whose load failed and whose files did "
                                         "not change.")
    load_retry_interval_micros: int = _flag(60 * 1000 * 1000, "Microseconds between those retries.", "int64")
    allow_version_labels_for_unavailable_models: bool = _flag(
        False, "Let version labels name versions that are not loaded (yet).")
    enable_model_warmup: bool = _flag(True, "Replay the SavedModel's assets.extra/tf_serving_warmup_requests "
                                            "(PredictionLog TFRecords) before a version serves.")
    num_request_iterations_for_warmup: int = _flag(1, "Times each warmup record is run (values < 1 mean 1).")
    tensorflow_session_parallelism: int = _flag(0, "TensorFlow intra- and inter-op threads; 0 lets "
                                                   "TensorFlow choose.", "int64")
    tensorflow_intra_op_parallelism: int = _flag(0, "Threads inside one op; 0 lets TensorFlow choose.",
                                                 "int64")
    tensorflow_inter_op_parallelism: int = _flag(0, "Ops run at the same time; 0 lets TensorFlow choose.",
                                                 "int64")
    tensorflow_session_config_file: str = _flag(
        "", "TensorFlow ConfigProto text proto for every model's Session; the "
            "--tensorflow_*_parallelism flags override its thread counts.")
    version: bool = _flag(False, "Print the server's and TensorFlow's versions and exit.")
    bind_address: str = _flag("0.0.0.0", "(koa extension) Address the gRPC and HTTP/REST ports listen on; "
                                         "127.0.0.1 keeps them local.")
    unknown_arguments: tuple = field(default=(), metadata={"help": None})

    def __post_init__(self):
        if not self.grpc_max_threads:
            self.grpc_max_threads = _default_threads()
        if not self.rest_api_num_threads:
            self.rest_api_num_threads = _default_threads()


# tensorflow_model_server flags without an implementation here: the value (or
# values) whose behaviour this server has, as text; None accepts any value
# because the flag cannot change anything observable here.
_NOT_IMPLEMENTED = {
    "num_load_threads": ("int32", "0"),
    "num_unload_threads": ("int32", "0"),
    "flush_filesystem_caches": ("bool", None),
    "use_alts_credentials": ("bool", "false"),
    "ssl_config_file": ("string", ""),
    "platform_config_file": ("string", ""),
    "per_process_gpu_memory_fraction": ("float", "0"),
    "saved_model_tags": ("string", "serve"),
    "rest_api_enable_cors_support": ("bool", "false"),
    "enable_per_model_batching_parameters": ("bool", "false"),
    "remove_unused_fields_from_bundle_metagraph": ("bool", None),
    "prefer_tflite_model": ("bool", "false"),
    "num_tflite_pools": ("int32", None),
    "num_tflite_interpreters_per_pool": ("int32", None),
    "enable_signature_method_name_check": ("bool", "false"),
    "xla_cpu_compilation_enabled": ("bool", "false"),
    "enable_profiler": ("bool", "false"),
    "thread_pool_factory_config_file": ("string", ""),
    "mixed_precision": ("string", ""),
    "skip_initialize_tpu": ("bool", None),
    "enable_grpc_healthcheck_service": ("bool", "false"),
}


def _kind(f) -> str:
    return f.metadata.get("kind") or {bool: "bool", int: "int32", str: "string"}[f.type]


def _flag_fields():
    return [f for f in fields(ServerOptions) if f.metadata.get("help")]


def usage() -> str:
    """Returns the usage text listing every supported flag and its default."""
    lines = ["usage: python -m serving [--flag=value ...]", "Flags:"]
    for f in _flag_fields():
        kind = _kind(f)
        value = f.default
        if f.name in ("grpc_max_threads", "rest_api_num_threads"):
            value = 0
        shown = f'"{value}"' if kind == "string" else str(value).lower()
        lines.append(f"\t--{f.name}={shown}\t{kind}\t{f.metadata['help']}")
    return "\n".join(lines)


def _parse_bool(name: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise FlagError(f"Couldn't interpret value {value} for flag {name}.")


def _parse_value(name: str, kind: str, value: str):
    """Parses one flag value as TensorFlow's flag parser does."""
    if kind == "bool":
        return _parse_bool(name, value)
    if kind in ("int32", "int64"):
        low, high = _INT32 if kind == "int32" else _INT64
        if not _INTEGER.fullmatch(value) or not low <= int(value) <= high:
            raise FlagError(f"Couldn't interpret value {value} for flag {name}.")
        return int(value)
    if kind == "float":
        try:
            return float(value)
        except ValueError:
            raise FlagError(f"Couldn't interpret value {value} for flag {name}.") from None
    return value


def _check_not_implemented(name: str, value):
    kind, honoured = _NOT_IMPLEMENTED[name]
    if honoured is None:
        return
    if value != _parse_value(name, kind, honoured):
        raise FlagError(f"--{name}={value} is not supported by this server (it implements only "
                        f"--{name}={honoured}); remove the flag or use tensorflow_model_server")


def parse_flags(argv) -> Optional[ServerOptions]:
    """Parses command-line arguments (without the program name).

    Args:
        argv: the arguments, e.g. ``["--port=8500", "--model_name=koa"]``.

    Returns:
        The options (arguments that matched no flag in ``unknown_arguments``),
        or None when ``--help`` was given.

    Raises:
        FlagError: a malformed value, a value this server cannot honour, or a
            combination ``tensorflow_model_server`` refuses.
    """
    kinds = {f.name: _kind(f) for f in _flag_fields()}
    values, unknown = {}, []
    for index, arg in enumerate(argv):
        if arg == "--":
            unknown.extend(argv[index:])
            break
        if arg in ("--help", "-help", "--helpfull"):
            return None
        name, has_value, value = arg[2:].partition("=") if arg.startswith("--") else ("", False, "")
        kind = kinds.get(name) or _NOT_IMPLEMENTED.get(name, (None,))[0]
        if kind is None or (kind != "bool" and not has_value):
            # TensorFlow's parser matches only --name=value for non-boolean
            # flags, so "--port 8500" leaves both words unmatched.
            unknown.append(arg)
            continue
        parsed = _parse_value(name, kind, value) if has_value else True
        if name in kinds:
            values[name] = parsed
        else:
            _check_not_implemented(name, parsed)
    options = ServerOptions(**values, unknown_arguments=tuple(unknown))
    if options.version:
        return options
    if not options.port and not options.grpc_socket_path:
        raise FlagError("At least one of server_options.grpc_port or server_options.grpc_socket_path "
                        "must be set.")
    if not options.model_base_path and not options.model_config_file:
        raise FlagError("Both server_options.model_base_path and server_options.model_config_file "
                        "are empty!")
    for name in ("file_system_poll_wait_seconds", "model_config_file_poll_wait_seconds",
                 "rest_api_timeout_in_ms", "rest_api_num_threads", "grpc_max_threads"):
        if getattr(options, name) < 0:
            raise FlagError(f"--{name} must be >= 0")
    if options.batching_parameters_file and not options.enable_batching:
        raise FlagError("--batching_parameters_file requires --enable_batching")
    return options


def parse_channel_arguments(text: str) -> list:
    """Parses ``--grpc_channel_arguments`` into gRPC server options.

    Values that parse as integers are passed as integers, others as strings,
    as ``tensorflow_model_server`` does.

    Raises:
        FlagError: an item is not ``key=value``.
    """
    result = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, has_value, value = item.partition("=")
        if not has_value or not key:
            raise FlagError(f"--grpc_channel_arguments item {item!r} is not key=value")
        try:
            result.append((key, int(value)))
        except ValueError:
            result.append((key, value))
    return result
