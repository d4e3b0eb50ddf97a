"""Drift, shared by every provider: what `read` (`pulumi refresh`) found against what is declared.

Each provider's ``check`` puts the declared state into ``observed`` (what `up` brings the world to) and its ``read``
records what really exists there. A refresh that found something else leaves ``olds.observed != news.observed``, so
``diff`` reports a change and ``update`` repairs it. See docs/drift.md.
"""

from __future__ import annotations

import sys
from typing import Any


def observed_drift(olds: dict[str, Any], news: dict[str, Any]) -> bool:
    """A refresh recorded something other than what is declared (``observed`` absent in older state: no drift)."""
    return bool(olds.get("observed")) and bool(news.get("observed")) and olds["observed"] != news["observed"]


def say_drift(what: str, found: str, repair: str) -> None:
    """One stderr line per drifted resource (shown in `pulumi refresh`'s diagnostics): what, what was found, how
    `pulumi up` repairs it."""
    print(f"{what}: drift: {found} ({repair})", file=sys.stderr, flush=True)


def drift_phrases(observed: dict[str, Any], declared: dict[str, Any]) -> list[str]:
    """What differs between an observation and the declared state, one phrase each: ``deployments.blue: 1 of 2
    replicas running``, ``router: missing``."""
    out = []
    for k in sorted(set(observed) | set(declared)):
        o, d = observed.get(k), declared.get(k)
        if isinstance(o, dict) and isinstance(d, dict):
            out += [f"{k}.{p}" for p in drift_phrases(o, d)]
        elif o != d:
            out.append(f"{k}: {o}")
    return out
