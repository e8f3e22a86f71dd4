"""Runs one probe: deadline, phase timing, failure attribution, the result.

Probers get a ``ProbeContext``; every await that belongs to a phase goes through
``ctx.phase(name, awaitable)``, which times it on a monotonic nanosecond clock
and applies ``min(phase limit, time left)``. Whatever escapes the prober is
turned into a ``Failure`` by ``failures.classify`` — nowhere else.
"""
from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Awaitable
from typing import TypeVar

from .config import Module
from .failures import DeadlineExceeded, classify
from .probers import PROBERS
from .result import Failure, HTTPInfo, Peer, ProbeResult, TCPInfo, TLSInfo

log = logging.getLogger("connhealth.probe")

T = TypeVar("T")

DEFAULT_TIMEOUT = 10.0


class ProbeContext:
    """Mutable state of one running probe; frozen into a ProbeResult at the end."""

    __slots__ = (
        "target", "module", "timeout", "deadline_ns", "phase_name", "phases",
        "peer", "tcp", "tls", "http", "failed_due_to_regex", "logs", "_start_ns",
    )

    def __init__(self, target: str, module: Module, timeout: float) -> None:
        self.target = target
        self.module = module
        self.timeout = timeout
        self._start_ns = time.perf_counter_ns()
        self.deadline_ns = self._start_ns + int(timeout * 1e9)
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
        by_deadline = limit is None or remaining <= limit
        budget = remaining if by_deadline else limit
        start = time.perf_counter_ns()
        try:
            if budget <= 0:
                raise TimeoutError()
            async with asyncio.timeout(budget):
                value = await awaitable
        except TimeoutError as exc:
            if by_deadline:
                raise DeadlineExceeded(f"after {self.timeout:g}s") from exc
            raise TimeoutError(f"phase limit {limit:g}s exceeded") from exc
        finally:
            if asyncio.iscoroutine(awaitable):
                awaitable.close()  # never awaited when the budget was already gone
        seconds = (time.perf_counter_ns() - start) / 1e9
        self.phases[name] = self.phases.get(name, 0.0) + seconds if accumulate else seconds
        return value

    def elapsed(self) -> float:
        return (time.perf_counter_ns() - self._start_ns) / 1e9


async def run_probe(target: str, module: Module, timeout: float | None = None) -> ProbeResult:
    """Probe ``target`` with ``module``. Never raises for a target's fault; re-raises cancellation."""
    if timeout is None:
        timeout = module.timeout or DEFAULT_TIMEOUT
    elif module.timeout:
        timeout = min(timeout, module.timeout)
    started_at = time.time()
    ctx = ProbeContext(target, module, timeout)
    failure: Failure | None = None
    prober = PROBERS[module.prober]
    ctx.log(f"probing {target} with module {module.name} (prober {module.prober}, timeout {timeout:g}s)")
    try:
        # The outer deadline catches time spent outside any phase.
        async with asyncio.timeout(max(ctx.remaining(), 0)):
            await prober(ctx, target, module)
    except asyncio.CancelledError:
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
    duration = ctx.elapsed()
    return ProbeResult(
        target=target,
        module=module.name,
        prober=module.prober,
        started_at=started_at,
        duration_seconds=duration,
        timeout_seconds=timeout,
        phases=ctx.phases,
        failure=failure,
        peer=ctx.peer,
        tcp=ctx.tcp,
        tls=ctx.tls,
        http=ctx.http,
        failed_due_to_regex=ctx.failed_due_to_regex,
        logs=tuple(ctx.logs),
    )
