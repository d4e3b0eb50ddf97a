"""A continuous load generator for endpoint tests: worker threads with keep-alive connections send /score requests
and count every outcome (status codes, connection errors, which deployment answered)."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from typing import Any

ROW = [0.1] * 64


def score(
    uri: str, key: str | None, rows: list[list[float]] | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Any, dict[str, str]]:
    host_port = uri.split("//", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    h = {"Content-Type": "application/json", **(headers or {})}
    if key:
        h["Authorization"] = f"Bearer {key}"
    try:
        conn.request("POST", "/score", body=json.dumps({"data": rows or [ROW]}), headers=h)
        r = conn.getresponse()
        body = r.read()
        try:
            parsed: Any = json.loads(body)
        except ValueError:
            parsed = body
        return r.status, parsed, {k.lower(): v for k, v in r.getheaders()}
    finally:
        conn.close()


class Load:
    """Send /score requests from THREADS workers until stop(); `key` may be changed while running."""

    def __init__(self, uri: str, key: str | None, threads: int = 3, pause_s: float = 0.0):
        host_port = uri.split("//", 1)[1].split("/", 1)[0]
        self.host, port = host_port.rsplit(":", 1)
        self.port = int(port)
        self.key = key
        self.pause_s = pause_s
        self.statuses: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.deployments: Counter[str] = Counter()
        self.outputs: list[Any] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)

    @property
    def total(self) -> int:
        return sum(self.statuses.values()) + sum(self.errors.values())

    @property
    def failed(self) -> int:
        return sum(n for s, n in self.statuses.items() if s != 200) + sum(self.errors.values())

    def _run(self) -> None:
        body = json.dumps({"data": [ROW]})
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=15)
            h = {"Content-Type": "application/json"}
            if self.key:
                h["Authorization"] = f"Bearer {self.key}"
            try:
                conn.request("POST", "/score", body=body, headers=h)
                r = conn.getresponse()
                data = r.read()
                with self._lock:
                    self.statuses[r.status] += 1
                    self.deployments[r.getheader("x-mlinfra-deployment") or "?"] += 1
                    if r.status == 200 and len(self.outputs) < 100000:
                        self.outputs.append(data)
                if r.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                with self._lock:
                    self.errors[type(e).__name__] += 1
                conn.close()
                conn = None
            if self.pause_s:
                time.sleep(self.pause_s)
        if conn is not None:
            conn.close()
