"""OpenTelemetry SDK set-up: configured once at start-up, from OTEL_* variables and flags.

Probers know nothing of traces; the traces sink (``sinks/traces.py``) builds
spans from finished results and hands them to the processor made here. Nothing here may slow or fail a
probe: spans go into a bounded queue that a background thread exports;
a full queue or a failed export drops spans and counts them.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote

from opentelemetry.context import Context
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from ..schema import ConfigError
from ..supervise import supervise_thread
from . import traces

log = logging.getLogger("connhealth.telemetry")

PROTOCOLS = ("http/protobuf", "grpc")
DROP_REASONS = ("export_failed", "queue_full")


@dataclass(frozen=True, slots=True)
class TracingOptions:
    endpoint: str | None = None  # None: OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT
    protocol: str | None = None  # None: OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL, else http/protobuf
    queue_size: int = 2048
    batch_size: int = 512
    export_interval: float = 1.0


class DroppingSpanProcessor(SpanProcessor):
    """Bounded queue + one exporting thread; never blocks the event loop."""

    def __init__(self, exporter: SpanExporter, queue_size: int, batch_size: int, interval: float) -> None:
        self.exporter = exporter
        self.batch_size = batch_size
        self.interval = interval
        self._queue: queue.Queue[ReadableSpan] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        self.exported = 0
        self.enqueued = 0
        self.endpoint = ""
        self.worker_failures = 0  # connhealth_background_task_failures_total{task="trace_export"}
        self._stop = threading.Event()
        self._flush_requested = threading.Event()
        self._thread = threading.Thread(target=self._worker, name="connhealth-otlp", daemon=True)
        self._thread.start()

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        if not span.context.trace_flags.sampled:
            return
        try:
            self._queue.put_nowait(span)
            self.enqueued += 1
        except queue.Full:
            with self._lock:
                self.dropped["queue_full"] += 1

    def _drain(self) -> list[ReadableSpan]:
        batch: list[ReadableSpan] = []
        while len(batch) < self.batch_size:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _export(self, batch: list[ReadableSpan]) -> None:
        try:
            result = self.exporter.export(batch)
        except Exception as exc:  # an exporter bug must not kill the thread
            log.warning("span export raised: %s", exc)
            result = SpanExportResult.FAILURE
        with self._lock:
            if result == SpanExportResult.SUCCESS:
                self.exported += len(batch)
            else:
                self.dropped["export_failed"] += len(batch)

    def _worker(self) -> None:
        supervise_thread("trace_export", self._work, self._worker_failed, self._stop)

    def _worker_failed(self, task: str) -> None:
        with self._lock:
            self.worker_failures += 1

    def _work(self) -> None:
        while not self._stop.is_set():
            self._flush_requested.wait(self.interval)
            self._flush_requested.clear()
            while batch := self._drain():
                self._export(batch)
                if self._stop.is_set():
                    break

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        self._flush_requested.set()
        deadline = timeout_millis / 1000
        waited = 0.0
        while not self._queue.empty() and waited < deadline:
            self._stop.wait(0.05)
            waited += 0.05
        return self._queue.empty()

    def shutdown(self) -> None:
        self.force_flush(2000)
        self._stop.set()
        self._flush_requested.set()
        self._thread.join(timeout=2)
        self.exporter.shutdown()


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


def _headers(text: str | None) -> dict[str, str]:
    """OTEL_EXPORTER_OTLP_HEADERS: comma-separated key=value pairs, values URL-encoded (W3C baggage format)."""
    out = {}
    for item in (text or "").split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            out[unquote(key.strip())] = unquote(value.strip())
    return out


def _service_name_attributes() -> dict[str, str]:
    """connhealth's default service.name, unless the user set one.

    Precedence (OTel spec): OTEL_SERVICE_NAME, then service.name in
    OTEL_RESOURCE_ATTRIBUTES, then our default. ``Resource.create`` lets
    explicit attributes win over both variables, so the default is only
    passed when neither variable names the service.
    """
    if OTELResourceDetector().detect().attributes.get("service.name"):
        return {}
    return {"service.name": "connhealth"}


def make_exporter(endpoint: str, protocol: str, headers: dict[str, str], *, signal_url: bool = False) -> SpanExporter:
    """``signal_url``: ``endpoint`` came from OTEL_EXPORTER_OTLP_TRACES_ENDPOINT and, for OTLP/HTTP, is
    used as-is (spec); a base endpoint (flag or OTEL_EXPORTER_OTLP_ENDPOINT) gets ``/v1/traces``."""
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GRPCExporter

        # gRPC wants host:port: drop the scheme and any path ("http://collector:4317/" is common).
        target = endpoint.split("://", 1)[-1].split("/", 1)[0]
        return GRPCExporter(endpoint=target, insecure=not endpoint.startswith("https://"), headers=headers or None, timeout=5)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HTTPExporter

    if signal_url or endpoint.rstrip("/").endswith("/v1/traces"):
        url = endpoint
    else:
        url = endpoint.rstrip("/") + "/v1/traces"
    return HTTPExporter(endpoint=url, headers=headers or None, timeout=5)


def setup_tracing(options: TracingOptions) -> DroppingSpanProcessor | None:
    """Install the SDK when an endpoint is configured; otherwise leave the no-op API in place."""
    signal_url = not options.endpoint and bool(_env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    endpoint = options.endpoint or _env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
    disabled = (_env("OTEL_SDK_DISABLED") or "").strip().lower() == "true"
    if not endpoint or disabled or (_env("OTEL_TRACES_EXPORTER") or "").strip().lower() == "none":
        return None
    protocol = options.protocol or _env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"
    if protocol not in PROTOCOLS:
        raise ConfigError(f"OTLP protocol {protocol!r} is not supported (one of {', '.join(PROTOCOLS)})")
    headers = _headers(_env("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"))
    exporter = make_exporter(endpoint, protocol, headers, signal_url=signal_url)
    processor = DroppingSpanProcessor(exporter, options.queue_size, options.batch_size, options.export_interval)
    processor.endpoint = endpoint
    attributes = _service_name_attributes()
    # The provider reads the sampler from OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG (default:
    # parent-based always-on); the traces sink uses that sampler and resource with our processor.
    provider = TracerProvider(resource=Resource.create(attributes), shutdown_on_exit=False)
    traces.configure(provider.sampler, provider.resource, processor)
    log.info("exporting traces with OTLP %s to %s", protocol, endpoint)
    return processor


def shutdown_tracing(processor: DroppingSpanProcessor | None) -> None:
    if processor is None:
        return
    traces.reset()
    processor.shutdown()


class _FirstFailure(logging.Handler):
    """Catches the SDK's first export warning instead of letting it print its retry chatter."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.event = threading.Event()
        self.message = ""

    def emit(self, record: logging.LogRecord) -> None:
        if not self.event.is_set():
            self.message = record.getMessage()
            self.event.set()


