"""``python -m streetlight.cli``: the ``streetlight`` command without the console script."""

import sys

from streetlight.cli import main

sys.exit(main())
