"""`python -m alignlab` runs the command line."""

import sys

from alignlab.cli import main

sys.exit(main())
