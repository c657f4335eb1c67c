"""``python -m lmx`` is the ``lmx`` command."""

import sys

from lmx.cli import main

sys.exit(main())
