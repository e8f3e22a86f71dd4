"""Runs one probe: deadline, phase timing, failure attribution, the result.

Probers get a ``ProbeContext``; every await that belongs to a phase goes through
``ctx.phase(name, awaitable)``, which times it on a monotonic nanosecond clock
and applies ``min(phase limit, time left)``. Whatever escapes the prober is
turned into a ``Failure`` by ``failures.classify`` — nowhere else.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
import traceback
from collections.abc import Awaitable
from typing import Any, TypeVar
from urllib.parse import quote

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from . import __version__
from .config import Module
from .failures import DeadlineExceeded, classify
from .probers import PROBERS
from .result import Failure, HTTPInfo, Peer, ProbeResult, TCPInfo, TLSInfo

log = logging.getLogger("connhealth.probe")

T = TypeVar("T")

DEFAULT_TIMEOUT = 10.0

# The API only: with no SDK configured every span is a cheap no-op, and
# phase spans are not even created (see ProbeContext.recording).
_tracer = trace.get_tracer("connhealth", __version__)
# Ids for traceparent when no SDK makes them; not secrets, so the fast PRNG
# (seeded from os.urandom) instead of a system call per probe.
_random = random.Random()


def _traceparent(trace_id: int, span_id: int, sampled: bool) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}"


class ProbeContext:
    """Mutable state of one running probe; frozen into a ProbeResult at the end."""

    __slots__ = (
        "target", "module", "timeout", "deadline_ns", "phase_name", "phases",
        "peer", "tcp", "tls", "http", "failed_due_to_regex", "logs", "_start_ns", "_epoch_ns",
        "span", "recording", "trace_id", "span_id", "sampled", "tracestate", "_hop_span",
    )

    def __init__(self, target: str, module: Module, timeout: float, parent: Context | None = None) -> None:
        self.target = target
        self.module = module
        self.timeout = timeout
        self._epoch_ns = time.time_ns()
        self._start_ns = time.perf_counter_ns()
        self.deadline_ns = self._start_ns + int(timeout * 1e9)
        self.span: Span = _tracer.start_span(
            f"probe {module.name}", context=parent, kind=SpanKind.INTERNAL, start_time=self._epoch_ns,
            attributes={"probe.module": module.name, "probe.target": target, "probe.prober": module.prober},
        )
        self.recording = self.span.is_recording()
        sc = self.span.get_span_context()
        if sc.is_valid:
            self.trace_id, self.span_id, self.sampled = sc.trace_id, sc.span_id, sc.trace_flags.sampled
            self.tracestate = sc.trace_state.to_header() if sc.trace_state else ""
        else:
            # No SDK: still give the target a well-formed traceparent (not sampled)
            # so its logs can be matched with this probe's trace id.
            self.trace_id, self.span_id, self.sampled = _random.getrandbits(128), _random.getrandbits(64), False
            self.tracestate = ""
        self._hop_span: Span | None = None
        self.phase_name = "probe"
        self.phases: dict[str, float] = {}
        self.peer: Peer | None = None
        self.tcp: TCPInfo | None = None
        self.tls: TLSInfo | None = None
        self.http: HTTPInfo | None = None
        self.failed_due_to_regex = False
        self.logs: list[str] = []

    def log(self, message: str) -> None:
        elapsed = (time.perf_counter_ns() - self._start_ns) / 1e9
        self.logs.append(f"{elapsed:8.4f}s {message}")

    def remaining(self) -> float:
        return (self.deadline_ns - time.perf_counter_ns()) / 1e9

    async def phase(self, name: str, awaitable: Awaitable[T], *, accumulate: bool = False) -> T:
        """Await ``awaitable`` as phase ``name``; record its duration only if it completes."""
        self.phase_name = name
        limit = self.module.phase_timeout(name)
        remaining = self.remaining()
        if limit is None or remaining <= limit:
            by_deadline, budget = True, remaining
        else:
            by_deadline, budget = False, limit
        start = time.perf_counter_ns()
        try:
            if budget <= 0:
                raise TimeoutError()
            if limit is None:
                # Only the overall deadline applies: run_probe's own timeout
                # covers it (and phase_name says where it hit); a second timer
                # per phase costs ~5 % of a loopback probe.
                value = await awaitable
            else:
                async with asyncio.timeout(budget):
                    value = await awaitable
        except TimeoutError as exc:
            self._phase_span(name, start, time.perf_counter_ns(), "timeout")
            if limit is None and self.remaining() > 0:
                raise  # not our timer: the kernel's (ETIMEDOUT), classify says so
            if by_deadline:
                raise DeadlineExceeded(f"after {self.timeout:g}s") from exc
            raise TimeoutError(f"phase limit {limit:g}s exceeded") from exc
        except asyncio.CancelledError:
            # The overall deadline, or the caller gave up (e.g. the scraper left).
            self._phase_span(name, start, time.perf_counter_ns(), "timeout" if self.remaining() <= 0 else "cancelled")
            raise
        except Exception as exc:
            self._phase_span(name, start, time.perf_counter_ns(), type(exc).__name__)
            raise
        finally:
            if asyncio.iscoroutine(awaitable):
                awaitable.close()  # never awaited when the budget was already gone
        end = time.perf_counter_ns()
        self._phase_span(name, start, end, None)
        seconds = (end - start) / 1e9
        self.phases[name] = self.phases.get(name, 0.0) + seconds if accumulate else seconds
        return value

    # --- tracing ------------------------------------------------------------
    def _epoch(self, perf_ns: int) -> int:
        return self._epoch_ns + (perf_ns - self._start_ns)

    def _phase_span(self, name: str, start_ns: int, end_ns: int, error: str | None) -> None:
        """A finished phase becomes a child span, created after the fact from its own timestamps."""
        if not self.recording:
            return
        parent = self._hop_span or self.span
        span = _tracer.start_span(name, context=trace.set_span_in_context(parent), start_time=self._epoch(start_ns))
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))
            span.set_attribute("error.type", error)
        span.end(end_time=self._epoch(end_ns))

    def begin_hop(self, method: str, url: str, host: str, port: int) -> None:
        """HTTP: each request/response exchange is a client span; phases nest under it."""
        if not self.recording:
            return
        self._hop_span = _tracer.start_span(
            method, context=trace.set_span_in_context(self.span), kind=SpanKind.CLIENT,
            start_time=self._epoch(time.perf_counter_ns()),
            attributes={"http.request.method": method, "url.full": url, "server.address": host, "server.port": port},
        )

    def end_hop(self, status: int | None) -> None:
        span, self._hop_span = self._hop_span, None
        if span is None:
            return
        if self.peer is not None:
            span.set_attribute("network.peer.address", self.peer.ip)
            span.set_attribute("network.peer.port", self.peer.port)
        if status is not None:
            span.set_attribute("http.response.status_code", status)
            if status >= 400:
                span.set_status(Status(StatusCode.ERROR))
        else:
            span.set_status(Status(StatusCode.ERROR, "no response"))
        # One clock for every span of a probe: epoch at start + monotonic offsets.
        span.end(end_time=self._epoch(time.perf_counter_ns()))

    def propagation_headers(self) -> list[tuple[str, str]]:
        """W3C traceparent/tracestate for the current request, and baggage marking it synthetic."""
        cfg = self.module.tracing
        if not cfg.inject:
            return []
        span_id = self.span_id
        if self._hop_span is not None:
            span_id = self._hop_span.get_span_context().span_id
        headers = [("traceparent", _traceparent(self.trace_id, span_id, self.sampled))]
        if self.tracestate:
            headers.append(("tracestate", self.tracestate))
        if cfg.baggage:
            headers.append(("baggage", ",".join(f"{k}={quote(v, safe='')}" for k, v in cfg.baggage)))
        return headers

    def finish_span(self, failure: Failure | None, duration_ns: int) -> None:
        span = self.span
        if not self.recording:
            span.end()
            return
        attributes: dict[str, Any] = {}
        if self.peer is not None:
            attributes["network.peer.address"] = self.peer.ip
            attributes["server.port"] = self.peer.port
        if self.tls is not None and self.tls.version:
            attributes["tls.protocol.version"] = self.tls.version.split(" ", 1)[-1]
            if self.tls.cipher:
                attributes["tls.cipher"] = self.tls.cipher
        if self.http is not None and self.http.status is not None:
            attributes["http.response.status_code"] = self.http.status
        if failure is not None:
            attributes["probe.failure.phase"] = failure.phase
            attributes["probe.failure.reason"] = failure.reason
            span.set_status(Status(StatusCode.ERROR, f"{failure.reason}: {failure.message}"))
        else:
            span.set_status(Status(StatusCode.OK))
        span.set_attributes(attributes)
        span.end(end_time=self._epoch_ns + duration_ns)


async def run_probe(target: str, module: Module, timeout: float | None = None, parent: Context | None = None) -> ProbeResult:
    """Probe ``target`` with ``module``. Never raises for a target's fault; re-raises cancellation.

    ``parent`` is an OpenTelemetry context (e.g. extracted from a scrape's
    traceparent): the probe span becomes its child.
    """
    if timeout is None:
        timeout = module.timeout or DEFAULT_TIMEOUT
    elif module.timeout:
        timeout = min(timeout, module.timeout)
    ctx = ProbeContext(target, module, timeout, parent)
    failure: Failure | None = None
    prober = PROBERS[module.prober]
    ctx.log(f"probing {target} with module {module.name} (prober {module.prober}, timeout {timeout:g}s)")
    try:
        # The outer deadline catches time spent outside any phase.
        async with asyncio.timeout(max(ctx.remaining(), 0)):
            await prober(ctx, target, module)
    except asyncio.CancelledError:
        ctx.span.set_status(Status(StatusCode.ERROR, "cancelled"))
        ctx.span.end()
        raise
    except Exception as exc:  # noqa: BLE001 - every failure is attributed, see classify
        if isinstance(exc, TimeoutError) and ctx.remaining() <= 0:
            exc = DeadlineExceeded(f"after {timeout:g}s")
        failure = classify(exc, ctx.phase_name, module.prober)
        if failure.reason == "internal_error":
            log.error("internal error probing %s: %s", target, "".join(traceback.format_exception(exc)))
        ctx.log(f"FAILED in phase {failure.phase}: {failure.reason}: {failure.message}")
    else:
        ctx.log("probe succeeded")
    duration_ns = time.perf_counter_ns() - ctx._start_ns
    ctx.finish_span(failure, duration_ns)
    return ProbeResult(
        target=target,
        module=module.name,
        prober=module.prober,
        started_at=ctx._epoch_ns / 1e9,
        duration_seconds=duration_ns / 1e9,
        timeout_seconds=timeout,
        phases=ctx.phases,
        failure=failure,
        peer=ctx.peer,
        tcp=ctx.tcp,
        tls=ctx.tls,
        http=ctx.http,
        failed_due_to_regex=ctx.failed_due_to_regex,
        logs=tuple(ctx.logs),
        trace_id=f"{ctx.trace_id:032x}",
        span_id=f"{ctx.span_id:016x}",
        sampled=ctx.sampled,
    )
