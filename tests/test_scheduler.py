"""The continuous-mode Scheduler.

Scheduling logic runs on virtual time (tests/fakeclock.py) with an injected
probe function that does no I/O: every test asserts the exact virtual time at
which each probe started, so nothing depends on how loaded the machine is.
Where a range is asserted (spread, jitter), the bounds are exact, not widened
by a slack.

A few tests at the end keep the real clock and the real run_probe against real
local servers, to show the default wiring works end to end; their only timing
asserts are bounds that load cannot break (a grace period is at least as long
as asked; probes never come faster than their period allows), with wide
margins the other way.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable

import pytest

from exporter.config import Module, SchedulerConfig, TargetSpec, builtin_modules
from exporter.engine import run_probe
from exporter.result import Failure, ProbeResult
from exporter.scheduler import (
    CANCEL_WAIT, EARLY_FRACTION, JITTER, MAX_EARLY, MAX_GAP_INTERVALS, PROBE_ERROR, SHUTTING_DOWN, SKIP_REASONS,
    STILL_RUNNING, Coverage, MonotonicClock, Scheduler,
)

try:
    from tests.fakeclock import FakeClock
    from tests.peers import HTTPServer, RawTCPServer
    from tests.procs import refused_port
except ImportError:  # pragma: no cover - depends on how pytest put us on sys.path
    from fakeclock import FakeClock  # type: ignore[no-redef]
    from peers import HTTPServer, RawTCPServer  # type: ignore[no-redef]
    from procs import refused_port  # type: ignore[no-redef]

pytestmark = pytest.mark.timeout(30)

MODULES = builtin_modules()
EPS = 1e-9  # float noise in sums of virtual times, nothing more


# --- test doubles -------------------------------------------------------------

class FixedRandom(random.Random):
    """``uniform(a, b)`` is always ``a + frac * (b - a)``: with 0.5, no jitter and every new
    target first probed at half its interval; 0 and 1 are the extremes of the jitter."""

    def __init__(self, frac: float) -> None:
        super().__init__(0)
        self.frac = frac

    def uniform(self, a: float, b: float) -> float:
        return a + self.frac * (b - a)


@dataclasses.dataclass(frozen=True, slots=True)
class Call:
    target: str
    module: Module
    timeout: float | None
    at: float  # virtual time


class FakeProbe:
    """The injected probe function: records each call, takes ``durations[target]`` virtual
    seconds, fails for targets in ``failing``, raises for targets in ``raising``."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.calls: list[Call] = []
        self.durations: dict[str, float] = {}
        self.failing: set[str] = set()
        self.down: Callable[[float], bool] = lambda now: False  # every target fails while down(now)
        self.raising: set[str] = set()
        self.swallow_cancel: set[str] = set()  # misbehaving on purpose: to test stop()'s bound
        self.active: Counter[str] = Counter()
        self.max_active: Counter[str] = Counter()
        self.total_active = 0
        self.max_total = 0
        self.cancelled: list[tuple[str, float]] = []
        self.finished: list[tuple[str, float]] = []
        self.on_call: Callable[[], None] = lambda: None

    def times(self, target: str) -> list[float]:
        return [c.at for c in self.calls if c.target == target]

    async def __call__(self, target: str, module: Module, timeout: float | None) -> ProbeResult:
        start = self.clock.now()
        self.calls.append(Call(target, module, timeout, start))
        self.active[target] += 1
        self.total_active += 1
        self.max_active[target] = max(self.max_active[target], self.active[target])
        self.max_total = max(self.max_total, self.total_active)
        self.on_call()
        try:
            if self.durations.get(target):
                try:
                    await self.clock.sleep(self.durations[target])
                except asyncio.CancelledError:
                    self.cancelled.append((target, self.clock.now()))
                    if target not in self.swallow_cancel:
                        raise
                    await self.clock.sleep(1e6)
            if target in self.raising:
                raise RuntimeError(f"probe function bug for {target}")
            self.finished.append((target, self.clock.now()))
            bad = target in self.failing or self.down(start)
            failure = Failure("connect", "connect_refused", "refused") if bad else None
            return ProbeResult(target=target, module=module.name, prober=module.prober, started_at=start,
                               duration_seconds=self.clock.now() - start, timeout_seconds=timeout or 0.0,
                               failure=failure)
        finally:
            self.active[target] -= 1
            self.total_active -= 1


class Recorder:
    """The scheduler's sink, lag and skip observers."""

    def __init__(self) -> None:
        self.results: dict[str, list[ProbeResult]] = defaultdict(list)
        self.coverage: dict[str, list[Coverage]] = defaultdict(list)
        self.skips: list[str] = []
        self.lags: list[float] = []
        self.sink_raises_for: set[str] = set()

    def sink(self, spec: TargetSpec, result: ProbeResult, coverage: Coverage) -> None:
        self.results[spec.target].append(result)
        self.coverage[spec.target].append(coverage)
        if spec.target in self.sink_raises_for:
            raise ValueError(f"sink bug for {spec.target}")

    def on_lag(self, seconds: float) -> None:
        self.lags.append(seconds)

    def on_skip(self, reason: str) -> None:
        self.skips.append(reason)


