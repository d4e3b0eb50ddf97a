"""`mlinfra edge-agent --device-id ID --broker URL --tags k=v,...` (also `python -m mlinfra_edge`).

The password comes from $MLINFRA_EDGE_PASSWORD or --password-file (never the command line, where `ps` shows it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from mlinfra_edge.agent import AgentConfig, EdgeAgent


class JsonFormatter(logging.Formatter):
    """One JSON object per line, made by a JSON encoder: a message holding quotes, newlines or a forged
    `","level":"...` stays inside its own "msg" string."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def main(argv: list[str] | None = None, prog: str = "mlinfra edge-agent") -> int:
    p = argparse.ArgumentParser(prog=prog, description="Run the mlinfra edge agent for one device.")
    p.add_argument("--device-id", required=True)
    p.add_argument("--broker", required=True, help="mqtt://HOST:PORT or mqtts://HOST:PORT")
    p.add_argument("--tags", default="", help="k=v,k=v")
    p.add_argument(
        "--password-file", help="file holding the device's MQTT password (default: $MLINFRA_EDGE_PASSWORD)"
    )
    p.add_argument("--ca-file", help="CA bundle for mqtts://")
    p.add_argument(
        "--state-dir", default=None, help="models and last-good state (default ./edge-state/<device-id>)"
    )
    p.add_argument(
        "--serve-port", type=int, default=8080, help="local scoring server port (0: any free port)"
    )
    p.add_argument(
        "--trust",
        metavar="DIR",
        default=os.environ.get("MLINFRA_EDGE_TRUST") or None,
        help="swap in only models signed by a key in DIR/keys/*.pem (default: $MLINFRA_EDGE_TRUST; unset: no check)",
    )
    args = p.parse_args(argv)
    if args.trust and not (Path(args.trust) / "keys").is_dir():
        print(f"error: --trust {args.trust}: no keys/ folder of trusted PEM keys there", file=sys.stderr)
        return 2
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    password = os.environ.get("MLINFRA_EDGE_PASSWORD", "")
    if args.password_file:
        try:
            password = Path(args.password_file).read_text().strip()
        except OSError as e:
            print(f"error: cannot read --password-file {args.password_file}: {e.strerror}", file=sys.stderr)
            return 2
    if not password:
        print("error: no password: set MLINFRA_EDGE_PASSWORD or pass --password-file", file=sys.stderr)
        return 2
    tags: dict[str, str] = {}
    for item in filter(None, args.tags.split(",")):
        if "=" not in item:
            print(f"error: --tags entry {item!r} must look like key=value", file=sys.stderr)
            return 2
        k, v = item.split("=", 1)
        tags[k.strip()] = v.strip()
    try:
        agent = EdgeAgent(
            AgentConfig(
                device_id=args.device_id,
                broker=args.broker,
                password=password,
                tags=tags,
                ca_file=args.ca_file,
                state_dir=Path(args.state_dir or Path("edge-state") / args.device_id),
                serve_port=args.serve_port,
                trust=Path(args.trust) if args.trust else None,
            )
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    agent.start()
    print(
        f'{{"event":"agent_started","device_id":"{args.device_id}","serve_port":{agent.serve_port or "null"}}}',
        flush=True,
    )
    stop.wait()
    agent.stop()
    return 0
