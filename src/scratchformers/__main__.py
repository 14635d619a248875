"""``python -m scratchformers ...``: the same as the ``scratchformers`` command."""

import sys

from scratchformers.cli import main

sys.exit(main())
