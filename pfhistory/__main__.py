"""`python -m pfhistory` runs the command line."""

import sys

from pfhistory.cli import main

sys.exit(main())
