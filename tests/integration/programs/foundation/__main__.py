"""A component with a child Python dynamic resource that writes a file: the smallest real-engine round trip."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, Resource, ResourceProvider, UpdateResult


class FileProvider(ResourceProvider):
    def create(self, props: dict[str, Any]) -> CreateResult:
        path = Path(props["path"])
        path.write_text(props["content"])
        digest = hashlib.sha256(props["content"].encode()).hexdigest()
        return CreateResult(id_=str(path), outs={**props, "sha256": digest})

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [k for k in ("path", "content") if olds.get(k) != news.get(k)]
        return DiffResult(changes=bool(changed), replaces=["path"] if "path" in changed else [])

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        Path(news["path"]).write_text(news["content"])
        return UpdateResult(outs={**news, "sha256": hashlib.sha256(news["content"].encode()).hexdigest()})

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        Path(props["path"]).unlink(missing_ok=True)


class File(Resource):
    sha256: pulumi.Output[str]

    def __init__(self, name: str, path: str, content: str, opts: pulumi.ResourceOptions | None = None):
        super().__init__(FileProvider(), name, {"path": path, "content": content, "sha256": None}, opts)


class Bundle(pulumi.ComponentResource):
    def __init__(self, name: str, directory: str, content: str, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlinfra:test:Bundle", name, None, opts)
        self.file = File(
            f"{name}-file",
            os.path.join(directory, f"{name}.txt"),
            content,
            pulumi.ResourceOptions(parent=self),
        )
        self.sha256 = self.file.sha256
        self.register_outputs({"sha256": self.sha256})


config = pulumi.Config()
bundle = Bundle("hello", config.require("directory"), config.require("content"))
pulumi.export("sha256", bundle.sha256)
