"""``connhealth serve``: /probe (blackbox-compatible), /metrics (continuous mode), status page, reload."""
from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import gc
import logging
import math
import os
import platform
import signal
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import yaml
from aiohttp import web
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.utils import floatToGoString
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_CONTENT_TYPE
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from . import __version__
from . import metrics as m
from .net import pacing
from .config import (MAX_TIMEOUT, Config, ConfigError, Module, TargetSpec, config_view, load_config, load_config_or_builtins,
                     module_view, shown_target, split_host_port)
from .schema import StartupError, brief, ipv6_hint, join_host_port
from .engine import expected_families, expected_phases, run_probe
from .fastprobe import FastProbe, FastProbeSite
from .net.tls import check_server_name
from .probers import PROBERS
from .sinks.exposition import probe_text
from .sinks.history import History, HistoryEntry
from .sinks.merge import add_labels
from .resources import raise_fd_limit
from .result import ProbeResult
from .scheduler import Coverage, Scheduler
from .shard import Shard
from .status import render_status
from .sinks.store import SeriesStore
from .supervise import supervise
from .targets import TargetFileWatcher
from .webconfig import WebConfig, load_web_config
from .sinks.traces_export import DroppingSpanProcessor, TracingOptions, dropped_samples, setup_tracing, shutdown_tracing

log = logging.getLogger("connhealth.server")

CONTENT_TYPE_TEXT = "text/plain; version=0.0.4; charset=utf-8"
LOOP_LAG_INTERVAL = 0.25
# Targets applied per turn of the loop on a reload or a target-file change (Exporter._apply_targets_sliced).
APPLY_SLICE = 2000
# How often the targets probed since are rendered ahead of the next scrape, and for how long after a
# format's last scrape (Exporter._prerender).
PRERENDER_INTERVAL = 1.0
PRERENDER_FOR = 600.0
_PROPAGATOR = TraceContextTextMapPropagator()
# Beyond this many /probe requests at once, more are answered 503 (--probe.concurrency): 2000
# concurrent probes to a blackhole took 4017 fds and, at nofile 1024, a thousand internal errors.
DEFAULT_PROBE_CONCURRENCY = 1000
MAX_HISTORY = 100_000


@dataclass
class ServeOptions:
    config_file: str | None = None
    listen: Sequence[str] = (":9115",)
    route_prefix: str = "/"
    timeout_offset: float = 0.5
    history_limit: int = 100
    history_per_target: int = 10
    grace: float = 10.0
    tracing: TracingOptions = TracingOptions()
    web_config_file: str | None = None  # exporter-toolkit's --web.config.file: TLS, basic auth, headers
    trace_url: str | None = None  # status page: link a trace id here ("{trace_id}" is replaced)
    created_series: bool = False  # the _created series of the exporter's own counters
    probe_concurrency: int = DEFAULT_PROBE_CONCURRENCY
    # Continuous targets this process probes: those every shard here owns (--shard, then the worker's i/N).
    shards: tuple[Shard, ...] = ()
    # Labels on every /metrics series (--prober, --external-label and the config's external_labels).
    external_labels: tuple[tuple[str, str], ...] = ()
    worker: int | None = None  # the worker's index under --workers (None: a process of its own)
    # Paced connects (net/pacing.py): tokens per millisecond (0: no pacing) and the most held at once.
    connect_rate: float = pacing.DEFAULT_RATE_PER_MS
    connect_burst: int = pacing.DEFAULT_BURST

    def check(self) -> None:
        """Every number finite and in range; a ConfigError names the flag."""
        for flag, number, low, high in (("--timeout-offset", self.timeout_offset, 0.0, MAX_TIMEOUT),
                                        ("--shutdown-grace", self.grace, 0.0, MAX_TIMEOUT),
                                        ("--history.limit", self.history_limit, 1, MAX_HISTORY),
                                        ("--probe.concurrency", self.probe_concurrency, 1, 1_000_000),
                                        ("--probe.connect-rate", self.connect_rate, 0.0, pacing.MAX_RATE_PER_MS),
                                        ("--probe.connect-burst", self.connect_burst, 1, pacing.MAX_BURST)):
            if not (math.isfinite(number) and low <= number <= high):
                raise ConfigError(f"{flag} must be between {low:g} and {high:g}, got {number!r}")

    def pacer(self) -> pacing.ConnectPacer | None:
        return pacing.ConnectPacer(self.connect_rate, self.connect_burst) if self.connect_rate > 0 else None


