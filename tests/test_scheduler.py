"""The continuous-mode Scheduler against real local servers, with short intervals.

Concurrency is measured where it matters: on the server side, by counting
connections that are open at the same time.
"""
from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict

import pytest

from exporter.config import SchedulerConfig, TargetSpec, builtin_modules
from exporter.result import ProbeResult
from exporter.scheduler import JITTER, Scheduler

try:
    from tests.procs import refused_port
    from tests.peers import HTTPServer, RawTCPServer
except ImportError:  # pragma: no cover - depends on how pytest put us on sys.path
    from procs import refused_port  # type: ignore[no-redef]
    from peers import HTTPServer, RawTCPServer

pytestmark = pytest.mark.timeout(30)

MODULES = builtin_modules()


class Recorder:
    """The scheduler's sink and skip observer: what ran, when, and what was skipped."""

    def __init__(self) -> None:
        self.results: dict[str, list[ProbeResult]] = defaultdict(list)
        self.skips: list[str] = []
        self.lags: list[float] = []

    def on_lag(self, seconds: float) -> None:
        self.lags.append(seconds)

    def slack(self) -> float:
        """Tolerance for gaps between actual starts: the scheduler plans from planned times, so a
        start that was late by ``lag`` shortens the next gap by as much (a loaded test machine)."""
        return max(self.lags, default=0.0) + 0.01

    def sink(self, spec: TargetSpec, result: ProbeResult) -> None:
        self.results[spec.target].append(result)

    def on_skip(self, reason: str) -> None:
        self.skips.append(reason)

    def starts(self, target: str) -> list[float]:
        return [r.started_at for r in self.results[target]]

    async def wait(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; results: "
                             + str({t: len(r) for t, r in self.results.items()}))


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


def spec(target: str, interval: float, module: str | None = None, timeout: float | None = 2.0) -> TargetSpec:
    return TargetSpec(target, module or ("http_2xx" if target.startswith("http") else "tcp_connect"), interval, timeout)


@pytest.fixture
async def new_scheduler():
    """new_scheduler(concurrency=64, min_interval=0.1, seed=1) -> (Recorder, Scheduler); all stopped at teardown."""
    schedulers: list[Scheduler] = []

    def _new(*, concurrency: int = 64, min_interval: float = 0.1, seed: int = 1) -> tuple[Recorder, Scheduler]:
        rec = Recorder()
        config = SchedulerConfig(concurrency=concurrency, min_interval=min_interval)
        sched = Scheduler(MODULES, config, rec.sink, on_lag=rec.on_lag, on_skip=rec.on_skip, rng=random.Random(seed))
        schedulers.append(sched)
        return rec, sched

    yield _new
    for s in schedulers:
        await s.stop(0.5)


async def test_targets_are_spread_over_their_interval(new_scheduler) -> None:
    async with HTTPServer() as http:
        rec, sched = new_scheduler(seed=7)
        targets = [http.url(f"/ok?n={i}") for i in range(12)]
        sched.update([spec(t, 0.8) for t in targets])
        t0 = time.time()
        sched.start()
        await rec.wait(lambda: all(rec.results[t] for t in targets), 2.0, "every target's first probe")
        await sched.stop(1.0)
        firsts = sorted(rec.starts(t)[0] for t in targets)
        assert firsts[0] - t0 < 0.8 + 0.1 and firsts[-1] - t0 < 0.8 + 0.1, "first probes not within the first interval"
        assert firsts[-1] - firsts[0] > 0.3, f"targets fired in lockstep: {[round(f - t0, 3) for f in firsts]}"
        # Not bunched: no 10 ms window holds more than a third of the targets.
        for f in firsts:
            assert sum(1 for g in firsts if f <= g < f + 0.010) <= len(targets) // 3


