"""The lifecycle probers through every surface: `connhealth probe` (waterfall and --json), /probe (with debug
redaction) and continuous /metrics of a running exporter."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from exporter import cli
from exporter.config import load_config
from exporter.server import Exporter, ServeOptions, build_app

try:
    from tests.streampeers import SSEServer, WebSocketServer
except ImportError:  # pragma: no cover
    from streampeers import SSEServer, WebSocketServer

pytestmark = pytest.mark.timeout(60)


def _config(tmp_path: Path, sse: SSEServer, ws: WebSocketServer) -> Path:
    path = tmp_path / "lifecycle.yml"
    path.write_text(f"""
modules:
  events:
    prober: sse
    timeout: 5s
    sse: {{hold: 600ms, heartbeat_interval: 1s, headers: {{Authorization: "Bearer sekrit-token"}}}}
  chat:
    prober: websocket
    timeout: 5s
    websocket: {{pings: 2, ping_interval: 50ms}}
targets:
  - {{target: "{sse.url}", module: events, interval: 1s}}
  - {{target: "{ws.url}", module: chat, interval: 1s}}
""")
    return path


async def test_cli_waterfall_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with SSEServer(interval=0.1) as sse, WebSocketServer() as ws:
        path = _config(tmp_path, sse, ws)
        # The CLI runs its own event loop: in a thread, so this loop keeps serving.
        code = await asyncio.to_thread(cli.main, ["probe", sse.url, "--config", str(path), "--module", "events"])
        out = capsys.readouterr().out
        assert code == 0, out
        assert "First event" in out and "Stream held" in out and "SSE 200  events " in out
        code = await asyncio.to_thread(cli.main, ["probe", ws.url, "--config", str(path), "--module", "chat", "--json"])
        d = json.loads(capsys.readouterr().out)
    assert code == 0 and d["details"]["pongs"] == 2 and list(d["phases"]) == ["connect", "upgrade", "ping", "close"]


async def test_probe_endpoint_with_debug_redaction_and_continuous_metrics(tmp_path: Path) -> None:
    async with SSEServer(interval=0.1) as sse, WebSocketServer() as ws:
        exporter = Exporter(ServeOptions(config_file=None), load_config(_config(tmp_path, sse, ws)))
        async with TestClient(TestServer(build_app(exporter))) as client:
            exporter.start()
            try:
                resp = await client.get("/probe", params={"target": sse.url, "module": "events"})
                text = await resp.text()
                assert resp.status == 200 and "probe_success 1\n" in text and "probe_sse_events " in text
                resp = await client.get("/probe", params={"target": sse.url, "module": "events", "debug": "true"})
                debug = await resp.text()
                assert "Authorization: <secret>" in debug and "sekrit-token" not in debug
                resp = await client.get("/probe", params={"target": ws.url, "module": "chat"})
                text = await resp.text()
                assert "probe_websocket_connection_upgraded 1\n" in text and "probe_websocket_pongs 2\n" in text
                wanted = (f'connhealth_sse_heartbeat_gap_seconds_count{{target="{sse.url}",module="events"}}',
                          f'connhealth_websocket_ping_rtt_seconds_count{{target="{ws.url}",module="chat"}}')
                for _ in range(200):  # the scheduler probes both within their 1 s interval
                    body = await (await client.get("/metrics")).text()
                    if all(w in body for w in wanted):
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError("lifecycle families missing from /metrics:\n" + body)
            finally:
                await exporter.stop()
