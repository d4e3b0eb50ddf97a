"""The `mlinfra` command line: one module per command group (system, models, images, endpoints, edge, monitor,
gitops, runtime).

Errors a user can act on (:class:`mlinfra.errors.UserError`, and the runtime's condition and manifest errors) are
printed as one `error:` line naming the value and the fix, with exit code 2 — never a bare traceback (set
MLINFRA_DEBUG=1 to see one).
"""

from __future__ import annotations

import argparse
import os
import sys

from mlinfra.errors import UserError

GROUPS = ("system", "models", "images", "endpoints", "edge", "monitor", "gitops", "runtime")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="mlinfra",
        description="Declarative ML model lifecycle on Pulumi: register, package, deploy, monitor, update.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in GROUPS:
        importlib.import_module(f"mlinfra.cli.{group}").register(sub)
    return parser


def _user_errors() -> tuple[type[Exception], ...]:
    from mlinfra_edge.condition import ConditionError
    from mlinfra_edge.manifest import ManifestError

    return (UserError, ConditionError, ManifestError)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from mlinfra.cli import runtime

    if argv[:1] and argv[0] in runtime.DELEGATED:  # the runtime's own parsers (it never imports mlinfra)
        return runtime.DELEGATED[argv[0]](argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except _user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if os.environ.get("MLINFRA_DEBUG"):
            raise
        print(f"error: {type(e).__name__}: {e} (set MLINFRA_DEBUG=1 for a traceback)", file=sys.stderr)
        return 1


__all__ = ["build_parser", "main"]
