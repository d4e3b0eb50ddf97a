"""Dynamic batching: concurrent requests for one model are merged along the first axis, run once, split back.

Requests are grouped by (output names, non-batch shape and dtype of every input) so only compatible tensors are
concatenated. A group is flushed when it holds `max_batch_size` rows, or when the window closes: `max_delay_s`
after the first request arrived (0 = at the end of the current event-loop iteration, which merges whatever arrived
together without adding latency). Results equal unbatched ones row for row. The run itself is awaited (the
repository runs it in its worker pool), so requests go on arriving and grouping while a batch computes. A merged
batch that fails is run again request by request: a bad request fails alone, never its batch mates.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

# Rows of the model execution the current request's input joined (its own rows when it ran alone): request traces
# carry it as mlinfra.batch_size. Set in the request's own task, so its middleware reads it after the handler.
EXECUTION_ROWS: contextvars.ContextVar[int] = contextvars.ContextVar("mlinfra_execution_rows", default=0)

Item = tuple[dict[str, np.ndarray], list[str] | None, asyncio.Future, int]


class Batcher:
    def __init__(
        self,
        run: Callable[[dict[str, np.ndarray], list[str] | None], Awaitable[dict[str, np.ndarray]]],
        max_batch_size: int,
        max_delay_s: float,
        on_batch: Callable[[int], None] | None = None,
    ):
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self._on_batch = on_batch
        self._groups: dict[Any, list[Item]] = {}
        self._rows: dict[Any, int] = {}
        self._timers: dict[Any, asyncio.Handle] = {}
        self._running: set[asyncio.Task] = set()  # batches in flight (kept referenced until done)

    @staticmethod
    def _key(feeds: dict[str, np.ndarray], outputs: list[str] | None) -> Any:
        return (
            tuple(outputs) if outputs else None,
            tuple((k, v.shape[1:], v.dtype.str) for k, v in sorted(feeds.items())),
        )

    async def submit(self, feeds: dict[str, np.ndarray], outputs: list[str] | None) -> dict[str, np.ndarray]:
        rows = next(iter(feeds.values())).shape[0] if feeds and next(iter(feeds.values())).ndim else 1
        if rows >= self.max_batch_size or any(v.ndim == 0 for v in feeds.values()):
            if self._on_batch:
                self._on_batch(rows)
            EXECUTION_ROWS.set(rows)
            return await self._run(feeds, outputs)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        key = self._key(feeds, outputs)
        group = self._groups.setdefault(key, [])
        if self._rows.get(key, 0) + rows > self.max_batch_size:
            self._flush(key)
            group = self._groups.setdefault(key, [])
        group.append((feeds, outputs, fut, rows))
        self._rows[key] = self._rows.get(key, 0) + rows
        if self._rows[key] >= self.max_batch_size:
            self._flush(key)
        elif key not in self._timers:
            self._timers[key] = (
                loop.call_later(self.max_delay_s, self._flush, key)
                if self.max_delay_s > 0
                else loop.call_soon(self._flush, key)
            )
        result, executed = await fut
        EXECUTION_ROWS.set(executed)
        return result

    def _flush(self, key: Any) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        items = self._groups.pop(key, [])
        self._rows.pop(key, None)
        items = [it for it in items if not it[2].done()]  # drop requests whose client went away
        if not items:
            return
        task = asyncio.get_running_loop().create_task(self._execute(items))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _execute(self, items: list[Item]) -> None:
        outputs = items[0][1]
        total = sum(it[3] for it in items)
        if self._on_batch:
            self._on_batch(total)
        try:
            if len(items) == 1:
                feeds = items[0][0]
            else:
                feeds = {name: np.concatenate([it[0][name] for it in items], axis=0) for name in items[0][0]}
            results = await self._run(feeds, outputs)
            splittable = all(v.ndim > 0 and v.shape[0] == total for v in results.values())
        except Exception as e:
            if len(items) == 1:
                _settle(items[0][2], error=e)
                return
            splittable = False  # one bad request must not fail its batch mates: run each on its own
        if len(items) > 1 and not splittable:
            # Outputs without a batch axis cannot be split, and a failed batch is retried request by request.
            await asyncio.gather(*(self._alone(it) for it in items))
            return
        start = 0
        for _f, _o, fut, rows in items:
            _settle(fut, result=({k: v[start : start + rows] for k, v in results.items()}, total))
            start += rows

    async def _alone(self, item: Item) -> None:
        feeds, outputs, fut, rows = item
        if fut.done():
            return
        try:
            _settle(fut, result=(await self._run(feeds, outputs), rows))
        except Exception as e:
            _settle(fut, error=e)


def _settle(fut: asyncio.Future, result: Any = None, error: BaseException | None = None) -> None:
    if fut.done():  # the client went away
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)