class SelfMetrics:
    """The exporter's own health, in a small prometheus_client registry."""

    def __init__(self, exporter: Exporter) -> None:
        # One extra _created series per counter and histogram, which nobody graphs
        # (blackbox has none); --metrics.created brings them back. A process-wide switch.
        from prometheus_client import disable_created_metrics, enable_created_metrics

        (enable_created_metrics if exporter.options.created_series else disable_created_metrics)()
        r = self.registry = CollectorRegistry(auto_describe=True)
        spec = {s.name: s for s in m.SELF}
        Gauge(m.BUILD_INFO, spec[m.BUILD_INFO].help, ["version", "python"], registry=r).labels(__version__, platform.python_version()).set(1)
        self.reload_ok = _Gauges(*(Gauge(name, spec[name].help, registry=r) for name in (m.RELOAD_SUCCESS, m.BB_RELOAD_SUCCESS)))
        self.reload_ts = _Gauges(*(Gauge(name, spec[name].help, registry=r) for name in (m.RELOAD_TIMESTAMP, m.BB_RELOAD_TIMESTAMP)))
        self.module_unknown = Counter(m.BB_MODULE_UNKNOWN.removesuffix("_total"), spec[m.BB_MODULE_UNKNOWN].help, registry=r)
        self.reloads = Counter(m.RELOADS.removesuffix("_total"), spec[m.RELOADS].help, ["result"], registry=r)
        in_flight = Gauge(m.IN_FLIGHT, spec[m.IN_FLIGHT].help, ["mode"], registry=r)
        in_flight.labels("scheduled").set_function(lambda: exporter.scheduler.in_flight)
        in_flight.labels("probe_endpoint").set_function(lambda: exporter.probe_endpoint_in_flight)
        buckets = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
        self.scheduler_lag = Histogram(m.SCHEDULER_LAG, spec[m.SCHEDULER_LAG].help, buckets=buckets, registry=r)
        self.loop_lag = Histogram(m.LOOP_LAG, spec[m.LOOP_LAG].help, buckets=buckets, registry=r)
        self.self_delay = LoopHistogram(m.SELF_DELAY, spec[m.SELF_DELAY].help, "mode", ("scheduled", "probe_endpoint"),
                                        (0.0001, 0.0005, *buckets), created=exporter.options.created_series)
        r.register(self.self_delay)
        self.skipped = Counter(m.SKIPPED.removesuffix("_total"), spec[m.SKIPPED].help, ["reason"], registry=r)
        Gauge(m.SCHEDULED_TARGETS, spec[m.SCHEDULED_TARGETS].help, registry=r).set_function(lambda: len(exporter.scheduler.entries))
        self.file_errors = Counter(m.TARGET_FILE_ERRORS.removesuffix("_total"), spec[m.TARGET_FILE_ERRORS].help, registry=r)
        self.probe_rejected = Counter(m.PROBE_REJECTED.removesuffix("_total"), spec[m.PROBE_REJECTED].help, registry=r)
        ProcessCollector(registry=r)
        r.register(_OutsideCounters(exporter))