def spec(target: str, interval: float, module: str = "tcp_connect", timeout: float | None = 2.0) -> TargetSpec:
    return TargetSpec(target, module, interval, timeout)


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:])]


def rel(times: list[float], t0: float) -> list[float]:
    return [round(t - t0, 9) for t in times]


@dataclasses.dataclass(slots=True)
class Env:
    clock: FakeClock
    probe: FakeProbe
    rec: Recorder
    sched: Scheduler
    t0: float

    def entry_failures(self, s: TargetSpec) -> int:
        return self.sched.entries[s.key].consecutive_failures

    async def stop(self, grace: float) -> float:
        """stop(grace) on virtual time; returns the time at which it returned."""
        stopper = asyncio.get_running_loop().create_task(self.sched.stop(grace))
        await self.clock.run_until(stopper.done, limit=grace + CANCEL_WAIT + 1, what="stop() to return")
        await stopper
        return self.clock.now()


NewEnv = Callable[..., Env]


@pytest.fixture
async def env() -> AsyncIterator[NewEnv]:
    """env(concurrency=64, min_interval=1.0, rng=FixedRandom(0.5)) -> Env on a FakeClock; stopped at teardown."""
    made: list[Env] = []

    def _new(*, concurrency: int = 64, min_interval: float = 1.0, rng: random.Random | None = None) -> Env:
        clock = FakeClock()
        probe = FakeProbe(clock)
        rec = Recorder()
        sched = Scheduler(MODULES, SchedulerConfig(concurrency=concurrency, min_interval=min_interval), rec.sink,
                          on_lag=rec.on_lag, on_skip=rec.on_skip, rng=rng or FixedRandom(0.5),
                          clock=clock, probe=probe)
        e = Env(clock, probe, rec, sched, clock.now())
        made.append(e)
        return e

    yield _new
    for e in made:
        await e.stop(0.0)


# --- spread and jitter --------------------------------------------------------

async def test_new_targets_are_spread_over_their_first_interval(env: NewEnv) -> None:
    e = env(rng=random.Random(7))
    targets = [f"t{i}:80" for i in range(40)]
    e.sched.update([spec(t, 10.0) for t in targets])
    e.sched.start()
    await e.clock.settle()
    assert e.probe.calls == [], "a target fired at start instead of being spread"
    await e.clock.run_until(lambda: all(e.probe.times(t) for t in targets), limit=10.0, what="every first probe")
    firsts = [e.probe.times(t)[0] for t in targets]
    # Exactly: each first probe at now + uniform(0, interval), drawn in the order of the update.
    expected = random.Random(7)
    assert firsts == pytest.approx([e.t0 + expected.uniform(0, 10.0) for _ in targets], abs=EPS)
    assert all(e.t0 <= f < e.t0 + 10.0 for f in firsts)
    assert max(firsts) - min(firsts) > 8.0, f"not spread over the interval: {rel(sorted(firsts), e.t0)}"
    # Not bunched: no window of 1/20 of the interval holds a quarter of them (2 expected).
    for f in firsts:
        assert sum(1 for g in firsts if f <= g < f + 0.5) < len(targets) // 4, rel(sorted(firsts), e.t0)
    assert e.rec.lags == [0.0] * len(targets), "a probe started later than planned on an idle scheduler"


async def test_every_period_is_jittered_within_15_percent(env: NewEnv) -> None:
    e = env(rng=random.Random(3))
    s = spec("a:1", 1.0)
    e.sched.update([s])
    e.sched.start()
    await e.clock.run_until(lambda: len(e.probe.times("a:1")) >= 201, limit=300.0, what="201 probes")
    periods = gaps(e.probe.times("a:1"))
    assert all(1 - JITTER - EPS <= g <= 1 + JITTER + EPS for g in periods), (min(periods), max(periods))
    # Spread over the whole range, not a constant offset.
    assert min(periods) < 1 - JITTER + 0.01 and max(periods) > 1 + JITTER - 0.01, (min(periods), max(periods))
    assert len({round(g, 6) for g in periods}) > 190
    # The planned periods themselves: within ±15 %, and spread over that range.
    entry = e.sched.entries[s.key]
    planned = [e.sched.next_interval(entry) for _ in range(2000)]
    assert 1 - JITTER <= min(planned) < 1 - JITTER / 2
    assert 1 + JITTER / 2 < max(planned) <= 1 + JITTER


@pytest.mark.parametrize(("frac", "period"), [(0.0, 1 - JITTER), (0.5, 1.0), (1.0, 1 + JITTER)])
async def test_jitter_extremes_give_exactly_85_and_115_percent(env: NewEnv, frac: float, period: float) -> None:
    assert JITTER == 0.15
    e = env(rng=FixedRandom(frac))
    e.sched.update([spec("a:1", 2.0)])
    e.sched.start()
    await e.clock.run_until(lambda: len(e.probe.times("a:1")) >= 4, limit=20.0)
    times = e.probe.times("a:1")
    assert times[0] == pytest.approx(e.t0 + frac * 2.0, abs=EPS)
    assert gaps(times) == pytest.approx([2.0 * period] * 3, abs=EPS)


# --- coalesced wake-ups ---------------------------------------------------------

class CoalescingClock(FakeClock):
    """Virtual time with the real clock's allowance: probes due within max_early of a wake-up start on it."""

    max_early = MAX_EARLY


