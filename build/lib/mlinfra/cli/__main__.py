"""`python -m mlinfra.cli` runs the `mlinfra` command."""

import sys

from mlinfra.cli import main

sys.exit(main())
