"""exporter.net.http2 against real HTTP/2 servers over TLS with ALPN h2.

hypercorn (tests/h2peer.H2Server) is the well-behaved server; the scripted h2
peer (RawH2Server) produces RST_STREAM, GOAWAY, hang-ups and a short body.
The connection under the exchange is the prober's own: exporter.net.connection
where it exists, else the older exporter.probers.connect.Connection (same
read/write/drain), upgraded to TLS with ALPN exactly as a probe does it.
"""
from __future__ import annotations

import ast
import asyncio
import importlib
import json
import socket
import ssl
import time
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from exporter.certs import CertFactory, Issued, server_context
from exporter.net import http2
from exporter.net.http2 import BodyTooLarge, H2Exchange, H2ProtocolError, HeadersTooLarge

try:
    _net_connection: Any = importlib.import_module("exporter.net.connection")
except ImportError:  # pragma: no cover - before the new connection layer lands
    _net_connection = None

try:  # works whether or not tests/ becomes a package later
    from tests.h2peer import H2Server, RawH2Server
except ImportError:  # pragma: no cover
    from h2peer import H2Server, RawH2Server

pytestmark = pytest.mark.timeout(60)

MiB = 1 << 20


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Issued, Issued]:
    factory = CertFactory(tmp_path_factory.mktemp("h2certs"))
    ca = factory.ca("h2 test CA")
    return ca, factory.leaf(ca)


@pytest.fixture
async def server(pki: tuple[Issued, Issued]) -> AsyncIterator[H2Server]:
    async with H2Server(pki[1]) as s:
        yield s


def raw(pki: tuple[Issued, Issued], behaviour: str) -> RawH2Server:
    ctx = server_context(pki[1])
    ctx.set_alpn_protocols(["h2"])
    return RawH2Server(ctx, behaviour)


async def h2_connection(pki: tuple[Issued, Issued], port: int) -> Any:
    ctx = ssl.create_default_context(cafile=pki[0].cert_file)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    if _net_connection is not None:
        conn = await _net_connection.connect("127.0.0.1", port, socket.AF_INET)
        await conn.start_tls(ctx, "localhost")
        alpn = conn.alpn
    else:
        from exporter.probers.connect import Connection

        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: Connection(loop), "127.0.0.1", port)
        await conn.upgrade_tls(ctx, "localhost", 10)
        alpn = conn.get_extra_info("ssl_object").selected_alpn_protocol()
    assert alpn == "h2"
    return conn


async def fetch(pki: tuple[Issued, Issued], port: int, path: str, *, method: str = "GET",
                headers: list[tuple[str, str]] | None = None, body: bytes | None = None,
                limit: int | None = None, keep: bool = True, keep_limit: int = 10 * MiB,
                max_header_list_size: int = http2.DEFAULT_MAX_HEADER_LIST_SIZE,
                ) -> tuple[H2Exchange, int, tuple[tuple[str, str], ...], int, bytes]:
    conn = await h2_connection(pki, port)
    try:
        exchange = H2Exchange(conn, max_header_list_size=max_header_list_size)
        await exchange.send_request(method, f"localhost:{port}", path, "https", headers or [], body)
        await exchange.wait_first_byte()
        status, fields = await exchange.read_head()
        length, kept = await exchange.read_body(limit=limit, keep=keep, keep_limit=keep_limit)
        return exchange, status, fields, length, kept
    finally:
        conn.close()


def values(fields: tuple[tuple[str, str], ...], name: str) -> list[str]:
    return [v for k, v in fields if k == name]


def vm_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


# --- responses, exactly ----------------------------------------------------------------


async def test_ok_response_status_headers_and_body_are_exact(pki, server) -> None:
    exchange, status, fields, length, body = await fetch(pki, server.port, "/ok")
    assert (status, length, body) == (200, 16, b"hello connhealth")
    assert values(fields, "x-service") == ["demo"]
    assert values(fields, "content-type") == ["text/plain"]
    assert values(fields, "server") == ["hypercorn-h2"]
    assert not any(name.startswith(":") for name, _ in fields)
    assert exchange.informational == ()
    assert server.requests[0][:3] == ("GET", "/ok", "2")


@pytest.mark.parametrize(
    ("path", "status", "body"),
    [("/status/204", 204, b""), ("/status/503", 503, b"status 503"), ("/redirect/0", 302, b"redirect")],
)
async def test_status_and_body_of_non_200_answers(pki, server, path: str, status: int, body: bytes) -> None:
    _, got_status, fields, length, got_body = await fetch(pki, server.port, path)
    assert (got_status, length, got_body) == (status, len(body), body)
    if status == 302:
        assert values(fields, "location") == ["/ok"]


