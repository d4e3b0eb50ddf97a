"""The dynamic batcher on its own: who runs a group, and what happens when a caller goes away."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from mlinfra_scoring.batching import EXECUTION_ROWS, Batcher


def _runner(calls: list[int], delay: float = 0.0):
    async def run(feeds: dict[str, np.ndarray], outputs: list[str] | None) -> dict[str, np.ndarray]:
        calls.append(feeds["x"].shape[0])
        if delay:
            await asyncio.sleep(delay)
        return {"y": feeds["x"] * 2}

    return run


def _rows(n: int, start: float = 0.0) -> dict[str, np.ndarray]:
    return {"x": np.arange(start, start + n, dtype=np.float32).reshape(n, 1)}


def test_requests_of_one_turn_run_once_and_each_gets_its_rows() -> None:
    calls: list[int] = []

    async def scenario() -> list[tuple[np.ndarray, int]]:
        b = Batcher(_runner(calls), max_batch_size=64, max_delay_s=0.0)

        async def one(i: int) -> tuple[np.ndarray, int]:
            out = await b.submit(_rows(1 + i % 3, 10.0 * i), None)
            return out["y"], EXECUTION_ROWS.get()

        return await asyncio.gather(*(one(i) for i in range(10)))

    got = asyncio.run(scenario())
    assert calls == [sum(1 + i % 3 for i in range(10))], calls  # one execution for the ten
    for i, (y, executed) in enumerate(got):
        np.testing.assert_array_equal(y, _rows(1 + i % 3, 10.0 * i)["x"] * 2)
        assert executed == calls[0]


def test_a_lone_request_runs_in_its_own_task_and_a_full_group_runs_at_once() -> None:
    calls: list[int] = []

    async def scenario() -> None:
        b = Batcher(_runner(calls), max_batch_size=4, max_delay_s=5.0)  # a long window: only fullness ends it
        alone = await asyncio.wait_for(b.submit(_rows(4), None), 1)  # as many rows as the max: runs at once
        assert alone["y"].shape == (4, 1)
        await asyncio.wait_for(asyncio.gather(*(b.submit(_rows(1, i), None) for i in range(4))), 1)

    asyncio.run(scenario())
    assert calls == [4, 4], calls


def test_when_the_leader_goes_away_its_batch_mates_still_get_answers() -> None:
    calls: list[int] = []

    async def scenario() -> list[dict[str, np.ndarray]]:
        b = Batcher(_runner(calls), max_batch_size=64, max_delay_s=0.05)
        leader = asyncio.create_task(b.submit(_rows(1, 100.0), None))
        await asyncio.sleep(0)  # the leader opens the group and waits for its window
        mates = [asyncio.create_task(b.submit(_rows(1, float(i)), None)) for i in range(3)]
        await asyncio.sleep(0)
        leader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leader
        return await asyncio.wait_for(asyncio.gather(*mates), 1)

    got = asyncio.run(scenario())
    assert [float(g["y"][0, 0]) for g in got] == [0.0, 2.0, 4.0]
    assert calls == [3], calls  # the three that stayed, together


def test_a_failing_batch_is_retried_alone_so_only_the_bad_request_fails() -> None:
    async def run(feeds: dict[str, np.ndarray], outputs: list[str] | None) -> dict[str, np.ndarray]:
        if (feeds["x"] < 0).any():
            raise ValueError("negative input")
        return {"y": feeds["x"]}

    async def scenario() -> list[object]:
        b = Batcher(run, max_batch_size=64, max_delay_s=0.0)
        return await asyncio.gather(
            b.submit(_rows(1, 1.0), None), b.submit(_rows(1, -5.0), None), return_exceptions=True
        )

    good, bad = asyncio.run(scenario())
    assert isinstance(bad, ValueError) and float(good["y"][0, 0]) == 1.0  # type: ignore[index]


@pytest.mark.parametrize(("in_progress", "want"), [(1, [1, 1]), (2, [2])])
def test_a_request_with_no_other_in_progress_runs_at_once(in_progress: int, want: list[int]) -> None:
    """The server says how many inference requests it handles: alone, a request does not wait for a loop turn (so
    a single connection pays nothing for batching); with others in progress, requests of one turn are merged."""
    calls: list[int] = []

    async def scenario() -> None:
        b = Batcher(_runner(calls), max_batch_size=64, max_delay_s=0.0, in_progress=lambda: in_progress)
        await asyncio.gather(b.submit(_rows(1), None), b.submit(_rows(1, 5.0), None))

    asyncio.run(scenario())
    assert calls == want, calls
