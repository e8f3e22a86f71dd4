"""run_probe's outer deadline on one shared loop timer (exporter.engine._Deadline).

It must keep asyncio.timeout()'s contract: expiry leaves the block as TimeoutError, a
cancellation from outside propagates as CancelledError (also when the deadline passed
too), a probe that ends in time is never cancelled, an earlier deadline added later
fires first, and finished probes do not pile up in the heap. Real event loop (asyncio
and uvloop), real timers; times are only asserted as lower bounds or as an order.
"""
from __future__ import annotations

import asyncio
import time

import pytest
import uvloop

from exporter import engine
from exporter.engine import _Deadline

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest):
    def _run(coro):
        if request.param == "uvloop":
            return uvloop.run(coro)
        return asyncio.run(coro)
    return _run


async def _sleep_under(delay: float, sleep: float) -> str:
    with _Deadline(delay):
        await asyncio.sleep(sleep)
    return "finished"


def test_expiry_raises_timeout_error_no_sooner_than_the_deadline(run) -> None:
    async def main() -> float:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            await _sleep_under(0.05, 10)
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0  # the deadline's own cancellation was taken back
        return time.monotonic() - t0
    # uvloop counts whole milliseconds, as for asyncio.timeout.
    assert run(main()) >= 0.05 - 0.0015


def test_a_probe_that_ends_in_time_is_not_cancelled(run) -> None:
    async def main() -> None:
        assert await asyncio.gather(*(_sleep_under(5.0, 0.001 * i) for i in range(50))) == ["finished"] * 50
        await asyncio.sleep(0.01)
        owner = engine._deadlines
        assert owner is not None and owner.live == 0
    run(main())


def test_zero_delay_expires_on_the_next_turn(run) -> None:
    async def main() -> None:
        with pytest.raises(TimeoutError):
            await _sleep_under(0.0, 10)
    run(main())


def test_outside_cancellation_propagates(run) -> None:
    async def main() -> None:
        task = asyncio.create_task(_sleep_under(5.0, 10))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    run(main())


def test_outside_cancellation_wins_when_the_deadline_passed_too(run) -> None:
    async def main() -> None:
        started = asyncio.Event()

        async def body() -> None:
            with _Deadline(0.02):
                started.set()
                try:
                    await asyncio.sleep(10)
                finally:
                    # Cancelled by the deadline; cancelled from outside while cleaning up.
                    asyncio.current_task().cancel()  # type: ignore[union-attr]
                    await asyncio.sleep(0)

        task = asyncio.create_task(body())
        await started.wait()
        with pytest.raises(asyncio.CancelledError):
            await task
    run(main())


def test_an_earlier_deadline_added_later_fires_first(run) -> None:
    async def main() -> list[str]:
        order: list[str] = []

        async def one(name: str, delay: float) -> None:
            try:
                await _sleep_under(delay, 10)
            except TimeoutError:
                order.append(name)

        late = asyncio.create_task(one("late", 0.5))
        await asyncio.sleep(0.01)
        early = asyncio.create_task(one("early", 0.05))
        await asyncio.gather(late, early)
        return order
    assert run(main()) == ["early", "late"]


def test_finished_probes_do_not_pile_up_behind_a_hanging_one(run) -> None:
    async def main() -> None:
        hanging = asyncio.create_task(_sleep_under(30.0, 60))  # the heap's top for the whole test
        await asyncio.sleep(0)
        for _ in range(20):
            await asyncio.gather(*(_sleep_under(20.0, 0) for _ in range(100)))
        owner = engine._deadlines
        assert owner is not None and owner.live == 1
        # Bounded by the peak concurrency (100 here, not the 2000 probes), and rebuilt on the next add.
        assert len(owner.heap) <= 2 * 101 + 64, len(owner.heap)
        await _sleep_under(20.0, 0)
        assert len(owner.heap) <= 2 * 2 + 64, len(owner.heap)
        hanging.cancel()
        with pytest.raises(asyncio.CancelledError):
            await hanging
    run(main())
