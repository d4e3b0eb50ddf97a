"""Start the real scoring server (a subprocess on a loopback port) for tests."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    log: Path

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        key: str | None = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> tuple[int, Any, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        h = dict(headers or {})
        if key:
            h["Authorization"] = f"Bearer {key}"
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if data is not None:
            h.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=data, headers=h)
        resp = conn.getresponse()
        payload = resp.read()
        conn.close()
        try:
            parsed = json.loads(payload)
        except ValueError:
            parsed = payload.decode(errors="replace")
        return resp.status, parsed, dict(resp.getheaders())

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def start_server(tmp: Path, *args: str, env: dict[str, str] | None = None, wait_ready: bool = True) -> Server:
    port = free_port()
    log = tmp / f"server-{port}.log"
    out = open(log, "wb")  # noqa: SIM115 - owned by the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlinfra_scoring", "--port", str(port), *args],
        stdout=out,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )
    server = Server(proc, port, log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()}")
        try:
            status, _, _ = server.request("GET", "/v2/health/ready" if wait_ready else "/v2/health/live")
            if status == 200:
                return server
        except OSError:
            pass
        time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"server not ready: {log.read_text()}")


def model_args(models: dict[str, Path], mlp_version: str | None = None) -> list[str]:
    """`mlinfra serve` arguments serving MODELS' "mlp" (at MLP_VERSION) and "types"."""
    version = ["--version", mlp_version] if mlp_version else []
    return [
        "--model",
        str(models["mlp"]),
        "--name",
        "mlp",
        *version,
        "--model",
        str(models["types"]),
        "--name",
        "types",
    ]


def reference(model: Path, rows: Any) -> Any:
    """What onnxruntime itself answers for ROWS (the MLP's "input", as FP32)."""
    import numpy as np
    import onnxruntime as ort

    return ort.InferenceSession(str(model)).run(None, {"input": np.asarray(rows, dtype=np.float32)})[0]


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of sample NAME with exactly LABELS in a /metrics exposition (parsed with prometheus-client, so label
    order and number formatting do not matter); None when there is none."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return None