class LoopHistogram:
    """A histogram with one label, observed on the event loop only (no lock): a bisect and two
    additions per observation, where prometheus_client's Histogram takes two locks and walks its
    buckets in Python: ≈ 14k CPU instructions per observation, 4 % of a tcp /probe
    (docs/benchmarks.md). Exposed exactly as a prometheus_client Histogram with that label
    (``_created`` too when ``created``): tests/test_kernel_timing.py compares the two."""

    def __init__(self, name: str, help_text: str, label: str, values: Sequence[str], buckets: Sequence[float], *,
                 created: bool) -> None:
        self._name, self._help, self._label = name, help_text, label
        self._bounds = tuple(buckets)
        self._le = [floatToGoString(b) for b in self._bounds] + ["+Inf"]
        self._counts = {value: [0] * (len(self._bounds) + 1) for value in values}
        self._sums = dict.fromkeys(values, 0.0)
        self._created = time.time() if created else None

    def observe(self, value: str, amount: float) -> None:
        self._counts[value][bisect.bisect_left(self._bounds, amount)] += 1
        self._sums[value] += amount

    def describe(self) -> list[Metric]:
        return [Metric(self._name, self._help, "histogram")]

    def collect(self) -> Iterator[Metric]:
        name = self._name
        family = Metric(name, self._help, "histogram")
        for value, counts in self._counts.items():
            labels = {self._label: value}
            total = 0.0
            for le, count in zip(self._le, counts):
                total += count
                family.add_sample(f"{name}_bucket", {**labels, "le": le}, total)
            family.add_sample(f"{name}_count", labels, total)
            family.add_sample(f"{name}_sum", labels, self._sums[value])
            if self._created is not None:
                family.add_sample(f"{name}_created", labels, self._created)
        yield family


class _Gauges:
    """One value under connhealth's name and blackbox_exporter's."""

    def __init__(self, *gauges: Gauge) -> None:
        self.gauges = gauges

    def set(self, value: float) -> None:
        for gauge in self.gauges:
            gauge.set(value)


class _OutsideCounters:
    """Counters kept outside the registry: span drops and background-task failures (the trace
    export thread counts its own, in the span processor)."""

    def __init__(self, exporter: Exporter) -> None:
        self.exporter = exporter

    def collect(self) -> list[CounterMetricFamily]:
        spec = {s.name: s for s in m.SELF}
        family = CounterMetricFamily(m.TRACE_EXPORT_DROPS.removesuffix("_total"), spec[m.TRACE_EXPORT_DROPS].help, labels=["reason"])
        for reason, count in dropped_samples(self.exporter.span_processor):
            family.add_metric([reason], count)
        failures = CounterMetricFamily(m.BACKGROUND_FAILURES.removesuffix("_total"), spec[m.BACKGROUND_FAILURES].help,
                                       labels=["task"])
        processor = self.exporter.span_processor
        counts = dict(self.exporter.task_failures, trace_export=processor.worker_failures if processor else 0)
        for task in m.BACKGROUND_TASKS:
            failures.add_metric([task], counts.get(task, 0))
        return [family, failures]


