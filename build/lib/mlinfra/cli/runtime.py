"""`mlinfra serve` and `mlinfra edge-agent`: the runtime's own commands (the scoring server and the edge agent),
listed here like every other command and run by their own parsers, since the runtime never imports mlinfra."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def _serve(argv: list[str]) -> int:
    from mlinfra_scoring.cli import main

    return main(argv, prog="mlinfra serve")


def _edge_agent(argv: list[str]) -> int:
    from mlinfra_edge.cli import main

    return main(argv, prog="mlinfra edge-agent")


DELEGATED: dict[str, Callable[[list[str]], int]] = {"serve": _serve, "edge-agent": _edge_agent}


def register(sub: argparse._SubParsersAction) -> None:
    sub.add_parser(
        "serve",
        help="serve ONNX models over the Open Inference Protocol (mlinfra serve --help)",
        add_help=False,
    )
    sub.add_parser(
        "edge-agent",
        help="the agent on an edge device: deployments over MQTT, models served locally (mlinfra edge-agent --help)",
        add_help=False,
    )