async def test_periods_are_jittered(new_scheduler) -> None:
    async with HTTPServer() as http:
        rec, sched = new_scheduler(seed=3)
        target = http.url("/ok")
        sched.update([spec(target, 0.15)])
        sched.start()
        await rec.wait(lambda: len(rec.results[target]) >= 8, 3.0, "8 probes")
        await sched.stop(1.0)
        starts = rec.starts(target)
        gaps = [b - a for a, b in zip(starts, starts[1:])]
        slack = rec.slack()
        assert all(0.15 * (1 - JITTER) - slack <= g <= 0.15 * (1 + JITTER) + slack for g in gaps), (gaps, slack)
        assert max(gaps) - min(gaps) > 0.005, f"no jitter: {gaps}"
        # The planned periods themselves, exactly: within ±15 %, and spread over that range.
        entry = sched.entries[spec(target, 0.15).key]
        periods = [sched.next_interval(entry) for _ in range(2000)]
        assert 0.15 * (1 - JITTER) <= min(periods) < 0.15 * (1 - JITTER / 2)
        assert 0.15 * (1 + JITTER / 2) < max(periods) <= 0.15 * (1 + JITTER)


async def test_never_two_probes_of_one_target_at_once(new_scheduler) -> None:
    async with SlowHTTP(delay=0.5) as slow:
        rec, sched = new_scheduler()
        target = slow.url("/slow")
        sched.update([spec(target, 0.2)])
        sched.start()
        max_in_flight = 0
        deadline = time.monotonic() + 1.8
        while time.monotonic() < deadline:
            max_in_flight = max(max_in_flight, sched.in_flight)
            await asyncio.sleep(0.01)
        await sched.stop(1.0)
        assert slow.max_active["/slow"] == 1, "two probes of one target were connected at once"
        assert max_in_flight == 1
        assert rec.skips and set(rec.skips) == {"still_running"}, rec.skips
        assert 2 <= len(rec.results[target]) <= 4
        assert all(r.success for r in rec.results[target])


async def test_total_concurrency_is_bounded(new_scheduler) -> None:
    async with SlowHTTP(delay=0.25) as slow:
        rec, sched = new_scheduler(concurrency=2)
        targets = [slow.url(f"/t{i}") for i in range(6)]
        sched.update([spec(t, 0.2) for t in targets])
        sched.start()
        max_in_flight = 0
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            max_in_flight = max(max_in_flight, sched.in_flight)
            await asyncio.sleep(0.005)
        await sched.stop(1.0)
        assert slow.max_total == 2, f"server saw {slow.max_total} concurrent probes with concurrency=2"
        assert max_in_flight == 2
        assert all(v == 1 for v in slow.max_active.values())
        # Bounded, not starved: every target got probed.
        assert all(rec.results[t] for t in targets), {t: len(rec.results[t]) for t in targets}


async def test_failing_target_is_probed_more_often_bounded_by_min_interval(new_scheduler) -> None:
    async with RawTCPServer("close") as healthy_server:
        min_interval = 0.15
        rec, sched = new_scheduler(min_interval=min_interval, seed=11)
        healthy = f"127.0.0.1:{healthy_server.port}"
        failing = f"127.0.0.1:{refused_port()}"
        interval = 0.8
        sched.update([spec(healthy, interval), spec(failing, interval)])
        sched.start()
        await asyncio.sleep(3.0)
        await sched.stop(1.0)
        ok, bad = rec.results[healthy], rec.results[failing]
        assert ok and all(r.success for r in ok)
        assert bad and all(r.failure is not None and r.failure.reason == "connect_refused" for r in bad)
        assert len(bad) >= 2 * len(ok), f"failing {len(bad)} vs healthy {len(ok)} probes"
        starts = rec.starts(failing)
        gaps = [b - a for a, b in zip(starts, starts[1:])]
        slack = rec.slack()
        # The very first failure already halves the next interval ...
        assert gaps[0] <= interval / 2 * (1 + JITTER) + slack, f"no faster re-check after the first failure: {gaps}"
        # ... and re-probing never goes faster than min_interval (jitter included).
        assert min(gaps) >= min_interval - slack, f"faster than min_interval={min_interval}: {gaps} (slack {slack:.3f})"
        entry = sched.entries[spec(failing, interval).key]
        assert entry.consecutive_failures == len(bad)
        assert min(sched.next_interval(entry) for _ in range(2000)) >= min_interval
        assert sorted(gaps)[len(gaps) // 2] < 1.5 * min_interval, f"did not converge to min_interval: {gaps}"


async def test_recovered_target_returns_to_its_interval(new_scheduler) -> None:
    port = refused_port()
    rec, sched = new_scheduler(min_interval=0.1, seed=5)
    target = f"127.0.0.1:{port}"
    sched.update([spec(target, 0.6)])
    sched.start()
    await rec.wait(lambda: len(rec.results[target]) >= 3, 3.0, "three failures")
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port)
    try:
        await rec.wait(lambda: any(r.success for r in rec.results[target]), 2.0, "a success")
        n = len(rec.results[target])
        await asyncio.sleep(1.0)
        # After recovery: at most one quick re-check already planned, then the normal 0.6 s period.
        assert len(rec.results[target]) - n <= 3
        assert sched.entries[spec(target, 0.6).key].consecutive_failures == 0
    finally:
        server.close()
        await sched.stop(0.5)


