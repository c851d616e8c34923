"""``python -m familiar``."""

import sys

from familiar.cli.main import main

sys.exit(main())
