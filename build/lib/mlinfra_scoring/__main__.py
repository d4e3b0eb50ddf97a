import sys

from mlinfra_scoring.cli import main

sys.exit(main(prog="python -m mlinfra_scoring"))