class Exporter:
    def __init__(self, options: ServeOptions, config: Config, span_processor: DroppingSpanProcessor | None = None) -> None:
        self.options = options
        self.config = config
        self.span_processor = span_processor
        self.history = History(options.history_limit, options.history_per_target)
        self.started_at = time.time()
        self.probe_endpoint_in_flight = 0
        self.pacer = options.pacer()  # one bucket for scheduled and /probe connects alike
        self.task_failures: dict[str, int] = dict.fromkeys(m.BACKGROUND_TASKS, 0)
        self.self_metrics = SelfMetrics(self)
        self.store = SeriesStore(_label_names(config.targets), config.scheduler.buckets or m.DEFAULT_BUCKETS,
                                 config.scheduler.group_labels, options.external_labels,
                                 (("worker", str(options.worker)),) if options.worker is not None else ())
        self.scheduler = Scheduler(
            config.modules, config.scheduler, self._on_result,
            on_lag=self.self_metrics.scheduler_lag.observe,
            on_skip=lambda reason: self.self_metrics.skipped.labels(reason).inc(),
            probe=self._probe_configured,
            on_failure=self._task_failed,
        )
        self.watcher = TargetFileWatcher()
        self.file_targets: list[TargetSpec] = []
        self.ready = False
        self._background: set[asyncio.Task[Any]] = set()
        # Reloads and target-file scans take turns: each builds its result in a thread, then commits.
        self._targets_lock = asyncio.Lock()
        self._rescan = asyncio.Event()
        # /metrics formats (OpenMetrics or not) by the loop time of their last scrape: the ones _prerender keeps rendered.
        self.scraped_formats: dict[bool, float] = {}
        self.self_metrics.reload_ok.set(1)
        self.self_metrics.reload_ts.set(time.time())

    # --- lifecycle ----------------------------------------------------------
    def start(self) -> None:
        self._apply_targets()
        self.scheduler.start()
        self._spawn(supervise("loop_lag", self._loop_lag, self._task_failed))
        self._spawn(supervise("file_watcher", self._watch_files, self._task_failed))
        self._spawn(supervise("prerender", self._prerender, self._task_failed))
        self.ready = True

    def _task_failed(self, task: str) -> None:
        self.task_failures[task] = self.task_failures.get(task, 0) + 1

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def spawn_reload(self) -> None:
        """SIGHUP: reload in the background (the signal handler itself must not block)."""
        self._spawn(self.reload())

    async def stop(self) -> None:
        self.ready = False
        for task in list(self._background):
            task.cancel()
        await self.scheduler.stop(self.options.grace)

    async def reload(self) -> tuple[bool, str]:
        """Re-read the config file, all or nothing.

        The new config and its target files are read and parsed in a thread
        (bounded: schema.load_yaml), then replace the old ones in one step on
        the loop. Any failure, of any kind, keeps the old config running and
        sets connhealth_config_last_reload_successful to 0. A target file that
        is broken keeps its last good targets and is counted in
        connhealth_target_file_errors_total, as between reloads.
        """
        if self.options.config_file is None:
            return True, "no config file: nothing to reload"
        path = self.options.config_file
        log.debug("reload: reading config", extra={"kv": {"file": path}})
        async with self._targets_lock:
            old = (self.config, self.watcher, self.file_targets)
            try:
                watcher = self.watcher.for_reload()
                config, file_targets = await asyncio.to_thread(_build, path, watcher)
                log.debug("reload: config and target files parsed",
                          extra={"kv": {"modules": len(config.modules), "file_targets": len(file_targets)}})
                self.config, self.watcher, self.file_targets = config, watcher, file_targets
                await self._apply_targets_sliced()
            except Exception as exc:  # noqa: BLE001 - a reload must never take the exporter down
                message = str(exc) if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {str(exc)[:500]}"
                if not isinstance(exc, ConfigError):
                    log.exception("config reload failed")
                if self.config is not old[0]:  # failed while committing: put the old one back
                    self.config, self.watcher, self.file_targets = old
                    await self._apply_targets_sliced()
                self.self_metrics.reload_ok.set(0)
                self.self_metrics.reloads.labels("failure").inc()
                log.error("config reload failed, keeping the previous config: %s", message)
                return False, message
            self.self_metrics.file_errors.inc(max(0, watcher.errors - old[1].errors))
        self.self_metrics.reload_ok.set(1)
        self.self_metrics.reload_ts.set(time.time())
        self.self_metrics.reloads.labels("success").inc()
        self._rescan.set()  # the watcher's next wait uses the new refresh interval
        log.info("config reloaded: %d modules, %d targets", len(config.modules), len(self.scheduler.entries))
        return True, "config reloaded"

    def _all_targets(self) -> list[TargetSpec]:
        shards = self.options.shards
        targets = list(self.config.targets) + self.file_targets
        return [t for t in targets if all(s.owns(t.target, t.module) for s in shards)] if shards else targets

    def _apply_targets(self) -> None:
        """Apply the target set in one go: at start, before the exporter is ready."""
        for _ in self._apply_steps():
            pass

    async def _apply_targets_sliced(self) -> None:
        """Apply the target set with a turn of the loop after every APPLY_SLICE targets: a reload or a changed
        target file of 100k targets took 3-10 s in one go, and nothing else ran meanwhile."""
        for _ in self._apply_steps(APPLY_SLICE):
            await asyncio.sleep(0)

    def _apply_steps(self, slice_size: int = 0) -> Iterator[None]:
        targets = self._all_targets()
        self.store.set_label_names(_label_names(targets))
        self.store.set_group_labels(self.config.scheduler.group_labels)
        yield from self.scheduler.update_steps(targets, self.config.modules, self.config.scheduler, slice_size)
        modules = self.config.modules
        phases: dict[tuple[str, str, tuple[tuple[str, str], ...]], tuple[str, ...]] = {}
        families: dict[tuple[str, str, tuple[tuple[str, str], ...]], tuple[str, ...]] = {}
        histograms: dict[tuple[str, str, tuple[tuple[str, str], ...]], str] = {}
        for i, t in enumerate(targets, 1):
            key = self._series_key(t)
            module = modules.get(t.module)
            phases[key], families[key], histograms[key] = expected_phases(t.target, module), expected_families(module), t.histograms
            if slice_size and i % slice_size == 0:
                yield
        yield from self.store.sync_steps(phases, families, histograms, slice_size)

    def _series_key(self, spec: TargetSpec) -> tuple[str, str, tuple[tuple[str, str], ...]]:
        """The store's key: the target as results show it (label values never carry its secrets)."""
        module = self.config.modules.get(spec.module)
        return (shown_target(spec.target, module) if module else spec.target, spec.module, spec.labels)

    async def _watch_files(self) -> None:
        """Re-read changed target files every file_refresh_interval (in a thread: a 6 MB file took
        9.6 s to parse and stopped everything while it ran on the loop)."""
        while True:
            async with self._targets_lock:
                watcher, config = self.watcher, self.config
                errors_before = watcher.errors
                try:
                    targets, changed = await asyncio.to_thread(watcher.scan, config)
                finally:
                    self.self_metrics.file_errors.inc(max(0, watcher.errors - errors_before))
                if changed:
                    self.file_targets = targets
                    await self._apply_targets_sliced()
            self._rescan.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.scheduler.file_refresh_interval):
                    await self._rescan.wait()

    async def _prerender(self) -> None:
        """Every PRERENDER_INTERVAL, render the targets probed since (store.refresh) in each format scraped
        in the last PRERENDER_FOR seconds, a slice per turn of the loop: the next scrape finds them rendered."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(PRERENDER_INTERVAL)
            for openmetrics, scraped_at in list(self.scraped_formats.items()):
                if loop.time() - scraped_at <= PRERENDER_FOR:
                    for _ in self.store.refresh(openmetrics):
                        await asyncio.sleep(0)

    async def _loop_lag(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            planned = loop.time() + LOOP_LAG_INTERVAL
            await asyncio.sleep(LOOP_LAG_INTERVAL)
            self.self_metrics.loop_lag.observe(max(0.0, loop.time() - planned))

    async def _probe_configured(self, target: str, module: Module, timeout: float | None) -> ProbeResult:
        guard = self.config.probe_guard
        return await run_probe(target, module, timeout, guard=guard if guard.apply_to_targets else None, pacer=self.pacer)

    def _on_result(self, spec: TargetSpec, result: ProbeResult, coverage: Coverage) -> None:
        self.store.observe(result.target, spec.module, spec.labels, result, coverage.seconds, coverage.up_seconds,
                           spec.interval)
        self.history.add("scheduled", result)
        self._observe_self_delay("scheduled", result)

    def _observe_self_delay(self, mode: str, result: ProbeResult) -> None:
        delay = result.self_delay_seconds
        if delay is not None:
            self.self_metrics.self_delay.observe(mode, delay)

    # --- handlers -----------------------------------------------------------
    async def handle_probe(self, request: web.Request) -> web.Response:
        status, body, content_type = await self.answer_probe(request.query, request.headers)
        return web.Response(status=status, body=body, headers={"Content-Type": content_type})

    async def answer_probe(self, params: Mapping[str, str], headers: Mapping[str, str]) -> tuple[int, bytes, str]:
        """/probe: (status, body, content type). Served by aiohttp's handler and by the fast path
        (exporter/fastprobe.py) alike; ``headers`` is looked up with lower-case names."""
        target = params.get("target", "")
        if not target:
            return _text(400, "Target parameter is missing\n")
        module_name = params.get("module", "http_2xx")
        module = self.config.modules.get(module_name)
        if module is None:
            self.self_metrics.module_unknown.inc()
            return _text(400, f"Unknown module {brief(module_name)}\n")
        hostname = params.get("hostname", "")
        if hostname:
            try:
                check_server_name(hostname)
            except ValueError as exc:
                return _text(400, f"Invalid hostname parameter: {exc}\n")
            try:
                settings = PROBERS[module.prober].with_hostname(module.settings, hostname)
            except ValueError as exc:  # blackbox's words: the http prober's Host header conflict
                return _text(400, f"{exc}\n")
            if settings is not module.settings:
                module = dataclasses.replace(module, settings=settings)
        limit = self.options.probe_concurrency
        if self.probe_endpoint_in_flight >= limit:
            self.self_metrics.probe_rejected.inc()
            return _text(503, f"Too many concurrent /probe requests: {limit} are running "
                              f"(--probe.concurrency); try again later\n")
        try:
            timeout = _scrape_timeout(headers.get("x-prometheus-scrape-timeout-seconds"), self.options.timeout_offset)
        except ValueError as exc:
            return _text(400, str(exc))
        # Prometheus can trace its scrapes: the probe then continues that trace.
        parent = _PROPAGATOR.extract(headers) if "traceparent" in headers else None
        self.probe_endpoint_in_flight += 1
        try:
            # A client that disconnects cancels this handler, and with it the probe.
            result = await run_probe(target, module, timeout, parent, guard=self.config.probe_guard, pacer=self.pacer)
        finally:
            self.probe_endpoint_in_flight -= 1
        text = probe_text(result)
        entry = self.history.add("probe", result)
        self._observe_self_delay("probe_endpoint", result)
        if params.get("debug", "").lower() == "true":
            return _text(200, self.debug_output(entry, text))
        return 200, text.encode(), CONTENT_TYPE_TEXT

    def debug_output(self, entry: HistoryEntry, metrics_text: str | None = None) -> str:
        result = entry.result
        module = self.config.modules.get(result.module)
        view = module_view(module) if module is not None else {"prober": result.prober, "note": "no longer configured"}
        return (
            "Logs for the probe:\n" + "\n".join(result.logs) + "\n\n"
            "Metrics that would have been returned:\n" + (metrics_text or probe_text(result)) + "\n"
            "Module configuration:\n" + yaml.safe_dump({result.module: view}, sort_keys=False)
        )

    async def handle_metrics(self, request: web.Request) -> web.StreamResponse:
        # Exemplars (trace ids) exist only in OpenMetrics, which Prometheus asks for.
        openmetrics = "application/openmetrics-text" in request.headers.get("Accept", "")
        self.scraped_formats[openmetrics] = asyncio.get_running_loop().time()
        response = web.StreamResponse(headers={"Content-Type": OPENMETRICS_CONTENT_TYPE if openmetrics else CONTENT_TYPE_TEXT})
        await response.prepare(request)
        for chunk in self.store.render_chunks(openmetrics=openmetrics):
            await response.write(chunk)
            # A 10k-target render must not stall scheduled probes for its whole duration.
            await asyncio.sleep(0)
        await response.write(self.self_metrics_text(openmetrics))  # OpenMetrics' ends with "# EOF"
        await response.write_eof()
        return response

    def self_metrics_text(self, openmetrics: bool) -> bytes:
        """The exporter's own metrics, with the external labels and, in a worker, ``worker`` (build_info is
        the same in every worker: it goes without)."""
        text = (generate_openmetrics if openmetrics else generate_latest)(self.self_metrics.registry)
        if self.options.worker is not None:
            text = add_labels(text, (("worker", str(self.options.worker)),), skip=(m.BUILD_INFO,))
        return add_labels(text, self.options.external_labels)

    async def handle_index(self, request: web.Request) -> web.Response:
        html = render_status(self, _prefix(self.options.route_prefix))
        return web.Response(text=html, content_type="text/html")

    async def handle_logs(self, request: web.Request) -> web.Response:
        try:
            entry = self.history.get(int(request.query.get("id", "")))
        except ValueError:
            entry = None
        if entry is None:
            return web.Response(status=404, text="Probe not found (it may have left the history)\n")
        return web.Response(text=self.debug_output(entry), content_type="text/plain")

    async def handle_config(self, request: web.Request) -> web.Response:
        return web.Response(text=yaml.safe_dump(config_view(self.config), sort_keys=False), content_type="text/plain")

    async def handle_reload(self, request: web.Request) -> web.Response:
        if not _same_origin(request):
            # A page in a browser on an operator's machine must not reload us (CSRF).
            return web.Response(status=403, text="Cross-origin reload refused\n")
        ok, message = await self.reload()
        return web.Response(status=200 if ok else 500, text=message + "\n")

    async def handle_healthy(self, request: web.Request) -> web.Response:
        return web.Response(text="Healthy\n")

    async def handle_ready(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.ready else 503, text="Ready\n" if self.ready else "Not ready\n")


def _same_origin(request: web.Request) -> bool:
    """No Origin (curl, Prometheus, scripts) or one naming this very host; browsers always send Origin on a POST."""
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    parts = urlsplit(origin)
    return parts.scheme == request.scheme and parts.netloc.lower() == request.host.lower()


def _build(path: str, watcher: TargetFileWatcher) -> tuple[Config, list[TargetSpec]]:
    """A reload's new config and file targets; blocking, run in a thread."""
    config = load_config(path)
    targets, _ = watcher.scan(config)
    return config, targets


