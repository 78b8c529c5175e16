"""``python -m webapp``: see :mod:`webapp.cli`."""

import sys

from webapp.cli import main

if __name__ == "__main__":
    sys.exit(main())