async def test_large_body_length_is_exact_and_not_kept_unless_asked(pki, server) -> None:
    _, status, fields, length, body = await fetch(pki, server.port, "/bytes/3000001", keep=False)
    assert (status, length, body) == (200, 3_000_001, b"")
    assert values(fields, "content-length") == ["3000001"]


async def test_request_fields_as_go_sends_them(pki, server) -> None:
    headers = [("User-Agent", "connhealth/0.1"), ("Accept", "*/*"), ("Host", "other.example"),
               ("Connection", "close"), ("Keep-Alive", "5"), ("TE", "gzip"), ("X-Custom", "  padded  ")]
    _, status, _, _, body = await fetch(pki, server.port, "/echo?a=%20b", headers=headers)
    assert status == 200
    doc = json.loads(body)
    assert (doc["method"], doc["path"], doc["query"], doc["http_version"]) == ("GET", "/echo", "a=%20b", "2")
    sent = dict(doc["headers"])
    # :authority becomes Host on the server; the caller's Host, hop-by-hop fields and TE other than trailers are dropped.
    assert sent["host"] == f"localhost:{server.port}"
    assert (sent["user-agent"], sent["accept"], sent["x-custom"]) == ("connhealth/0.1", "*/*", "padded")
    assert not {"connection", "keep-alive", "te", "content-length"} & set(sent)


async def test_post_body_larger_than_the_initial_window_is_sent_whole(pki, server) -> None:
    payload = bytes(range(256)) * 1200  # 307200 bytes: several times the 65535-byte initial windows
    _, status, _, _, body = await fetch(pki, server.port, "/echo", method="POST", body=payload)
    doc = json.loads(body)
    assert status == 200
    assert doc["body"].encode("latin-1") == payload
    assert dict(doc["headers"])["content-length"] == str(len(payload))


async def test_empty_post_sends_content_length_zero_as_go_does(pki, server) -> None:
    _, _, _, _, body = await fetch(pki, server.port, "/echo", method="POST", body=None)
    assert dict(json.loads(body)["headers"])["content-length"] == "0"


async def test_invalid_header_value_is_refused_before_anything_is_written(pki) -> None:
    async with raw(pki, "ok") as peer:
        conn = await h2_connection(pki, peer.port)
        try:
            exchange = H2Exchange(conn)
            with pytest.raises(ValueError, match="X-Evil"):
                await exchange.send_request("GET", "localhost", "/", "https", [("X-Evil", "a\r\nInjected: yes")], None)
            with pytest.raises(ValueError, match="path"):
                await exchange.send_request("GET", "localhost", "/a b", "https", [], None)
            # Nothing reached the wire: the same exchange still opens a clean connection.
            await exchange.send_request("GET", "localhost", "/", "https", [("X-Fine", "yes")], None)
            await exchange.wait_first_byte()
            assert (await exchange.read_head())[0] == 200
            assert await exchange.read_body(limit=None, keep=True, keep_limit=100) == (6, b"raw ok")
        finally:
            conn.close()
    assert len(peer.requests) == 1
    assert ("x-fine", "yes") in peer.requests[0]
    assert not any(name in ("x-evil", "injected") for name, _ in peer.requests[0])


# --- 1xx and the first byte ---------------------------------------------------------------


async def test_early_hints_are_skipped(pki, server) -> None:
    exchange, status, _, length, body = await fetch(pki, server.port, "/early-hints")
    assert (status, length, body) == (200, 6, b"hinted")
    assert exchange.informational == (103,)


async def test_several_informational_responses_are_skipped(pki) -> None:
    async with raw(pki, "informational") as peer:
        exchange, status, _, _, body = await fetch(pki, peer.port, "/")
    assert (status, body) == (200, b"after 1xx")
    assert exchange.informational == (100, 103)


@pytest.mark.parametrize(("count", "ok"), [(5, True), (6, False)])
async def test_at_most_five_informational_responses_as_go(pki, count: int, ok: bool) -> None:
    async with raw(pki, f"informational:{count}") as peer:
        if ok:
            exchange, status, _, _, _ = await fetch(pki, peer.port, "/")
            assert (status, exchange.informational) == (200, (103,) * 5)
        else:
            with pytest.raises(H2ProtocolError, match="more than 5 1xx"):
                await fetch(pki, peer.port, "/")


