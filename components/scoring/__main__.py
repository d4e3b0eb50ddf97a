import sys

from components.scoring.cli import main

sys.exit(main(prog="python -m components.scoring"))
