"""Continuous mode: runs every target at its interval.

One task drives a heap of due times: no task or timer per idle target. A
probe task exists only while its probe runs. Targets are spread over their
interval at start (and get ±15 % jitter on every period) so they never fire in
lockstep; a failing target is probed again sooner (interval halved per
consecutive failure, never below ``min_interval``); a target never has two
probes at once; a semaphore bounds total concurrency.

Re-probing a failing target sooner shortens detection; it must not weigh the
availability SLI toward failures. So every result comes with the wall time it
stands for (``Coverage``): the time since the target's previous probe, split
evenly between the two probes that bound it (docs/metrics.md explains why).

Time and the probe itself are injected (``clock``, ``probe``) so the scheduling
logic can be tested on virtual time, without sockets (tests/fakeclock.py).
"""
from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar, Protocol

from .config import MIN_INTERVAL, Module, SchedulerConfig, TargetSpec
from .engine import run_probe
from .result import ProbeResult
from .supervise import FailureObserver, supervise

log = logging.getLogger("connhealth.scheduler")

JITTER = 0.15
# Halving stops after this many consecutive failures (interval / 64), even when
# min_interval would allow more.
MAX_HALVINGS = 6
# How long stop() waits for cancelled probes to unwind: a probe that swallows
# its cancellation must not hang shutdown.
CANCEL_WAIT = 1.0

# Reasons passed to the skip observer (connhealth_probes_skipped_total{reason}).
STILL_RUNNING = "still_running"  # the target's previous probe had not finished
SHUTTING_DOWN = "shutting_down"  # stop() began while the probe waited for a slot
PROBE_ERROR = "probe_error"  # the probe function raised: a bug, logged; no result
SKIP_REASONS = (STILL_RUNNING, SHUTTING_DOWN, PROBE_ERROR)

# A gap between two probes of a target longer than this many intervals plus
# the probe timeout means the exporter itself stalled (loop blocked, process
# stopped): only this much of it counts as observed.
MAX_GAP_INTERVALS = 2.0


@dataclass(frozen=True, slots=True)
class Coverage:
    """The wall time one result stands for in the time-weighted availability SLI.

    ``seconds`` is the time since the target's previous probe started (0 for
    its first probe: nothing was observed before it); ``up_seconds`` the part
    of it counted as up: each half of the gap goes to the probe at that end,
    and counts as up when that probe succeeded (the trapezoidal rule).
    """

    seconds: float = 0.0
    up_seconds: float = 0.0


# (spec, result, coverage) -> None; sinks must be cheap and must not raise.
ResultSink = Callable[[TargetSpec, ProbeResult, Coverage], None]
LagObserver = Callable[[float], None]
SkipObserver = Callable[[str], None]
# (target, module, timeout) -> result; exporter.engine.run_probe by default. It
# must not raise for a target's fault (run_probe's contract).
ProbeFunction = Callable[[str, Module, float | None], Awaitable[ProbeResult]]


class Clock(Protocol):
    """Monotonic time in seconds, and a wait that this time bounds."""

    def now(self) -> float: ...

    async def wait(self, event: asyncio.Event, timeout: float | None) -> bool:
        """Return once ``event`` is set or ``timeout`` seconds (None: no limit) have passed;
        True when the event is set. Cancellation propagates."""
        ...


# Coalesced wake-ups: a probe may start up to EARLY_FRACTION of its period, and at most the
# clock's ``max_early`` (MonotonicClock: MAX_EARLY), before it is due, when the scheduler is
# awake anyway (it never wakes up early for one), so that probes falling due close together
# share one wake-up of the process. Waking once per probe was the largest cost of continuous
# mode after the connect itself: at 500 probes/s, 0.54 sleeps and ≈ 0.33 ms of CPU per probe;
# with 25 ms, 0.09 and ≈ 0.21 ms (docs/benchmarks.md section 3). (uvloop also fires timers up
# to ~1.3 ms early, as it counts whole milliseconds: with no allowance, many of those wake-ups
# found nothing due and slept again.) Due times stay planned-based, so targets do not drift
# and the lag metric still measures lateness; the connect bucket (net/pacing.py) still
# spreads what starts together.
EARLY_FRACTION = 0.01
MAX_EARLY = 0.025


@dataclass(frozen=True, slots=True)
class MonotonicClock:
    """The real clock: time.monotonic(), and the event loop's timers."""

    max_early: ClassVar[float] = MAX_EARLY  # a Clock without it (tests' FakeClock) starts nothing early

    def now(self) -> float:
        return time.monotonic()

    async def wait(self, event: asyncio.Event, timeout: float | None) -> bool:
        if event.is_set():
            return True
        if timeout is None:
            return await event.wait()
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            pass
        return event.is_set()


