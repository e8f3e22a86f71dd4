"""Real HTTP/2 servers for the tests: hypercorn over TLS with ALPN, and a scripted h2 peer for misbehaviour.

``H2Server`` is hypercorn (an independent, maintained HTTP/2 implementation)
serving a small ASGI app in the test's own event loop on 127.0.0.1 and an
ephemeral port, shaped like ``peers.HTTPServer``: ``async with
H2Server(issued) as server: server.url("/ok")``. TLS comes from hypercorn
itself (certfile/keyfile of a ``certs.Issued``), offering ALPN ``h2`` and
``http/1.1`` by default, so a Go client (blackbox_exporter) negotiates HTTP/2
with it exactly as with any h2 server.

``RawH2Server`` is a bare ``h2`` server for what a well-behaved server never
does on request: RST_STREAM, GOAWAY with and without an error, a hang-up
after the headers, a body shorter than its Content-Length.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
from typing import Any, Awaitable, Callable, Self
from urllib.parse import parse_qsl

import h2.config
import h2.connection
import h2.errors
import h2.events
from hypercorn.asyncio import serve
from hypercorn.config import Config

from exporter.certs import Issued

try:  # works whether or not tests/ becomes a package later
    from tests.peers import StreamPeer
except ImportError:  # pragma: no cover
    from peers import StreamPeer  # type: ignore[no-redef]

__all__ = ["H2Server", "RawH2Server", "LOCALHOST"]

LOCALHOST = "127.0.0.1"

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_BODYLESS = {204, 304}
_CHUNK = 65536
# The endless body stops here at the latest, so a client that never stops
# reading still ends (at loopback speed that is minutes, far past any test).
_ENDLESS_CAP = 64 << 30


def _url(scheme: str, host: str, port: int, path: str) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    if not path.startswith("/"):
        path = "/" + path
    return f"{scheme}://{host}:{port}{path}"


class H2Server:
    """hypercorn on 127.0.0.1:<ephemeral> with the routes the HTTP/2 tests need.

    Routes (any method): ``/`` and ``/ok``: 200 "hello connhealth",
    text/plain, ``x-service: demo``; ``/status/{code}`` (no body for 1xx,
    204, 304); ``/redirect/{n}`` (relative 302 chain ending at ``/ok``);
    ``/to?url=...`` (302 to that URL); ``/slow?delay=S`` (200 after S
    seconds); ``/bytes/{n}`` (n bytes of "x" with Content-Length);
    ``/endless`` (no Content-Length, never ends until the client goes);
    ``/early-hints`` (103 with a Link, then 200 "hinted");
    ``/big-headers?count=N&size=S`` (N headers ``x-big-<i>`` of S bytes each;
    ``&same=1``: N times the same ``x-big``, which HPACK indexes after the first);
    ``/headers?name=value`` (sets those response headers); ``/echo`` (200, JSON
    of method, path, query, http_version, headers and body).

    ``requests`` records ``(method, path, http_version, headers)`` per
    request, headers as a list of (lowercase name, value). ``issued=None``
    serves plain HTTP (HTTP/1.1, or h2c with prior knowledge).
    """

    def __init__(self, issued: Issued | None, *, host: str = LOCALHOST,
                 alpn: tuple[str, ...] = ("h2", "http/1.1")) -> None:
        self.issued = issued
        self.host = host
        self.port = 0
        self.alpn = alpn
        self.requests: list[tuple[str, str, str, list[tuple[str, str]]]] = []
        self.endless_sent = 0  # bytes /endless handed to hypercorn so far
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.issued is not None else "http"

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def url(self, path: str = "/", *, host: str | None = None) -> str:
        return _url(self.scheme, host or self.host, self.port, path)

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> Self:
        # Bound and listening before hypercorn starts, so the port is known
        # at once and a client connecting early waits in the backlog instead
        # of being refused. hypercorn takes the descriptor over (fd://).
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((self.host, 0))
            sock.listen(128)
            self.port = sock.getsockname()[1]
        except BaseException:
            sock.close()
            raise
        config = Config()
        config.bind = [f"fd://{sock.detach()}"]
        if self.issued is not None:
            config.certfile = self.issued.cert_file
            config.keyfile = self.issued.key_file
        config.alpn_protocols = list(self.alpn)
        config.graceful_timeout = 0.5  # stop() must not wait on an /endless or /slow stream
        config.accesslog = None
        config.errorlog = None
        config.keep_alive_timeout = 30
        started = asyncio.Event()
        app: Any = _App(self, started)  # hypercorn's ASGI types are TypedDicts; the app reads plain dicts
        self._stop.clear()
        self._task = asyncio.create_task(serve(app, config, shutdown_trigger=self._stop.wait, mode="asgi"))
        # Startup is over when the ASGI lifespan has run (the listening
        # socket exists already); a crash in between shows up as the task's error.
        waiter = asyncio.create_task(started.wait())
        done, _ = await asyncio.wait({self._task, waiter}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if self._task in done:
            self._task.result()
            raise RuntimeError("hypercorn stopped while starting")
        if not done:
            await self.stop()
            raise RuntimeError("hypercorn did not start within 10 s")
        return self

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        self._stop.set()
        done, _ = await asyncio.wait({task}, timeout=5)
        if not done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 2)
        elif not task.cancelled():
            task.result()


class _App:
    """The ASGI application behind H2Server."""

    def __init__(self, server: H2Server, started: asyncio.Event) -> None:
        self.server = server
        self.started = started

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                    self.started.set()
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        self.server.requests.append((scope["method"], scope["path"], scope["http_version"], headers))
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        path: str = scope["path"]
        query = dict(parse_qsl(scope["query_string"].decode("latin-1")))
        parts = path.strip("/").split("/")
        if path in ("/", "/ok"):
            await _respond(send, 200, b"hello connhealth", [(b"x-service", b"demo")])
        elif parts[0] == "status" and len(parts) == 2:
            code = int(parts[1])
            await _respond(send, code, b"" if code in _BODYLESS else f"status {code}".encode())
        elif parts[0] == "redirect" and len(parts) == 2:
            n = int(parts[1])
            await _respond(send, 302, b"redirect", [(b"location", b"/ok" if n <= 0 else f"/redirect/{n - 1}".encode())])
        elif path == "/to":
            await _respond(send, 302, b"redirect", [(b"location", query.get("url", "/ok").encode())])
        elif path == "/slow":
            await asyncio.sleep(float(query.get("delay", "1")))
            await _respond(send, 200, b"slow")
        elif parts[0] == "bytes" and len(parts) == 2:
            await self._bytes(send, int(parts[1]))
        elif path == "/endless":
            await self._endless(receive, send)
        elif path == "/early-hints":
            # hypercorn sends a 103 only over HTTP/2 and HTTP/3.
            if "http.response.early_hint" in scope.get("extensions", {}):
                await send({"type": "http.response.early_hint", "links": [b"</style.css>; rel=preload; as=style"]})
            await _respond(send, 200, b"hinted")
        elif path == "/big-headers":
            # same=1 repeats one field: HPACK then sends it once and indexes it
            # after that, a header list far larger decoded than on the wire.
            count, size = int(query.get("count", "10")), int(query.get("size", "1000"))
            same = query.get("same") == "1"
            extra = [(b"x-big" if same else f"x-big-{i}".encode(), b"v" * size) for i in range(count)]
            await _respond(send, 200, b"big headers", extra)
        elif path == "/headers":
            await _respond(send, 200, b"headers", [(k.lower().encode(), v.encode()) for k, v in query.items()])
        elif path == "/echo":
            doc = {
                "method": scope["method"], "path": path, "query": scope["query_string"].decode("latin-1"),
                "http_version": scope["http_version"], "headers": headers, "body": body.decode("latin-1"),
            }
            await _respond(send, 200, json.dumps(doc).encode(), [(b"content-type", b"application/json")])
        else:
            await _respond(send, 404, b"not found")

    @staticmethod
    async def _bytes(send: Send, n: int) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream"), (b"content-length", str(n).encode())]})
        left = n
        while left > 0:
            step = min(left, _CHUNK)
            left -= step
            await send({"type": "http.response.body", "body": b"x" * step, "more_body": left > 0})
        if n == 0:
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _endless(self, receive: Receive, send: Send) -> None:
        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        watcher = asyncio.create_task(watch())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            chunk = b"y" * _CHUNK
            while self.server.endless_sent < _ENDLESS_CAP:
                # hypercorn leaves a send blocked on flow control once the
                # client is gone, so every send races the disconnect.
                sending = asyncio.ensure_future(send({"type": "http.response.body", "body": chunk, "more_body": True}))
                await asyncio.wait({sending, watcher}, return_when=asyncio.FIRST_COMPLETED)
                if not sending.done():
                    sending.cancel()
                    await asyncio.wait({sending})  # not `await sending`: that would re-raise its cancellation as ours
                    return
                sending.result()
                self.server.endless_sent += len(chunk)
                if watcher.done():
                    return
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    fields = list(headers or [])
    if body and not any(name == b"content-type" for name, _ in fields):
        fields.insert(0, (b"content-type", b"text/plain"))
    if status not in _BODYLESS and status >= 200:
        # As aiohttp's peers.HTTPServer: a length, never chunked, over HTTP/1.1.
        fields.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": fields})
    await send({"type": "http.response.body", "body": body, "more_body": False})


# ---------------------------------------------------------------------------
# A scripted h2 peer
# ---------------------------------------------------------------------------


class RawH2Server(StreamPeer):
    """A bare h2 server over TLS (ALPN h2) that answers every request with one scripted behaviour.

    Behaviours: ``"ok"`` (200, body "raw ok"); ``"rst:CODE"`` (RST_STREAM with
    that error code instead of an answer); ``"rst-after-data:CODE"`` (headers,
    some DATA, then RST_STREAM); ``"goaway:CODE"`` (GOAWAY, last stream 0,
    then close); ``"goaway-graceful"`` (GOAWAY NO_ERROR covering the stream,
    then the full 200 answer); ``"goaway-unprocessed"`` (GOAWAY NO_ERROR,
    last stream 0, then close); ``"headers-then-close"`` (200 headers, then
    the connection is closed); ``"close"`` (closed without an answer);
    ``"short-body"`` (Content-Length 10, 5 bytes and END_STREAM);
    ``"informational"`` (100 and 103, then 200 "after 1xx"; ``"informational:N"``:
    N times 103, then the 200); ``"hold"`` (200
    "released" once ``release`` is set); ``"informational-hold"`` (103 at
    once, the 200 once ``release`` is set). ``requests`` records the request
    headers (name, value) of each stream and ``bodies`` its body;
    ``request_seen`` is set when a request is complete.
    """

    def __init__(self, ssl_context: ssl.SSLContext, behaviour: str, *, host: str = LOCALHOST) -> None:
        super().__init__(host, ssl=ssl_context)
        self.ssl_context = ssl_context
        self.behaviour = behaviour
        self.requests: list[list[tuple[str, str]]] = []
        self.bodies: list[bytes] = []
        self.request_seen = asyncio.Event()
        self.release = asyncio.Event()

    @property
    def scheme(self) -> str:
        return "https"

    def url(self, path: str = "/", *, host: str | None = None) -> str:
        return _url("https", host or self.host, self.port, path)

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._track(writer)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        try:
            stream_id = 0
            complete = False
            body = b""
            while not complete:
                data = await reader.read(65536)
                if not data:
                    return
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        stream_id = event.stream_id
                        self.requests.append([(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers])
                        complete = complete or event.stream_ended is not None
                    elif isinstance(event, h2.events.DataReceived):
                        body += event.data
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, h2.events.StreamEnded):
                        complete = True
                writer.write(conn.data_to_send())
            self.bodies.append(body)
            self.request_seen.set()
            await self._behave(conn, stream_id, reader, writer)
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.transport.abort()
            self._writers.discard(writer)

    async def _behave(self, conn: h2.connection.H2Connection, sid: int, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        kind, _, arg = self.behaviour.partition(":")
        code = int(arg) if arg else 0

        def flush() -> None:
            writer.write(conn.data_to_send())

        def answer(body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
            fields = [(b":status", b"200"), (b"content-length", str(len(body)).encode())] + (extra or [])
            conn.send_headers(sid, fields)
            conn.send_data(sid, body, end_stream=True)
            flush()

        if kind == "ok":
            answer(b"raw ok")
        elif kind == "rst":
            conn.reset_stream(sid, code)
            flush()
        elif kind == "rst-after-data":
            conn.send_headers(sid, [(b":status", b"200")])
            conn.send_data(sid, b"partial body")
            conn.reset_stream(sid, code)
            flush()
        elif kind == "goaway":
            conn.close_connection(error_code=code, additional_data=b"scripted", last_stream_id=0)
            flush()
            await writer.drain()
            return
        elif kind == "goaway-unprocessed":
            conn.close_connection(error_code=0, last_stream_id=0)
            flush()
            await writer.drain()
            return
        elif kind == "goaway-graceful":
            # h2 closes its own state on sending GOAWAY, so write that frame by
            # hand (RFC 9113 §6.8: the stream it covers is still answered).
            goaway = sid.to_bytes(4, "big") + (0).to_bytes(4, "big")
            writer.write(len(goaway).to_bytes(3, "big") + b"\x07\x00" + (0).to_bytes(4, "big") + goaway)
            answer(b"after goaway")
        elif kind == "headers-then-close":
            conn.send_headers(sid, [(b":status", b"200")])
            flush()
            await writer.drain()
            return
        elif kind == "close":
            return
        elif kind == "short-body":
            conn.send_headers(sid, [(b":status", b"200"), (b"content-length", b"10")])
            conn.send_data(sid, b"12345", end_stream=True)
            flush()
        elif kind == "hold":
            await self.release.wait()
            answer(b"released")
        elif kind == "informational-hold":
            conn.send_headers(sid, [(b":status", b"103"), (b"link", b"</a.css>; rel=preload")])
            flush()
            await self.release.wait()
            answer(b"released")
        elif kind == "informational":
            if arg:
                for _ in range(code):
                    conn.send_headers(sid, [(b":status", b"103"), (b"link", b"</a.css>; rel=preload")])
            else:
                conn.send_headers(sid, [(b":status", b"100")])
                conn.send_headers(sid, [(b":status", b"103"), (b"link", b"</a.css>; rel=preload")])
            answer(b"after 1xx")
        else:
            raise ValueError(f"unknown behaviour {self.behaviour!r}")
        await writer.drain()
        # Linger until the client is done, so the answer is not cut by our close.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(reader.read(), 5)
