"""`python -m prefetchd.cli`: the full command line (no socket shortcut)."""

import sys

from .commands import main

sys.exit(main())
