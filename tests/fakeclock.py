"""Virtual time for scheduling tests: trio's MockClock, for asyncio.

``FakeClock`` satisfies ``exporter.scheduler.Clock``. Its time moves only when
the test moves it. ``advance`` stops at every deadline on the way, as real time
would, and after each stop lets the event loop run what became ready before
moving on. No loop timer and no socket is involved, so the same callbacks run in
the same order with the same virtual times however loaded the machine is: a
test can assert the exact time at which something happened.
"""
from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable

# Loop iterations settle() runs. Each await hop in the scheduler (a wait ending,
# a task starting, a semaphore handed over) takes one iteration; the longest
# chain after one deadline (wait ends -> runner dispatches -> probe task starts ->
# acquires the semaphore -> calls the probe) needs 8: with 5, tests/test_scheduler.py
# fails; with 8 it passes. The count depends on the code path, never on wall time.
SETTLE_ROUNDS = 50
# advance()/run_until() give up after this many deadlines: a livelock (a wait
# re-armed at the same instant forever) fails the test instead of hanging it.
MAX_STEPS = 100_000


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        # Not 0: a scheduler that mixed up absolute and relative times would
        # still look right near 0.
        self._now = start
        self._waiters: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    # --- the Clock protocol ----------------------------------------------------
    def now(self) -> float:
        return self._now

    async def wait(self, event: asyncio.Event, timeout: float | None) -> bool:
        if event.is_set():
            return True
        if timeout is not None and timeout <= 0:
            await asyncio.sleep(0)  # like asyncio.timeout(0): one turn of the loop, then give up
            return event.is_set()
        loop = asyncio.get_running_loop()
        setter = loop.create_task(event.wait())
        expired: asyncio.Future[None] = loop.create_future()
        if timeout is not None:
            heapq.heappush(self._waiters, (self._now + timeout, next(self._seq), expired))
        try:
            await asyncio.wait((setter, expired), return_when=asyncio.FIRST_COMPLETED)
        finally:
            setter.cancel()
            expired.cancel()  # also marks it dead for the heap
        return event.is_set()

    # --- for tests -------------------------------------------------------------
    async def sleep(self, seconds: float) -> None:
        await self.wait(asyncio.Event(), seconds)

    def next_deadline(self) -> float | None:
        self._drop_dead()
        return self._waiters[0][0] if self._waiters else None

    async def settle(self) -> None:
        """Let the loop run everything that is ready at the current time."""
        for _ in range(SETTLE_ROUNDS):
            await asyncio.sleep(0)

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, firing each deadline on the way at its own time."""
        await self.advance_to(self._now + seconds)

    async def advance_to(self, when: float) -> None:
        assert when >= self._now, f"time does not run backwards: {when} < {self._now}"
        await self.settle()
        for _ in range(MAX_STEPS):
            deadline = self.next_deadline()
            if deadline is None or deadline > when:
                break
            await self._step(deadline)
        else:
            raise AssertionError(f"more than {MAX_STEPS} deadlines before {when}: livelock?")
        self._now = when
        await self.settle()

    async def jump(self, seconds: float) -> None:
        """Move time forward at once, as a blocked event loop would see it: every deadline
        passed on the way fires late, all at the new time."""
        self._now += seconds
        self._fire()
        await self.settle()

    async def run_until(self, predicate: Callable[[], bool], *, limit: float, what: str = "") -> None:
        """Step from deadline to deadline until ``predicate()`` holds; fail once the time
        ``limit`` seconds from now has passed, or when nothing is left to happen."""
        end = self._now + limit
        await self.settle()
        for _ in range(MAX_STEPS):
            if predicate():
                return
            deadline = self.next_deadline()
            if deadline is None:
                raise AssertionError(f"nothing left to happen at t={self._now}, still waiting for {what or predicate}")
            if deadline > end:
                raise AssertionError(f"not within {limit}s of virtual time: {what or predicate}")
            await self._step(deadline)
        raise AssertionError(f"more than {MAX_STEPS} deadlines waiting for {what or predicate}: livelock?")

    async def _step(self, deadline: float) -> None:
        self._now = max(self._now, deadline)
        self._fire()
        await self.settle()

    def _fire(self) -> None:
        while self._waiters and self._waiters[0][0] <= self._now:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(None)

    def _drop_dead(self) -> None:
        while self._waiters and self._waiters[0][2].done():
            heapq.heappop(self._waiters)
