"""Run COUNT lightweight edge agents (no local scoring server: they verify and record models) in one process."""

import json
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mlinfra_edge.agent import AgentConfig, EdgeAgent


def main() -> None:
    creds_file, broker, state, first, count = sys.argv[1:6]
    creds = json.loads(Path(creds_file).read_text())
    ids = sorted(creds)[int(first) : int(first) + int(count)]
    agents = []
    for i, device in enumerate(ids):
        ring = "canary" if i % 10 == 0 else "ga"
        a = EdgeAgent(
            AgentConfig(
                device_id=device,
                broker=broker,
                password=creds[device],
                tags={"site": "bench", "ring": ring},
                state_dir=Path(state) / device,
                serve_port=None,
            )
        )
        a.start()
        agents.append(a)
    print("started", len(agents), flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    for a in agents:
        a.client.disconnect()
        a.client.loop_stop()


if __name__ == "__main__":
    main()
