"""Waiting for something the tests cannot be told about (a pod, a router, a file in a sink)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def until(what: str, ok: Callable[[], T | None], timeout_s: float = 60, every_s: float = 0.5) -> T:
    """OK()'s first truthy answer, asked every EVERY_S; AssertionError naming WHAT after TIMEOUT_S."""
    deadline = time.monotonic() + timeout_s
    while not (got := ok()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        time.sleep(every_s)
    return got
