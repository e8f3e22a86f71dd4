"""Continuous mode: runs every target at its interval.

One task drives a heap of due times: no task or timer per idle target. A
probe task exists only while its probe runs. Targets are spread over their
interval at start (and get ±15 % jitter on every period) so they never fire in
lockstep; a failing target is probed again sooner (interval halved per
consecutive failure, never below ``min_interval``); a target never has two
probes at once; a semaphore bounds total concurrency.
"""
from __future__ import annotations

import asyncio
import heapq
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .config import Module, SchedulerConfig, TargetSpec
from .engine import run_probe
from .result import ProbeResult

log = logging.getLogger("connhealth.scheduler")

JITTER = 0.15

# (spec, result) -> None; sinks must be cheap and must not raise.
ResultSink = Callable[[TargetSpec, ProbeResult], None]
LagObserver = Callable[[float], None]
SkipObserver = Callable[[str], None]


@dataclass(eq=False, slots=True)
class _Entry:
    spec: TargetSpec
    due: float = 0.0
    running: bool = False
    removed: bool = False
    consecutive_failures: int = 0
    seq: int = 0


@dataclass(order=True, slots=True)
class _HeapItem:
    due: float
    seq: int
    entry: _Entry = field(compare=False)


class Scheduler:
    def __init__(
        self,
        modules: dict[str, Module],
        config: SchedulerConfig,
        sink: ResultSink,
        on_lag: LagObserver = lambda s: None,
        on_skip: SkipObserver = lambda reason: None,
        rng: random.Random | None = None,
    ) -> None:
        self.modules = modules
        self.config = config
        self.sink = sink
        self.on_lag = on_lag
        self.on_skip = on_skip
        self.rng = rng or random.Random()
        self.entries: dict[tuple[str, str, tuple[tuple[str, str], ...]], _Entry] = {}
        self._heap: list[_HeapItem] = []
        self._seq = 0
        self._wake = asyncio.Event()
        self._semaphore = asyncio.Semaphore(config.concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._stopping = False
        self.in_flight = 0

    # --- target set -------------------------------------------------------
    def update(self, specs: list[TargetSpec] | tuple[TargetSpec, ...], modules: dict[str, Module] | None = None,
               config: SchedulerConfig | None = None) -> None:
        """Adopt a new target set; unchanged targets keep their schedule and counters."""
        if modules is not None:
            self.modules = modules
        if config is not None and config.concurrency != self.config.concurrency:
            self._semaphore = asyncio.Semaphore(config.concurrency)
        if config is not None:
            self.config = config
        wanted = {spec.key: spec for spec in specs}
        for key, entry in list(self.entries.items()):
            if key not in wanted:
                entry.removed = True
                del self.entries[key]
        now = time.monotonic()
        for key, spec in wanted.items():
            existing = self.entries.get(key)
            if existing is not None:
                entry = existing
                if spec.interval < entry.spec.interval:
                    entry.due = min(entry.due, now + spec.interval)
                    self._push(entry)
                entry.spec = spec
                continue
            entry = self.entries[key] = _Entry(spec)
            # Spread new targets over their first interval.
            entry.due = now + self.rng.uniform(0, spec.interval)
            self._push(entry)
        self._wake.set()

    def _push(self, entry: _Entry) -> None:
        self._seq += 1
        entry.seq = self._seq
        heapq.heappush(self._heap, _HeapItem(entry.due, self._seq, entry))

    def next_interval(self, entry: _Entry) -> float:
        interval = entry.spec.interval
        floor = 0.0
        if entry.consecutive_failures:
            # Re-check a failing target sooner: halve per consecutive failure, bounded.
            floor = min(self.config.min_interval, interval)
            interval = max(floor, interval / (2 ** min(entry.consecutive_failures, 6)))
        # The jitter must not take a failing target below min_interval either.
        return max(floor, interval * (1 + self.rng.uniform(-JITTER, JITTER)))

    # --- running ----------------------------------------------------------
    def start(self) -> None:
        self._runner = asyncio.get_running_loop().create_task(self._run(), name="connhealth-scheduler")

    async def _run(self) -> None:
        while not self._stopping:
            now = time.monotonic()
            while self._heap and (self._heap[0].entry.removed or self._heap[0].seq != self._heap[0].entry.seq):
                heapq.heappop(self._heap)  # stale: removed, or re-pushed with a newer due time
            if not self._heap:
                delay = None
            elif self._heap[0].due > now:
                delay = self._heap[0].due - now
            else:
                item = heapq.heappop(self._heap)
                self._dispatch(item.entry, item.due)
                continue
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except TimeoutError:
                pass

    def _dispatch(self, entry: _Entry, planned: float) -> None:
        entry.due = planned + self.next_interval(entry)
        if entry.due < time.monotonic():
            # Far behind (e.g. the loop was blocked): do not fire a burst to catch up.
            entry.due = time.monotonic() + self.next_interval(entry)
        self._push(entry)
        if entry.running:
            self.on_skip("still_running")
            return
        entry.running = True
        task = asyncio.get_running_loop().create_task(self._probe(entry, planned))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _probe(self, entry: _Entry, planned: float) -> None:
        try:
            async with self._semaphore:
                if entry.removed or self._stopping:
                    if self._stopping:
                        self.on_skip("shutting_down")
                    return
                self.on_lag(max(0.0, time.monotonic() - planned))
                module = self.modules.get(entry.spec.module)
                if module is None:
                    return
                self.in_flight += 1
                try:
                    result = await run_probe(entry.spec.target, module, entry.spec.timeout)
                finally:
                    self.in_flight -= 1
            entry.consecutive_failures = 0 if result.success else entry.consecutive_failures + 1
            if entry.consecutive_failures and not entry.removed and not self._stopping:
                # The next due time was set at dispatch, before this failure was
                # known: bring it forward now, not one full period later.
                sooner = planned + self.next_interval(entry)
                if sooner < entry.due:
                    entry.due = max(sooner, time.monotonic())
                    self._push(entry)
                    self._wake.set()
            if not entry.removed:
                try:
                    self.sink(entry.spec, result)
                except Exception:  # a sink bug must not stop the scheduler
                    log.exception("result sink failed for %s", entry.spec.target)
        finally:
            entry.running = False

    async def stop(self, grace: float) -> None:
        """Stop scheduling; let running probes finish within ``grace`` seconds, then cancel them."""
        self._stopping = True
        self._wake.set()
        if self._runner is not None:
            await self._runner
        if self._tasks:
            done, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
