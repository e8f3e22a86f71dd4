"""``GET /probe`` without aiohttp's per-request machinery, in front of aiohttp on the same listener.

aiohttp spends ≈ 40 µs of CPU on a request before any handler runs (a constant
answer: ≈ 40 µs per request with aiohttp, ≈ 8 µs with llhttp and a bare
protocol; docs/benchmarks.md), against ≈ 300 µs for a whole loopback http
probe. So every connection to the public listener starts with this protocol.
It reads one request head at a time; a plain ``GET <prefix>/probe?target=…
[&module=…]`` (HTTP/1.1, no body, no expectation, no other parameter) is
answered here, through the very ``Exporter.answer_probe`` that aiohttp's
handler calls. Anything else (another path or method, a body, ``debug`` or
``hostname``, HTTP/1.0, a head that is malformed or longer than aiohttp's line
limit) and the connection is handed, with every byte not yet answered, to
aiohttp's own protocol for good. So every other behaviour (errors, limits,
every other route) stays aiohttp's. An app with middlewares or response hooks
(basic auth, ``http_server_config.headers``) gets no fast path at all
(``FastProbe.applies``); a worker's name header, the one hook of a ``--workers``
worker, is added here as ``headers``.

As aiohttp does with ``handler_cancellation``: a client that goes away cancels
its probe; requests on one connection are answered in order (a pipelining
client waits), reading pauses while more than a head's worth of bytes waits,
and a client that does not read its answers stops the next one (write flow
control). Shutdown: no new request is started, running ones finish within
the grace period, then every connection closes.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

import httptools
from aiohttp import web
from yarl import URL

__all__ = ["FastProbe", "FastProbeSite"]

log = logging.getLogger("connhealth.server")

# aiohttp's own limit on a request line or header line: a longer head is aiohttp's to answer (431 and so on).
HEAD_LIMIT = 8190
# aiohttp's keepalive_timeout: a connection with no probe running closes this long after its last answer
# (or its start: a client that trickles a head in slowly gets no more time than an idle one).
KEEPALIVE_TIMEOUT = 75.0
_PARAMS = frozenset(("target", "module"))
# Headers that make a request one for aiohttp (a body, an upgrade, an expectation), and the ones /probe reads.
_NOT_OURS = frozenset((b"content-length", b"transfer-encoding", b"expect", b"upgrade"))
_READ = frozenset((b"x-prometheus-scrape-timeout-seconds", b"traceparent", b"tracestate"))

Answer = Callable[[Mapping[str, str], Mapping[str, str]], Awaitable[tuple[int, bytes, str]]]


class FastProbe:
    """The listener's protocol factory: a ``_Connection`` per connection, handed to ``aiohttp`` (a
    ``web.Server``, itself a protocol factory) when a request is not a plain /probe."""

    def __init__(self, answer: Answer, aiohttp: Callable[[], asyncio.Protocol], prefix: str,
                 headers: tuple[tuple[str, str], ...] = (), *, keepalive_timeout: float = KEEPALIVE_TIMEOUT) -> None:
        self.answer = answer
        self.aiohttp = aiohttp
        self.path = prefix + "/probe"
        self.headers = "".join(f"{name}: {value}\r\n" for name, value in headers).encode()  # on every answer
        self.keepalive_timeout = keepalive_timeout
        self.connections: set[_Connection] = set()
        self.closing = False
        self._date = (0, b"")
        self._sweeper: asyncio.TimerHandle | None = None

    @staticmethod
    def applies(app: web.Application) -> bool:
        """Only where aiohttp would add nothing to a /probe answer: no middleware, no response hook."""
        return not app.middlewares and not app.on_response_prepare

    def __call__(self) -> asyncio.Protocol:
        if self.closing:
            return self.aiohttp()
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(self.keepalive_timeout / 4, self._sweep)
        return _Connection(self)

    def _sweep(self) -> None:
        """Close the connections idle for longer than the keep-alive timeout: one timer for all of them,
        not one per request."""
        loop = asyncio.get_running_loop()
        idle_before = loop.time() - self.keepalive_timeout
        for conn in [c for c in self.connections if c.task is None and c.idle_since < idle_before]:
            conn.close()
        self._sweeper = loop.call_later(self.keepalive_timeout / 4, self._sweep) if self.connections else None

    def date(self) -> bytes:
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, formatdate(now, usegmt=True).encode())
        return self._date[1]

    async def shutdown(self, timeout: float) -> None:
        """Idle connections close now; running probes get ``timeout`` seconds, then their connections close."""
        self.closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        running = [c.task for c in self.connections if c.task is not None]
        for conn in list(self.connections):
            if conn.task is None:
                conn.close()
        if running:
            await asyncio.wait(running, timeout=timeout)
        for conn in list(self.connections):
            conn.close()


@functools.lru_cache(maxsize=64)
def _status_line(status: int) -> bytes:
    return b"HTTP/1.1 %d %s\r\n" % (status, HTTPStatus(status).phrase.encode())


class FastProbeSite(web.TCPSite):
    """``web.TCPSite`` whose listener starts every connection on ``FastProbe``; ``runner.addresses`` and
    ``runner.cleanup()`` see it as any site."""

    def __init__(self, runner: web.BaseRunner, fast: FastProbe, host: str | None, port: int, **kwargs: Any) -> None:
        super().__init__(runner, host, port, **kwargs)
        self._fast = fast

    async def start(self) -> None:
        self._runner._reg_site(self)  # what BaseSite.start does
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._fast, self._host, self._port, ssl=self._ssl_context,
                                                backlog=self._backlog, reuse_address=self._reuse_address,
                                                reuse_port=self._reuse_port)
        self._bound_port = self._server.sockets[0].getsockname()[1] if self._server.sockets else self._port


class _Head:
    """httptools' callbacks for one request head."""

    __slots__ = ("url", "headers", "complete", "ours", "parser", "keep_alive")

    def __init__(self) -> None:
        self.url = b""
        self.headers: dict[str, str] = {}
        self.complete = False
        self.ours = True
        self.parser = httptools.HttpRequestParser(self)
        self.keep_alive = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in _NOT_OURS:
            self.ours = False
        elif name in _READ:
            key = name.decode()
            if key in self.headers:  # aiohttp's .get(): the first one
                return
            try:
                self.headers[key] = value.decode("ascii")
            except UnicodeDecodeError:
                self.ours = False

    def on_headers_complete(self) -> None:
        # Here, not after the message: llhttp forgets a message's flags once it is complete.
        parser = self.parser
        self.keep_alive = parser.should_keep_alive()
        if parser.get_method() != b"GET" or parser.get_http_version() != "1.1":
            self.ours = False

    def on_message_complete(self) -> None:
        self.complete = True