def _text(status: int, text: str) -> tuple[int, bytes, str]:
    return status, text.encode(), "text/plain; charset=utf-8"


def _scrape_timeout(header: str | None, offset: float) -> float | None:
    """Prometheus' scrape timeout minus the offset, clamped to 1 ms..MAX_TIMEOUT; ValueError (the 400's text)
    unless a positive finite number."""
    if header is None:
        return None
    try:
        seconds = float(header)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"Failed to parse timeout from Prometheus header X-Prometheus-Scrape-Timeout-Seconds: "
                         f"{brief(header)} (expected a positive number of seconds)\n")
    return min(max(seconds - offset, 0.001), MAX_TIMEOUT)


# A probe's allocations are all freed by refcounting (tests/test_probe_gc.py pins
# that no probe leaves a reference cycle), yet at thousands of probes a second the
# objects of 16+ probes in flight pass the default 700 allocations many times per
# batch: the cyclic GC ran ~55 times per 1000 probes and cost ~10 % of /probe
# throughput (docs/benchmarks.md). It finds nothing, so run it less often, and
# move everything made at start-up out of its sight for good.
GC_THRESHOLDS = (7000, 10, 10)


def _tune_gc() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _label_names(targets: Sequence[TargetSpec]) -> set[str]:
    return {name for t in targets for name, _ in t.labels}


