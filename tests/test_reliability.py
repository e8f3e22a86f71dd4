"""Reliability (issue 12): supervised background tasks, all-or-nothing reload, limits and safe failure.

Faults a user cannot cause from outside (a bug in the scheduler's loop, the file watcher or the
trace-export thread) are injected by replacing one method with one that raises once; everything
around it is real: the exporter, its scheduler, real probes against loopback, the OTel SDK's own
in-memory span exporter.
"""
from __future__ import annotations

import asyncio
import errno
import random
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from exporter import metrics as m
from exporter.config import SchedulerConfig, TargetSpec, builtin_modules, load_config
from exporter.failures import classify
from exporter.scheduler import Scheduler
from exporter.server import APPLY_SLICE, Exporter, ServeOptions, _scrape_timeout
from exporter.sinks.traces_export import DroppingSpanProcessor
from exporter.supervise import Backoff, supervise
from exporter.targets import TargetFileWatcher

try:
    from tests.procs import LOCALHOST, REPO, ManagedProcess, free_port, refused_port
except ImportError:  # pragma: no cover - depends on how pytest put us on sys.path
    from procs import LOCALHOST, REPO, ManagedProcess, free_port, refused_port  # type: ignore[no-redef]

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0


async def until(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.01)


# --- supervision ------------------------------------------------------------------------------
async def test_supervise_restarts_a_failing_task_with_doubling_backoff_and_counts_each_failure() -> None:
    runs: list[float] = []
    failures: list[str] = []

    async def task() -> None:
        runs.append(time.monotonic())
        if len(runs) <= 3:
            raise RuntimeError(f"bug #{len(runs)}")

    await asyncio.wait_for(supervise("demo", task, failures.append, Backoff(initial=0.05, maximum=0.1)), WAIT)
    assert failures == ["demo"] * 3
    assert len(runs) == 4  # returned normally on the 4th run: done, not restarted
    gaps = [b - a for a, b in zip(runs, runs[1:])]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1 and gaps[2] >= 0.1  # 0.05, then doubled and capped at 0.1