async def _coalescing(specs: list[TargetSpec], until: Callable[[FakeProbe], bool]) -> tuple[FakeProbe, Recorder, float]:
    clock = CoalescingClock()
    probe, rec = FakeProbe(clock), Recorder()
    # FixedRandom(0.5): the first probe is due at interval / 2, then one every interval exactly.
    sched = Scheduler(MODULES, SchedulerConfig(), rec.sink, on_lag=rec.on_lag, rng=FixedRandom(0.5),
                      clock=clock, probe=probe)
    t0 = clock.now()
    sched.update(specs)
    sched.start()
    try:
        await clock.run_until(lambda: until(probe), limit=40.0, what="the probes")
    finally:
        await sched.stop(0.0)
    return probe, rec, t0


async def test_probes_due_close_together_share_a_wake_up_without_drifting() -> None:
    assert (EARLY_FRACTION, MAX_EARLY) == (0.01, 0.025) and MonotonicClock.max_early == MAX_EARLY
    a, b = spec("a:1", 10.0), spec("b:1", 10.04)  # due at 5.0 and 5.02: within b's 25 ms (capped) allowance
    probe, rec, t0 = await _coalescing([a, b], lambda p: len(p.times(b.target)) >= 3)
    assert rel(probe.times(a.target)[:3], t0) == pytest.approx([5.0, 15.0, 25.0], abs=EPS)
    # b starts with a; then at its own planned times (15.06: 40 ms after a), so it does not drift.
    assert rel(probe.times(b.target)[:3], t0) == pytest.approx([5.0, 5.02 + 10.04, 5.02 + 2 * 10.04], abs=EPS)
    assert set(rec.lags) == {0.0}  # starting early is not lateness


async def test_a_probe_starts_at_most_one_percent_of_its_period_early() -> None:
    c, d = spec("c:1", 0.97), spec("d:1", 1.0)  # due at 0.485 and 0.5; d's allowance: 1 % of 1 s = 10 ms
    probe, _, t0 = await _coalescing([c, d], lambda p: len(p.times(d.target)) >= 2)
    # d, due 15 ms after c, is not taken along; and nothing wakes up early for it on its own.
    assert rel(probe.times(c.target)[:2], t0) == pytest.approx([0.485, 0.485 + 0.97], abs=EPS)
    assert rel(probe.times(d.target)[:2], t0) == pytest.approx([0.5, 1.5], abs=EPS)

# --- failing targets ----------------------------------------------------------

async def test_failing_target_interval_halves_per_failure_down_to_min_interval(env: NewEnv) -> None:
    e = env(min_interval=1.0)
    bad, good = spec("bad:1", 8.0), spec("good:1", 8.0)
    e.probe.failing.add(bad.target)
    e.sched.update([bad, good])
    e.sched.start()
    await e.clock.run_until(lambda: len(e.probe.times(bad.target)) >= 8, limit=100.0)
    # 8 / 2, 8 / 4, 8 / 8, then never below min_interval = 1.
    assert rel(e.probe.times(bad.target), e.t0) == [4, 8, 10, 11, 12, 13, 14, 15]
    assert rel(e.probe.times(good.target), e.t0) == [4, 12], "a healthy target's period changed"
    assert e.entry_failures(bad) == 8 == len(e.rec.results[bad.target])
    assert all(r.failure is not None and r.failure.reason == "connect_refused" for r in e.rec.results[bad.target])
    assert e.entry_failures(good) == 0
    # The floor holds for every jittered draw too.
    e.sched.rng = random.Random(11)
    assert min(e.sched.next_interval(e.sched.entries[bad.key]) for _ in range(2000)) >= 1.0


async def test_recovered_target_returns_to_its_interval_after_one_planned_recheck(env: NewEnv) -> None:
    e = env(min_interval=1.0)
    s = spec("flappy:1", 8.0)
    e.probe.failing.add(s.target)
    e.sched.update([s])
    e.sched.start()
    await e.clock.run_until(lambda: len(e.probe.times(s.target)) >= 5, limit=100.0)
    assert rel(e.probe.times(s.target), e.t0) == [4, 8, 10, 11, 12]
    e.probe.failing.clear()
    await e.clock.run_until(lambda: len(e.probe.times(s.target)) >= 9, limit=100.0)
    # 13 is the first success; 14 was planned (1 s later) before that success was known;
    # then the normal 8 s period.
    assert rel(e.probe.times(s.target), e.t0) == [4, 8, 10, 11, 12, 13, 14, 22, 30]
    assert [r.success for r in e.rec.results[s.target]] == [False] * 5 + [True] * 4
    assert e.entry_failures(s) == 0
    # The time each result stands for (the availability SLI): the first probe none; each later one the gap
    # before it, split between the two probes that bound it (failure -> success: half down, half up).
    assert e.rec.coverage[s.target] == [
        Coverage(0, 0), Coverage(4, 0), Coverage(2, 0), Coverage(1, 0), Coverage(1, 0),
        Coverage(1, 0.5), Coverage(1, 1), Coverage(8, 8), Coverage(8, 8),
    ]