async def test_update_adds_and_removes_without_resetting_kept(new_scheduler) -> None:
    async with HTTPServer() as http:
        rec, sched = new_scheduler(min_interval=0.1)
        kept_failing = spec(f"127.0.0.1:{refused_port()}", 0.4)
        kept_ok = spec(http.url("/ok"), 0.2)
        removed = spec(http.url("/status/200"), 0.2)
        added = spec(http.url("/redirect/0"), 0.2)
        sched.update([kept_failing, kept_ok, removed])
        sched.start()
        await rec.wait(lambda: len(rec.results[kept_failing.target]) >= 2 and len(rec.results[kept_ok.target]) >= 3
                       and rec.results[removed.target], 3.0, "the initial targets")
        entry_failing = sched.entries[kept_failing.key]
        entry_ok = sched.entries[kept_ok.key]
        failures_before = entry_failing.consecutive_failures
        assert failures_before >= 2
        due_before = entry_ok.due
        n_removed = len(rec.results[removed.target])

        sched.update([kept_failing, kept_ok, added])
        assert set(sched.entries) == {kept_failing.key, kept_ok.key, added.key}
        assert sched.entries[kept_failing.key] is entry_failing and sched.entries[kept_ok.key] is entry_ok
        assert entry_failing.consecutive_failures >= failures_before, "the kept target's failure streak was reset"
        assert entry_ok.due == due_before, "the kept target was re-scheduled"
        n_ok = len(rec.results[kept_ok.target])
        await rec.wait(lambda: len(rec.results[added.target]) >= 2 and len(rec.results[kept_ok.target]) >= n_ok + 3,
                       3.0, "the added target and the kept one")
        assert len(rec.results[removed.target]) == n_removed, "a removed target kept reporting results"
        # A kept target whose interval shrinks picks up the new interval without waiting out the old one.
        slow_then_fast = spec(http.url("/ok?x=1"), 5.0)
        sched.update([kept_ok, slow_then_fast])
        await asyncio.sleep(0.05)
        t0 = time.time()
        faster = TargetSpec(slow_then_fast.target, slow_then_fast.module, 0.2, slow_then_fast.timeout)
        assert faster.key == slow_then_fast.key
        sched.update([kept_ok, faster])
        await rec.wait(lambda: any(s >= t0 for s in rec.starts(faster.target)), 1.0, "the shortened interval")


async def test_stop_lets_running_probes_finish_within_grace(new_scheduler) -> None:
    async with SlowHTTP(delay=0.5) as slow:
        rec, sched = new_scheduler()
        target = slow.url("/a")
        sched.update([spec(target, 0.2)])
        sched.start()
        await rec.wait(lambda: sched.in_flight == 1, 2.0, "a probe in flight")
        t0 = time.monotonic()
        await sched.stop(2.0)
        took = time.monotonic() - t0
        assert took < 0.7, f"stop took {took:.2f}s for a 0.5 s probe"
        assert len(rec.results[target]) == 1 and rec.results[target][0].success, "the running probe did not finish"
        assert sched.in_flight == 0
        await asyncio.sleep(0.4)
        assert len(rec.results[target]) == 1 and slow.max_active["/a"] == 1, "probes ran after stop()"


async def test_stop_cancels_probes_that_outlive_grace(new_scheduler) -> None:
    async with SlowHTTP(delay=3.0) as slow:
        rec, sched = new_scheduler()
        target = slow.url("/b")
        sched.update([spec(target, 0.2, timeout=5.0)])
        sched.start()
        await rec.wait(lambda: sched.in_flight == 1, 2.0, "a probe in flight")
        t0 = time.monotonic()
        await sched.stop(0.2)
        took = time.monotonic() - t0
        assert 0.15 <= took < 1.0, took
        assert sched.in_flight == 0
        assert not rec.results[target], "a cancelled probe reported a result"
