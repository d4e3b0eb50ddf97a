"""The edge agent's log lines are JSON made by an encoder: hostile text stays inside its field."""

from __future__ import annotations

import json
import logging

from mlinfra_edge.cli import JsonFormatter


def test_a_hostile_message_cannot_forge_fields() -> None:
    hostile = 'model m\n{"level":"CRITICAL","msg":"forged"}", "level": "ERROR'
    record = logging.LogRecord("mlinfra_edge", logging.INFO, __file__, 1, "swap %s", (hostile,), None)
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert (
        entry["level"] == "INFO" and entry["msg"] == f"swap {hostile}" and entry["logger"] == "mlinfra_edge"
    )
    try:
        raise ValueError('bad "thing"')
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    entry = json.loads(JsonFormatter().format(record))
    assert entry["level"] == "ERROR" and 'ValueError: bad "thing"' in entry["error"]
