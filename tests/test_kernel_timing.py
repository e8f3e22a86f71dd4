"""Phases timed at the kernel's boundaries (issue 15): what the wire did, not when our event loop noticed.

Real timing is asserted here, so every assertion has a margin and waits for
events: the delay line reports how late it forwarded any packet, and an attempt
on which the relay itself was late (a loaded machine) is repeated, a bounded
number of times, rather than blamed on the prober.
"""
from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvloop

from exporter.engine import run_probe
from exporter.render import render
from exporter.result import ProbeResult

try:
    from tests.probekit import PER_TEST_TIMEOUT, mod, needs_netns
    from tests.tunrelay import TunRelay
except ImportError:  # pragma: no cover
    from probekit import PER_TEST_TIMEOUT, mod, needs_netns
    from tunrelay import TunRelay

pytestmark = pytest.mark.timeout(PER_TEST_TIMEOUT * 2)

RTT = 0.020
MARGIN = 0.003  # the bar: a 20 ms RTT shows as connect within 3 ms
RELAY_ON_TIME = 0.001  # an attempt counts only if the relay forwarded every packet within 1 ms of due
ATTEMPTS = 30  # each a few tens of ms: bounded, and enough to find a calm moment on a loaded machine
BLOCK = 0.050


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Awaitable[Any]], Any]:
    factory = asyncio.new_event_loop if request.param == "asyncio" else uvloop.new_event_loop

    def runner(coro: Awaitable[Any]) -> Any:
        async def bounded() -> Any:
            async with asyncio.timeout(PER_TEST_TIMEOUT):
                return await coro

        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(bounded())

    return runner


def _phase(result: ProbeResult, name: str) -> Any:
    return next(p for p in result.timeline if p.name == name)


async def _on_time(net: TunRelay, probe: Callable[[], Awaitable[ProbeResult]]) -> ProbeResult:
    """The first probe during which the relay forwarded every packet on time."""
    for _ in range(ATTEMPTS):
        net.late_max = 0.0
        result = await probe()
        assert result.success, result.failure
        if net.late_max <= RELAY_ON_TIME:
            return result
    pytest.fail(f"the delay line was late by {net.late_max * 1000:.1f} ms in each of {ATTEMPTS} attempts")


@needs_netns
def test_a_20ms_injected_rtt_shows_as_connect_and_first_byte_within_3ms(run: Callable[[Awaitable[Any]], Any]) -> None:
    async def main() -> tuple[ProbeResult, ProbeResult]:
        with TunRelay(delay=RTT / 2, http=True, process=True) as net:
            tcp = await _on_time(net, lambda: run_probe(f"{net.server_ip}:{net.port}", mod("tcp", timeout="5s")))
            http = await _on_time(net, lambda: run_probe(f"http://{net.server_ip}:{net.port}/", mod("http", timeout="5s")))
        return tcp, http

    tcp, http = run(main())
    connect = _phase(tcp, "connect")
    assert connect.wall is not None, "connect was not kernel-timed"
    assert abs(connect.duration - RTT) <= MARGIN, connect
    assert connect.wall >= connect.duration
    for name in ("connect", "first_byte"):
        phase = _phase(http, name)
        assert phase.wall is not None, f"{name} was not kernel-timed"
        assert abs(phase.duration - RTT) <= MARGIN, phase


@needs_netns
def test_a_blocked_event_loop_shows_as_self_delay_while_connect_stays_put(run: Callable[[Awaitable[Any]], Any]) -> None:
    # A connect that has to wait for its SYN-ACK (a 20 ms delay line; on loopback the handshake is over
    # before connect() returns, and nothing waits for the loop at all).
    def busy() -> None:
        # Holds the loop (not just sleeps): the SYN-ACK arrives meanwhile, only the loop does not see it.
        end = time.perf_counter() + BLOCK
        while time.perf_counter() < end:
            pass

    async def main() -> tuple[ProbeResult, ProbeResult]:
        with TunRelay(delay=RTT / 2, process=True) as net:
            target = f"{net.server_ip}:{net.port}"
            calm = await _on_time(net, lambda: run_probe(target, mod("tcp", timeout="5s")))

            async def blocked() -> ProbeResult:
                # The probe's first step runs up to the connect's wait (the SYN is sent), then busy() runs.
                task = asyncio.ensure_future(run_probe(target, mod("tcp", timeout="5s")))
                asyncio.get_running_loop().call_soon(busy)
                return await task

            return calm, await _on_time(net, blocked)

    calm, blocked = run(main())
    connect = _phase(blocked, "connect")
    assert connect.wall is not None and connect.wall >= BLOCK, connect
    # The kernel's figure is the wire's RTT, blocked loop or not.
    assert abs(connect.duration - RTT) <= MARGIN, connect
    assert abs(_phase(calm, "connect").duration - RTT) <= MARGIN
    assert blocked.self_delay_seconds is not None
    assert blocked.self_delay_seconds >= BLOCK - connect.duration - 0.001
    assert blocked.self_delay_seconds == pytest.approx(connect.wall - connect.duration)
    shown = json.loads(json.dumps(blocked.to_dict()))
    assert shown["self_delay_seconds"] == pytest.approx(blocked.self_delay_seconds)
    assert shown["timeline"][0]["wall"] == pytest.approx(connect.wall)
    text = render(blocked)
    assert f"exporter's own delay {blocked.self_delay_seconds * 1000:.3f} ms" in text
    assert f"kernel; loop {connect.wall * 1000:.2f} ms" in text


