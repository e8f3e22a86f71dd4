"""The /probe fast path (exporter/fastprobe.py) against a real `connhealth serve`, spoken to over raw sockets.

What it must keep: the answer aiohttp's handler gives, request order on a
connection, hand-over of anything else (other paths, debug, malformed or long
heads) to aiohttp with no byte lost, keep-alive and Connection: close, a
client's disconnect cancelling its probe, and bounded buffering for a client
that sends without reading.
"""
from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from exporter.certs import CertFactory, Issued
from exporter.fastprobe import FastProbe

try:
    from tests.procs import ExporterProcess, ProcessFailed, value
except ImportError:  # pragma: no cover
    from procs import ExporterProcess, ProcessFailed, value

pytestmark = pytest.mark.timeout(120)

WAIT = 20.0


@pytest.fixture
async def listener() -> AsyncIterator[int]:
    """A tcp port that accepts and closes every connection: what tcp_connect probes."""
    def closed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(closed, "127.0.0.1", 0, backlog=1024)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


@pytest.fixture
def silent() -> Iterator[int]:
    """A tcp port whose handshakes the kernel completes (backlog) and that never answers: a probe that waits."""
    sock = socket.create_server(("127.0.0.1", 0), backlog=8)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@pytest.fixture
async def exporter(tmp_path: Path) -> AsyncIterator[ExporterProcess]:
    config = tmp_path / "connhealth.yml"
    config.write_text("modules:\n"
                      "  tcp: {prober: tcp, timeout: 5s}\n"
                      "  slow: {prober: http, timeout: 30s}\n")
    proc = await ExporterProcess(config, tmp_path).start()
    try:
        yield proc
    finally:
        await proc.astop()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, v = line.partition(":")
            headers[name.strip().lower()] = v.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), WAIT)
    return status, headers, body


async def _open(exporter: ExporterProcess) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = exporter.address.rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


