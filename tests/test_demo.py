"""The demo targets of `make run` behave as announced: the lifecycle ones included (seed 000/002 failures on demand)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from exporter.demo import KEEPALIVE_SECONDS, DemoTargets
from exporter.engine import run_probe
from exporter.probers.sse import SSEDetails
from exporter.probers.websocket import WebSocketDetails

pytestmark = pytest.mark.timeout(60)


async def test_lifecycle_demo_targets(tmp_path: Path) -> None:
    demo = DemoTargets(tmp_path)
    await demo.start()
    try:
        assert demo.config is not None
        targets = {t.name: t for t in demo.targets}
        modules = demo.config.modules

        ws = await run_probe(targets["WebSocket echo"].target, modules["demo_websocket"])
        assert ws.success, ws.failure
        assert isinstance(ws.details, WebSocketDetails) and ws.details.pongs == 3 and len(ws.details.rtts) == 3

        ka = await run_probe(targets["keep-alive 1s"].target, modules["demo_keepalive"])
        assert ka.failure is not None and ka.failure.reason == "keepalive_closed_early", ka.failure
        assert ka.keepalive is not None and ka.keepalive.server_idle_seconds is not None
        assert abs(ka.keepalive.server_idle_seconds - KEEPALIVE_SECONDS) < 0.5

        tls = await run_probe(targets["TLS without resumption"].target, modules["demo_tls_resume"])
        assert tls.failure is not None and tls.failure.reason == "tls_resumption_failed", tls.failure
        # TLS 1.3 without tickets: nothing to offer, so the check fails at its first handshake.
        assert tls.failure.phase == "tls_full" and tls.resumption is not None
        assert not tls.resumption.resumed and not tls.resumption.offered and tls.resumption.resumed_seconds is None

        # The stream: streams 1 and 2 are healthy (the probe and its resume), stream 3 stalls 8 s.
        sse = modules["demo_sse"]
        short = dataclasses.replace(sse, settings=dataclasses.replace(sse.settings, hold=2.5))
        first = await run_probe(targets["event stream"].target, short)
        assert first.success, first.failure
        assert isinstance(first.details, SSEDetails) and first.details.resumed is True
        stalled = await run_probe(targets["event stream"].target, dataclasses.replace(sse, settings=dataclasses.replace(
            sse.settings, hold=9.0, resume=False)))
        assert stalled.failure is not None and stalled.failure.reason == "sse_heartbeat_missed", stalled.failure
        # the config the demo serves lists every target
        text = demo.config_text()
        assert all(t.target in text for t in demo.targets)
    finally:
        await demo.stop()
