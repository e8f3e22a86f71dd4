"""http.keepalive against a real nginx: the server's idle timeout shorter than the client's, and reuse after idle."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from exporter.engine import run_probe
from exporter.schema import ConfigError
from exporter.sinks.store import SeriesStore

try:
    from tests.nginx import Nginx
    from tests.probekit import PER_TEST_TIMEOUT, mod
    from tests.peers import RawTCPServer
except ImportError:  # pragma: no cover
    from nginx import Nginx
    from peers import RawTCPServer
    from probekit import PER_TEST_TIMEOUT, mod

pytestmark = pytest.mark.timeout(PER_TEST_TIMEOUT)


def keepalive(**fields: object):  # type: ignore[no-untyped-def]
    return mod("http", timeout="10s", http={"keepalive": fields})


async def test_nginx_keepalive_1s_probed_with_idle_2s_closes_early_at_1s(tmp_path: Path) -> None:
    with Nginx(tmp_path, keepalive_timeout="1s") as nginx:
        result = await run_probe(nginx.url, keepalive(idle="2s"))
    assert result.failure is not None
    assert (result.failure.phase, result.failure.reason) == ("idle", "keepalive_closed_early"), result.failure
    ka = result.keepalive
    assert ka is not None and not ka.reused and ka.ended_by == "fin" and ka.idle_seconds == 2.0
    assert ka.server_idle_seconds is not None and abs(ka.server_idle_seconds - 1.0) <= 0.3, ka
    assert f"closed the idle connection (FIN) after {ka.server_idle_seconds:.3f}s" in result.failure.message
    assert ka.connection_header == "keep-alive"
    # Request 1 only: one hop; the idle phase lasted until the server's FIN.
    assert len(result.hops) == 1 and result.phases["idle"] == pytest.approx(ka.server_idle_seconds, abs=0.01)


async def test_nginx_keepalive_75s_reuses_the_connection_after_2s(tmp_path: Path) -> None:
    with Nginx(tmp_path, keepalive_timeout="75s") as nginx:
        result = await run_probe(nginx.url, keepalive(idle="2s"))
    assert result.success, result.failure
    ka = result.keepalive
    assert ka is not None and ka.reused and ka.ended_by == "silence" and ka.server_idle_seconds is None
    assert ka.keep_alive_header is None or "timeout" in ka.keep_alive_header
    # Two hops; the second has no dns/connect: it went on the same connection.
    assert len(result.hops) == 2 and [h.status for h in result.hops] == [200, 200]
    assert "connect" in result.hop_phases(0) and "connect" not in result.hop_phases(1)
    assert result.hop_phases(1).keys() >= {"request", "first_byte", "transfer"}
    idle = [p for p in result.timeline if p.name == "idle"]
    assert len(idle) == 1 and 2.0 <= idle[0].duration < 2.5
    assert result.to_dict()["keepalive"]["reused"] is True


async def test_keepalive_metrics_carry_reuse_and_the_server_idle(tmp_path: Path) -> None:
    with Nginx(tmp_path, keepalive_timeout="1s") as nginx:
        result = await run_probe(nginx.url, keepalive(idle="2s"))
    store = SeriesStore()
    store.observe("t", "m", (), result)
    text = store.render().decode()
    assert 'connhealth_keepalive_reused{target="t",module="m"} 0' in text
    assert 'connhealth_keepalive_client_idle_seconds{target="t",module="m"} 2' in text
    assert result.keepalive is not None and result.keepalive.server_idle_seconds is not None
    line = next(x for x in text.splitlines() if x.startswith("connhealth_keepalive_server_idle_seconds{"))
    assert abs(float(line.split()[-1]) - result.keepalive.server_idle_seconds) < 1e-6


async def test_a_server_that_says_connection_close_is_closed_early(tmp_path: Path) -> None:
    with Nginx(tmp_path, keepalive_timeout="0") as nginx:
        result = await run_probe(nginx.url, keepalive(idle="1s"))
    assert result.failure is not None and result.failure.reason == "keepalive_closed_early"
    assert result.keepalive is not None and result.keepalive.ended_by == "connection_close"
    assert "will not keep the connection alive (Connection: 'close'" in result.failure.message


async def test_a_connection_dropped_silently_is_found_dead_on_reuse_and_search_bounds_it() -> None:
    # A server that keeps the socket open but stops answering after 0.5 s idle: what a
    # middlebox that dropped the connection's state looks like (no FIN, no RST, no answer).
    import asyncio
    import time

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        last = time.monotonic()
        while True:
            await reader.readuntil(b"\r\n\r\n")
            if time.monotonic() - last > 0.5:
                writer.transport.abort()  # the request on the dead connection is reset
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            last = time.monotonic()

    async with RawTCPServer(handle) as server:
        result = await run_probe(f"http://127.0.0.1:{server.port}/", keepalive(idle="1s", search=True))
    assert result.failure is not None and result.failure.reason == "keepalive_closed_early", result.failure
    ka = result.keepalive
    assert ka is not None and ka.ended_by == "on_reuse" and ka.searched
    # Bisection within 1 s, 6 steps: the bound lies within 1/64 s below the true 0.5 s.
    assert ka.server_idle_seconds is not None and 0.4 <= ka.server_idle_seconds <= 0.5, ka


def test_keepalive_section_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"modules\.m\.http\.keepalive\.idle: required"):
        mod("http", http={"keepalive": {"search": True}})
    with pytest.raises(ConfigError, match=r"modules\.m\.http\.keepalive\.idel: unknown field"):
        mod("http", http={"keepalive": {"idle": "1s", "idel": "2s"}})
    with pytest.raises(ConfigError, match="body regexps do not apply"):
        mod("http", http={"keepalive": {"idle": "1s"}, "fail_if_body_matches_regexp": ["x"]})


async def test_an_idle_longer_than_the_timeout_is_a_clear_failure() -> None:
    result = await run_probe("http://127.0.0.1:9/", mod("http", timeout="2s", http={"keepalive": {"idle": "5s"}}))
    assert result.failure is not None and result.failure.reason == "probe_timeout"
    assert "keepalive.idle 5s does not fit the probe's timeout 2s" in result.failure.message


async def test_trace_spans_put_the_idle_under_the_probe_and_each_request_under_its_hop(tmp_path: Path) -> None:
    from opentelemetry.sdk.resources import Resource

    from exporter.sinks.traces import spans

    with Nginx(tmp_path, keepalive_timeout="75s") as nginx:
        result = await run_probe(nginx.url, keepalive(idle="0.3s"))
    assert result.success, result.failure
    built = spans(result, Resource.create({}))
    probe = next(s for s in built if s.name == "probe m")
    hops = [s for s in built if s.name == "GET"]
    assert len(hops) == 2
    idle = next(s for s in built if s.name == "idle")
    assert idle.parent is not None and idle.parent.span_id == probe.context.span_id
    # request, first_byte and transfer twice: under hop 1 (new connection), then hop 2 (the reused one).
    exchanges = [s for s in built if s.name in ("request", "first_byte", "transfer")]
    assert [s.parent.span_id for s in exchanges if s.parent is not None] == \
        [hops[0].context.span_id] * 3 + [hops[1].context.span_id] * 3


async def test_the_waterfall_shows_the_idle_only_for_a_keepalive_check(tmp_path: Path) -> None:
    from exporter.render import render

    with Nginx(tmp_path, keepalive_timeout="1s") as nginx:
        checked = render(await run_probe(nginx.url, keepalive(idle="2s")))
        plain = render(await run_probe(nginx.url, mod("http", timeout="5s")))
    # nginx's 1 s runs from its last write, ours from our last read: on a loaded machine a little under 1 s.
    ended = re.search(r"keep-alive: reused no after 2s idle; the server ended it \(fin\) after (\d+\.\d{3})s", checked)
    assert "Keep-alive idle" in checked and ended is not None, checked
    assert 0.5 < float(ended.group(1)) < 2.0
    assert "Keep-alive idle" not in plain and "TLS full (check)" not in plain and "keep-alive:" not in plain
    assert "Content transfer" in plain
