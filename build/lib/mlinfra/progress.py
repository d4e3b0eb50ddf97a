"""Progress lines for long operations on the CLI (stderr): a redrawn bar on a terminal, a line per 10 % in logs."""

from __future__ import annotations

import sys
import time
from typing import Any


class Progress:
    def __init__(self, label: str, min_bytes: int = 8 << 20, stream: Any = None):
        self.label = label
        self.min_bytes = min_bytes
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.t0 = time.monotonic()
        self.last_step = -1
        self.phase = ""

    def __call__(self, phase: str, done: int, total: int) -> None:
        if total < self.min_bytes:
            return
        if phase != self.phase:
            self.phase, self.last_step, self.t0 = phase, -1, time.monotonic()
        pct = 100 * done // max(total, 1)
        step = pct if self.tty else pct // 10
        if step == self.last_step:
            return
        self.last_step = step
        rate = done / max(time.monotonic() - self.t0, 1e-6) / (1 << 20)
        line = f"{phase} {self.label}: {pct:3d}% {done >> 20}/{total >> 20} MiB {rate:.0f} MiB/s"
        if self.tty:
            bar = "#" * (pct // 4)
            self.stream.write(f"\r{line} [{bar:25s}]" + ("\n" if done >= total else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
