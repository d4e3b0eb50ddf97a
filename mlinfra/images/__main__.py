"""Run by `make setup`: `python -m mlinfra.images --wheelhouse` downloads the scoring server's wheels for the image
platform once, so image builds need no package index; `--grpcfront` builds the native gRPC front end (Go)."""

import sys

from mlinfra.images.builder import fill_wheelhouse, wheelhouse
from mlinfra.images.grpcfront import binary

if sys.argv[1:] == ["--wheelhouse"]:
    fill_wheelhouse()
    print(f"wheelhouse: {wheelhouse()} ({len(list(wheelhouse().glob('*.whl')))} wheels)")
elif sys.argv[1:] == ["--grpcfront"]:
    built = binary(print)
    if built is None:
        print("mlinfra-grpcfront: no Go or no components/grpcfront here", file=sys.stderr)
        sys.exit(1)
    print(f"mlinfra-grpcfront: {built}")
else:
    print("usage: python -m mlinfra.images --wheelhouse | --grpcfront", file=sys.stderr)
    sys.exit(2)