async def test_first_byte_is_the_first_header_block_even_a_1xx(pki) -> None:
    # Go's GotFirstResponseByte fires on the first HEADERS of the stream, a 103 included.
    async with raw(pki, "informational-hold") as peer:
        conn = await h2_connection(pki, peer.port)
        try:
            exchange = H2Exchange(conn)
            await exchange.send_request("GET", "localhost", "/", "https", [], None)
            await asyncio.wait_for(exchange.wait_first_byte(), 10)  # the 200 is still held back
            head = asyncio.ensure_future(exchange.read_head())
            done, _ = await asyncio.wait({head}, timeout=0.2)
            assert not done, "read_head must wait for the final response"
            peer.release.set()
            assert (await asyncio.wait_for(head, 10))[0] == 200
            assert exchange.informational == (103,)
        finally:
            conn.close()


async def test_steps_follow_the_server_request_then_first_byte_then_body(pki) -> None:
    async with raw(pki, "hold") as peer:
        conn = await h2_connection(pki, peer.port)
        try:
            exchange = H2Exchange(conn)
            await exchange.send_request("GET", "localhost", "/", "https", [], None)
            await asyncio.wait_for(peer.request_seen.wait(), 10)  # the request was on the wire
            first = asyncio.ensure_future(exchange.wait_first_byte())
            done, _ = await asyncio.wait({first}, timeout=0.2)
            assert not done, "no response byte was sent yet"
            peer.release.set()
            await asyncio.wait_for(first, 10)
            assert (await exchange.read_head())[0] == 200
            assert await exchange.read_body(limit=None, keep=True, keep_limit=100) == (8, b"released")
        finally:
            conn.close()


async def test_server_delay_shows_in_first_byte_not_in_request(pki, server) -> None:
    delay = 0.3
    conn = await h2_connection(pki, server.port)
    try:
        exchange = H2Exchange(conn)
        t0 = time.perf_counter()
        await exchange.send_request("GET", "localhost", f"/slow?delay={delay}", "https", [], None)
        t1 = time.perf_counter()
        await exchange.wait_first_byte()
        t2 = time.perf_counter()
        assert (await exchange.read_head())[0] == 200
        assert await exchange.read_body(limit=None, keep=True, keep_limit=100) == (4, b"slow")
    finally:
        conn.close()
    assert t1 - t0 < delay  # writing the request never waits for the server
    assert delay <= t2 - t1 < delay + 5


# --- limits ------------------------------------------------------------------------------


@pytest.mark.parametrize(("limit", "fits"), [(1000, True), (999, False)])
async def test_body_size_limit_boundary(pki, server, limit: int, fits: bool) -> None:
    if fits:
        assert (await fetch(pki, server.port, "/bytes/1000", limit=limit, keep=False))[3] == 1000
    else:
        with pytest.raises(BodyTooLarge) as info:
            await fetch(pki, server.port, "/bytes/1000", limit=limit, keep=False)
        assert info.value.limit == 999


async def test_kept_body_has_its_own_limit(pki, server) -> None:
    assert (await fetch(pki, server.port, "/bytes/1000", keep=True, keep_limit=1000))[4] == b"x" * 1000
    with pytest.raises(BodyTooLarge) as info:
        await fetch(pki, server.port, "/endless", keep=True, keep_limit=MiB)
    assert info.value.limit == MiB


async def test_endless_body_ends_at_the_limit_with_bounded_memory(pki, server) -> None:
    limit = 120 * MiB  # well past the 50 MB budget: keeping any of it would show
    baseline = peak = vm_rss()
    stop = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, vm_rss())
            await asyncio.sleep(0.02)

    sampler = asyncio.create_task(sample())
    try:
        with pytest.raises(BodyTooLarge) as info:
            await fetch(pki, server.port, "/endless", limit=limit, keep=False)
    finally:
        stop.set()
        await sampler
    assert info.value.limit == limit
    assert server.endless_sent > limit
    assert peak - baseline < 50 * MiB, f"RSS grew by {(peak - baseline) / MiB:.1f} MiB"


async def test_header_block_over_the_limit_is_refused(pki, server) -> None:
    # 300 distinct 5000-byte fields: about 1.3 MiB even compressed.
    with pytest.raises(HeadersTooLarge, match="header block larger than 1048576") as info:
        await fetch(pki, server.port, "/big-headers?count=300&size=5000")
    assert info.value.limit == http2.DEFAULT_MAX_HEADER_LIST_SIZE


async def test_header_list_over_the_limit_after_decoding_is_refused(pki, server) -> None:
    # One field repeated 400 times is a few KiB on the wire (HPACK indexes it)
    # but 400 * (5 + 3000 + 32) bytes decoded: an HPACK bomb must not pass.
    with pytest.raises(HeadersTooLarge, match="header list larger than 1048576"):
        await fetch(pki, server.port, "/big-headers?count=400&size=3000&same=1")


