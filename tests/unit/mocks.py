"""Fast shape checks of mlinfra's components under pulumi.runtime.set_mocks (no engine, no services): what each
component registers, with which inputs, and what it outputs. Every component also has real-engine tests in
tests/integration/."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pulumi


class Mocks(pulumi.runtime.Mocks):
    """Records every registration. COMPUTED: {child-name suffix: outputs a provider would compute}, merged into
    the inputs the mock echoes back (a dynamic provider's create fills e.g. `version`)."""

    def __init__(self, computed: dict[str, dict[str, Any]] | None = None) -> None:
        self.created: list[tuple[str, str, dict[str, Any]]] = []
        self.computed = computed or {}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):  # type: ignore[override]
        self.created.append((args.typ, args.name, dict(args.inputs)))
        outs = dict(args.inputs)
        for suffix, extra in self.computed.items():
            if args.name.endswith(suffix):
                outs.update(extra)
        return [f"{args.name}-id", outs]

    def call(self, args: pulumi.runtime.MockCallArgs):  # type: ignore[override]
        return {}

    def inputs(self, name: str) -> dict[str, Any]:
        """The inputs resource NAME was registered with (fails naming what was registered)."""
        for _t, n, i in self.created:
            if n == name:
                return i
        raise AssertionError(f"no resource {name!r} registered; got {[n for _t, n, _i in self.created]}")

    def types(self) -> list[str]:
        return [t for t, _n, _i in self.created]


def install(computed: dict[str, dict[str, Any]] | None = None, stack: str = "unit") -> Mocks:
    # A fresh event loop: a test run earlier in this process (asyncio.run, an integration test's engine) may have
    # left none, and the mocks register resources on the current one.
    asyncio.set_event_loop(asyncio.new_event_loop())
    m = Mocks(computed)
    pulumi.runtime.set_mocks(m, project="mlinfra-unit", stack=stack)
    return m


def registered_model(tmp_path: Path, name: str) -> Any:
    """A RegisteredModel NAME of a small MLP in a folder registry under TMP_PATH (for components that take one)."""
    import mlinfra
    from mlinfra.lab.samples import write_mlp

    return mlinfra.RegisteredModel(
        name,
        mlinfra.RegisteredModelArgs(
            path=str(write_mlp(tmp_path / "m.onnx")), registry=f"file://{tmp_path}/r"
        ),
    )


def resolve(build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run BUILD (which creates components and returns {key: Output or value}) under the mocks; returns the values
    once every registration has settled."""
    got: dict[str, Any] = {}

    @pulumi.runtime.test
    def program():
        outs = build()
        return pulumi.Output.all(**{k: pulumi.Output.from_input(v) for k, v in outs.items()}).apply(
            got.update
        )

    program()
    return got