async def _ask(exporter: ExporterProcess, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """One request on a connection of its own."""
    reader, writer = await _open(exporter)
    try:
        writer.write(request)
        return await _read_response(reader)
    finally:
        writer.close()


def _get(path: str, *extra: str) -> bytes:
    return ("\r\n".join([f"GET {path} HTTP/1.1", "Host: connhealth", *extra]) + "\r\n\r\n").encode()


async def test_keep_alive_pipelining_and_hand_over_keep_order_and_bytes(exporter: ExporterProcess, listener: int) -> None:
    reader, writer = await _open(exporter)
    probe = f"/probe?target=127.0.0.1%3A{listener}&module=tcp"
    try:
        # One at a time on one connection, then three pipelined in one write: two /probe and one for aiohttp,
        # then a /probe after the hand-over (aiohttp answers it too: the connection is its for good).
        writer.write(_get(probe))
        first = await _read_response(reader)
        writer.write(_get(probe) + _get(probe) + _get("/-/healthy") + _get(probe + "&debug=true"))
        answers = [await _read_response(reader) for _ in range(4)]
    finally:
        writer.close()
    fast = [first, *answers[:2]]
    for status, headers, body in fast:
        assert status == 200
        assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert set(headers) == {"content-type", "content-length", "date"}  # no Connection: close, no Server
        assert value(body.decode(), "probe_success") == 1.0
    status, headers, body = answers[2]
    assert (status, body) == (200, b"Healthy\n") and "server" in headers  # aiohttp's answer
    status, headers, body = answers[3]
    assert status == 200 and headers["content-type"] == "text/plain; charset=utf-8"
    assert body.startswith(b"Logs for the probe:\n") and b"probe_success 1" in body


async def test_the_answer_is_the_one_aiohttp_gives(exporter: ExporterProcess, listener: int) -> None:
    """Errors and the query as aiohttp reads it: the same status and body either way (``&debug=false``
    sends the same request through aiohttp)."""
    cases = [
        "/probe?module=tcp",  # no target
        f"/probe?target=127.0.0.1:{listener}&module=nope%21",  # unknown module, percent-decoded
        f"/probe?target=127.0.0.1%3A{listener}&module=tc%70",  # percent-encoded, as Prometheus sends
        f"/probe?target=127.0.0.1:{listener}&module=tcp&module=other",  # the first one counts
    ]
    for path in cases:
        got = []
        for variant in (path, path + "&debug=false"):
            status, _, body = await _ask(exporter, _get(variant))
            got.append((status, body.decode()))
        (fast_status, fast_body), (slow_status, slow_body) = got
        assert fast_status == slow_status, path
        if fast_status != 200:
            assert fast_body == slow_body, path
        else:
            assert value(fast_body, "probe_success") == value(slow_body, "probe_success") == 1.0, path


async def test_a_timeout_header_is_read_and_checked(exporter: ExporterProcess, listener: int) -> None:
    status, headers, body = await _ask(
        exporter, _get(f"/probe?target=127.0.0.1:{listener}&module=tcp", "X-Prometheus-Scrape-Timeout-Seconds: -1"))
    assert status == 400 and "date" in headers and "server" not in headers  # answered here, not by aiohttp
    assert body == (b"Failed to parse timeout from Prometheus header X-Prometheus-Scrape-Timeout-Seconds: "
                    b"'-1' (expected a positive number of seconds)\n")


@pytest.mark.parametrize("request_bytes, status", [
    (b"GET /probe?target=x HTTP/1.1\r\nHost: a\r\nno colon here\r\n\r\n", 400),  # malformed: aiohttp's 400
    (b"GET /probe?target=" + b"x" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 400),  # longer than a head may be
    (b"POST /probe?target=x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nab", 405),
])
async def test_what_is_not_a_plain_probe_is_aiohttps(exporter: ExporterProcess, request_bytes: bytes, status: int) -> None:
    reader, writer = await _open(exporter)
    try:
        writer.write(request_bytes)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n"), WAIT)
    finally:
        writer.close()
    assert head.split(b" ")[1] == b"%d" % status, head


async def test_connection_close_is_honoured(exporter: ExporterProcess, listener: int) -> None:
    reader, writer = await _open(exporter)
    try:
        writer.write(_get(f"/probe?target=127.0.0.1:{listener}&module=tcp", "Connection: close"))
        status, headers, _ = await _read_response(reader)
        assert (status, headers.get("connection")) == (200, "close")
        assert await asyncio.wait_for(reader.read(), WAIT) == b""  # the server closed
    finally:
        writer.close()


async def test_a_client_that_goes_away_cancels_its_probe(exporter: ExporterProcess, silent: int) -> None:
    reader, writer = await _open(exporter)
    # An http probe to a listener that never answers: it would wait its whole 30 s timeout.
    writer.write(_get(f"/probe?target=http://127.0.0.1:{silent}/&module=slow"))
    await exporter.wait_metrics(lambda t: value(t, "connhealth_probes_in_flight", mode="probe_endpoint") == 1.0,
                                WAIT, "the /probe request in flight")
    writer.close()
    await exporter.wait_metrics(lambda t: value(t, "connhealth_probes_in_flight", mode="probe_endpoint") == 0.0,
                                WAIT, "the probe cancelled by the client's disconnect")
    del reader


async def test_a_client_that_never_reads_is_not_buffered_without_bound(exporter: ExporterProcess, listener: int) -> None:
    """1000 pipelined requests sent without reading an answer: all answered, in order, once the client reads."""
    reader, writer = await _open(exporter)
    n = 1000
    try:
        writer.write(b"".join(_get(f"/probe?target=127.0.0.1:{listener}&module=tcp&module=n{i}") for i in range(n)))
        await asyncio.sleep(0.5)  # the server answers into its socket buffer until write flow control stops it
        for _ in range(n):
            status, _, body = await _read_response(reader)
            assert status == 200 and value(body.decode(), "probe_success") == 1.0
        writer.write(_get("/-/healthy"))
        assert (await _read_response(reader))[2] == b"Healthy\n"
    finally:
        writer.close()


class _TLSExporter(ExporterProcess):
    """serve with only tls_server_config: the fast path runs on the TLS transport."""

    def __init__(self, config: Path, workdir: Path, web_config: Path, ca: Issued) -> None:
        super().__init__(config, workdir, "--web.config.file", str(web_config))
        self.ssl = ssl.create_default_context(cafile=ca.cert_file)

    @property
    def base_url(self) -> str:
        return f"https://{self.address}"

    async def wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = asyncio.get_running_loop().time() + timeout
        async with aiohttp.ClientSession() as session:
            while True:
                if self.proc.poll() is not None:
                    raise ProcessFailed(f"exited with {self.proc.returncode}:\n{self.log_tail()}")
                with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError):
                    async with session.get(self.base_url + "/-/ready", ssl=self.ssl) as resp:
                        if resp.status == 200:
                            return
                if asyncio.get_running_loop().time() > deadline:
                    raise ProcessFailed(f"not ready after {timeout:g}s:\n{self.log_tail()}")
                await asyncio.sleep(0.1)


