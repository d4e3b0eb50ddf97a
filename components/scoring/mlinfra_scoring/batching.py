"""Dynamic batching: concurrent requests for one model are merged along the first axis, run once, split back.

Requests are grouped by (output names, non-batch shape and dtype of every input) so only compatible tensors are
concatenated. The first request of a group leads it: it runs the group when it holds `max_batch_size` rows, or
when the window closes: `max_delay_s` after it arrived (0 = one turn of the event loop, which merges whatever arrived
together without adding latency). With a one-turn window, a request that is the server's only one in progress runs
at once (nothing could join it: one connection pays nothing), and a leader left alone after its turn runs in its own
task. Results equal unbatched ones row for row. The run itself is awaited (the
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


class _Group:
    """Requests waiting to run together; the first one to arrive (the leader) runs the group when its window
    closes, or as soon as it is full."""

    __slots__ = ("items", "rows", "wake")

    def __init__(self) -> None:
        self.items: list[Item] = []
        self.rows = 0
        # A window longer than one turn: set when full or past the delay.
        self.wake: asyncio.Future | None = None


class Batcher:
    def __init__(
        self,
        run: Callable[[dict[str, np.ndarray], list[str] | None], Awaitable[dict[str, np.ndarray]]],
        max_batch_size: int,
        max_delay_s: float,
        on_batch: Callable[[int], None] | None = None,
        in_progress: Callable[[], int] | None = None,
    ):
        """IN_PROGRESS: how many requests the server has received and not answered, this one included (handled or
        still queued behind it). With a one-turn window and no other, nothing could join: the request runs at once,
        as unbatched."""
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self._on_batch = on_batch
        self._in_progress = in_progress
        self._open: dict[Any, _Group] = {}  # groups still taking requests, by key
        self._running: set[asyncio.Task] = set()  # batches in flight (kept referenced until done)

    @staticmethod
    def _key(feeds: dict[str, np.ndarray], outputs: list[str] | None) -> Any:
        return (
            tuple(outputs) if outputs else None,
            tuple((k, v.shape[1:], v.dtype.str) for k, v in sorted(feeds.items())),
        )

    async def submit(self, feeds: dict[str, np.ndarray], outputs: list[str] | None) -> dict[str, np.ndarray]:
        first = next(iter(feeds.values()), None)
        rows = first.shape[0] if first is not None and first.ndim else 1
        if (
            rows >= self.max_batch_size
            or (self.max_delay_s == 0 and self._in_progress is not None and self._in_progress() <= 1)
            or any(v.ndim == 0 for v in feeds.values())
        ):
            if self._on_batch:
                self._on_batch(rows)
            EXECUTION_ROWS.set(rows)
            return await self._run(feeds, outputs)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        key = self._key(feeds, outputs)
        group = self._open.get(key)
        if group is not None and group.rows + rows <= self.max_batch_size:  # join the leader's group
            group.items.append((feeds, outputs, fut, rows))
            group.rows += rows
            if group.rows >= self.max_batch_size:
                self._close(key, group)
            result, executed = await fut
            EXECUTION_ROWS.set(executed)
            return result
        if group is not None:  # it has no room: it runs as it is, this request leads the next one
            self._close(key, group)
        group = self._open[key] = _Group()
        group.items.append((feeds, outputs, fut, rows))
        group.rows = rows
        try:
            if self.max_delay_s > 0:
                group.wake = loop.create_future()
                timer = loop.call_later(self.max_delay_s, _wake, group.wake)
                try:
                    await group.wake
                finally:
                    timer.cancel()
            else:
                # One turn of the event loop: the requests whose bytes arrived with this one are parsed in this
                # turn and join the group; a request alone (one connection) pays only this yield.
                await asyncio.sleep(0)
        except asyncio.CancelledError:  # the leader's caller went away: its followers still run
            self._close(key, group)
            rest = [it for it in group.items if it[2] is not fut]
            if rest:
                self._spawn(rest)
            raise
        self._close(key, group)
        if len(group.items) == 1:  # alone: run in this task (no task, no hand-over)
            if self._on_batch:
                self._on_batch(rows)
            EXECUTION_ROWS.set(rows)
            return await self._run(feeds, outputs)
        self._spawn(group.items)
        result, executed = await fut
        EXECUTION_ROWS.set(executed)
        return result

    def _close(self, key: Any, group: _Group) -> None:
        """GROUP takes no more requests (and its leader, if it waits on a window, wakes)."""
        if self._open.get(key) is group:
            del self._open[key]
        if group.wake is not None:
            _wake(group.wake)

    def _spawn(self, items: list[Item]) -> None:
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


def _wake(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


def _settle(fut: asyncio.Future, result: Any = None, error: BaseException | None = None) -> None:
    if fut.done():  # the client went away
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)
