"""The one drift-corrected loop timer (controller, session tracker, supervisor), on a fake
clock: ticks stay on their grid whatever the work took, and a stall is not made up."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from shared.periodic import next_due, ticks


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.now += delay


async def tick_times(work: list[float], first_now: bool) -> list[float]:
    """When each tick fired, the loop body taking `work[i]` seconds after tick i."""
    clock, fired = FakeClock(), []
    async for _ in ticks(2.0, first_now=first_now, clock=clock, sleep=clock.sleep):
        fired.append(clock.now - 100.0)
        if len(fired) > len(work):
            break
        clock.now += work[len(fired) - 1]
    return fired


async def test_the_work_does_not_shift_the_ticks() -> None:
    assert await tick_times([0.5, 1.9, 0.0, 1.0], first_now=True) == [0, 2, 4, 6, 8]
    assert await tick_times([0.5, 0.5], first_now=False) == [2, 4, 6]


async def test_a_stall_skips_the_missed_ticks_without_a_burst() -> None:
    # The second pass took 7 s: ticks due at 4, 6 and 8 are skipped, the next is at 10.
    assert await tick_times([0.1, 7.0, 0.1], first_now=True) == [0, 2, 10, 12]
    # A pass that ends exactly on a due tick does not wait for the one after.
    assert await tick_times([2.0, 0.0], first_now=True) == [0, 2, 4]


def test_next_due_stays_on_the_grid() -> None:
    assert next_due(10.0, 10.5, 2.0) == 12.0
    assert next_due(10.0, 15.0, 2.0) == 16.0
    assert next_due(10.0, 16.0, 2.0) == 18.0


async def test_a_loop_stops_at_its_next_tick_when_its_work_swallowed_the_cancel() -> None:
    """A call in the loop's pass turns the cancel into a TimeoutError, which the loop's
    own handler logs and goes on from."""
    passes = 0

    async def loop() -> None:
        nonlocal passes
        async for _ in ticks(0.05, first_now=True):
            passes += 1
            with contextlib.suppress(TimeoutError):
                try:
                    await asyncio.sleep(0.05)
                except asyncio.CancelledError:
                    raise TimeoutError from None

    task = asyncio.create_task(loop())
    while passes < 2:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2)
    assert passes <= 3
