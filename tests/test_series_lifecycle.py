"""A target's continuous-mode series: at 0 from the moment it is scheduled, gone when it is removed.

A real ``connhealth serve`` process probes a peer that accepts the connection
and never answers, so the target's first probe cannot finish while the test
looks: whatever /metrics shows then was created by scheduling, not by a result.
"""
from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from exporter import metrics as m

try:
    from tests.procs import ExporterProcess, samples, value
    from tests.peers import RawTCPServer
except ImportError:  # pragma: no cover - depends on how pytest put us on sys.path
    from procs import ExporterProcess, samples, value  # type: ignore[no-redef]
    from peers import RawTCPServer  # type: ignore[no-redef]

pytestmark = pytest.mark.timeout(45)

WAIT = 10.0  # bounds events that take well under a second here


def config(*targets: str) -> str:
    listed = "".join(f"  - {{target: {t}, module: slow_web, interval: 1s, labels: {{service: api}}}}\n" for t in targets)
    return f"""
modules:
  slow_web:
    prober: http
    timeout: 30s
    http: {{preferred_ip_protocol: ip4}}
targets:
{listed}"""


def of(text: str, name: str, target: str) -> list[tuple[dict[str, str], float]]:
    return [(ls, v) for ls, v in samples(text, name) if ls.get("target") == target]


async def test_a_scheduled_target_has_every_series_at_zero_before_its_first_probe_finishes(tmp_path: Path) -> None:
    async with RawTCPServer("stall") as stalled:
        target = f"http://127.0.0.1:{stalled.port}/"
        cfg = tmp_path / "connhealth.yml"
        cfg.write_text(config(target))
        exporter = await ExporterProcess(cfg, tmp_path).start()
        try:
            deadline = time.monotonic() + WAIT
            while stalled.connections == 0:  # the first probe has started (and will stall for 30 s)
                assert time.monotonic() < deadline, "the target was never probed"
                await asyncio.sleep(0.02)
            text = await exporter.metrics()
            for name in (m.PROBE_ATTEMPTS, m.PROBE_SUCCESSES, m.OBSERVED_SECONDS, m.UP_SECONDS):
                assert of(text, name, target) == [({"target": target, "module": "slow_web", "service": "api"}, 0.0)], name
            # The phases a plain-HTTP probe of an IP literal goes through: no dns, no tls.
            phases = ["connect", "request", "first_byte", "transfer"]
            assert {ls["phase"] for ls, _ in of(text, m.PHASE_DURATION + "_count", target)} == set(phases)
            for name, per_phase in ((m.PROBE_DURATION, [None]), (m.PHASE_DURATION, phases)):
                for phase in per_phase:
                    extra = {"phase": phase} if phase else {}
                    assert value(text, name + "_count", target=target, **extra) == 0, (name, phase)
                    assert value(text, name + "_sum", target=target, **extra) == 0, (name, phase)
                    buckets = [v for ls, v in of(text, name + "_bucket", target) if ls.get("phase") == phase]
                    assert buckets == [0.0] * (len(m.DEFAULT_BUCKETS) + 1), (name, phase)
            # No result yet: no failure series and none of the last-probe gauges (never a fake 0).
            for name in (m.PROBE_FAILURES, m.PROBE_SUCCESS, m.LAST_PROBE, m.LAST_SUCCESS, m.CERT_EXPIRY):
                assert of(text, name, target) == [], name

            # Removed before its first probe finished: every series of it disappears.
            cfg.write_text(config())
            exporter.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + WAIT
            while target in text:
                assert time.monotonic() < deadline, "the removed target's series are still exported"
                await asyncio.sleep(0.05)
                text = await exporter.metrics()
            assert value(text, "connhealth_config_reloads_total", result="success") == 1
        finally:
            await exporter.astop()


def test_store_adds_each_results_coverage_and_sync_keeps_exactly_the_scheduled_targets() -> None:
    from exporter.result import Failure, ProbeResult
    from exporter.sinks.store import SeriesStore

    store = SeriesStore(["service"])
    a, b = ("a:1", "tcp_connect", (("service", "x"),)), ("b:1", "tcp_connect", ())
    store.sync({a: ("connect",), b: ()})
    ok = ProbeResult(target="a:1", module="tcp_connect", prober="tcp", started_at=1000.0, duration_seconds=0.01,
                     timeout_seconds=1.0)
    bad = ProbeResult(target="a:1", module="tcp_connect", prober="tcp", started_at=1001.0, duration_seconds=0.01,
                      timeout_seconds=1.0, failure=Failure("connect", "connect_refused", "refused"))
    store.observe(*a, ok)  # a first probe stands for no time
    store.observe(*a, bad, 2.0, 1.0)  # half of the gap before it went to the success
    store.observe(*a, bad, 0.5, 0.0)
    text = store.render().decode()
    base = 'target="a:1",module="tcp_connect",service="x"'
    assert value(text, m.OBSERVED_SECONDS, target="a:1") == 2.5 and f"{m.OBSERVED_SECONDS}{{{base}}} 2.5" in text
    assert value(text, m.UP_SECONDS, target="a:1") == 1.0
    assert (value(text, m.PROBE_ATTEMPTS, target="a:1"), value(text, m.PROBE_SUCCESSES, target="a:1")) == (3, 1)
    # b expects no phase (e.g. its module is unknown): its counters exist, no phase histogram is guessed.
    assert value(text, m.PROBE_ATTEMPTS, target="b:1") == 0
    assert not [ls for ls, _ in samples(text, m.PHASE_DURATION + "_count") if ls["target"] == "b:1"]
    # a's connect histogram existed at 0 and counts the results' connects (none here); no other phase.
    assert {ls["phase"] for ls, _ in samples(text, m.PHASE_DURATION + "_count") if ls["target"] == "a:1"} == {"connect"}
    store.sync({b: ()})
    assert "a:1" not in store.render().decode()
    # Re-scheduled later: it starts again from 0.
    store.sync({a: ("connect",), b: ()})
    assert value(store.render().decode(), m.PROBE_ATTEMPTS, target="a:1") == 0


