"""Paced connects: one token bucket per process, so probes that fall due together do not leave in SYN bursts.

Issue 15 measured 12-17 SYNs per busy millisecond (up to 41) where
blackbox_exporter sends 3: a burst congests the very path it measures. Every
connect takes a token first; tokens accrue at ``rate_per_ms`` per millisecond
and at most ``burst`` are held. A connect that finds none waits in FIFO order
for one; a single timer wakes the head of the queue when its token is due. The
wait belongs to no phase: it happens before the connect phase starts.
"""
from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable
from time import monotonic

__all__ = ["DEFAULT_BURST", "DEFAULT_RATE_PER_MS", "MAX_RATE_PER_MS", "ConnectPacer"]

DEFAULT_RATE_PER_MS = 10.0  # 10 000 connects/s: twice a core's tcp /probe rate today, so it smooths, not caps
DEFAULT_BURST = 10
MAX_RATE_PER_MS = 1000.0
MAX_BURST = 100_000


class ConnectPacer:
    """``await pacer.take()`` before each connect. A token in hand costs no await."""

    __slots__ = ("rate", "burst", "_clock", "_tokens", "_at", "_waiters", "_timer", "waited")

    def __init__(self, rate_per_ms: float = DEFAULT_RATE_PER_MS, burst: int = DEFAULT_BURST,
                 clock: Callable[[], float] = monotonic) -> None:
        if not (math.isfinite(rate_per_ms) and 0 < rate_per_ms <= MAX_RATE_PER_MS):
            raise ValueError(f"connect rate must be above 0 and at most {MAX_RATE_PER_MS:g} per ms, got {rate_per_ms!r}")
        if not (isinstance(burst, int) and 1 <= burst <= MAX_BURST):
            raise ValueError(f"connect burst must be a whole number from 1 to {MAX_BURST}, got {burst!r}")
        self.rate = rate_per_ms * 1000.0  # tokens per second
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self.waited = 0  # connects that had to wait for a token

    def _refill(self) -> float:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        return self._tokens

    def try_take(self) -> bool:
        """Take a token if one is there now (and nobody queues before us)."""
        if not self._waiters and self._refill() >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    async def take(self) -> None:
        """Wait for a token. Cancellation leaves the queue without consuming one."""
        if self.try_take():
            return
        self.waited += 1
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._arm()
        try:
            await waiter
        except BaseException:
            if waiter.cancelled() or not waiter.done():
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            else:  # granted, then cancelled before it ran: the token goes to the next in line
                self._tokens += 1.0
                if self._timer is not None:
                    self._timer.cancel()
                self._release()
            raise

    def _arm(self) -> None:
        if self._timer is None and self._waiters:
            missing = max(1.0 - self._refill(), 0.0)
            self._timer = asyncio.get_running_loop().call_later(missing / self.rate, self._release)

    def _release(self) -> None:
        self._timer = None
        self._refill()
        waiters = self._waiters
        while waiters and self._tokens >= 1.0:
            waiter = waiters.popleft()
            if not waiter.done():
                self._tokens -= 1.0
                waiter.set_result(None)
        self._arm()
