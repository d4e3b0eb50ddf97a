"""`python -m mlinfra.images --wheelhouse` (run by `make setup`): download the scoring server's wheels for the
image platform once, so image builds need no package index."""

import sys

from mlinfra.images.builder import fill_wheelhouse, wheelhouse

if sys.argv[1:] == ["--wheelhouse"]:
    fill_wheelhouse()
    print(f"wheelhouse: {wheelhouse()} ({len(list(wheelhouse().glob('*.whl')))} wheels)")
else:
    print("usage: python -m mlinfra.images --wheelhouse", file=sys.stderr)
    sys.exit(2)