def shutdown_cli_tracing(processor: DroppingSpanProcessor | None, budget: float = 3.0) -> str | None:
    """For a one-shot command: export what is queued now and return a one-line warning if that failed.

    The SDK retries a failed export with backoff (about 1 s and more); a
    command line waits for the first attempt only: on its failure the exporter
    is shut down, which aborts the retries at once.
    """
    if processor is None:
        return None
    traces.reset()
    sdk_log = logging.getLogger("opentelemetry")
    catcher = _FirstFailure()
    sdk_log.addHandler(catcher)
    propagate, sdk_log.propagate = sdk_log.propagate, False
    try:
        processor._flush_requested.set()
        deadline = time.monotonic() + budget
        while (processor.exported + processor.dropped["export_failed"] < processor.enqueued
               and not catcher.event.is_set() and time.monotonic() < deadline):
            catcher.event.wait(0.005)
        settled = processor.exported + processor.dropped["export_failed"] >= processor.enqueued
        failed = catcher.event.is_set() or processor.dropped["export_failed"] > 0 or not settled
        processor._stop.set()
        processor._flush_requested.set()
        processor.exporter.shutdown()  # aborts a retry in progress
        processor._thread.join(timeout=0.5)
    finally:
        sdk_log.removeHandler(catcher)
        sdk_log.propagate = propagate
    if not failed:
        return None
    cause = "connection refused" if "refused" in catcher.message.lower() else "no answer" if not settled else "export failed"
    return f"trace not exported: OTLP collector at {processor.endpoint} unreachable ({cause})"


def dropped_samples(processor: DroppingSpanProcessor | None) -> Sequence[tuple[str, int]]:
    if processor is None:
        return [(reason, 0) for reason in DROP_REASONS]
    return sorted(processor.dropped.items())
