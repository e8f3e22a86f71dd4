"""Background tasks that restart when they fail: the exporter is the last thing standing.

A task that raises is logged with its traceback, counted
(``connhealth_background_task_failures_total{task}``) and started again after a
backoff that doubles from ``INITIAL_BACKOFF`` to ``MAX_BACKOFF`` and resets once
a run lasted ``STABLE_AFTER`` seconds. A task that returns is done (e.g. the
scheduler after ``stop()``); cancellation propagates.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger("connhealth.supervise")

INITIAL_BACKOFF = 0.1
MAX_BACKOFF = 30.0
STABLE_AFTER = 60.0

FailureObserver = Callable[[str], None]


class Backoff:
    """Delays before restarts: INITIAL_BACKOFF doubling to MAX_BACKOFF, reset after a stable run."""

    def __init__(self, initial: float = INITIAL_BACKOFF, maximum: float = MAX_BACKOFF) -> None:
        self.initial = initial
        self.maximum = maximum
        self.delay = initial

    def next(self, ran_for: float) -> float:
        if ran_for >= STABLE_AFTER:
            self.delay = self.initial
        delay = self.delay
        self.delay = min(self.delay * 2, self.maximum)
        return delay


async def supervise(name: str, run: Callable[[], Awaitable[None]], on_failure: FailureObserver,
                    backoff: Backoff | None = None) -> None:
    """Run ``run()`` until it returns; restart it (after a backoff) whenever it raises."""
    loop = asyncio.get_running_loop()
    backoff = backoff or Backoff()
    while True:
        started = loop.time()
        try:
            await run()
            return
        except Exception:  # noqa: BLE001 - the point: nothing may kill a background task for good
            delay = backoff.next(loop.time() - started)
            log.exception("background task %s failed; restarting in %gs", name, delay)
            _observe(on_failure, name)
        await asyncio.sleep(delay)


def supervise_thread(name: str, run: Callable[[], None], on_failure: FailureObserver, stop: threading.Event,
                     backoff: Backoff | None = None) -> None:
    """supervise() for a thread's body: restart ``run()`` when it raises, until it returns or ``stop`` is set."""
    backoff = backoff or Backoff()
    while not stop.is_set():
        started = time.monotonic()
        try:
            run()
            return
        except Exception:  # noqa: BLE001
            delay = backoff.next(time.monotonic() - started)
            log.exception("background task %s failed; restarting in %gs", name, delay)
            _observe(on_failure, name)
        stop.wait(delay)


def _observe(on_failure: FailureObserver, name: str) -> None:
    try:
        on_failure(name)
    except Exception:  # noqa: BLE001 - counting must not stop the restart
        log.exception("failure observer for %s raised", name)