@dataclass(eq=False, slots=True)
class _Entry:
    spec: TargetSpec
    due: float = 0.0
    running: bool = False
    removed: bool = False
    consecutive_failures: int = 0
    seq: int = 0
    sampled_at: float | None = None  # clock time the previous result's probe started
    sampled_ok: bool = False  # whether that probe succeeded
    early: float = 0.0  # how long before ``due`` it may start (EARLY_FRACTION of its current period)


# The heap holds (due, seq, entry) tuples: seq is unique, so entries are never compared, and
# tuples compare in C (a dataclass's __lt__ was ~11 Python calls per probe).
_HeapItem = tuple[float, int, _Entry]


class Scheduler:
    def __init__(
        self,
        modules: dict[str, Module],
        config: SchedulerConfig,
        sink: ResultSink,
        on_lag: LagObserver = lambda s: None,
        on_skip: SkipObserver = lambda reason: None,
        rng: random.Random | None = None,
        *,
        clock: Clock | None = None,
        probe: ProbeFunction = run_probe,
        on_failure: FailureObserver = lambda task: None,
    ) -> None:
        self.modules = modules
        self.config = config
        self.sink = sink
        self.on_lag = on_lag
        self.on_skip = on_skip
        self.rng = rng or random.Random()
        self.clock: Clock = clock or MonotonicClock()
        self.probe = probe
        self.on_failure = on_failure
        self.entries: dict[tuple[str, str, tuple[tuple[str, str], ...]], _Entry] = {}
        self._heap: list[_HeapItem] = []
        self._seq = 0
        self._max_early: float = getattr(self.clock, "max_early", 0.0)
        self._wake = asyncio.Event()
        self._semaphore = asyncio.Semaphore(config.concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()  # set while no probe task exists
        self._idle.set()
        self._runner: asyncio.Task[None] | None = None
        self._stopping = False
        self.in_flight = 0

    # --- target set -------------------------------------------------------
    def update(self, specs: list[TargetSpec] | tuple[TargetSpec, ...], modules: dict[str, Module] | None = None,
               config: SchedulerConfig | None = None) -> None:
        """Adopt a new target set; unchanged targets keep their schedule and counters."""
        for _ in self.update_steps(specs, modules, config):
            pass

    def update_steps(self, specs: list[TargetSpec] | tuple[TargetSpec, ...], modules: dict[str, Module] | None = None,
                     config: SchedulerConfig | None = None, slice_size: int = 0) -> Iterator[None]:
        """``update`` in steps: yields after every ``slice_size`` targets (0: never), so that a caller on the
        loop can let it turn between slices (100k targets took seconds in one go)."""
        if modules is not None:
            self.modules = modules
        if config is not None and config.concurrency != self.config.concurrency:
            self._semaphore = asyncio.Semaphore(config.concurrency)
        if config is not None:
            self.config = config
        wanted = {spec.key: spec for spec in specs}
        for i, (key, entry) in enumerate(list(self.entries.items()), 1):
            if key not in wanted:
                entry.removed = True
                del self.entries[key]
            if slice_size and i % slice_size == 0:
                yield
        now = self.clock.now()
        for i, (key, spec) in enumerate(wanted.items(), 1):
            if slice_size and i % slice_size == 0:
                yield
                now = self.clock.now()
            existing = self.entries.get(key)
            if existing is not None:
                entry = existing
                if spec.interval < entry.spec.interval:
                    entry.due = min(entry.due, now + spec.interval)
                    entry.early = self._early(spec.interval)
                    self._push(entry)
                entry.spec = spec
                continue
            entry = self.entries[key] = _Entry(spec)
            # Spread new targets over their first interval.
            entry.due = now + self.rng.uniform(0, spec.interval)
            entry.early = self._early(spec.interval)
            self._push(entry)
        self._wake.set()

    def _push(self, entry: _Entry) -> None:
        self._seq += 1
        entry.seq = self._seq
        heapq.heappush(self._heap, (entry.due, self._seq, entry))

    def _early(self, period: float) -> float:
        return min(self._max_early, period * EARLY_FRACTION)

    def next_interval(self, entry: _Entry) -> float:
        interval = entry.spec.interval
        floor = 0.0
        if entry.consecutive_failures:
            # Re-check a failing target sooner: halve per consecutive failure, bounded.
            floor = min(self.config.min_interval, interval)
            interval = max(floor, interval / (2 ** min(entry.consecutive_failures, MAX_HALVINGS)))
        # The jitter must not take a failing target below min_interval either.
        value = max(floor, interval * (1 + self.rng.uniform(-JITTER, JITTER)))
        # Config validation keeps NaN and 0 out; should one get here anyway, the run loop
        # must not busy-spin on it (issue 12: min_interval .nan took 84 % CPU and ignored SIGTERM).
        return value if value > 0 else MIN_INTERVAL

    # --- running ----------------------------------------------------------
    def start(self) -> None:
        """Run the schedule in a supervised task: a bug in it is logged and counted, and it restarts."""
        self._runner = asyncio.get_running_loop().create_task(
            supervise("scheduler", self._run, self.on_failure), name="connhealth-scheduler")

    async def _run(self) -> None:
        # After a restart the heap may have lost the entry that was being dispatched: rebuild it.
        self._heap = []
        for entry in self.entries.values():
            self._push(entry)
        heap = self._heap
        while not self._stopping:
            now = self.clock.now()
            while heap and (heap[0][2].removed or heap[0][1] != heap[0][2].seq):
                heapq.heappop(heap)  # stale: removed, or re-pushed with a newer due time
            if not heap:
                delay = None
            elif heap[0][0] - heap[0][2].early > now:
                delay = heap[0][0] - now
            else:
                due, _, entry = heapq.heappop(heap)
                self._dispatch(entry, due, now)
                continue
            self._wake.clear()
            await self.clock.wait(self._wake, delay)

    def _dispatch(self, entry: _Entry, planned: float, now: float) -> None:
        period = self.next_interval(entry)
        entry.due = planned + period
        if entry.due < now:
            # Far behind (e.g. the loop was blocked): do not fire a burst to catch up.
            period = self.next_interval(entry)
            entry.due = now + period
        entry.early = self._early(period)
        self._push(entry)
        if entry.running:
            self.on_skip(STILL_RUNNING)
            return
        entry.running = True
        task = asyncio.get_running_loop().create_task(self._probe(entry, planned))
        self._tasks.add(task)
        self._idle.clear()
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not self._tasks:
            self._idle.set()

    async def _probe(self, entry: _Entry, planned: float) -> None:
        try:
            async with self._semaphore:
                if entry.removed or self._stopping:
                    if self._stopping:
                        self.on_skip(SHUTTING_DOWN)
                    return
                sampled_at = self.clock.now()
                self.on_lag(max(0.0, sampled_at - planned))
                module = self.modules.get(entry.spec.module)
                if module is None:
                    return
                self.in_flight += 1
                try:
                    result = await self.probe(entry.spec.target, module, entry.spec.timeout)
                except Exception:
                    # run_probe never raises for a target's fault, so this is our
                    # bug. The target keeps its schedule (set at dispatch) and its
                    # failure streak: the next period probes it again.
                    log.exception("probe of %s with module %s raised; no result recorded",
                                  entry.spec.target, entry.spec.module)
                    self.on_skip(PROBE_ERROR)
                    return
                finally:
                    self.in_flight -= 1
            entry.consecutive_failures = 0 if result.success else entry.consecutive_failures + 1
            if entry.consecutive_failures and not entry.removed and not self._stopping:
                # The next due time was set at dispatch, before this failure was
                # known: bring it forward now, not one full period later.
                period = self.next_interval(entry)
                sooner = planned + period
                if sooner < entry.due:
                    entry.due = max(sooner, self.clock.now())
                    entry.early = self._early(period)
                    self._push(entry)
                    self._wake.set()
            coverage = self._coverage(entry, module, sampled_at, result.success)
            if not entry.removed:
                try:
                    self.sink(entry.spec, result, coverage)
                except Exception:  # a sink bug must not stop the scheduler
                    log.exception("result sink failed for %s", entry.spec.target)
        finally:
            entry.running = False

    @staticmethod
    def _coverage(entry: _Entry, module: Module, sampled_at: float, ok: bool) -> Coverage:
        previous, previous_ok = entry.sampled_at, entry.sampled_ok
        entry.sampled_at, entry.sampled_ok = sampled_at, ok
        if previous is None:
            return Coverage()
        limit = MAX_GAP_INTERVALS * entry.spec.interval + (entry.spec.timeout or module.timeout or 0.0)
        gap = min(max(sampled_at - previous, 0.0), limit)
        return Coverage(gap, gap / 2 * (previous_ok + ok))

    async def stop(self, grace: float) -> None:
        """Stop scheduling; let running probes finish within ``grace`` seconds, then cancel them."""
        self._stopping = True
        self._wake.set()
        if self._runner is not None:
            # It returns at once, unless its supervisor is waiting out a backoff after a failure.
            await asyncio.wait({self._runner}, timeout=CANCEL_WAIT)
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        if await self.clock.wait(self._idle, grace):
            return
        for task in list(self._tasks):
            task.cancel()
        await self.clock.wait(self._idle, CANCEL_WAIT)