def test_backoff_resets_after_a_stable_run() -> None:
    b = Backoff(initial=1.0, maximum=8.0)
    assert [b.next(0.0) for _ in range(5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert b.next(3600.0) == 1.0


async def test_supervise_lets_cancellation_through() -> None:
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.sleep(3600)

    task = asyncio.ensure_future(supervise("demo", forever, lambda name: None))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


class _RaisingOnce(random.Random):
    """An rng whose uniform() raises on its ``nth`` call: a bug inside the scheduler's own loop."""

    def __init__(self, nth: int) -> None:
        super().__init__(0)
        self.calls = 0
        self.nth = nth

    def uniform(self, a: float, b: float) -> float:
        self.calls += 1
        if self.calls == self.nth:
            raise RuntimeError("scheduler bug")
        return (a + b) / 2


async def test_scheduler_loop_failure_is_counted_and_scheduling_goes_on() -> None:
    probes: list[str] = []
    failures: list[str] = []
    target = f"{LOCALHOST}:{refused_port()}"
    modules = builtin_modules()

    async def probe(t: str, module: Any, timeout: float | None) -> Any:
        from exporter.engine import run_probe

        probes.append(t)
        return await run_probe(t, module, timeout)

    # Call 1 spreads the target at update(); call 2 is the first dispatch's next_interval: it raises.
    sched = Scheduler(modules, SchedulerConfig(), lambda spec, result: None, rng=_RaisingOnce(2), probe=probe,
                      on_failure=failures.append)
    sched.update([TargetSpec(target, "tcp_connect", 0.1, 1.0)])
    sched.start()
    try:
        await until(lambda: len(probes) >= 3, "probes after the scheduler's loop failed once")
    finally:
        await sched.stop(1.0)
    assert failures == ["scheduler"]


def _exporter(tmp_path: Path, config: str) -> Exporter:
    path = tmp_path / "connhealth.yml"
    path.write_text(config)
    return Exporter(ServeOptions(config_file=str(path)), load_config(path))


async def test_a_large_target_set_is_applied_a_slice_per_turn_of_the_loop(tmp_path: Path) -> None:
    """A reload or a changed target file applies its targets APPLY_SLICE at a time, the loop turning in
    between (100k targets took 3-10 s in one go): the same series and schedule as in one go."""
    n = 10_000
    specs = [TargetSpec(f"127.0.{i // 250}.{i % 250 + 1}:80", "tcp_connect", 60.0, 5.0) for i in range(n)]
    sliced, whole = _exporter(tmp_path, "scheduler: {}\n"), _exporter(tmp_path, "scheduler: {}\n")
    sliced.file_targets = whole.file_targets = specs
    whole._apply_targets()
    turns, done = 0, False

    async def ticker() -> None:
        nonlocal turns
        while not done:
            await asyncio.sleep(0)
            turns += 1

    ticking = asyncio.ensure_future(ticker())
    await sliced._apply_targets_sliced()
    done = True
    await ticking
    assert set(sliced.scheduler.entries) == set(whole.scheduler.entries) and len(whole.scheduler.entries) == n
    assert set(sliced.store.series) == set(whole.store.series) and len(whole.store.series) == n
    # A turn after each slice of the scheduler's update, of the series keys and of the store's sync.
    assert turns >= 3 * (n // APPLY_SLICE) - 1, turns


async def test_file_watcher_failure_is_counted_and_it_restarts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sd = tmp_path / "sd"
    sd.mkdir()
    exporter = _exporter(tmp_path, f"scheduler: {{file_refresh_interval: 100ms}}\n"
                                   f"target_files: [{{files: ['{sd}/*.yml'], interval: 1h}}]\n")
    real_scan = TargetFileWatcher.scan
    calls = 0

    def scan_failing_once(self: TargetFileWatcher, config: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("watcher bug")
        return real_scan(self, config)

    monkeypatch.setattr(TargetFileWatcher, "scan", scan_failing_once)
    exporter.start()
    try:
        await until(lambda: exporter.task_failures["file_watcher"] == 1, "the watcher's failure to be counted")
        (sd / "a.yml").write_text(f"- targets: ['{LOCALHOST}:1']\n")
        await until(lambda: len(exporter.scheduler.entries) == 1, "the restarted watcher to load a new file")
        assert exporter.task_failures == {"scheduler": 0, "file_watcher": 1, "loop_lag": 0, "trace_export": 0, "prerender": 0}
        collected = {s.labels["task"]: s.value for metric in exporter.self_metrics.registry.collect()
                     if metric.name == m.BACKGROUND_FAILURES.removesuffix("_total") for s in metric.samples
                     if s.name.endswith("_total")}
        assert collected == {"scheduler": 0, "file_watcher": 1, "loop_lag": 0, "trace_export": 0, "prerender": 0}
    finally:
        await exporter.stop()


async def test_trace_export_thread_failure_is_counted_and_it_restarts(monkeypatch: pytest.MonkeyPatch) -> None:
    memory = InMemorySpanExporter()
    processor = DroppingSpanProcessor(memory, queue_size=16, batch_size=4, interval=0.01)
    real_drain = processor._drain
    calls = 0

    def drain_failing_once() -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("export thread bug")
        return real_drain()

    monkeypatch.setattr(processor, "_drain", drain_failing_once)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    try:
        with provider.get_tracer("test").start_as_current_span("probe"):
            pass
        await until(lambda: processor.worker_failures == 1 and len(memory.get_finished_spans()) == 1,
                    "the restarted export thread to export the span")
    finally:
        processor.shutdown()
    assert [s.name for s in memory.get_finished_spans()] == ["probe"]


# --- reload: all or nothing --------------------------------------------------------------------
def _state(exporter: Exporter) -> tuple[Any, set[Any]]:
    return exporter.config, set(exporter.scheduler.entries)


async def test_reload_failing_in_the_file_scan_keeps_everything_and_reports_failure(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sd = tmp_path / "sd"
    sd.mkdir()
    (sd / "a.yml").write_text(f"- targets: ['{LOCALHOST}:1']\n")
    exporter = _exporter(tmp_path, f"targets: ['{LOCALHOST}:2']\ntarget_files: [{{files: ['{sd}/*.yml'], interval: 1h}}]\n")
    exporter.start()
    try:
        await until(lambda: len(exporter.scheduler.entries) == 2, "both targets")
        before = _state(exporter)
        Path(exporter.options.config_file or "").write_text(f"targets: ['{LOCALHOST}:3']\n"
                                                             f"target_files: [{{files: ['{sd}/*.yml'], interval: 1h}}]\n")

        def scan_raises(self: TargetFileWatcher, config: Any) -> Any:
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(TargetFileWatcher, "scan", scan_raises)
        ok, message = await exporter.reload()
        assert (ok, message) == (False, "OSError: [Errno 5] Input/output error")
        assert _state(exporter) == before, "a failed reload changed the running config"
        assert _reload_ok(exporter) == (0.0, 0.0)  # connhealth's name and blackbox's
        monkeypatch.undo()
        ok, message = await exporter.reload()
        assert (ok, message) == (True, "config reloaded")
        assert {k[0] for k in exporter.scheduler.entries} == {f"{LOCALHOST}:3", f"{LOCALHOST}:1"}
        assert _reload_ok(exporter) == (1.0, 1.0)  # connhealth's name and blackbox's
    finally:
        await exporter.stop()


async def test_reload_failing_while_committing_rolls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exporter = _exporter(tmp_path, f"targets: ['{LOCALHOST}:1']\n")
    exporter.start()
    try:
        before = _state(exporter)
        Path(exporter.options.config_file or "").write_text(f"targets: [{{target: '{LOCALHOST}:2', labels: {{team: a}}}}]\n")
        real = exporter.store.set_label_names
        calls = 0

        def fails_first(names: Any) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("store bug")
            real(names)

        monkeypatch.setattr(exporter.store, "set_label_names", fails_first)
        ok, message = await exporter.reload()
        assert (ok, message) == (False, "RuntimeError: store bug")
        assert _state(exporter) == before
        assert _reload_ok(exporter) == (0.0, 0.0)  # connhealth's name and blackbox's
    finally:
        await exporter.stop()


# --- limits and safe failure ---------------------------------------------------------------------
# None: rejected with 400. 5e-324 is the smallest positive float: positive and finite, so clamped.
@pytest.mark.parametrize(("header", "expected"), [("10", 9.5), ("1e308", 3600.0), ("0.1", 0.001), ("5e-324", 0.001),
                                                  ("nan", None), ("inf", None), ("-1", None), ("0", None)])
def test_scrape_timeout_header_is_clamped_or_rejected(header: str, expected: float | None) -> None:
    if expected is None:  # the 400's text names the header and the value
        with pytest.raises(ValueError, match=f"X-Prometheus-Scrape-Timeout-Seconds: '{header}' "):
            _scrape_timeout(header, 0.5)
    else:
        assert _scrape_timeout(header, 0.5) == expected
    assert _scrape_timeout(None, 0.5) is None  # no header: the module's timeout


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM])
def test_out_of_local_resources_is_resource_exhausted_not_internal_error(code: int) -> None:
    failure = classify(OSError(code, "resource"), "connect")
    assert (failure.phase, failure.reason) == ("connect", "resource_exhausted")


def test_real_emfile_during_a_probe_is_resource_exhausted() -> None:
    # In a child with a soft limit of 64 open files, all of them taken: the probe's socket() gets EMFILE.
    code = textwrap.dedent(f"""
        import asyncio, resource, socket
        from exporter.config import builtin_modules
        from exporter.engine import run_probe
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        async def main():
            keep = []
            try:
                while True:
                    keep.append(socket.socket())
            except OSError:
                pass
            result = await run_probe("{LOCALHOST}:{refused_port()}", builtin_modules()["tcp_connect"], 2.0)
            print(result.failure.phase, result.failure.reason)
        asyncio.run(main())
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=30)
    assert proc.stdout.strip() == "connect resource_exhausted", proc.stdout + proc.stderr


@pytest.mark.parametrize(("nofile", "soft_after", "warns"), [("256:4096", 4096, False), ("300:300", 300, True)])
async def test_serve_raises_the_fd_soft_limit_and_warns_when_it_stays_low(
        tmp_path: Path, nofile: str, soft_after: int, warns: bool) -> None:
    proc = ManagedProcess("connhealth", lambda port: [
        "prlimit", f"--nofile={nofile}", sys.executable, "-m", "exporter", "serve",
        "--web.listen-address", f"{LOCALHOST}:{port}"], "/-/ready", tmp_path)
    await proc.start()
    try:
        assert proc.proc is not None
        limits = Path(f"/proc/{proc.proc.pid}/limits").read_text()
        row = next(line for line in limits.splitlines() if line.startswith("Max open files"))
        assert row.split()[3:5] == [str(soft_after), nofile.split(":")[1]], row
        assert ("open-file limit 300 is low for 1256 concurrent probes" in proc.log()) is warns, proc.log()
    finally:
        await proc.astop()


@pytest.mark.parametrize(("args", "message"), [
    (["--timeout-offset", "nan"], "--timeout-offset must be zero or more and finite"),
    (["--shutdown-grace", "inf"], "--shutdown-grace must be zero or more and finite"),
    (["--timeout-offset", "2h"], "--timeout-offset must be between 0 and 3600, got 7200.0"),
    (["--probe.concurrency", "0"], "--probe.concurrency must be between 1 and 1e+06, got 0"),
    (["--probe.connect-rate", "nan"], "--probe.connect-rate must be between 0 and 1000, got nan"),
    (["--probe.connect-burst", "0"], "--probe.connect-burst must be between 1 and 100000, got 0"),
])
def test_serve_flags_are_range_checked(args: list[str], message: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "exporter", "serve", "--web.listen-address", f"{LOCALHOST}:{free_port()}",
                           *args], capture_output=True, text=True, cwd=REPO, timeout=30)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr



def test_an_empty_label_is_no_label_so_two_targets_cannot_render_as_one_series() -> None:
    # Found by the continuous-exposition property: {a: ""} and {} rendered the same series twice,
    # which Prometheus refuses. As in Prometheus, an empty label is no label.
    from exporter.config import parse_config

    config = parse_config("targets: [{target: '127.0.0.1:1', labels: {a: ''}}, {target: '127.0.0.1:1', labels: {a: x}}, "
                          "'127.0.0.1:1']\n")
    assert [t.labels for t in config.targets] == [(), (("a", "x"),), ()]
    assert len({t.key for t in config.targets}) == 2


def _reload_ok(exporter) -> tuple[float | None, float | None]:
    registry = exporter.self_metrics.registry
    return (registry.get_sample_value("connhealth_config_last_reload_successful"),
            registry.get_sample_value("blackbox_exporter_config_last_reload_successful"))
