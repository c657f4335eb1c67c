"""``python -m lmx.server MODEL [options]``: the same as ``lmx serve MODEL [options]``."""

import sys

from lmx.server.cli import main

if __name__ == "__main__":
    sys.exit(main())
