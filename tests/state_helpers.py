"""Where a secret shows in plain text in a file-backend Pulumi state directory (checkpoints, history, backups)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _walk(value: Any, path: str, needles: tuple[str, ...], found: list[str], where: str) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _walk(v, f"{path}.{k}", needles, found, where)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            label = v.get("urn") if isinstance(v, dict) and "urn" in v else str(i)
            _walk(v, f"{path}[{label}]", needles, found, where)
    elif isinstance(value, str):
        found.extend(f"{where}: {path} holds {n[:6]}…" for n in needles if n in value)


def plaintext_secrets(backend: Path, *needles: str) -> list[str]:
    """Each place (file and JSON path) under ``backend`` where one of ``needles`` appears in plain text; [] if none.
    Names the resource and property, so a leak found by CI says where it came from."""
    found: list[str] = []
    for p in sorted(backend.rglob("*.json")):
        text = p.read_text()
        if not any(n in text for n in needles):
            continue
        try:
            _walk(json.loads(text), "$", needles, found, str(p.relative_to(backend)))
        except ValueError:
            found.append(f"{p.relative_to(backend)}: (not JSON) holds a secret")
    return found