def _prefix(route_prefix: str) -> str:
    p = "/" + route_prefix.strip("/")
    return "" if p == "/" else p


def build_app(exporter: Exporter, web_config: WebConfig = WebConfig(),
              overrides: dict[str, Callable[[web.Request], Any]] | None = None) -> web.Application:
    """The public app; ``overrides`` replaces the handlers of some paths (a worker's /metrics, /-/reload, /-/ready)."""
    app = web.Application(middlewares=web_config.middlewares())
    web_config.add_headers(app)
    p = _prefix(exporter.options.route_prefix)
    h = overrides or {}
    app.router.add_get(p + "/probe", exporter.handle_probe)
    app.router.add_get(p + "/metrics", h.get("/metrics", exporter.handle_metrics))
    app.router.add_get(p + "/", exporter.handle_index)
    if p:
        app.router.add_get(p, exporter.handle_index)
    app.router.add_get(p + "/logs", exporter.handle_logs)
    app.router.add_get(p + "/config", exporter.handle_config)
    app.router.add_post(p + "/-/reload", h.get("/-/reload", exporter.handle_reload))
    app.router.add_get(p + "/-/healthy", exporter.handle_healthy)
    app.router.add_get(p + "/-/ready", h.get("/-/ready", exporter.handle_ready))
    return app