@pytest.mark.parametrize(("prober", "target", "module_yaml", "phases"), [
    ("http", "https://example.test/", "{}", ["dns", "connect", "tls", "request", "first_byte", "transfer"]),
    ("http", "http://127.0.0.1:8080/x", "{}", ["connect", "request", "first_byte", "transfer"]),
    ("http", "http://[::1]:8080/", "{}", ["connect", "request", "first_byte", "transfer"]),
    ("tcp", "127.0.0.1:22", "{}", ["connect"]),
    ("tcp", "mail.example.test:25", "{query_response: [{expect: '^220'}, {send: EHLO x}, {starttls: true}]}",
     ["dns", "connect", "tls", "request", "first_byte"]),
    ("tcp", "db.example.test:5432", "{tls: true}", ["dns", "connect", "tls"]),
    ("http", "https://example.test/", "{keepalive: {idle: 1s}}", ["dns", "connect", "tls", "request", "first_byte", "transfer", "idle"]),
    ("sse", "http://127.0.0.1:8080/events", "{}", ["connect", "request", "first_byte", "first_event", "stream"]),
    ("sse", "https://example.test/events", "{resume: true}", ["dns", "connect", "tls", "request", "first_byte", "first_event", "stream"]),
    ("websocket", "wss://example.test/ws", "{}", ["dns", "connect", "tls", "upgrade", "ping", "close"]),
    ("websocket", "ws://127.0.0.1:80/ws", "{pings: 0, query_response: [{send: hi}]}", ["connect", "upgrade", "exchange", "close"]),
])
def test_expected_phases_are_the_ones_a_successful_probe_goes_through(
        prober: str, target: str, module_yaml: str, phases: list[str]) -> None:
    from exporter.config import parse_config
    from exporter.engine import expected_phases

    module = parse_config(f"modules:\n  m:\n    prober: {prober}\n    {prober}: {module_yaml}\n").modules["m"]
    assert list(expected_phases(target, module)) == phases
    assert expected_phases(target, None) == ()
    assert expected_phases("not a target", module) == ()


@pytest.mark.parametrize(("prober", "target", "phases"), [
    ("http", "https://example.test/", ["dns", "connect", "tls", "request", "first_byte", "transfer", "tls_full", "tls_resumed"]),
    ("http", "http://example.test/", ["dns", "connect", "request", "first_byte", "transfer"]),  # no TLS: no check
    ("tcp", "db.example.test:5432", ["dns", "connect", "tls", "tls_full", "tls_resumed"]),
])
def test_the_tls_resumption_check_adds_its_handshakes_after_tls(prober: str, target: str, phases: list[str]) -> None:
    from exporter.config import parse_config
    from exporter.engine import expected_phases

    section = "tcp: {tls: true}" if prober == "tcp" else "http: {}"
    module = parse_config(f"modules:\n  m:\n    prober: {prober}\n    {section}\n    tls_resumption: {{check: true}}\n").modules["m"]
    assert list(expected_phases(target, module)) == phases


def test_sync_creates_the_probers_own_counters_and_histograms_at_0_not_its_gauges() -> None:
    from exporter.config import parse_config
    from exporter.engine import expected_families, expected_phases
    from exporter.sinks.store import SeriesStore

    module = parse_config("modules:\n  m:\n    prober: sse\n").modules["m"]
    key = ("http://127.0.0.1:8080/events", "m", ())
    store = SeriesStore()
    store.sync({key: expected_phases(key[0], module)}, {key: expected_families(module)})
    text = store.render().decode()
    target = key[0]
    assert (value(text, m.SSE_EVENTS, target=target), value(text, m.SSE_HEARTBEATS, target=target)) == (0, 0)
    assert value(text, m.SSE_HEARTBEAT_GAP + "_count", target=target) == 0
    assert not samples(text, m.SSE_MAX_GAP)  # a gauge: no value before a probe sets one
    assert value(text, m.TCP_SYN_RETRANSMITS, target=target) == 0
    assert expected_families(None) == ()