async def test_halving_stops_after_six_failures(env: NewEnv) -> None:
    e = env(min_interval=1.0)
    s = spec("bad:1", 640.0)
    e.probe.failing.add(s.target)
    e.sched.update([s])
    e.sched.start()
    await e.clock.run_until(lambda: len(e.probe.times(s.target)) >= 10, limit=2000.0)
    # 640 / 2 ... 640 / 64 = 10, which stays although min_interval (1) would allow less.
    assert gaps(e.probe.times(s.target)) == pytest.approx([320, 160, 80, 40, 20, 10, 10, 10, 10], abs=EPS)


@pytest.mark.parametrize(
    ("interval", "min_interval", "frac", "expected"),
    [
        # Jitter at its low extreme (-15 %) is floored at min_interval too.
        (8.0, 1.0, 0.0, [3.4, 1.7, 1.0, 1.0, 1.0]),
        (8.0, 1.0, 1.0, [4.6, 2.3, 1.15, 1.15, 1.15]),
        # A target whose own interval is below min_interval keeps its interval: never slower, never faster.
        (0.5, 1.0, 0.5, [0.5, 0.5, 0.5, 0.5, 0.5]),
        # (The first gap was planned while the target was still healthy: 0.85 * 0.5.)
        (0.5, 1.0, 0.0, [0.425, 0.5, 0.5, 0.5, 0.5]),
    ],
)
async def test_failing_target_never_faster_than_the_floor(
    env: NewEnv, interval: float, min_interval: float, frac: float, expected: list[float]
) -> None:
    e = env(min_interval=min_interval, rng=FixedRandom(frac))
    s = spec("bad:1", interval)
    e.probe.failing.add(s.target)
    e.sched.update([s])
    e.sched.start()
    await e.clock.run_until(lambda: len(e.probe.times(s.target)) >= len(expected) + 1, limit=100.0)
    assert gaps(e.probe.times(s.target)) == pytest.approx(expected, abs=EPS)


async def test_a_failure_known_late_brings_the_next_probe_forward(env: NewEnv) -> None:
    e = env(min_interval=1.0)
    s = spec("slowbad:1", 8.0)
    e.probe.failing.add(s.target)
    e.probe.durations[s.target] = 3.0
    e.sched.update([s])
    e.sched.start()
    await e.clock.run_until(lambda: len(e.probe.times(s.target)) >= 3, limit=100.0)
    # At 4 the next probe is planned for 12; the failure known at 7 moves it to 4 + 8/2 = 8.
    # At 8 the next is planned for 12; the failure known at 11 moves it to 8 + 8/4 = 10,
    # which has passed: it runs at once, at 11.
    assert rel(e.probe.times(s.target), e.t0) == [4, 8, 11]
    assert e.rec.lags == [0.0, 0.0, 0.0], "the third probe was planned in the past"
    assert e.rec.skips == []


# --- the time each result stands for (the availability SLI) -----------------------

async def test_adaptive_reprobing_does_not_bias_the_time_weighted_sli(env: NewEnv) -> None:
    """A target down exactly 10 % of the time (2 s in every 20 s), probed every 1 s when healthy and
    down to every 1/8 s while failing: its probes are about half failures, its time-weighted SLI is 90 %."""
    e = env(min_interval=0.125, rng=random.Random(7))
    e.probe.down = lambda now: 9.0 <= (now - e.t0) % 20.0 < 11.0
    s = spec("sometimes-down:1", 1.0)
    e.sched.update([s])
    e.sched.start()
    await e.clock.advance(2000.0)
    results, coverage = e.rec.results[s.target], e.rec.coverage[s.target]
    observed = sum(c.seconds for c in coverage)
    sli = sum(c.up_seconds for c in coverage) / observed
    naive = sum(r.success for r in results) / len(results)
    assert observed == pytest.approx(2000.0, abs=1.5)  # from the first probe (within 1 s) to the last
    assert sli == pytest.approx(0.90, abs=0.005), sli
    print(f"time-weighted SLI {sli:.4f}, successes/attempts {naive:.4f} over {len(results)} probes")
    assert naive < 0.75, naive  # successes / attempts: the re-checks weigh it toward failures


async def test_a_stalled_gap_counts_only_up_to_its_bound(env: NewEnv) -> None:
    e = env()
    s = spec("slow:1", 1.0, timeout=2.0)
    e.probe.durations[s.target] = 10.0  # outlives its interval: the periods in between are skipped
    e.sched.update([s])
    e.sched.start()
    await e.clock.run_until(lambda: len(e.rec.coverage[s.target]) >= 3, limit=100.0)
    assert gaps(e.probe.times(s.target))[0] > MAX_GAP_INTERVALS * 1.0 + 2.0
    assert e.rec.coverage[s.target][1:3] == [Coverage(4.0, 4.0)] * 2


# --- one probe per target; total concurrency -------------------------------------

