"""``python -m cxlib.training``: the command line of :mod:`cxlib.training.cli`."""

import sys

from .cli import main

sys.exit(main())
