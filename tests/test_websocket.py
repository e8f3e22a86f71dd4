"""The websocket prober against a real WebSocket server (aiohttp): RTT, pong timeout, close codes, send/expect."""
from __future__ import annotations

import asyncio
import base64
import re
import uuid

import pytest

from exporter.config import parse_config
from exporter.engine import expected_phases, run_probe
from exporter.probers.websocket import WebSocketDetails
from exporter.schema import ConfigError, Secret
from exporter.sinks.exposition import probe_text
from exporter.sinks.store import SeriesStore

try:
    from tests.probekit import PER_TEST_TIMEOUT, mod, surfaces_showing
    from tests.streampeers import WebSocketServer
except ImportError:  # pragma: no cover
    from probekit import PER_TEST_TIMEOUT, mod, surfaces_showing
    from streampeers import WebSocketServer

pytestmark = pytest.mark.timeout(PER_TEST_TIMEOUT)


def ws(**fields: object):  # type: ignore[no-untyped-def]
    return mod("websocket", timeout="10s", websocket=fields)


def details(result) -> WebSocketDetails:  # type: ignore[no-untyped-def]
    assert isinstance(result.details, WebSocketDetails), result
    return result.details


async def test_an_echo_server_reports_ping_rtts_and_a_clean_close() -> None:
    async with WebSocketServer() as server:
        result = await run_probe(server.url, ws(pings=3, ping_interval="50ms", query_response=[{"send": "hello"}, {"expect": "^hello"}]))
        assert server.pings == 3 and server.messages == ["hello"]
    assert result.success, result.failure
    d = details(result)
    assert (d.status, d.upgraded, d.pings, d.pongs, d.close_code, d.messages_received) == (101, True, 3, 3, 1000, 1)
    assert len(d.rtts) == 3 and all(0 < rtt < 1.0 for rtt in d.rtts)
    names = [p.name for p in result.timeline]
    assert names == ["connect", "upgrade", "exchange", "exchange", "ping", "ping", "ping", "close"]
    assert result.phases["ping"] == pytest.approx(sum(d.rtts), abs=0.005)


async def test_a_server_that_stops_answering_pings_fails_as_pong_timeout() -> None:
    async with WebSocketServer(answer_pings=False) as server:
        result = await run_probe(server.url, ws(pings=2, pong_timeout="300ms"))
    assert result.failure is not None
    assert (result.failure.phase, result.failure.reason) == ("ping", "ws_pong_timeout")
    assert "no pong for ping 1 within 0.3s" in result.failure.message
    assert details(result).pongs == 0 and details(result).pings == 1


async def test_a_server_that_closes_reports_ws_closed_with_the_code() -> None:
    async with WebSocketServer(close_code=1008) as server:
        result = await run_probe(server.url, ws(pings=1))
    assert result.failure is not None and result.failure.reason == "ws_closed", result.failure
    assert result.failure.phase == "ping"
    assert "code 1008 (bye)" in result.failure.message and details(result).close_code == 1008


async def test_a_plain_http_endpoint_fails_the_upgrade() -> None:
    async with WebSocketServer() as server:
        result = await run_probe(server.url.replace("/ws", "/plain"), ws())
    assert result.failure is not None
    assert (result.failure.phase, result.failure.reason) == ("upgrade", "ws_upgrade_failed")
    assert details(result).status == 200 and not details(result).upgraded


async def test_a_wrong_sec_websocket_accept_fails_the_upgrade() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: d3Jvbmc=\r\n\r\n")
        await writer.drain()
        await reader.read()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        result = await run_probe(f"ws://127.0.0.1:{port}/", ws())
    finally:
        server.close()
    assert result.failure is not None
    assert (result.failure.phase, result.failure.reason) == ("upgrade", "ws_upgrade_failed"), result.failure
    assert "accept" in result.failure.message.lower()


async def test_an_unexpected_message_fails_with_the_regexp() -> None:
    async with WebSocketServer(reply="goodbye") as server:
        result = await run_probe(server.url, ws(pings=0, query_response=[{"send": "hello"}, {"expect": "^hello"}]))
    assert result.failure is not None
    assert (result.failure.phase, result.failure.reason) == ("exchange", "ws_unexpected_message")
    assert result.failed_due_to_regex and details(result).failed_due_to_regex


