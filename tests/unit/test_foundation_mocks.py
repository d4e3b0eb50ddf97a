"""The foundation program's component shape under pulumi.runtime.set_mocks (no engine)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pulumi


class Mocks(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.created: list[tuple[str, str, dict]] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):  # type: ignore[override]
        self.created.append((args.typ, args.name, dict(args.inputs)))
        outputs = dict(args.inputs)
        if args.typ == "pulumi-python:dynamic:Resource":
            outputs["sha256"] = "0" * 64
        return [f"{args.name}-id", outputs]

    def call(self, args: pulumi.runtime.MockCallArgs):  # type: ignore[override]
        return {}


MOCKS = Mocks()
pulumi.runtime.set_mocks(MOCKS, project="mlinfra-foundation-check", stack="unit")
pulumi.runtime.set_all_config(
    {"mlinfra-foundation-check:directory": "/tmp/x", "mlinfra-foundation-check:content": "hello"}
)

_spec = importlib.util.spec_from_file_location(
    "foundation_program",
    Path(__file__).parents[1] / "integration" / "programs" / "foundation" / "__main__.py",
)
assert _spec and _spec.loader
program = importlib.util.module_from_spec(_spec)
sys.modules["foundation_program"] = program
_spec.loader.exec_module(program)


@pulumi.runtime.test
def test_bundle_parents_a_dynamic_file_named_after_it():
    def check(args):
        sha, path = args
        types = {(t, n) for t, n, _ in MOCKS.created}
        assert ("mlinfra:test:Bundle", "hello") in types, f"component missing: {types}"
        assert ("pulumi-python:dynamic:Resource", "hello-file") in types, f"child missing: {types}"
        assert sha == "0" * 64, f"hello-file sha256 output not wired: {sha}"
        assert path == "/tmp/x/hello.txt", f"hello-file path: {path}"

    return pulumi.Output.all(program.bundle.sha256, program.bundle.file.path).apply(check)
