"""What every benchmark here records next to its figures: when, on which machine, how many repetitions."""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime


def run_meta(reps: int) -> dict[str, object]:
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.node()} · {os.cpu_count()} cores · {platform.platform()}",
        "reps": reps,
    }
