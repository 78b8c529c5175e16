"""``python -m serving``: the model server, with tensorflow_model_server's flags.

``main(argv)`` is also what ``koa serve`` calls.
"""

import importlib.metadata
import logging
import os
import sys

from components import features
from serving import flags
from serving.server import ModelServer, StartupError

_LOG = logging.getLogger("serving")


def _version_text() -> str:
    """What ``--version`` prints: this server's and TensorFlow's versions, in upstream's layout."""
    def installed(name):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "unknown"

    return (f"TensorFlow ModelServer: koa-serving {installed('koa-grading')} "
            f"(TensorFlow Serving API {installed('tensorflow-serving-api')})\n"
            f"TensorFlow Library: {installed('tensorflow')}")


def main(argv=None) -> int:
    """Parses flags, runs the server until SIGTERM/SIGINT, and returns an exit code.

    Arguments that match no flag are reported with the usage text and the
    server starts anyway, as ``tensorflow_model_server`` does.

    Args:
        argv: arguments without the program name; ``sys.argv[1:]`` by default.

    Returns:
        0 after a clean shutdown, ``--help`` or ``--version``; 1 on a bad flag
        value or a start-up failure.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        options = flags.parse_flags(argv)
    except flags.FlagError as e:
        print(f"{e}\n{flags.usage()}", file=sys.stderr)
        return 1
    if options is None:
        print(flags.usage())
        return 0
    if options.version:
        print(_version_text())
        return 0
    if options.unknown_arguments:
        print(f"unknown argument: {options.unknown_arguments[0]}\n{flags.usage()}")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=os.environ.get("KOA_SERVING_LOG_LEVEL", "INFO"),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    features.select_keras_2()  # before TensorFlow loads
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    try:
        server = ModelServer(options)
        server.install_signal_handlers()
        server.start()
    except StartupError as e:
        _LOG.error("%s", e)
        return 1
    server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
