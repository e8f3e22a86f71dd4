"""Paced connects (exporter/net/pacing.py): a token bucket every connect waits on, outside any phase."""
from __future__ import annotations

import asyncio
import math
import time

import pytest

from exporter.config import parse_config
from exporter.engine import run_probe
from exporter.net.pacing import ConnectPacer
from exporter.server import ServeOptions
from exporter.schema import ConfigError

try:
    from tests.probekit import PER_TEST_TIMEOUT
except ImportError:  # pragma: no cover
    from probekit import PER_TEST_TIMEOUT

pytestmark = pytest.mark.timeout(PER_TEST_TIMEOUT)


class ManualClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_bucket_holds_burst_tokens_and_refills_at_the_rate() -> None:
    clock = ManualClock()
    pacer = ConnectPacer(rate_per_ms=2, burst=3, clock=clock)
    assert [pacer.try_take() for _ in range(4)] == [True, True, True, False]
    clock.now += 0.0004  # 0.8 of a token
    assert not pacer.try_take()
    clock.now += 0.0001  # 1.0
    assert pacer.try_take() and not pacer.try_take()
    clock.now += 10.0  # a long idle fills the bucket to its burst, no further
    assert [pacer.try_take() for _ in range(4)] == [True, True, True, False]


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (math.nan, 1), (math.inf, 1), (1001, 1), (1, 0), (1, 1.5)])
def test_rates_and_bursts_are_validated(rate: float, burst: int) -> None:
    with pytest.raises(ValueError, match="connect (rate|burst)"):
        ConnectPacer(rate, burst)


async def test_waiting_connects_leave_in_fifo_order_no_faster_than_the_rate() -> None:
    rate_per_ms, burst, n = 0.5, 2, 12  # a token per 2 ms
    pacer = ConnectPacer(rate_per_ms, burst)
    start = time.monotonic()
    granted: list[tuple[int, float]] = []

    async def connect(i: int) -> None:
        await pacer.take()
        granted.append((i, time.monotonic()))

    async with asyncio.timeout(10):
        await asyncio.gather(*(connect(i) for i in range(n)))
    assert [i for i, _ in granted] == list(range(n))
    assert pacer.waited == n - burst
    for k, (_, at) in enumerate(granted):
        # Timers never fire early for the bucket: it re-checks its own clock. Late is allowed (a loaded machine).
        earliest = start + max(0, k - burst + 1) / (rate_per_ms * 1000)
        assert at >= earliest - 1e-6, (k, at - start)


async def test_a_cancelled_wait_consumes_no_token() -> None:
    pacer = ConnectPacer(rate_per_ms=0.001, burst=1)  # one token per second
    assert pacer.try_take()
    waiter = asyncio.ensure_future(pacer.take())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert not pacer._waiters
    second = asyncio.ensure_future(pacer.take())
    async with asyncio.timeout(10):
        await second  # the next token (after ~1 s) is this one's
    assert pacer.waited == 2


async def test_a_probe_waits_for_its_token_outside_every_phase() -> None:
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    module = parse_config("modules:\n  m: {prober: tcp, timeout: 10s, tcp: {preferred_ip_protocol: ip4}}\n").modules["m"]
    pacer = ConnectPacer(rate_per_ms=0.005, burst=1)  # one token per 200 ms
    try:
        first = await run_probe(f"127.0.0.1:{port}", module, pacer=pacer)
        second = await run_probe(f"127.0.0.1:{port}", module, pacer=pacer)
    finally:
        listener.close()
    assert first.success and second.success
    assert pacer.waited == 1
    assert any("for a connect token" in line for line in second.logs)
    assert not any("for a connect token" in line for line in first.logs)
    # The wait (about 200 ms) is in the total, in no phase.
    assert second.duration_seconds >= 0.15
    assert sum(p.duration for p in second.timeline) < second.duration_seconds - 0.15


@pytest.mark.parametrize(("rate", "burst", "message"), [
    (math.nan, 10, "--probe.connect-rate must be between 0 and 1000"),
    (-1.0, 10, "--probe.connect-rate must be between 0 and 1000"),
    (10.0, 0, "--probe.connect-burst must be between 1 and 100000"),
])
def test_serve_options_validate_the_pacing_numbers(rate: float, burst: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ServeOptions(connect_rate=rate, connect_burst=burst).check()


def test_pacing_is_on_by_default_and_off_at_rate_zero() -> None:
    pacer = ServeOptions().pacer()
    assert pacer is not None and pacer.rate == 10_000 and pacer.burst == 10
    assert ServeOptions(connect_rate=0).pacer() is None