async def test_blackbox_module_shape_loads_and_probes_with_its_expansion_and_metrics() -> None:
    # blackbox's example.yml websocket module, pointed at our echo server.
    config = parse_config("""
modules:
  websocket_example_basic_auth:
    prober: websocket
    websocket:
      http_config:
        basic_auth: {username: "user", password: "password"}
        tls_config: {insecure_skip_verify: true}
      headers:
        X-Some-Header: "my_header"
      query_response:
        - send: "Hello, prober"
        - expect: ^Hello,\\s(.+)
          send: "Hello server, i'am ${1}"
        - expect: ^Hello server
""")
    module = config.modules["websocket_example_basic_auth"]
    assert ("Authorization", Secret("Basic dXNlcjpwYXNzd29yZA==")) in module.settings.headers
    assert module.settings.tls_config.insecure_skip_verify
    async with WebSocketServer() as server:
        result = await run_probe(server.url, module)
        assert server.messages == ["Hello, prober", "Hello server, i'am prober"]
    assert result.success, result.failure
    text = probe_text(result)
    assert "probe_websocket_connection_upgraded 1" in text and "probe_websocket_status_code 101" in text
    assert 'probe_websocket_duration_seconds{phase="processing"}' in text
    store = SeriesStore()
    store.observe(server.url, "m", (), result)
    metrics = store.render().decode()
    assert f'connhealth_websocket_pings_total{{target="{server.url}",module="m"}} 3' in metrics
    assert f'connhealth_websocket_ping_rtt_seconds_count{{target="{server.url}",module="m"}} 3' in metrics


def test_blackbox_authorization_shape_becomes_the_authorization_header() -> None:
    module = mod("websocket", websocket={"http_config": {"authorization": {"credentials": "secret_token"},
                                                         "tls_config": {"insecure_skip_verify": True}},
                                         "headers": {"X-Some-Header": "my_header"}})
    assert module.settings.headers == (("X-Some-Header", "my_header"), ("Authorization", Secret("Bearer secret_token")))


@pytest.mark.parametrize(("fields", "error"), [
    ({"pings": -1}, "modules.m.websocket.pings: must be between 0 and 1000"),
    ({"pong_timeout": "0s"}, "modules.m.websocket.pong_timeout: must be greater than 0"),
    ({"query_response": [{"expect": "("}]}, "modules.m.websocket.query_response[0].expect: invalid regexp"),
    ({"http_config": {"proxy_url": "http://p"}}, "modules.m.websocket.http_config.proxy_url: unsupported field"),
    ({"http_config": {"basic_auth": {"username": "u"}, "authorization": {"credentials": "c"}}},
     "basic_auth and authorization cannot both be set"),
])
def test_bad_websocket_sections_are_named(fields: dict[str, object], error: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(error)):
        mod("websocket", websocket=fields)



async def test_pings_that_cannot_fit_the_timeout_are_a_clear_failure() -> None:
    result = await run_probe("ws://127.0.0.1:9/", mod("websocket", timeout="2s", websocket={"pings": 5, "ping_interval": "1s"}))
    assert result.failure is not None and (result.failure.phase, result.failure.reason) == ("probe", "probe_timeout")
    assert "5 pings 1s apart do not fit the probe's timeout 2s" in result.failure.message


@pytest.mark.parametrize("auth", ["basic_auth", "authorization"])
async def test_credentials_are_typed_at_parse_and_revealed_only_on_the_wire(auth: str) -> None:
    canary = f"cnry{uuid.uuid4().hex}"
    http_config = ({"basic_auth": {"username": "u", "password": canary}} if auth == "basic_auth"
                   else {"authorization": {"credentials": canary}})
    module = ws(pings=1, headers={"Cookie": f"s={canary}", "X-A": "b"}, http_config=http_config)
    headers = dict(module.settings.headers)
    assert [k for k, v in headers.items() if isinstance(v, Secret)] == ["Cookie", "Authorization"] and headers["X-A"] == "b"
    async with WebSocketServer() as server:
        result = await run_probe(f"{server.url}?access_token={canary}", module)
    assert result.success, result.failure
    sent = server.headers[0]
    expected = "Basic " + base64.b64encode(f"u:{canary}".encode()).decode() if auth == "basic_auth" else f"Bearer {canary}"
    assert (sent["Authorization"], sent["Cookie"], sent["X-A"]) == (expected, f"s={canary}", "b")
    assert result.target == f"{server.url}?access_token=REDACTED" and result.hops[0].url == result.target
    assert surfaces_showing(canary, result, module) == []
    # The phases its series were created for at schedule time are the ones it went through.
    assert set(expected_phases(server.url, module)) == set(result.total_phases())
