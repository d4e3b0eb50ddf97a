import sys

from components.edge.cli import main

sys.exit(main(prog="python -m components.edge"))