async def test_the_exporter_observes_each_probes_self_delay_by_mode(tmp_path: Any) -> None:
    try:
        from tests.procs import ExporterProcess, value
    except ImportError:  # pragma: no cover
        from procs import ExporterProcess, value  # type: ignore[no-redef]

    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    port = listener.getsockname()[1]
    config = tmp_path / "c.yml"
    config.write_text(f"targets:\n  - target: 127.0.0.1:{port}\n    module: tcp_connect\n    interval: 200ms\n")
    exporter = ExporterProcess(config, tmp_path)
    await exporter.start()
    try:
        for _ in range(3):
            status, text = await exporter.get("/probe", params={"target": f"127.0.0.1:{port}", "module": "tcp_connect"})
            assert status == 200 and "probe_success 1" in text, text
        metrics = await exporter.wait_metrics(
            lambda t: (value(t, "connhealth_probe_self_delay_seconds_count", mode="scheduled") or 0) >= 2, 10.0,
            "two scheduled probes' self delay")
    finally:
        await exporter.astop()
        listener.close()
    assert value(metrics, "connhealth_probe_self_delay_seconds_count", mode="probe_endpoint") == 3
    total = value(metrics, "connhealth_probe_self_delay_seconds_sum", mode="probe_endpoint")
    assert total is not None and 0 <= total < 3.0


@pytest.mark.parametrize("created", [False, True])
def test_the_self_delay_histogram_is_exposed_as_prometheus_clients_would_expose_it(created: bool) -> None:
    """connhealth_probe_self_delay_seconds is server.LoopHistogram (no locks: it is observed per probe);
    its text and OpenMetrics exposition are those of a prometheus_client Histogram with the same
    label, buckets and observations (including the boundaries, which land in the bucket they bound)."""
    import prometheus_client.metrics
    from prometheus_client import CollectorRegistry, Histogram, disable_created_metrics, enable_created_metrics, generate_latest
    from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

    from exporter.server import LoopHistogram

    was = prometheus_client.metrics._use_created
    (enable_created_metrics if created else disable_created_metrics)()
    try:
        buckets = (0.0001, 0.0005, 0.001, 0.5)
        ours_registry, theirs_registry = CollectorRegistry(auto_describe=True), CollectorRegistry(auto_describe=True)
        ours = LoopHistogram("x_seconds", "What x took", "mode", ("scheduled", "probe_endpoint"), buckets, created=created)
        ours_registry.register(ours)
        theirs = Histogram("x_seconds", "What x took", ["mode"], buckets=buckets, registry=theirs_registry)
        children = {mode: theirs.labels(mode) for mode in ("scheduled", "probe_endpoint")}
        for mode, amount in [("scheduled", 0.00005), ("scheduled", 0.0001), ("probe_endpoint", 0.0007),
                             ("scheduled", 3.0), ("probe_endpoint", 0.5), ("probe_endpoint", 0.0)]:
            ours.observe(mode, amount)
            children[mode].observe(amount)
        for render in (generate_latest, generate_openmetrics):
            mine, reference = (re.sub(rb"(_created\{[^}]*\}) \S+", rb"\1 T", render(r)) for r in (ours_registry, theirs_registry))
            assert mine == reference
            assert (b"_created" in mine) is created
        assert b'x_seconds_bucket{le="0.0001",mode="scheduled"} 2.0' in generate_latest(ours_registry)
    finally:
        (enable_created_metrics if was else disable_created_metrics)()
