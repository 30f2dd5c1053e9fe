"""``python -m riskmask``."""

import sys

from riskmask.cli import main

sys.exit(main())
