"""Command-line flags, parsed the way ``tensorflow_model_server`` parses them.

Like TensorFlow's flag parser, values are given as ``--name=value``; a boolean
may also be given as a bare ``--name``. Anything else (an unknown flag, a flag
without ``=value``, a stray positional argument) is an error. Defaults are the
ones ``tensorflow_model_server`` uses, so ``--rest_api_port`` defaults to 0
(REST disabled); the ``tensorflow/serving`` Docker image passes 8501.
"""

import os
from dataclasses import dataclass, fields
from typing import Optional


class FlagError(ValueError):
    """The command line is invalid; the message names the offending argument."""


def _default_threads() -> int:
    return 4 * (os.cpu_count() or 1)


@dataclass
class ServerOptions:
    """Server settings, one attribute per supported flag."""

    port: int = 8500
    rest_api_port: int = 0
    model_name: str = "default"
    model_base_path: str = ""
    model_config_file: str = ""
    file_system_poll_wait_seconds: int = 1
    enable_batching: bool = False
    batching_parameters_file: str = ""
    monitoring_config_file: str = ""
    grpc_max_threads: int = 0  # 0 -> 4 * CPUs, as tensorflow_model_server
    grpc_channel_arguments: str = ""
    max_num_load_retries: int = 5
    load_retry_interval_micros: int = 60 * 1000 * 1000
    allow_version_labels_for_unavailable_models: bool = False

    def __post_init__(self):
        if not self.grpc_max_threads:
            self.grpc_max_threads = _default_threads()


_HELP = {
    "port": "TCP port to listen on for gRPC API.",
    "rest_api_port": "Port to listen on for HTTP/REST API. If set to zero HTTP/REST API "
                     "will not be exported. This port must be different than the one "
                     "specified in --port.",
    "model_name": "name of model (ignored if --model_config_file flag is set)",
    "model_base_path": "path to export (ignored if --model_config_file flag is set, "
                       "otherwise required)",
    "model_config_file": "If non-empty, read an ascii ModelServerConfig protobuf from the "
                         "supplied file name, and serve the models in that file.",
    "file_system_poll_wait_seconds": "Interval in seconds between each poll of the "
                                     "filesystem for new model version.",
    "enable_batching": "enable batching",
    "batching_parameters_file": "If non-empty, read an ascii BatchingParameters protobuf "
                                "from the supplied file name and use the contained values "
                                "instead of the defaults.",
    "monitoring_config_file": "If non-empty, read an ascii MonitoringConfig protobuf from "
                              "the supplied file name",
    "grpc_max_threads": "Max grpc server threads to handle grpc messages.",
    "grpc_channel_arguments": "A comma separated list of arguments to be passed to the grpc "
                              "server. (e.g. grpc.max_connection_age_ms=2000)",
    "max_num_load_retries": "maximum number of times it retries loading a model after the "
                            "first failure, before giving up.",
    "load_retry_interval_micros": "The interval, in microseconds, between each servable load "
                                  "retry.",
    "allow_version_labels_for_unavailable_models": "If true, allows assigning unused version "
                                                   "labels to models that are not available yet.",
}


def usage() -> str:
    """Returns the usage text listing every supported flag and its default."""
    defaults = ServerOptions()
    lines = ["usage: python -m serving [--flag=value ...]", "Flags:"]
    for f in fields(ServerOptions):
        kind = {bool: "bool", int: "int32", str: "string"}[f.type]
        value = getattr(defaults, f.name)
        shown = f'"{value}"' if kind == "string" else str(value).lower()
        lines.append(f"\t--{f.name}={shown}\t{kind}\t{_HELP[f.name]}")
    return "\n".join(lines)


def _parse_bool(name: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise FlagError(f"Couldn't interpret value {value} for flag {name}.")


def parse_flags(argv) -> Optional[ServerOptions]:
    """Parses command-line arguments (without the program name).

    Args:
        argv: the arguments, e.g. ``["--port=8500", "--model_name=koa"]``.

    Returns:
        The options, or None when ``--help`` was given.

    Raises:
        FlagError: unknown argument, malformed value, or neither
            ``--model_base_path`` nor ``--model_config_file`` given.
    """
    types = {f.name: f.type for f in fields(ServerOptions)}
    values = {}
    for arg in argv:
        if arg in ("--help", "-help", "--helpfull"):
            return None
        if not arg.startswith("--"):
            raise FlagError(f"unknown argument: {arg}")
        name, has_value, value = arg[2:].partition("=")
        kind = types.get(name)
        if kind is None:
            raise FlagError(f"unknown argument: {arg}")
        if kind is bool:
            values[name] = _parse_bool(name, value) if has_value else True
        elif not has_value:
            # TensorFlow's parser only matches --name=value for non-boolean
            # flags, so "--port 8500" leaves both words unparsed.
            raise FlagError(f"unknown argument: {arg}")
        elif kind is int:
            try:
                values[name] = int(value)
            except ValueError:
                raise FlagError(f"Couldn't interpret value {value} for flag {name}.") from None
        else:
            values[name] = value
    options = ServerOptions(**values)
    if not options.model_base_path and not options.model_config_file:
        raise FlagError("one of --model_base_path or --model_config_file is required")
    if options.rest_api_port and options.rest_api_port == options.port:
        raise FlagError("--rest_api_port cannot be same as --port")
    if options.file_system_poll_wait_seconds < 0:
        raise FlagError("--file_system_poll_wait_seconds must be >= 0")
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
