"""The model repository: which models this server serves, loaded with ONNX Runtime, and swapped atomically.

A model that fails to load leaves what served before serving (the edge agent relies on it). Dynamic batching is on
by default for each model whose inputs and outputs all have a dynamic first (batch) axis, as Triton does for a model
whose config has a max batch size: up to AUTO_BATCH rows; a model with a fixed batch axis runs request by request. An
explicit max batch size applies to every model (1: off). A batched model gets its own
:class:`~mlinfra_scoring.batching.Batcher`. Models run in a worker
pool (:meth:`ModelRepository.execute`), off the event loop: health probes, metrics and the reading of other
requests go on while a big request computes (ONNX Runtime releases the GIL while it runs). Only runs this model's
measured cost predicts under 2 ms stay on the loop, where a thread hand-off would cost more than the run.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlinfra_scoring.batching import Batcher
from mlinfra_scoring.models import LoadedModel, RequestError, load_onnx

INLINE_S = 0.002  # runs predicted shorter than this stay on the event loop (a hand-off would cost more)
AUTO_BATCH = 64
"""Rows per merged batch when no max batch size is given and the model has a dynamic batch axis."""


@dataclass
class ModelSpec:
    path: str
    name: str
    version: str = "1"


class ModelRepository:
    def __init__(
        self,
        providers: list[str],
        threads: int,
        max_batch_size: int | None = None,
        max_batch_delay_ms: float = 0.0,
        on_batch: Callable[[tuple[str, str], int], None] | None = None,
        workers: int | None = None,
        in_progress: Callable[[], int] | None = None,
    ):
        self.providers = providers
        self.threads = threads
        self.max_batch_size = max_batch_size
        self.max_batch_delay_ms = max_batch_delay_ms
        self.on_batch = on_batch
        # Requests the server has received and not answered (each Batcher's lone-request path reads it).
        self.in_progress = in_progress
        self.models: dict[str, LoadedModel] = {}
        self.batchers: dict[str, Batcher] = {}
        self.workers = workers or max(2, min(8, os.cpu_count() or 2))
        self.pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="infer")
        self._cost: dict[int, float] = {}  # id(model) -> measured seconds per row

    async def execute(
        self, m: LoadedModel, feeds: dict[str, np.ndarray], output_names: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run model M: in the worker pool, so the event loop stays free while it computes — unless this model's
        measured cost says the run takes under INLINE_S, where a thread hand-off would cost more than the run itself
        (a 64x256x10 MLP runs in ~10 µs; a hand-off on a busy core costs ~100 µs). A model not yet measured, or a
        request with enough rows, always goes to the pool."""
        rows = _rows(feeds)
        if self._cheap(m, rows):
            return self._timed(m, feeds, output_names, rows)
        return await asyncio.get_running_loop().run_in_executor(
            self.pool, self._timed, m, feeds, output_names, rows
        )

    def _cheap(self, m: LoadedModel, rows: int) -> bool:
        """Whether running M on ROWS rows is predicted to take under INLINE_S (measured; unknown: no)."""
        per_row = self._cost.get(id(m))
        return per_row is not None and per_row * rows < INLINE_S

    def _timed(
        self, m: LoadedModel, feeds: dict[str, np.ndarray], output_names: list[str] | None, rows: int
    ) -> dict[str, np.ndarray]:
        t = time.perf_counter()
        out = m.run(feeds, output_names)
        per_row = (time.perf_counter() - t) / rows
        old = self._cost.get(id(m))
        self._cost[id(m)] = per_row if old is None else 0.8 * old + 0.2 * per_row  # seconds per row, smoothed
        return out

    def swap(self, name: str, version: str, path: str | Path) -> LoadedModel:
        """Load a model, then serve it under NAME in one step: requests keep going to the old model until the new
        one is loaded; a model that fails to load raises and leaves the old one serving."""
        m = load_onnx(name, version, Path(path), self.providers, self.threads)
        m.max_batch_size = self.batch_size_for(m)
        self.batchers.pop(name, None)
        if m.max_batch_size > 1:
            self.batchers[name] = Batcher(
                functools.partial(self.execute, m),
                m.max_batch_size,
                self.max_batch_delay_ms / 1000.0,
                functools.partial(self.on_batch, (m.name, m.version)) if self.on_batch else None,
                self.in_progress,
            )
        self.models[name] = m  # a single dict assignment: atomic for the event loop thread
        return m

    def batch_size_for(self, m: LoadedModel) -> int:
        """The max batch size M is served with: the configured one, else AUTO_BATCH when every input and output of M
        has a dynamic first axis (requests can be stacked along it and results split back), else 1 (off)."""
        if self.max_batch_size is not None:
            return self.max_batch_size
        tensors = [*m.inputs, *m.outputs]
        return AUTO_BATCH if tensors and all(t.shape and t.shape[0] == -1 for t in tensors) else 1

    def load(self, spec: ModelSpec) -> LoadedModel:
        return self.swap(spec.name, spec.version, spec.path)

    def remove(self, name: str) -> None:
        self.models.pop(name, None)
        self.batchers.pop(name, None)

    def get(self, name: str, version: str | None = None) -> LoadedModel:
        """The served model NAME (at VERSION when given), else a 404 naming what is served."""
        m = self.models.get(name)
        if m is None:
            known = ", ".join(sorted(self.models)) or "none loaded"
            raise RequestError(f"model {name!r} is not served here (models: {known})", 404)
        if version is not None and version != m.version:
            raise RequestError(f"model {name!r} has no version {version!r} here (serving {m.version})", 404)
        return m

    def first(self) -> LoadedModel:
        """The model `/score` uses (the first one given)."""
        return next(iter(self.models.values()))

    def batcher(self, name: str) -> Batcher | None:
        return self.batchers.get(name)

    def __iter__(self) -> Iterator[LoadedModel]:
        return iter(list(self.models.values()))

    def __len__(self) -> int:
        return len(self.models)


def _rows(feeds: dict[str, np.ndarray]) -> int:
    first = next(iter(feeds.values()), None)
    return max(int(first.shape[0]) if first is not None and first.ndim else 1, 1)
