"""Runs one probe: deadline, phase clock, failure attribution, the result.

The engine builds a ``ProbeContext`` (probers/base.py) and hands it to the
module's prober; every await that belongs to a phase goes through
``ctx.phase(name, awaitable)``. Whatever escapes the prober is turned into a
``Failure`` by ``failures.classify`` with the prober's rules — nowhere else.
The finished result goes to the traces sink; spans are built from it there.
"""
from __future__ import annotations

import asyncio
import logging
import time
import traceback

from opentelemetry.context import Context

from .config import Module
from .failures import DeadlineExceeded, classify
from .probers import PROBERS, ProbeContext
from .result import Failure, ProbeResult
from .sinks import traces

log = logging.getLogger("connhealth.probe")

DEFAULT_TIMEOUT = 10.0


async def run_probe(target: str, module: Module, timeout: float | None = None, parent: Context | None = None) -> ProbeResult:
    """Probe ``target`` with ``module``. Never raises for a target's fault; re-raises cancellation.

    ``parent`` is an OpenTelemetry context (e.g. extracted from a scrape's
    traceparent): the probe's trace becomes its child.
    """
    if timeout is None:
        timeout = module.timeout or DEFAULT_TIMEOUT
    elif module.timeout:
        timeout = min(timeout, module.timeout)
    prober = PROBERS[module.prober]
    epoch_ns = time.time_ns()
    start_ns = time.perf_counter_ns()
    ids = traces.begin(parent, module.name, target, module.prober)
    ctx = ProbeContext(
        target, module.name, timeout, start_ns=start_ns, phase_limits=dict(module.phase_timeouts),
        resolver=module.resolver, tracing=module.tracing, tls_resumption=module.tls_resumption, trace_id=ids.trace_id,
        span_id=ids.span_id, sampled=ids.sampled, tracestate=ids.tracestate, new_span_id=traces.new_span_id,
    )
    failure: Failure | None = None
    failed_at: float | None = None
    ctx.log(f"probing {target} with module {module.name} (prober {module.prober}, timeout {timeout:g}s)")
    try:
        # The outer deadline catches time spent outside any phase.
        async with asyncio.timeout(max(ctx.remaining(), 0)):
            await prober.probe(ctx, target, module.settings)
    except Exception as exc:  # noqa: BLE001 - every failure is attributed, see classify
        if isinstance(exc, TimeoutError) and ctx.remaining() <= 0:
            exc = DeadlineExceeded(f"after {timeout:g}s")
        failure = classify(exc, ctx.phase_name, prober.rules)
        if ctx.phase_start_ns is not None and failure.phase == ctx.phase_name:
            failed_at = ctx.offset(ctx.phase_start_ns)
        if failure.reason == "internal_error":
            log.error("internal error probing %s: %s", target, "".join(traceback.format_exception(exc)))
        ctx.log(f"FAILED in phase {failure.phase}: {failure.reason}: {failure.message}")
    else:
        ctx.log("probe succeeded")
    duration_ns = time.perf_counter_ns() - start_ns
    result = ProbeResult(
        target=target,
        module=module.name,
        prober=module.prober,
        started_at=epoch_ns / 1e9,
        duration_seconds=duration_ns / 1e9,
        timeout_seconds=timeout,
        timeline=tuple(ctx.timeline),
        failure=failure,
        failed_phase_start=failed_at,
        peer=ctx.peer,
        tcp=ctx.tcp,
        tls=ctx.tls,
        hops=tuple(ctx.hops),
        details=ctx.details,
        keepalive=ctx.keepalive,
        resumption=ctx.resumption,
        failed_due_to_regex=ctx.failed_due_to_regex,
        logs=tuple(ctx.logs),
        trace_id=f"{ids.trace_id:032x}",
        span_id=f"{ids.span_id:016x}",
        parent_span_id=f"{ids.parent_span_id:016x}" if ids.parent_span_id else None,
        tracestate=ids.tracestate,
        sampled=ids.sampled,
    )
    traces.record(result)
    return result