async def test_over_tls_the_fast_path_and_the_hand_over_share_a_connection(tmp_path: Path, listener: int) -> None:
    certs = CertFactory(tmp_path / "certs")
    ca = certs.ca("web CA")
    server = certs.leaf(ca, name="localhost", sans=("localhost", "127.0.0.1"))
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {server.cert_file}\n  key_file: {server.key_file}\n")
    config = tmp_path / "connhealth.yml"
    config.write_text("modules:\n  tcp: {prober: tcp, timeout: 5s}\n")
    proc = await _TLSExporter(config, tmp_path, web, ca).start()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
            seen = []
            for path in (f"/probe?target=127.0.0.1:{listener}&module=tcp", "/-/healthy",
                         f"/probe?target=127.0.0.1:{listener}&module=tcp"):
                async with session.get(proc.base_url + path, ssl=proc.ssl) as resp:
                    seen.append((resp.status, "Server" in resp.headers, await resp.text()))
    finally:
        await proc.astop()
    # The third /probe has aiohttp's Server header: it came on the connection handed over (a new
    # connection would have started on the fast path), and aiohttp kept it.
    assert [(status, server_header) for status, server_header, _ in seen] == [(200, False), (200, True), (200, True)]
    assert value(seen[0][2], "probe_success") == 1.0 and seen[1][2] == "Healthy\n"
    assert value(seen[2][2], "probe_success") == 1.0


# --- the keep-alive timeout, on the protocol alone (in process: the timeout is made short) ---------------------------
# The answer is a stand-in for Exporter.answer_probe (this tests the HTTP layer, not probing): it
# returns at once, or waits for an event when asked to, so a probe "runs" as long as the test wants.


async def _fast_server(timeout: float, release: asyncio.Event) -> tuple[asyncio.AbstractServer, int]:
    async def answer(query: Mapping[str, str], headers: Mapping[str, str]) -> tuple[int, bytes, str]:
        if query.get("module") == "wait":
            await release.wait()
        return 200, b"probe_success 1\n", "text/plain"

    async def not_found(request: web.BaseRequest) -> web.Response:
        return web.Response(status=404)

    fast = FastProbe(answer, web.Server(not_found), "", keepalive_timeout=timeout)
    server = await asyncio.get_running_loop().create_server(fast, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_idle_connections_close_after_the_keep_alive_timeout_and_running_probes_do_not() -> None:
    release = asyncio.Event()
    server, port = await _fast_server(0.2, release)
    try:
        silent_r, silent_w = await asyncio.open_connection("127.0.0.1", port)  # never sends a byte
        trickle_r, trickle_w = await asyncio.open_connection("127.0.0.1", port)
        trickle_w.write(b"GET /probe?target=x HTTP/1.1\r\n")  # a head never finished
        answered_r, answered_w = await asyncio.open_connection("127.0.0.1", port)
        answered_w.write(_get("/probe?target=x"))
        assert (await _read_response(answered_r))[2] == b"probe_success 1\n"
        busy_r, busy_w = await asyncio.open_connection("127.0.0.1", port)
        busy_w.write(_get("/probe?target=x&module=wait"))
        for reader in (silent_r, trickle_r, answered_r):
            assert await asyncio.wait_for(reader.read(), WAIT) == b""  # closed by the server
        await asyncio.sleep(1.0)  # five timeouts: the running probe's connection stays
        release.set()
        assert (await _read_response(busy_r))[2] == b"probe_success 1\n"
        for w in (silent_w, trickle_w, answered_w, busy_w):
            w.close()
    finally:
        server.close()