async def test_never_two_probes_of_one_target_at_once(env: NewEnv) -> None:
    e = env()
    s = spec("slow:1", 1.0)
    e.probe.durations[s.target] = 2.5
    in_flight: list[int] = []
    e.probe.on_call = lambda: in_flight.append(e.sched.in_flight)
    e.sched.update([s])
    e.sched.start()
    await e.clock.run_until(lambda: len(e.probe.times(s.target)) >= 3, limit=20.0)
    # Due at 0.5, 1.5, 2.5, 3.5, ...: 1.5 and 2.5 find the probe of 0.5 still running (until 3.0).
    assert rel(e.probe.times(s.target), e.t0) == [0.5, 3.5, 6.5]
    assert e.rec.skips == [STILL_RUNNING] * 4
    assert e.probe.max_active[s.target] == 1
    assert in_flight == [1, 1, 1]
    assert [r.success for r in e.rec.results[s.target]] == [True, True]


async def test_total_concurrency_is_bounded_and_queued_probes_report_their_lag(env: NewEnv) -> None:
    e = env(concurrency=2)
    targets = [spec(f"t{i}:1", 10.0) for i in range(6)]
    for t in targets:
        e.probe.durations[t.target] = 1.0
    in_flight: list[int] = []
    e.probe.on_call = lambda: in_flight.append(e.sched.in_flight)
    e.sched.update(targets)
    e.sched.start()
    await e.clock.run_until(lambda: len(e.probe.finished) >= 6, limit=20.0)
    # All six are due at 5; two slots: queued in order, nobody starved.
    assert [(c.target, round(c.at - e.t0, 9)) for c in e.probe.calls] == [
        ("t0:1", 5), ("t1:1", 5), ("t2:1", 6), ("t3:1", 6), ("t4:1", 7), ("t5:1", 7)]
    assert e.rec.lags == pytest.approx([0, 0, 1, 1, 2, 2], abs=EPS)
    assert e.probe.max_total == 2 and max(in_flight) == 2
    assert all(e.probe.max_active[t.target] == 1 for t in targets)
    assert e.sched.in_flight == 0

    # A new concurrency from update(config=...) applies to the next round (all due at 15).
    e.sched.update(targets, config=SchedulerConfig(concurrency=3, min_interval=1.0))
    await e.clock.run_until(lambda: len(e.probe.finished) >= 12, limit=20.0)
    assert [round(c.at - e.t0, 9) for c in e.probe.calls[6:]] == [15, 15, 15, 16, 16, 16]
    assert e.probe.max_total == 3


# --- update() -------------------------------------------------------------------

async def test_update_adds_and_removes_without_resetting_kept_targets(env: NewEnv) -> None:
    e = env(min_interval=0.5)
    kept_failing, kept_ok = spec("failing:1", 4.0), spec("ok:1", 2.0)
    removed, added = spec("removed:1", 2.0), spec("added:1", 2.0)
    e.probe.failing.add(kept_failing.target)
    e.probe.durations[removed.target] = 1.5
    e.sched.update([kept_failing, kept_ok, removed])
    e.sched.start()
    await e.clock.run_until(lambda: e.entry_failures(kept_failing) == 2 and e.probe.active[removed.target] == 1,
                            limit=20.0, what="two failures while `removed` is being probed")
    t_update = e.clock.now()
    assert t_update - e.t0 == pytest.approx(4.0)
    entry_failing, entry_ok = e.sched.entries[kept_failing.key], e.sched.entries[kept_ok.key]
    due_ok, due_failing = entry_ok.due, entry_failing.due
    n_removed = len(e.rec.results[removed.target])
    assert n_removed == 1

    e.sched.update([kept_failing, kept_ok, added])
    assert set(e.sched.entries) == {kept_failing.key, kept_ok.key, added.key}
    assert e.sched.entries[kept_failing.key] is entry_failing and e.sched.entries[kept_ok.key] is entry_ok
    assert entry_failing.consecutive_failures == 2, "the kept target's failure streak was reset"
    assert (entry_ok.due, entry_failing.due) == (due_ok, due_failing), "a kept target was re-scheduled"

    await e.clock.run_until(lambda: len(e.probe.times(added.target)) >= 2, limit=20.0)
    # The added target is spread over its first interval from the update; the kept ones go on
    # as before: `ok` every 2 s, `failing` still halving (4 / 4 = 1, then 0.5).
    assert rel(e.probe.times(added.target), t_update) == [1, 3]
    assert rel(e.probe.times(kept_ok.target), e.t0) == [1, 3, 5, 7]
    assert rel(e.probe.times(kept_failing.target), e.t0) == [2, 4, 5, 5.5, 6, 6.5, 7]
    # The probe of `removed` running at the update finished (at 4.5) but reported nothing,
    # and `removed` was never probed again.
    assert (removed.target, e.t0 + 4.5) in e.probe.finished
    assert rel(e.probe.times(removed.target), e.t0) == [1, 3]
    assert len(e.rec.results[removed.target]) == n_removed


async def test_update_shrinking_an_interval_does_not_wait_out_the_old_one(env: NewEnv) -> None:
    e = env()
    slow = spec("x:1", 50.0)
    e.sched.update([slow])
    e.sched.start()
    await e.clock.advance(1.0)
    faster = dataclasses.replace(slow, interval=2.0)
    assert faster.key == slow.key
    e.sched.update([faster])
    await e.clock.run_until(lambda: len(e.probe.times(slow.target)) >= 3, limit=10.0)
    # First due at 25 under the old interval; now + 2 = 3 under the new one.
    assert rel(e.probe.times(slow.target), e.t0) == [3, 5, 7]