async def test_big_headers_under_the_limit_pass(pki, server) -> None:
    _, status, fields, _, _ = await fetch(pki, server.port, "/big-headers?count=60&size=5000")
    assert status == 200
    assert len([name for name, _ in fields if name.startswith("x-big-")]) == 60
    assert values(fields, "x-big-59") == ["v" * 5000]


async def test_header_limit_is_configurable(pki, server) -> None:
    with pytest.raises(HeadersTooLarge) as info:
        await fetch(pki, server.port, "/big-headers?count=20&size=5000", max_header_list_size=64 * 1024)
    assert info.value.limit == 64 * 1024


# --- the server breaking off -------------------------------------------------------------


async def test_rst_stream_before_headers_is_a_protocol_error_naming_the_code(pki) -> None:
    async with raw(pki, "rst:7") as peer:
        with pytest.raises(H2ProtocolError, match=r"RST_STREAM REFUSED_STREAM \(0x7\)") as info:
            await fetch(pki, peer.port, "/")
    assert (info.value.frame, info.value.error_code) == ("RST_STREAM", 7)


async def test_rst_stream_mid_body_is_a_protocol_error(pki) -> None:
    async with raw(pki, "rst-after-data:2") as peer:
        with pytest.raises(H2ProtocolError, match=r"after 12 body bytes: RST_STREAM INTERNAL_ERROR") as info:
            await fetch(pki, peer.port, "/")
    assert (info.value.frame, info.value.error_code) == ("RST_STREAM", 2)


async def test_goaway_with_an_error_is_a_protocol_error_naming_the_code(pki) -> None:
    async with raw(pki, "goaway:11") as peer:
        with pytest.raises(H2ProtocolError, match=r"GOAWAY ENHANCE_YOUR_CALM \(0xb\)") as info:
            await fetch(pki, peer.port, "/")
    assert (info.value.frame, info.value.error_code, info.value.debug_data) == ("GOAWAY", 11, b"scripted")


async def test_goaway_that_leaves_our_stream_unprocessed_is_a_protocol_error(pki) -> None:
    async with raw(pki, "goaway-unprocessed") as peer:
        with pytest.raises(H2ProtocolError, match="without processing our stream") as info:
            await fetch(pki, peer.port, "/")
    assert (info.value.frame, info.value.error_code) == ("GOAWAY", 0)


async def test_graceful_goaway_covering_our_stream_lets_the_response_finish(pki) -> None:
    async with raw(pki, "goaway-graceful") as peer:
        exchange, status, _, length, body = await fetch(pki, peer.port, "/")
    assert (status, length, body) == (200, 12, b"after goaway")
    assert exchange.server_going_away


async def test_hang_up_before_the_answer_is_an_eof_in_first_byte(pki) -> None:
    async with raw(pki, "close") as peer:
        conn = await h2_connection(pki, peer.port)
        try:
            exchange = H2Exchange(conn)
            await exchange.send_request("GET", "localhost", "/", "https", [], None)
            with pytest.raises(asyncio.IncompleteReadError):
                await exchange.wait_first_byte()
        finally:
            conn.close()


async def test_hang_up_after_the_headers_is_an_eof_in_the_body(pki) -> None:
    async with raw(pki, "headers-then-close") as peer:
        conn = await h2_connection(pki, peer.port)
        try:
            exchange = H2Exchange(conn)
            await exchange.send_request("GET", "localhost", "/", "https", [], None)
            await exchange.wait_first_byte()
            assert (await exchange.read_head())[0] == 200
            with pytest.raises(asyncio.IncompleteReadError):
                await exchange.read_body(limit=None, keep=False, keep_limit=0)
        finally:
            conn.close()


async def test_body_shorter_than_content_length_is_a_protocol_error(pki) -> None:
    async with raw(pki, "short-body") as peer:
        with pytest.raises(H2ProtocolError, match="Expected 10 bytes, received 5"):
            await fetch(pki, peer.port, "/")


# --- layering ----------------------------------------------------------------------------


def test_http2_imports_nothing_above_net() -> None:
    names: set[str] = set()
    for node in ast.walk(ast.parse(Path(http2.__file__).read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            package = {0: "", 1: "exporter.net.", 2: "exporter."}.get(node.level, "?")
            names.add(package + (node.module or ""))
    above = ("exporter.config", "exporter.engine", "exporter.probers", "exporter.failures", "?")
    assert "h2.connection" in names  # the walk sees the imports at all
    assert not {name for name in names if name.startswith(above)}
