"""Traces are a sink: one trace per probe, built from the finished ProbeResult.

While a probe runs, the engine only asks for ids (``begin``, ``new_span_id``):
the trace id and the span ids that each request's ``traceparent`` carries.
When the result is final, ``record`` turns it into spans — the probe span,
one CLIENT span per request/response exchange (hop), one span per phase —
with exactly those ids, and hands them to the span processor that
``traces_export.setup_tracing`` configured. No SDK configured: ids are still
made (targets can match their logs to a probe) but nothing is recorded.
Telemetry never fails a probe: a bug here is logged, never raised.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.sampling import Sampler
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from .. import __version__
from ..result import Hop, Phase, ProbeResult

log = logging.getLogger("connhealth.traces")

# Ids are not secrets: the fast PRNG (seeded from os.urandom), not a system call per probe.
_random = random.Random()
_SCOPE = InstrumentationScope("connhealth", __version__)


class TraceIds(NamedTuple):  # one per probe: a tuple is the cheapest immutable value to build
    trace_id: int
    span_id: int  # the probe span
    parent_span_id: int | None  # the scrape's span, when Prometheus traced it
    sampled: bool
    tracestate: str


@dataclass(frozen=True, slots=True)
class _Sink:
    sampler: Sampler
    resource: Resource
    processor: SpanProcessor


_sink: _Sink | None = None


def configure(sampler: Sampler, resource: Resource, processor: SpanProcessor) -> None:
    global _sink
    _sink = _Sink(sampler, resource, processor)


def reset() -> None:
    global _sink
    _sink = None


def new_span_id() -> int:
    return _random.getrandbits(64) or 1


def begin(parent: Context | None, module: str, target: str, prober: str) -> TraceIds:
    """Ids for a new probe, a child of ``parent``'s span if it has one; sampled as the configured sampler says."""
    parent_ctx = trace.get_current_span(parent).get_span_context() if parent is not None else None
    if parent_ctx is not None and parent_ctx.is_valid:
        trace_id, parent_span = parent_ctx.trace_id, parent_ctx.span_id
    else:
        trace_id, parent_span = _random.getrandbits(128) or 1, None
    sink = _sink
    if sink is None:
        # No SDK: still a well-formed traceparent (not sampled), so the target's
        # logs can be matched with this probe's trace id.
        return TraceIds(trace_id, new_span_id(), parent_span, False, "")
    attributes = {"probe.module": module, "probe.target": target, "probe.prober": prober}
    decision = sink.sampler.should_sample(parent, trace_id, f"probe {module}", SpanKind.INTERNAL, attributes)
    state = decision.trace_state.to_header() if decision.trace_state else ""
    return TraceIds(trace_id, new_span_id(), parent_span, decision.decision.is_sampled(), state)


def record(result: ProbeResult) -> None:
    """Export the probe's spans (when sampled and a processor is configured)."""
    sink = _sink
    if sink is None or not result.sampled or result.trace_id is None or result.span_id is None:
        return
    try:
        for span in spans(result, sink.resource):
            sink.processor.on_end(span)
    except Exception:  # noqa: BLE001 - telemetry must never break the caller
        log.exception("building the spans of a probe of %s failed", result.target)


def spans(result: ProbeResult, resource: Resource) -> list[ReadableSpan]:
    """The probe's spans: probe -> hops (CLIENT) -> phases; the failed phase ends the probe with its reason."""
    assert result.trace_id is not None and result.span_id is not None
    trace_id = int(result.trace_id, 16)
    flags = TraceFlags(TraceFlags.SAMPLED)
    state = TraceState.from_header([result.tracestate]) if result.tracestate else TraceState()
    start_ns = int(result.started_at * 1e9)

    def at(offset: float) -> int:
        return start_ns + int(offset * 1e9)

    def context(span_id: int) -> SpanContext:
        return SpanContext(trace_id, span_id, is_remote=False, trace_flags=flags, trace_state=state)

    def make(name: str, span_id: int, parent: int | None, kind: SpanKind, start: float, end: float,
             attributes: dict[str, Any], status: Status) -> ReadableSpan:
        return ReadableSpan(
            name=name, context=context(span_id),
            parent=SpanContext(trace_id, parent, is_remote=False, trace_flags=flags) if parent else None,
            resource=resource, attributes=attributes, kind=kind, status=status,
            start_time=at(start), end_time=at(end), instrumentation_scope=_SCOPE,
        )

    probe_id = int(result.span_id, 16)
    parent_id = int(result.parent_span_id, 16) if result.parent_span_id else None
    failure = result.failure
    out: list[ReadableSpan] = []
    hop_ids = [int(h.span_id, 16) for h in result.hops]
    for i, hop in enumerate(result.hops):
        url = urlsplit(hop.url)
        attributes: dict[str, Any] = {"http.request.method": hop.method, "url.full": hop.url,
                                      "server.address": url.hostname or "", "server.port": url.port or (443 if url.scheme == "https" else 80)}
        if hop.peer is not None:
            attributes["network.peer.address"] = hop.peer.ip
            attributes["network.peer.port"] = hop.peer.port
        if hop.status is not None:
            attributes["http.response.status_code"] = hop.status
        status = (Status(StatusCode.ERROR, "no response") if hop.status is None
                  else Status(StatusCode.ERROR) if hop.status >= 400 else Status(StatusCode.UNSET))
        out.append(make(hop.method, hop_ids[i], probe_id, SpanKind.CLIENT, hop.start, hop.start + hop.duration, attributes, status))
    ok = Status(StatusCode.UNSET)
    for phase in result.timeline:
        parent = hop_ids[phase.hop] if hop_ids and _within(phase, result.hops[phase.hop]) else probe_id
        out.append(make(phase.name, new_span_id(), parent, SpanKind.INTERNAL, phase.start, phase.end, {}, ok))
    if failure is not None and result.failed_phase_start is not None:
        parent = hop_ids[-1] if hop_ids else probe_id
        out.append(make(failure.phase, new_span_id(), parent, SpanKind.INTERNAL, result.failed_phase_start,
                        result.duration_seconds, {"error.type": failure.reason}, Status(StatusCode.ERROR, failure.reason)))

    attributes = {"probe.module": result.module, "probe.target": result.target, "probe.prober": result.prober}
    if result.peer is not None:
        attributes["network.peer.address"] = result.peer.ip
        attributes["server.port"] = result.peer.port
    if result.tls is not None and result.tls.version:
        attributes["tls.protocol.version"] = result.tls.version.split(" ", 1)[-1]
        if result.tls.cipher:
            attributes["tls.cipher"] = result.tls.cipher
    if result.hops and result.hops[-1].status is not None:
        attributes["http.response.status_code"] = result.hops[-1].status
    if failure is not None:
        attributes["probe.failure.phase"] = failure.phase
        attributes["probe.failure.reason"] = failure.reason
        status = Status(StatusCode.ERROR, f"{failure.reason}: {failure.message}")
    else:
        status = Status(StatusCode.OK)
    out.append(make(f"probe {result.module}", probe_id, parent_id, SpanKind.INTERNAL, 0.0, result.duration_seconds,
                     attributes, status))
    return out


def _within(phase: Phase, hop: Hop) -> bool:
    """A phase between or after the hops (a keep-alive idle, a resumption check) belongs to the probe, not a hop."""
    return hop.start - 1e-6 <= phase.start and phase.end <= hop.start + hop.duration + 1e-6
