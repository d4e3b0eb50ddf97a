"""The model repository: which models this server serves, loaded with ONNX Runtime, and swapped atomically.

A model that fails to load leaves what served before serving (the edge agent relies on it). With dynamic batching
on (max batch size > 1) each model gets its own :class:`~mlinfra_scoring.batching.Batcher`. Models run in a worker
pool (:meth:`ModelRepository.execute`), never on the event loop: health probes, metrics and the reading of other
requests go on while a big request computes (ONNX Runtime releases the GIL while it runs).
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlinfra_scoring.batching import Batcher
from mlinfra_scoring.models import LoadedModel, RequestError, load_onnx


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
        max_batch_size: int = 1,
        max_batch_delay_ms: float = 0.0,
        on_batch: Callable[[tuple[str, str], int], None] | None = None,
        workers: int | None = None,
    ):
        self.providers = providers
        self.threads = threads
        self.max_batch_size = max_batch_size
        self.max_batch_delay_ms = max_batch_delay_ms
        self.on_batch = on_batch
        self.models: dict[str, LoadedModel] = {}
        self.batchers: dict[str, Batcher] = {}
        self.workers = workers or max(2, min(8, os.cpu_count() or 2))
        self.pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="infer")

    async def execute(
        self, m: LoadedModel, feeds: dict[str, np.ndarray], output_names: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run model M in the worker pool; the event loop stays free meanwhile."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, m.run, feeds, output_names)

    def swap(self, name: str, version: str, path: str | Path) -> LoadedModel:
        """Load a model, then serve it under NAME in one step: requests keep going to the old model until the new
        one is loaded; a model that fails to load raises and leaves the old one serving."""
        m = load_onnx(name, version, Path(path), self.providers, self.threads)
        if self.max_batch_size > 1:
            self.batchers[name] = Batcher(
                functools.partial(self.execute, m),
                self.max_batch_size,
                self.max_batch_delay_ms / 1000.0,
                functools.partial(self.on_batch, (m.name, m.version)) if self.on_batch else None,
            )
        self.models[name] = m  # a single dict assignment: atomic for the event loop thread
        return m

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