async def test_update_growing_an_interval_keeps_the_planned_probe(env: NewEnv) -> None:
    e = env()
    fast = spec("x:1", 2.0)
    e.sched.update([fast])
    e.sched.start()
    await e.clock.run_until(lambda: len(e.probe.times(fast.target)) >= 2, limit=10.0)
    await e.clock.advance(0.5)
    e.sched.update([dataclasses.replace(fast, interval=10.0)])
    await e.clock.run_until(lambda: len(e.probe.times(fast.target)) >= 4, limit=30.0)
    assert rel(e.probe.times(fast.target), e.t0) == [1, 3, 5, 15]


async def test_update_changes_timeout_and_modules_for_the_next_probe(env: NewEnv) -> None:
    e = env()
    s = spec("x:1", 2.0, timeout=2.0)
    e.sched.update([s])
    e.sched.start()
    await e.clock.run_until(lambda: len(e.probe.calls) >= 1, limit=10.0)
    new_module = dataclasses.replace(MODULES["tcp_connect"], timeout=7.0)
    e.sched.update([dataclasses.replace(s, timeout=3.0)], modules={**MODULES, "tcp_connect": new_module})
    await e.clock.run_until(lambda: len(e.probe.calls) >= 2, limit=10.0)
    first, second = e.probe.calls
    assert (first.timeout, first.module) == (2.0, MODULES["tcp_connect"])
    assert second.timeout == 3.0 and second.module is new_module
    assert rel([first.at, second.at], e.t0) == [1, 3], "a timeout change re-scheduled the target"


async def test_target_with_unknown_module_is_not_probed_and_harms_nobody(env: NewEnv) -> None:
    e = env()
    e.sched.update([spec("x:1", 2.0, module="no_such_module"), spec("y:1", 2.0)])
    e.sched.start()
    await e.clock.run_until(lambda: len(e.probe.times("y:1")) >= 3, limit=10.0)
    assert e.probe.times("x:1") == [] and "x:1" not in e.rec.results
    assert e.rec.skips == [] and e.sched.in_flight == 0


# --- errors in the sink or the probe function --------------------------------------

async def test_a_sink_that_raises_is_logged_and_scheduling_goes_on(
    env: NewEnv, caplog: pytest.LogCaptureFixture
) -> None:
    e = env()
    a, b = spec("a:1", 1.0), spec("b:1", 1.0)
    e.rec.sink_raises_for.add(a.target)
    e.sched.update([a, b])
    e.sched.start()
    with caplog.at_level(logging.ERROR, logger="connhealth.scheduler"):
        await e.clock.run_until(lambda: len(e.rec.results[a.target]) >= 3, limit=10.0)
    assert rel(e.probe.times(a.target), e.t0) == [0.5, 1.5, 2.5]
    assert rel(e.probe.times(b.target), e.t0) == [0.5, 1.5, 2.5]
    assert len(e.rec.results[b.target]) == 3
    failed = [r for r in caplog.records if r.name == "connhealth.scheduler"]
    assert [r.getMessage() for r in failed] == ["result sink failed for a:1"] * 3
    assert all(r.exc_info is not None and r.exc_info[0] is ValueError for r in failed)


async def test_a_probe_function_that_raises_is_logged_skipped_and_keeps_the_schedule(
    env: NewEnv, caplog: pytest.LogCaptureFixture
) -> None:
    """Decided: an exception out of the probe function is our bug, not the target's fault. It is
    logged with its traceback and counted as skip reason ``probe_error``; no result reaches the
    sink; the failure streak is left as it was; the target's next probe stays where it was
    planned at dispatch."""
    e = env(min_interval=1.0)
    s, other = spec("buggy:1", 8.0), spec("fine:1", 8.0)
    e.probe.failing.add(s.target)
    e.sched.update([s, other])
    e.sched.start()
    await e.clock.run_until(lambda: len(e.probe.times(s.target)) >= 2, limit=20.0)
    assert e.entry_failures(s) == 2
    e.probe.raising.add(s.target)
    with caplog.at_level(logging.ERROR, logger="connhealth.scheduler"):
        await e.clock.run_until(lambda: len(e.probe.times(s.target)) >= 5, limit=20.0)
    # Still probed every 8 / 4 = 2 s: the streak of 2 neither reset (8 s) nor grown (1 s).
    assert rel(e.probe.times(s.target), e.t0) == [4, 8, 10, 12, 14]
    assert e.entry_failures(s) == 2
    assert e.rec.skips == [PROBE_ERROR] * 3
    assert len(e.rec.results[s.target]) == 2, "a raising probe produced a result"
    assert e.sched.in_flight == 0 and not e.sched.entries[s.key].running
    logged = [r for r in caplog.records if r.name == "connhealth.scheduler"]
    assert [r.getMessage() for r in logged] == ["probe of buggy:1 with module tcp_connect raised; no result recorded"] * 3
    assert all(r.exc_info is not None and r.exc_info[0] is RuntimeError for r in logged)
    # The other target never noticed; the buggy one reports again once the bug is gone.
    assert rel(e.probe.times(other.target), e.t0) == [4, 12]
    e.probe.raising.clear()
    e.probe.failing.clear()
    await e.clock.run_until(lambda: len(e.rec.results[s.target]) >= 3, limit=20.0)
    assert e.rec.results[s.target][-1].success and e.clock.now() - e.t0 == pytest.approx(16)
    assert SKIP_REASONS == (STILL_RUNNING, SHUTTING_DOWN, PROBE_ERROR)