def _parse_listen(address: str) -> tuple[str | None, int]:
    try:
        host, port = split_host_port(address)
    except ValueError as exc:
        raise ConfigError(f"--web.listen-address: {exc}{ipv6_hint(address)}") from None
    return host or None, port


async def serve(options: ServeOptions, config: Config | None = None, *,
                on_started: Callable[[Exporter, web.AppRunner], None] | None = None, worker_control: str | None = None) -> int:
    """Run the exporter until SIGTERM/SIGINT. ``worker_control``: this is worker ``options.worker`` of
    ``serve --workers`` (exporter/workers.py), whose parent listens in that directory."""
    options.check()
    if config is None:
        config = await asyncio.to_thread(load_config_or_builtins, options.config_file)
    listen = [_parse_listen(a) for a in options.listen]
    web_config = load_web_config(options.web_config_file) if options.web_config_file else WebConfig()
    raise_fd_limit(config.scheduler.concurrency + options.probe_concurrency)
    span_processor = setup_tracing(options.tracing)
    exporter = Exporter(options, config, span_processor)
    runners = []
    fast_headers: tuple[tuple[str, str], ...] = ()  # on every fast /probe answer
    if worker_control is not None and options.worker is not None:
        from .workers import WORKER_HEADER, die_with_parent, name_worker, parent_routes, worker_app, worker_socket

        die_with_parent()
        app = build_app(exporter, web_config, parent_routes(exporter, worker_control, options.worker))
        app["worker_index"] = options.worker
        fast_ok, fast_headers = FastProbe.applies(app), ((WORKER_HEADER, str(options.worker)),)  # name_worker's
        app.on_response_prepare.append(name_worker)
        private = web.AppRunner(worker_app(exporter), access_log=None, shutdown_timeout=options.grace)
        await private.setup()
        await web.UnixSite(private, worker_socket(worker_control, options.worker)).start()
        runners.append(private)
    else:
        app = build_app(exporter, web_config)
        fast_ok = FastProbe.applies(app)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=options.grace)
    await runner.setup()
    runners.append(runner)
    assert runner.server is not None
    fast = FastProbe(exporter.answer_probe, runner.server, _prefix(options.route_prefix), fast_headers) if fast_ok else None
    for host, port in listen:
        # Workers share the listen addresses: the kernel spreads connections over them (SO_REUSEPORT).
        reuse_port = worker_control is not None
        site = (FastProbeSite(runner, fast, host, port, ssl_context=web_config.ssl_context, reuse_port=reuse_port) if fast
                else web.TCPSite(runner, host, port, ssl_context=web_config.ssl_context, reuse_port=reuse_port))
        try:
            await site.start()
        except OSError as exc:
            for r in runners:
                await r.cleanup()
            shutdown_tracing(span_processor)
            where = join_host_port(host, port) if host else f":{port}"
            why = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            raise StartupError(f"cannot listen on {where}: {why}") from None
    addresses = [join_host_port(a[0], a[1]) for a in runner.addresses]
    log.info("connhealth %s listening on %s", __version__, ", ".join(addresses))
    exporter.start()
    _tune_gc()
    if on_started is not None:
        on_started(exporter, runner)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, exporter.spawn_reload)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    log.info("shutting down: letting in-flight probes finish (grace %gs)", options.grace)
    # Together, not one after the other: runner.cleanup() closes the listeners
    # at once (no new /probe requests while scheduled probes drain), and both
    # drains share one grace period instead of taking up to twice it.
    await asyncio.gather(exporter.stop(), *(r.cleanup() for r in runners), *([fast.shutdown(options.grace)] if fast else []))
    await asyncio.get_running_loop().run_in_executor(None, shutdown_tracing, span_processor)
    return 0
