"""`make demo`: `pulumi up` the quickstart on the real engine with local defaults and print its outputs."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from mlinfra.automation import local_stack  # noqa: E402


def main() -> int:
    stack = local_stack(HERE, "dev")
    print(f"pulumi up: {HERE.name} (stack dev)")
    result = stack.up(on_output=print)
    print("\nOutputs:")
    for key, out in sorted(result.outputs.items()):
        print(f"  {key:16s} {'[secret]' if out.secret else out.value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
