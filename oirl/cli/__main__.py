"""``python -m oirl.cli``."""

import sys

from oirl.cli.main import main

sys.exit(main())