def _parse(head: bytes, path: str) -> tuple[Mapping[str, str], dict[str, str], bool] | None:
    """(query, headers, keep-alive) of a plain ``GET <path>?…`` head, None for anything else."""
    h = _Head()
    try:
        h.parser.feed_data(head)
    except httptools.HttpParserError:
        return None
    finally:
        h.parser = None  # type: ignore[assignment]  # no cycle (parser -> h -> parser) outlives the parse
    if not (h.complete and h.ours):
        return None
    try:
        url = h.url.decode("ascii")
    except UnicodeDecodeError:
        return None
    target_path, sep, query_string = url.partition("?")
    if target_path != path or not sep or "#" in query_string:
        return None
    # The query exactly as aiohttp reads it (it builds the same URL from the request line).
    query = URL.build(path=target_path, query_string=query_string, encoded=True).query
    if not _PARAMS.issuperset(query.keys()):
        return None
    return query, h.headers, h.keep_alive


class _Connection(asyncio.Protocol):
    __slots__ = ("_fast", "_loop", "_transport", "_buffer", "task", "idle_since", "_read_paused", "_write_paused",
                 "_drained")

    def __init__(self, fast: FastProbe) -> None:
        self._fast = fast
        # Kept: each asyncio.get_running_loop() is a getpid() system call (its fork check).
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self.task: asyncio.Task[None] | None = None
        self.idle_since = self._loop.time()  # the start, then each answer's end
        self._read_paused = False
        self._write_paused = False
        self._drained: asyncio.Future[None] | None = None

    # --- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._fast.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self.task is None:
            self._next()
        elif len(self._buffer) > HEAD_LIMIT and not self._read_paused:
            self._read_paused = True
            self._transport.pause_reading()  # type: ignore[union-attr]

    def eof_received(self) -> None:
        # As aiohttp's protocol: the transport then closes, and a running probe is cancelled.
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._fast.connections.discard(self)
        self._transport = None
        if self.task is not None:
            self.task.cancel()
        self._wake()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake()

    # --- requests -------------------------------------------------------------------------
    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _next(self) -> None:
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            # Not (yet) a whole head: wait for more, unless it can only be aiohttp's (too long, bare LFs).
            if len(buffer) > HEAD_LIMIT or b"\n\n" in buffer:
                self._hand_over()
            return
        if self._fast.closing:
            self.close()
            return
        end += 4
        request = _parse(bytes(buffer[:end]), self._fast.path) if end <= HEAD_LIMIT else None
        if request is None:
            self._hand_over()
            return
        del buffer[:end]
        self.task = self._loop.create_task(self._serve(*request))

    async def _serve(self, query: Mapping[str, str], headers: Mapping[str, str], keep_alive: bool) -> None:
        fast = self._fast
        try:
            status, body, content_type = await fast.answer(query, headers)
        except Exception:
            log.exception("Error handling /probe")
            status, body, content_type, keep_alive = 500, b"500 Internal Server Error\n", "text/plain; charset=utf-8", False
        transport = self._transport
        if transport is None:
            return
        keep_alive = keep_alive and not fast.closing
        transport.write(b"%sContent-Type: %s\r\nContent-Length: %d\r\nDate: %s\r\n%s%s\r\n%s" % (
            _status_line(status), content_type.encode(), len(body), fast.date(), fast.headers,
            b"" if keep_alive else b"Connection: close\r\n", body))
        if not keep_alive:
            transport.close()
            return
        if self._write_paused:
            self._drained = self._loop.create_future()
            await self._drained
            if self._transport is None:
                return
        self.task = None
        self.idle_since = self._loop.time()
        if self._read_paused:
            self._read_paused = False
            transport.resume_reading()
        if self._buffer:
            self._next()

    def _wake(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    def _hand_over(self) -> None:
        """The connection is aiohttp's from here on, starting with the bytes not yet answered."""
        transport = self._transport
        assert transport is not None
        self._fast.connections.discard(self)
        self._transport = None
        handler = self._fast.aiohttp()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._read_paused:
            transport.resume_reading()
        data = bytes(self._buffer)
        self._buffer.clear()
        if data:
            handler.data_received(data)
