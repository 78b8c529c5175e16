"""``python -m serving``: the model server, with tensorflow_model_server's flags.

``main(argv)`` is also what ``koa serve`` calls.
"""

import logging
import os
import sys

from components import features
from serving import flags
from serving.server import ModelServer, StartupError

_LOG = logging.getLogger("serving")


def main(argv=None) -> int:
    """Parses flags, runs the server until SIGTERM/SIGINT, and returns an exit code.

    Args:
        argv: arguments without the program name; ``sys.argv[1:]`` by default.

    Returns:
        0 after a clean shutdown (or ``--help``), 1 on bad flags or start-up failure.
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
