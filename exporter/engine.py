"""Runs one probe: deadline, phase clock, failure attribution, the result.

The engine builds a ``ProbeContext`` (probers/base.py) and hands it to the
module's prober; every await that belongs to a phase goes through
``ctx.phase(name, awaitable)``. Whatever escapes the prober is turned into a
``Failure`` by ``failures.classify`` with the prober's rules — nowhere else.
The finished result goes to the traces sink; spans are built from it there.
"""
from __future__ import annotations

import asyncio
import heapq
import logging
import math
import time
import traceback
from types import TracebackType

from opentelemetry.context import Context

from .config import Module
from .failures import DeadlineExceeded, classify
from .net.guard import ProbeGuard
from .net.pacing import ConnectPacer
from .probers import PROBERS, ProbeContext, resumption
from .result import Failure, ProbeResult
from .sinks import traces

log = logging.getLogger("connhealth.probe")

DEFAULT_TIMEOUT = 10.0

# A _Deadline's states.
_ENTERED, _EXPIRING, _DONE = 0, 1, 2


class _Deadlines:
    """The probe deadlines of one event loop: a heap, and one loop timer for the earliest.

    A loop timer per probe (asyncio.timeout) cost ≈ 10 µs of a ≈ 200 µs continuous
    tcp_connect probe on uvloop (docs/benchmarks.md section 3). Most probes end long before
    their deadline, so their entries are left in the heap and dropped when they reach its top
    (probes that start later mostly end later); the heap is rebuilt from the running ones when
    finished ones make up most of it, so a probe that hangs until its deadline cannot make it grow.
    """

    __slots__ = ("loop", "heap", "handle", "armed", "live", "seq")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.heap: list[tuple[float, int, _Deadline]] = []
        self.handle: asyncio.TimerHandle | None = None
        self.armed = math.inf  # when the timer fires
        self.live = 0  # entries of the heap still running
        self.seq = 0

    def add(self, deadline: _Deadline) -> None:
        heap = self.heap
        while heap and heap[0][2].state is not _ENTERED:
            heapq.heappop(heap)
        if len(heap) > 2 * self.live + 64:
            heap[:] = [item for item in heap if item[2].state is _ENTERED]
            heapq.heapify(heap)
        self.seq += 1
        heapq.heappush(heap, (deadline.when, self.seq, deadline))
        self.live += 1
        if deadline.when < self.armed:
            self._arm(deadline.when)

    def _arm(self, when: float) -> None:
        if self.handle is not None:
            self.handle.cancel()
        self.armed = when
        self.handle = self.loop.call_at(when, self._fire)

    def _fire(self) -> None:
        # A timer that fires early (uvloop counts whole milliseconds) expires what it was set
        # for, as asyncio.timeout's own timer would.
        limit = max(self.loop.time(), self.armed)
        self.handle, self.armed = None, math.inf
        heap = self.heap
        while heap and (heap[0][2].state is not _ENTERED or heap[0][0] <= limit):
            deadline = heapq.heappop(heap)[2]
            if deadline.state is _ENTERED:
                self.live -= 1
                deadline.state = _EXPIRING
                deadline.task.cancel()  # type: ignore[union-attr]  # set while _ENTERED
        if heap:
            self._arm(heap[0][0])


_deadlines: _Deadlines | None = None  # the running loop's (one loop per process, bar tests)


class _Deadline:
    """``with _Deadline(delay):`` is ``async with asyncio.timeout(delay):`` on the loop's shared timer.

    The same contract: when the deadline passes, the task is cancelled, and that cancellation
    leaves the block as TimeoutError, unless the task was also cancelled from outside
    (Task.uncancel counts them), which then propagates.
    """

    __slots__ = ("when", "task", "cancelling", "state", "owner")

    def __init__(self, delay: float) -> None:
        global _deadlines
        loop = asyncio.get_running_loop()
        owner = _deadlines
        if owner is None or owner.loop is not loop:
            owner = _deadlines = _Deadlines(loop)
        task = asyncio.current_task(loop)  # with the loop: one fork check (getpid) less
        assert task is not None
        self.when = loop.time() + delay
        self.task: asyncio.Task[object] | None = task
        self.cancelling = task.cancelling()
        self.state = _ENTERED
        self.owner = owner

    def __enter__(self) -> None:
        self.owner.add(self)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        state, self.state = self.state, _DONE
        task, self.task = self.task, None  # it may wait in the heap a while: hold no finished task
        if state is _ENTERED:
            self.owner.live -= 1
        elif state is _EXPIRING and task is not None and task.uncancel() <= self.cancelling \
                and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc


