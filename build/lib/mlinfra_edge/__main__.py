import sys

from mlinfra_edge.cli import main

sys.exit(main(prog="python -m mlinfra_edge"))