# --- lag ----------------------------------------------------------------------------

async def test_a_late_start_is_reported_as_lag_and_the_period_stays_planned(env: NewEnv) -> None:
    e = env()
    s = spec("x:1", 1.0)
    e.sched.update([s])
    e.sched.start()
    await e.clock.advance(0.4)
    await e.clock.jump(0.4)  # the loop was blocked across the 0.5 deadline
    await e.clock.run_until(lambda: len(e.probe.times(s.target)) >= 3, limit=10.0)
    assert rel(e.probe.times(s.target), e.t0) == [0.8, 1.5, 2.5]
    assert e.rec.lags == pytest.approx([0.3, 0, 0], abs=EPS)


async def test_far_behind_fires_once_instead_of_a_burst(env: NewEnv) -> None:
    e = env()
    s = spec("x:1", 1.0)
    e.sched.update([s])
    e.sched.start()
    await e.clock.jump(5.2)  # five periods missed
    await e.clock.run_until(lambda: len(e.probe.times(s.target)) >= 3, limit=10.0)
    assert rel(e.probe.times(s.target), e.t0) == [5.2, 6.2, 7.2]
    assert e.rec.lags == pytest.approx([4.7, 0, 0], abs=EPS)


# --- stop() ---------------------------------------------------------------------------

async def test_stop_lets_a_running_probe_finish_within_grace(env: NewEnv) -> None:
    e = env()
    s = spec("slow:1", 1.0)
    e.probe.durations[s.target] = 3.0
    e.sched.update([s])
    e.sched.start()
    await e.clock.advance(1.0)  # probing since 0.5, until 3.5
    assert e.sched.in_flight == 1
    assert await e.stop(10.0) == pytest.approx(e.t0 + 3.5), "stop() did not return when the probe finished"
    assert e.probe.cancelled == []
    assert [r.success for r in e.rec.results[s.target]] == [True]
    assert e.sched.in_flight == 0
    await e.clock.advance(10.0)
    assert len(e.probe.calls) == 1 and e.rec.skips == [], "probes were scheduled after stop()"


async def test_stop_cancels_probes_that_outlive_grace(env: NewEnv) -> None:
    e = env()
    s = spec("stuck:1", 1.0)
    e.probe.durations[s.target] = 100.0
    e.sched.update([s])
    e.sched.start()
    await e.clock.advance(1.0)
    assert await e.stop(2.0) == pytest.approx(e.t0 + 3.0)
    assert [(t, round(at - e.t0, 9)) for t, at in e.probe.cancelled] == [(s.target, 3.0)]
    assert e.rec.results[s.target] == [], "a cancelled probe reported a result"
    assert e.sched.in_flight == 0 and e.probe.active[s.target] == 0


async def test_stop_gives_up_on_a_probe_that_ignores_cancellation(env: NewEnv) -> None:
    e = env()
    s = spec("stubborn:1", 1.0)
    e.probe.durations[s.target] = 100.0
    e.probe.swallow_cancel.add(s.target)
    e.sched.update([s])
    e.sched.start()
    await e.clock.advance(1.0)
    assert await e.stop(2.0) == pytest.approx(e.t0 + 3.0 + CANCEL_WAIT)
    assert e.rec.results[s.target] == []


async def test_stop_skips_probes_still_waiting_for_a_slot(env: NewEnv) -> None:
    e = env(concurrency=1)
    a, b = spec("a:1", 1.0), spec("b:1", 1.0)
    e.probe.durations[a.target] = 3.0
    e.sched.update([a, b])
    e.sched.start()
    await e.clock.advance(1.0)  # a runs (0.5 to 3.5); b, due at 0.5 too, waits for the slot
    assert e.probe.times(b.target) == []
    assert await e.stop(10.0) == pytest.approx(e.t0 + 3.5)
    assert e.rec.skips == [SHUTTING_DOWN]
    assert e.probe.times(b.target) == [] and [r.success for r in e.rec.results[a.target]] == [True]


async def test_stop_without_probes_returns_at_once(env: NewEnv) -> None:
    e = env()
    e.sched.update([spec("x:1", 10.0)])
    e.sched.start()
    await e.clock.advance(1.0)
    assert await e.stop(5.0) == e.t0 + 1.0


# --- the real clock ----------------------------------------------------------------------

def test_scheduler_defaults_to_the_real_clock_and_run_probe() -> None:
    sched = Scheduler(MODULES, SchedulerConfig(), lambda spec, result: None)
    assert isinstance(sched.clock, MonotonicClock) and sched.probe is run_probe


async def test_monotonic_clock_wait() -> None:
    clock = MonotonicClock()
    before = time.monotonic()
    assert before <= clock.now() <= time.monotonic()
    event = asyncio.Event()
    t0 = clock.now()
    assert await clock.wait(event, 0.05) is False
    assert clock.now() - t0 >= 0.05 - 0.002  # a timeout never ends early (timer resolution aside)
    loop = asyncio.get_running_loop()
    loop.call_soon(event.set)
    assert await clock.wait(event, 30.0) is True
    assert await clock.wait(event, 0) is True  # already set
    event.clear()
    loop.call_soon(event.set)
    assert await clock.wait(event, None) is True
    event.clear()
    waiter = loop.create_task(clock.wait(event, None))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter


class SlowHTTP:
    """A raw HTTP/1.1 server that answers after ``delay`` and counts concurrent connections."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.active: dict[str, int] = defaultdict(int)
        self.max_active: dict[str, int] = defaultdict(int)
        self.total_active = 0
        self.max_total = 0
        self.server = RawTCPServer(self._handle)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        path = head.split(b" ", 2)[1].decode()
        self.active[path] += 1
        self.total_active += 1
        self.max_active[path] = max(self.max_active[path], self.active[path])
        self.max_total = max(self.max_total, self.total_active)
        try:
            await asyncio.sleep(self.delay)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            await writer.drain()
        finally:
            self.active[path] -= 1
            self.total_active -= 1

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.port}{path}"

    async def __aenter__(self) -> SlowHTTP:
        await self.server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.stop()


async def wait_real(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait for an event on the real clock; ``timeout`` only bounds a failing test."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None


class RealRecorder(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.arrivals: dict[str, list[float]] = defaultdict(list)  # time.monotonic() of each result

    def sink(self, spec: TargetSpec, result: ProbeResult, coverage: Coverage) -> None:
        self.arrivals[spec.target].append(time.monotonic())
        super().sink(spec, result, coverage)


async def test_real_clock_and_run_probe_end_to_end() -> None:
    async with HTTPServer() as http, RawTCPServer("close") as tcp, SlowHTTP(delay=0.4) as slow:
        rec = RealRecorder()
        interval = 0.2
        ok_http, ok_tcp = spec(http.url("/ok"), interval, "http_2xx"), spec(f"127.0.0.1:{tcp.port}", interval)
        refused = spec(f"127.0.0.1:{refused_port()}", interval)
        slows = [spec(slow.url(f"/s{i}"), interval, "http_2xx", timeout=5.0) for i in range(3)]
        sched = Scheduler(MODULES, SchedulerConfig(concurrency=2, min_interval=0.1), rec.sink,
                          on_lag=rec.on_lag, on_skip=rec.on_skip, rng=random.Random(1))
        started = time.monotonic()  # before update(): the first planned times are drawn from there
        sched.update([ok_http, ok_tcp, refused, *slows])
        sched.start()
        try:
            await wait_real(lambda: all(len(rec.results[s.target]) >= 3 for s in [ok_http, ok_tcp, refused, *slows]),
                            20.0, "three results of every target")
        finally:
            await sched.stop(5.0)
        elapsed = time.monotonic() - started
        assert all(r.success for s in (ok_http, ok_tcp, *slows) for r in rec.results[s.target])
        assert all(r.failure is not None and r.failure.reason == "connect_refused" for r in rec.results[refused.target])
        assert all(r.target == ok_http.target and r.module == "http_2xx" for r in rec.results[ok_http.target])
        # Never faster than the period allows: planned starts are >= 0.85 * interval apart and a
        # probe never starts before it is planned, so load can only lower these counts.
        for s in (ok_http, ok_tcp):
            assert len(rec.results[s.target]) <= elapsed / (interval * (1 - JITTER)) + 1, (s.target, elapsed)
        # Counted by the server: one connection per target at a time, at most two in all.
        assert all(slow.max_active[f"/s{i}"] == 1 for i in range(3)), dict(slow.max_active)
        assert 1 <= slow.max_total <= 2
        assert set(rec.skips) <= {STILL_RUNNING, SHUTTING_DOWN}  # shutting_down: queued at stop()
        assert sched.in_flight == 0


async def test_real_stop_waits_for_a_running_probe_then_cancels_past_grace() -> None:
    async with SlowHTTP(delay=0.5) as quick, SlowHTTP(delay=60.0) as stuck:
        rec = RealRecorder()
        sched = Scheduler(MODULES, SchedulerConfig(), rec.sink, on_skip=rec.on_skip, rng=FixedRandom(0.0))
        finishing = spec(quick.url("/a"), 30.0, "http_2xx")
        sched.update([finishing])
        sched.start()
        await wait_real(lambda: quick.active["/a"] == 1, 10.0, "the probe at the server")
        await sched.stop(30.0)
        assert [r.success for r in rec.results[finishing.target]] == [True], "the running probe did not finish"
        assert sched.in_flight == 0

        rec = RealRecorder()
        sched = Scheduler(MODULES, SchedulerConfig(), rec.sink, on_skip=rec.on_skip, rng=FixedRandom(0.0))
        hanging = spec(stuck.url("/b"), 30.0, "http_2xx", timeout=120.0)
        sched.update([hanging])
        sched.start()
        await wait_real(lambda: stuck.active["/b"] == 1, 10.0, "the probe at the server")
        t0 = time.monotonic()
        await sched.stop(0.3)
        took = time.monotonic() - t0
        assert 0.3 - 0.01 <= took < 10.0, took  # grace honoured on the real clock; far below the 60 s answer
        assert rec.results[hanging.target] == [] and sched.in_flight == 0