def expected_phases(target: str, module: Module | None) -> tuple[str, ...]:
    """The phases a successful probe of ``target`` with ``module`` goes through (none for an unknown module);
    with the module's tls_resumption check, its two handshakes after any TLS."""
    prober = PROBERS.get(module.prober) if module is not None else None
    if prober is None or module is None:
        return ()
    phases = prober.expected_phases(target, module.settings)
    if module.tls_resumption.check and "tls" in phases:
        phases += tuple(p.name for p in resumption.PHASES)
    return phases


def expected_families(module: Module | None) -> tuple[str, ...]:
    """The names of the module's prober's own continuous families (Prober.metrics)."""
    prober = PROBERS.get(module.prober) if module is not None else None
    return tuple(spec.name for spec in prober.metrics) if prober is not None else ()


async def run_probe(target: str, module: Module, timeout: float | None = None, parent: Context | None = None,
                    *, guard: ProbeGuard | None = None, pacer: ConnectPacer | None = None) -> ProbeResult:
    """Probe ``target`` with ``module``. Never raises for a target's fault; re-raises cancellation.

    ``parent`` is an OpenTelemetry context (e.g. extracted from a scrape's
    traceparent): the probe's trace becomes its child. ``guard`` is the SSRF
    guard every connection of the probe must pass (None: none, as for the CLI); ``pacer``
    the token bucket its connects wait on (None: unpaced, as for the CLI).
    """
    if timeout is None:
        timeout = module.timeout or DEFAULT_TIMEOUT
    elif module.timeout:
        timeout = min(timeout, module.timeout)
    prober = PROBERS[module.prober]
    # The target as every output shows it: results, logs, labels and spans never see its secrets.
    shown = prober.display_target(target, module.settings)
    epoch_ns = time.time_ns()
    start_ns = time.perf_counter_ns()
    ids = traces.begin(parent, module.name, shown, module.prober)
    ctx = ProbeContext(
        shown, module.name, timeout, start_ns=start_ns, phase_limits=dict(module.phase_timeouts),
        resolver=module.resolver, tracing=module.tracing, tls_resumption=module.tls_resumption, trace_id=ids.trace_id,
        span_id=ids.span_id, sampled=ids.sampled, tracestate=ids.tracestate, new_span_id=traces.new_span_id, guard=guard,
        pacer=pacer,
    )
    failure: Failure | None = None
    failed_at: float | None = None
    ctx.log("probing %s with module %s (prober %s, timeout %gs)", shown, module.name, module.prober, timeout)
    debug = log.isEnabledFor(logging.DEBUG)
    if debug:
        log.debug("probe started", extra={"kv": {"target": shown, "module": module.name}})
    try:
        # The outer deadline catches time spent outside any phase.
        with _Deadline(max(ctx.remaining(), 0)):
            await prober.probe(ctx, target, module.settings)
    except Exception as exc:  # noqa: BLE001 - every failure is attributed, see classify
        if isinstance(exc, TimeoutError) and ctx.remaining() <= 0:
            exc = DeadlineExceeded(f"after {timeout:g}s")
        failure = classify(exc, ctx.phase_name, prober.rules)
        if ctx.phase_start_ns is not None and failure.phase == ctx.phase_name:
            failed_at = ctx.offset(ctx.phase_start_ns)
        if failure.reason == "internal_error":
            log.error("internal error probing %s: %s", shown, "".join(traceback.format_exception(exc)))
        ctx.log("FAILED in phase %s: %s: %s", failure.phase, failure.reason, failure.message)
    else:
        ctx.log("probe succeeded")
    duration_ns = time.perf_counter_ns() - start_ns
    result = ProbeResult(
        target=shown,
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
        log_records=tuple(ctx.logs),
        trace_id=f"{ids.trace_id:032x}",
        span_id=f"{ids.span_id:016x}",
        parent_span_id=f"{ids.parent_span_id:016x}" if ids.parent_span_id else None,
        tracestate=ids.tracestate,
        sampled=ids.sampled,
    )
    traces.record(result)
    if debug:
        log.debug("probe finished", extra={"kv": {
            "target": shown, "module": module.name, "success": failure is None,
            "duration_seconds": round(result.duration_seconds, 6),
            **({"phase": failure.phase, "reason": failure.reason} if failure else {}), "trace_id": result.trace_id}})
    return result
