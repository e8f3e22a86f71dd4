"""Real network peers for the test suite: DNS, raw TCP, HTTP(S), blackholed routes.

Everything here talks real protocols over real sockets so the prober's failure
attribution is tested against what the kernel, OpenSSL and aiohttp actually
do, not against what we believe they do. All listeners bind 127.0.0.1 on an
ephemeral port; the async peers run inside the test's own event loop (so they
work with pytest-asyncio without threads) and are usable either as
``async with Peer(...) as p:`` or via ``await p.start()`` / ``await p.stop()``.

``BlackholeNet`` is the exception: it is synchronous and needs root, because
producing a genuine connect timeout or ICMP host-unreachable requires a
router that drops or rejects packets, which we build from a network namespace.
"""
from __future__ import annotations

import asyncio
import atexit
import contextlib
import errno
import itertools
import os
import re
import shutil
import socket
import ssl
import struct
import subprocess
import threading
from typing import Any, Awaitable, Callable, Mapping, NamedTuple, Self

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdatatype
import dns.rrset
from aiohttp import web

__all__ = [
    "Query",
    "DNSServer",
    "RawTCPServer",
    "HTTPServer",
    "TLSTerminator",
    "BlackholeNet",
    "Namespace",
    "LOCALHOST",
    "errno_name",
]

LOCALHOST = "127.0.0.1"


class _AsyncPeer:
    """start/stop plus the async context-manager protocol, shared by the peers."""

    host: str
    port: int

    async def start(self):  # pragma: no cover - overridden
        raise NotImplementedError

    async def stop(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    async def __aenter__(self):
        await self.start()
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.stop()

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)


class StreamPeer(_AsyncPeer):
    """An asyncio stream server whose stop() also aborts the open connections and their handler tasks.

    Server.close() only stops listening (before Python 3.13 there is no
    close_clients()), so stalled connections would otherwise outlive the test
    and keep the client blocked until its own timeout. Handlers call
    ``_track(writer)`` first thing.
    """

    def __init__(self, host: str, **server_options: Any) -> None:
        self.host = host
        self.port = 0
        self._server_options = server_options  # for asyncio.start_server: ssl=, limit=
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task] = set()

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:  # pragma: no cover
        raise NotImplementedError

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._on_client, self.host, 0, **self._server_options)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        # The aborts end every handler's read; cancel only a handler that still
        # hangs (asyncio 3.11 logs a cancelled connection handler).
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=2)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=2)

    def _track(self, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


# ---------------------------------------------------------------------------
# DNS
# ---------------------------------------------------------------------------


class Query(NamedTuple):
    """One query as the server saw it; compares equal to a plain (name, "A") tuple."""

    name: str  # lowercase, no trailing dot
    rdtype: str  # mnemonic: "A", "AAAA", "TXT", ...


# Behaviour strings that are a whole answer on their own.
_RCODE_BEHAVIOURS = {
    "NXDOMAIN": dns.rcode.NXDOMAIN,
    "SERVFAIL": dns.rcode.SERVFAIL,
    "REFUSED": dns.rcode.REFUSED,
}
_RECORD_TYPES = {"A", "AAAA", "CNAME", "TXT", "MX", "NS", "SOA"}
_MAX_CNAME_HOPS = 8  # enough for any sane test; stops a CNAME loop in a zone


class _Behaviour(NamedTuple):
    kind: str  # "records" | "NXDOMAIN" | "SERVFAIL" | "REFUSED" | "DROP" | "NODATA"
    records: tuple[tuple[str, str], ...] = ()  # (rdtype, rdata text)
    delay: float = 0.0


def _parse_behaviour(name: str, spec: str) -> _Behaviour:
    # Parsed up front so a typo in a test's zone fails at construction with
    # the offending name, instead of as a confusing NXDOMAIN later.
    text = spec.strip()
    upper = text.upper()
    if upper in _RCODE_BEHAVIOURS or upper in ("DROP", "NODATA"):
        return _Behaviour(upper)
    records: list[tuple[str, str]] = []
    delay = 0.0
    kind = "records"
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        rdtype, sep, value = item.partition(":")
        rdtype = rdtype.strip().upper()
        if not sep:
            # Allow "DELAY:0.3,NXDOMAIN" style combinations.
            if rdtype in _RCODE_BEHAVIOURS or rdtype in ("DROP", "NODATA"):
                kind = rdtype
                continue
            raise ValueError(f"zone entry {name!r}: cannot parse {item!r} in {spec!r}")
        if rdtype == "DELAY":
            delay = float(value)
            continue
        if rdtype not in _RECORD_TYPES:
            raise ValueError(f"zone entry {name!r}: unsupported record type {rdtype!r} in {spec!r}")
        try:  # the data too: "MX:mail.test" (no preference) fails here, not as a confusing answer later
            dns.rdata.from_text("IN", rdtype, _rdata_text(rdtype, value.strip()))
        except dns.exception.DNSException as exc:
            raise ValueError(f"zone entry {name!r}: invalid {rdtype} data {value.strip()!r}: {exc}") from None
        records.append((rdtype, value.strip()))
    if kind == "records" and not records:
        raise ValueError(f"zone entry {name!r}: no records in {spec!r}")
    return _Behaviour(kind, tuple(records), delay)


def _rdata_text(rdtype: str, value: str) -> str:
    if rdtype == "TXT" and not value.startswith('"'):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if rdtype == "CNAME" and not value.endswith("."):
        return value + "."  # zone targets are written without the root dot
    return value


class DNSServer(_AsyncPeer):
    """An authoritative-style DNS server over UDP and TCP on the same port.

    ``zone`` maps a lowercase FQDN (no trailing dot) to a behaviour:

    * ``"A:1.2.3.4"``, ``"A:127.0.0.1,AAAA:::1"`` - records; a query for a
      type the name lacks gets NOERROR with an empty answer (NODATA), as a
      real server would. ``CNAME:target`` and ``TXT:text`` are accepted too;
      CNAMEs are chased inside the zone like an authoritative server does.
    * ``"NXDOMAIN"``, ``"SERVFAIL"``, ``"REFUSED"`` - that rcode.
    * ``"DROP"`` - never answer (the client must time out).
    * ``"NODATA"`` - NOERROR, empty answer, whatever the type.
    * a ``"DELAY:seconds"`` item delays any of the above, e.g.
      ``"DELAY:0.2,A:127.0.0.1"``.

    Names not in the zone are NXDOMAIN. Every query, including dropped ones,
    is appended to ``queries`` as ``Query(name, rdtype)``; ``transports``
    records "udp"/"tcp" for the same index.
    """

    def __init__(
        self,
        zone: Mapping[str, str],
        *,
        host: str = LOCALHOST,
        tcp: bool = True,
        ttl: int = 60,
    ) -> None:
        self.host = host
        self.port = 0
        self.ttl = ttl
        self.tcp = tcp
        self.zone: dict[str, _Behaviour] = {
            k.lower().rstrip("."): _parse_behaviour(k, v) for k, v in zone.items()
        }
        self.queries: list[Query] = []
        self.transports: list[str] = []
        self.clients: list[str] = []  # the source address of each UDP datagram and TCP connection
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp_server: asyncio.base_events.Server | None = None
        self._tcp_writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task] = set()

    @property
    def nameservers(self) -> list[str]:
        return [self.host]

    async def start(self) -> "DNSServer":
        loop = asyncio.get_running_loop()
        # UDP and TCP must share one port number (clients retry over TCP on
        # the same address after a truncated answer). Port 0 only picks a
        # free UDP port, so the TCP bind can lose a race with another
        # process; retry with a fresh port rather than fail the test.
        last_error: OSError | None = None
        for _ in range(20):
            transport, _proto = await loop.create_datagram_endpoint(
                lambda: _DNSDatagramProtocol(self), local_addr=(self.host, 0)
            )
            port = transport.get_extra_info("sockname")[1]
            if not self.tcp:
                self._udp, self.port = transport, port
                return self
            try:
                self._tcp_server = await asyncio.start_server(self._on_tcp_client, self.host, port)
            except OSError as exc:
                transport.close()
                last_error = exc
                continue
            self._udp, self.port = transport, port
            return self
        raise RuntimeError(f"could not bind DNS UDP+TCP on one port: {last_error}")

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp_server is not None:
            self._tcp_server.close()
            self._tcp_server = None
        for writer in list(self._tcp_writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2)

    # -- query handling ---------------------------------------------------

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _answer(self, wire: bytes, transport: str) -> tuple[bytes | None, float]:
        """Returns (response wire or None to stay silent, delay in seconds)."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None, 0.0  # not DNS: a real server would ignore it too
        if not query.question:
            resp = dns.message.make_response(query)
            resp.set_rcode(dns.rcode.FORMERR)
            return resp.to_wire(), 0.0
        question = query.question[0]
        qname = question.name
        key = qname.to_text(omit_final_dot=True).lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append(Query(key, rdtype))
        self.transports.append(transport)

        behaviour = self.zone.get(key, _Behaviour("NXDOMAIN"))
        if behaviour.kind == "DROP":
            return None, 0.0
        resp = dns.message.make_response(query)
        # AA: we are the authority for these names, so negative answers are
        # final (dnspython and stub resolvers treat them as such). RA: keeps
        # resolvers that check it from logging "recursion not available".
        resp.flags |= dns.flags.AA | dns.flags.RA
        if behaviour.kind in _RCODE_BEHAVIOURS:
            resp.set_rcode(_RCODE_BEHAVIOURS[behaviour.kind])
        elif behaviour.kind == "records":
            self._fill_answer(resp, qname, question.rdtype, behaviour)
        # "NODATA": NOERROR with nothing in the answer section.
        return resp.to_wire(), behaviour.delay

    def _fill_answer(
        self,
        resp: dns.message.Message,
        qname: dns.name.Name,
        qtype: int,
        behaviour: _Behaviour,
    ) -> None:
        wanted = dns.rdatatype.to_text(qtype)
        owner = qname
        for _ in range(_MAX_CNAME_HOPS):
            matching = [(t, v) for t, v in behaviour.records if t == wanted]
            cnames = [(t, v) for t, v in behaviour.records if t == "CNAME"]
            if matching:
                self._add_rrset(resp, owner, wanted, [v for _, v in matching])
                return
            if not cnames or wanted == "CNAME":
                return  # NODATA for this type
            target = _rdata_text("CNAME", cnames[0][1])
            self._add_rrset(resp, owner, "CNAME", [cnames[0][1]])
            owner = dns.name.from_text(target)
            nxt = self.zone.get(owner.to_text(omit_final_dot=True).lower())
            if nxt is None or nxt.kind != "records":
                return  # CNAME pointing out of the zone or at a non-answer
            behaviour = nxt

    def _add_rrset(
        self, resp: dns.message.Message, owner: dns.name.Name, rdtype: str, values: list[str]
    ) -> None:
        rrset = dns.rrset.from_text_list(
            owner, self.ttl, "IN", rdtype, [_rdata_text(rdtype, v) for v in values]
        )
        resp.answer.append(rrset)

    def _on_datagram(self, data: bytes, addr, transport: asyncio.DatagramTransport) -> None:
        self.clients.append(addr[0])
        wire, delay = self._answer(data, "udp")
        if wire is None:
            return
        if delay <= 0:
            transport.sendto(wire, addr)
            return

        async def later() -> None:
            await asyncio.sleep(delay)
            if not transport.is_closing():
                transport.sendto(wire, addr)

        self._spawn(later())

    async def _on_tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.clients.append(writer.get_extra_info("peername")[0])
        self._tcp_writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            while True:
                # RFC 1035 4.2.2: each message is prefixed by a 2-byte length.
                (length,) = struct.unpack("!H", await reader.readexactly(2))
                wire, delay = self._answer(await reader.readexactly(length), "tcp")
                if wire is None:
                    continue  # DROP: keep the connection open, say nothing
                if delay > 0:
                    await asyncio.sleep(delay)
                writer.write(struct.pack("!H", len(wire)) + wire)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._tcp_writers.discard(writer)
            writer.transport.abort()


class _DNSDatagramProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DNSServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        assert self.transport is not None
        self.server._on_datagram(data, addr, self.transport)

    def error_received(self, exc: Exception) -> None:
        # ICMP port-unreachable from a client that gave up: irrelevant here.
        pass


# ---------------------------------------------------------------------------
# Raw TCP
# ---------------------------------------------------------------------------

RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

_HTTP_HEAD_END = b"\r\n\r\n"
_BANNER = b"SSH-2.0-test\r\n"
_GARBAGE = b"HELLO THIS IS NOT HTTP\r\n\r\n"
_STALL_BODY_HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc"


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST instead of a FIN.

    SO_LINGER {on, 0} makes close() discard the send queue and emit RST,
    which is what a crashing server or an LB without backends looks like
    on the wire; the client sees ECONNRESET rather than a clean EOF.
    """
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _drain_forever(reader: asyncio.StreamReader) -> None:
    # Reading (rather than ignoring) keeps the client's send buffer from
    # filling, so the client really waits on us and not on TCP flow control.
    while await reader.read(65536):
        pass


class RawTCPServer(StreamPeer):
    """A TCP listener that misbehaves in one precise way.

    Behaviours: ``reset``, ``stall``, ``reset_after_request``, ``garbage``,
    ``stall_body``, ``banner`` (see the brief in each branch of ``_behave``),
    plus ``close`` (accept, then a clean FIN without reading: "server hung up
    during the TLS handshake"). A coroutine function ``(reader, writer)`` can
    be passed instead of a name for one-off behaviours.

    ``connections`` counts accepted connections; ``requests`` holds each
    request head (up to and including the blank line) that a request-reading
    behaviour consumed.
    """

    BEHAVIOURS = ("reset", "stall", "reset_after_request", "garbage", "stall_body", "banner", "close")

    def __init__(self, behaviour: str | RawHandler, *, host: str = LOCALHOST) -> None:
        if isinstance(behaviour, str) and behaviour not in self.BEHAVIOURS:
            raise ValueError(f"unknown behaviour {behaviour!r}; expected one of {self.BEHAVIOURS}")
        super().__init__(host)
        self.behaviour = behaviour
        self.connections = 0
        self.requests: list[bytes] = []

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._track(writer)
        try:
            if callable(self.behaviour):
                await self.behaviour(reader, writer)
            else:
                await self._behave(self.behaviour, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.CancelledError):
            pass  # the client going away mid-misbehaviour is expected
        finally:
            self._writers.discard(writer)
            if not writer.is_closing():
                writer.close()

    async def _read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(_HTTP_HEAD_END)
        self.requests.append(head)
        return head

    async def _behave(self, behaviour: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if behaviour == "reset":
            # Before reading anything: the client's connect() has already
            # succeeded (the kernel completed the handshake), so the RST
            # lands on its first read/write - a reset *after* connect.
            _reset(writer)
        elif behaviour == "close":
            # A clean FIN: shut our side down, then read (and discard) until the client
            # gives up. Closing outright while the client's first bytes are already
            # queued makes Linux answer them with an RST, which is a reset, not a hang-up.
            writer.write_eof()
            await _drain_forever(reader)
        elif behaviour == "stall":
            # Never answer; a TLS ClientHello or HTTP request just sits here.
            await _drain_forever(reader)
        elif behaviour == "reset_after_request":
            await self._read_request(reader)
            _reset(writer)
        elif behaviour == "garbage":
            await self._read_request(reader)
            writer.write(_GARBAGE)
            await writer.drain()
            writer.close()
        elif behaviour == "stall_body":
            # Promise 100 bytes, deliver 3: headers arrive (first byte is
            # fast) but the body transfer never finishes.
            await self._read_request(reader)
            writer.write(_STALL_BODY_HEAD)
            await writer.drain()
            await _drain_forever(reader)
        elif behaviour == "banner":
            writer.write(_BANNER)
            await writer.drain()
            while line := await reader.readline():
                writer.write(line)
                await writer.drain()
        else:  # pragma: no cover - guarded in __init__
            raise AssertionError(behaviour)


# ---------------------------------------------------------------------------
# TLS termination that tells the client *why* (sends alerts)
# ---------------------------------------------------------------------------


class TLSTerminator(StreamPeer):
    """Terminates TLS on ``port`` and relays plaintext to ``backend``.

    Why not asyncio's own ``ssl=`` server support: when a server-side
    handshake fails (no shared protocol version, no shared cipher), asyncio
    aborts the transport without flushing the alert OpenSSL produced, so the
    client sees a bare EOF/reset instead of e.g. ``protocol_version``
    (measured on 3.11: UNEXPECTED_EOF_WHILE_READING vs the
    TLSV1_ALERT_PROTOCOL_VERSION a blocking OpenSSL server sends). Driving
    OpenSSL through memory BIOs ourselves lets us write the alert before
    closing, so the prober is tested against what a real server sends.

    ``handshake_errors`` collects the server-side SSLErrors, ``handshakes``
    counts successful handshakes.
    """

    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        backend: tuple[str, int],
        *,
        host: str = LOCALHOST,
    ) -> None:
        super().__init__(host)
        self.ssl_context = ssl_context
        self.backend = backend
        self.handshakes = 0
        self.handshake_errors: list[ssl.SSLError] = []

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._track(writer)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = self.ssl_context.wrap_bio(incoming, outgoing, server_side=True)

        def flush() -> None:
            pending = outgoing.read()
            if pending:
                writer.write(pending)

        backend_writer: asyncio.StreamWriter | None = None
        try:
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    flush()
                    await writer.drain()
                    data = await reader.read(65536)
                    if not data:
                        return  # client gave up mid-handshake
                    incoming.write(data)
                except ssl.SSLError as exc:
                    # The point of this class: the alert is in `outgoing`.
                    self.handshake_errors.append(exc)
                    flush()
                    await writer.drain()
                    return
            self.handshakes += 1
            flush()  # last flight (+ TLS 1.3 session tickets)
            await writer.drain()

            backend_reader, backend_writer = await asyncio.open_connection(*self.backend)
            self._writers.add(backend_writer)
            await asyncio.gather(
                self._client_to_backend(reader, tls, incoming, flush, writer, backend_writer),
                self._backend_to_client(backend_reader, tls, flush, writer),
                return_exceptions=True,
            )
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            for w in (writer, backend_writer):
                if w is not None:
                    self._writers.discard(w)
                    if not w.is_closing():
                        w.close()

    @staticmethod
    async def _client_to_backend(reader, tls: ssl.SSLObject, incoming: ssl.MemoryBIO, flush, writer, backend_writer) -> None:
        try:
            # The first pass uses no new bytes: a TLS 1.3 client sends its
            # request in the same flight as Finished, so it can already sit
            # in `incoming` when the handshake completes; waiting for more
            # data first would deadlock with the client waiting on us.
            data = b""
            while True:
                incoming.write(data)
                while True:
                    try:
                        plain = tls.read(65536)
                    except ssl.SSLWantReadError:
                        break
                    except ssl.SSLZeroReturnError:  # close_notify
                        return
                    if not plain:
                        return
                    backend_writer.write(plain)
                flush()  # OpenSSL may owe the client something (e.g. KeyUpdate)
                await backend_writer.drain()
                data = await reader.read(65536)
                if not data:
                    return
        finally:
            # Closing the backend makes it close its side too, which ends the
            # other pump; otherwise a vanished client would leave it waiting.
            backend_writer.close()

    @staticmethod
    async def _backend_to_client(backend_reader, tls: ssl.SSLObject, flush, writer) -> None:
        try:
            while data := await backend_reader.read(65536):
                tls.write(data)
                flush()
                await writer.drain()
            with contextlib.suppress(ssl.SSLError):
                tls.unwrap()  # queue close_notify; raises WantRead awaiting the peer's
            flush()
            await writer.drain()
        finally:
            writer.close()


# ---------------------------------------------------------------------------
# HTTP(S)
# ---------------------------------------------------------------------------

# Statuses whose responses must not carry a body (RFC 9110); aiohttp would
# otherwise send one or refuse.
_BODYLESS = {204, 304}


async def start_app(app: web.Application, host: str = "127.0.0.1") -> tuple[web.AppRunner, int]:
    """``app`` served on ``host`` at a free port, as test peers run it: no access log (its lines only bury
    real failures in pytest output), no signal handlers, and a short shutdown_timeout (so stopping does
    not wait the default 60 s for an in-flight slow request). Returns the runner and the port."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.2)
    await runner.setup()
    await web.TCPSite(runner, host, 0).start()
    return runner, runner.addresses[0][1]


class HTTPServer(_AsyncPeer):
    """aiohttp server with the routes the HTTP prober tests need.

    Routes (every method accepted, so probes configured for POST/HEAD work):
    ``/`` and ``/ok``: 200 "hello connhealth", text/plain, ``X-Service: demo``;
    ``/status/{code}``; ``/slow?delay=S``; ``/redirect/{n}`` (relative 302
    chain ending at ``/ok``); ``/loop``; ``/headers?name=value`` (sets
    response headers); ``/echo-headers`` (request headers as JSON);
    ``/to-http?url=...`` (302 to an absolute URL); ``/echo-body`` (200,
    echoes method and body as JSON).

    ``requests`` records ``(path, headers_dict)`` for every request served.
    With ``ssl_context`` the public ``port`` is a ``TLSTerminator`` relaying
    to the aiohttp site on ``backend_port``; ``tls`` exposes it (handshake
    counters and server-side errors).
    """

    def __init__(self, ssl_context: ssl.SSLContext | None = None, *, host: str = LOCALHOST) -> None:
        self.ssl_context = ssl_context
        self.host = host
        self.port = 0
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.backend_port = 0  # the plain-HTTP aiohttp port (== port without TLS)
        self.tls: TLSTerminator | None = None  # set when serving HTTPS
        self._runner: web.AppRunner | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context is not None else "http"

    def url(self, path: str = "/", *, host: str | None = None) -> str:
        """Full URL for ``path``; ``host`` overrides the literal IP (e.g.
        "localhost" to exercise certificate name checks against a DNS SAN)."""
        h = host or self.host
        if ":" in h and not h.startswith("["):
            h = f"[{h}]"  # IPv6 literal
        if not path.startswith("/"):
            path = "/" + path
        return f"{self.scheme}://{h}:{self.port}{path}"

    async def start(self) -> "HTTPServer":
        # client_max_size: aiohttp's 1 MiB default would turn a large POST
        # probe body into a 413 that looks like a prober bug.
        app = web.Application(middlewares=[self._record], client_max_size=64 * 2**20)
        r = app.router
        r.add_route("*", "/", self._ok)
        r.add_route("*", "/ok", self._ok)
        r.add_route("*", "/status/{code}", self._status)
        r.add_route("*", "/slow", self._slow)
        r.add_route("*", "/redirect/{n}", self._redirect)
        r.add_route("*", "/loop", self._loop)
        r.add_route("*", "/headers", self._headers)
        r.add_route("*", "/echo-headers", self._echo_headers)
        r.add_route("*", "/echo-body", self._echo_body)
        r.add_route("*", "/to-http", self._to_http)
        # TLS is terminated in front of a plain site rather than by aiohttp
        # itself, so that handshake failures reach the client as proper
        # alerts (see TLSTerminator).
        self._runner, self.backend_port = await start_app(app, self.host)
        if self.ssl_context is None:
            self.port = self.backend_port
        else:
            self.tls = TLSTerminator(self.ssl_context, (self.host, self.backend_port), host=self.host)
            await self.tls.start()
            self.port = self.tls.port
        return self

    async def stop(self) -> None:
        if self.tls is not None:
            await self.tls.stop()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    # -- handlers ---------------------------------------------------------

    @web.middleware
    async def _record(self, request: web.Request, handler):
        self.requests.append((request.path, dict(request.headers)))
        return await handler(request)

    async def _ok(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="hello connhealth", content_type="text/plain", headers={"X-Service": "demo"})

    async def _status(self, request: web.Request) -> web.StreamResponse:
        code = int(request.match_info["code"])
        if code in _BODYLESS or code < 200:
            return web.Response(status=code)
        return web.Response(status=code, text=f"status {code}", content_type="text/plain")

    async def _slow(self, request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(float(request.query.get("delay", "1")))
        return web.Response(text="slow", content_type="text/plain")

    @staticmethod
    def _found(location: str) -> web.Response:
        return web.Response(status=302, headers={"Location": location}, text="redirect", content_type="text/plain")

    async def _redirect(self, request: web.Request) -> web.StreamResponse:
        n = int(request.match_info["n"])
        return self._found("/ok" if n <= 0 else f"/redirect/{n - 1}")

    async def _loop(self, request: web.Request) -> web.StreamResponse:
        return self._found("/loop")

    async def _headers(self, request: web.Request) -> web.StreamResponse:
        resp = web.Response(text="headers", content_type="text/plain")
        for name, value in request.query.items():
            resp.headers.add(name, value)  # add, not set: repeated names stay repeated
        return resp

    async def _echo_headers(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(dict(request.headers))

    async def _echo_body(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        return web.json_response({"method": request.method, "body": body.decode("utf-8", "replace")})

    async def _to_http(self, request: web.Request) -> web.StreamResponse:
        url = request.query.get("url")
        if not url:
            return web.Response(status=400, text="missing url", content_type="text/plain")
        return self._found(url)


# ---------------------------------------------------------------------------
# Blackholed / unreachable routes via a network namespace
# ---------------------------------------------------------------------------

_NS_PREFIX = "chtest-"
_VETH_PREFIX = "chbh"
_NOARP_DEV = "noarp"  # lives inside the namespace only, so a fixed name is fine
_CMD_TIMEOUT = 15.0
# Strong references on purpose: an instance dropped without stop() must still
# be cleaned up at exit, which a WeakSet would forget.
_instances: "set[Any]" = set()  # BlackholeNet and Namespace
_counter = itertools.count()
_counter_lock = threading.Lock()


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=_CMD_TIMEOUT)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)!r} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


class BlackholeNet:
    """A namespace acting as a router that drops or rejects traffic.

    Topology (X chosen per instance so parallel users don't clash)::

        root ns  veth 198.18.X.1/30  <---->  198.18.X.2/30 veth  chtest-<pid>-<n>
        route 198.19.X.0/24 via 198.18.X.2        ip_forward=1
                                                   blackhole   198.19.X.0/25
                                                   unreachable 198.19.X.128/25
                                                   198.19.X.192/26 dev noarp

    A SYN to ``blackhole_ip`` (.10) is forwarded into the namespace and
    silently discarded (connect times out); a SYN to ``unreachable_ip`` (.200)
    makes the namespace send ICMP host-unreachable back (connect fails with
    EHOSTUNREACH after ~20-30 ms, every time). Together that is what a
    firewall DROP vs REJECT looks like from the client, without a packet
    leaving this machine.

    Addresses .128-.191 hit the plain `unreachable` route: instant ICMP, but
    rate limited by the kernel (see ``_setup``) so that, in practice, most
    connects to them time out; don't use them in tests.
    """

    _availability: tuple[bool, str] | None = None

    def __init__(self) -> None:
        with _counter_lock:
            self._seq = next(_counter)
        self.ns = f"{_NS_PREFIX}{os.getpid()}-{self._seq}"
        self.octet: int | None = None
        self.veth_root = ""
        self.veth_ns = ""
        self._ns_created = False
        self._veth_created = False
        self._route_added = False

    # -- addresses (valid after start) -------------------------------------

    def _addr(self, prefix: str, last: int) -> str:
        if self.octet is None:
            raise RuntimeError("BlackholeNet not started")
        return f"{prefix}.{self.octet}.{last}"

    @property
    def root_ip(self) -> str:
        return self._addr("198.18", 1)

    @property
    def ns_ip(self) -> str:
        return self._addr("198.18", 2)

    @property
    def blackhole_ip(self) -> str:
        return self._addr("198.19", 10)

    @property
    def unreachable_ip(self) -> str:
        return self._addr("198.19", 200)

    @property
    def routed_subnet(self) -> str:
        return self._addr("198.19", 0) + "/24"

    # -- availability -------------------------------------------------------

    @classmethod
    def available(cls) -> tuple[bool, str]:
        """(True, "") if namespaces can be built here, else (False, why).

        Cached: the answer does not change during a test run, and probing
        costs a namespace create/delete.
        """
        if cls._availability is None:
            cls._availability = cls._probe_availability()
        return cls._availability

    @staticmethod
    def _probe_availability() -> tuple[bool, str]:
        if os.geteuid() != 0:
            return False, "needs root (ip netns / veth)"
        if shutil.which("ip") is None:
            return False, "iproute2 'ip' not found"
        probe = f"{_NS_PREFIX}{os.getpid()}-probe"
        try:
            # Actually creating one is the only reliable test: containers
            # often have root but no CAP_SYS_ADMIN, or a read-only /run.
            _run("ip", "netns", "add", probe)
            _run("ip", "netns", "exec", probe, "ip", "link", "set", "lo", "up")
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            return False, f"ip netns unusable: {exc}"
        finally:
            _run("ip", "netns", "del", probe, check=False)
        return True, ""

    # -- lifecycle ----------------------------------------------------------

    def __enter__(self) -> "BlackholeNet":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> "BlackholeNet":
        ok, why = self.available()
        if not ok:
            raise RuntimeError(f"BlackholeNet unavailable: {why}")
        _instances.add(self)
        try:
            self._setup()
        except BaseException:
            self.stop()
            raise
        return self

    def _octets_in_use(self) -> set[int]:
        # Anything already using 198.18.X.* or 198.19.X.* (another test
        # process, another tool) rules X out; the veth name below is the
        # atomic tie-breaker for races between two of us.
        text = _run("ip", "-4", "-o", "addr", "show").stdout + _run("ip", "-4", "route", "show").stdout
        return {int(m.group(1)) for m in re.finditer(r"\b198\.1[89]\.(\d{1,3})\.", text)}

    def _setup(self) -> None:
        _run("ip", "netns", "add", self.ns)
        self._ns_created = True

        in_use = self._octets_in_use()
        start = (os.getpid() * 37 + self._seq * 11) % 256
        for i in range(256):
            octet = (start + i) % 256
            if octet in in_use:
                continue
            veth_root, veth_ns = f"{_VETH_PREFIX}{octet}r", f"{_VETH_PREFIX}{octet}n"
            proc = _run(
                "ip", "link", "add", veth_root, "type", "veth", "peer", "name", veth_ns, "netns", self.ns,
                check=False,
            )
            if proc.returncode == 0:
                self.octet, self.veth_root, self.veth_ns = octet, veth_root, veth_ns
                self._veth_created = True
                break
            if "exists" not in proc.stderr:
                raise RuntimeError(f"creating veth {veth_root} failed: {proc.stderr.strip()}")
        else:
            raise RuntimeError("no free 198.18.X.0/30 + 198.19.X.0/24 slot")

        ns_exec = ("ip", "netns", "exec", self.ns)
        _run("ip", "addr", "add", f"{self.root_ip}/30", "dev", self.veth_root)
        _run("ip", "link", "set", self.veth_root, "up")
        _run(*ns_exec, "ip", "link", "set", "lo", "up")
        _run(*ns_exec, "ip", "addr", "add", f"{self.ns_ip}/30", "dev", self.veth_ns)
        _run(*ns_exec, "ip", "link", "set", self.veth_ns, "up")
        # Forwarding must be on for the namespace to *route* (and hence hit
        # the blackhole/unreachable routes and emit ICMP); with it off the
        # kernel drops foreign-destined packets silently for both addresses.
        # Rate limit 0: the default 1 ICMP/s per destination would turn
        # every unreachable test after the first into a timeout.
        self._ns_sysctl("net.ipv4.ip_forward", "1")
        self._ns_sysctl("net.ipv4.icmp_ratelimit", "0")
        _run(*ns_exec, "ip", "route", "add", "blackhole", self._addr("198.19", 0) + "/25")
        _run(*ns_exec, "ip", "route", "add", "unreachable", self._addr("198.19", 128) + "/25")
        # The `unreachable` route answers through ip_error(), whose limiter
        # (net.ipv4.route.error_cost/burst, settable only in the root
        # namespace) allows 5 ICMPs then 1 per second per source address,
        # and shares its token counter with icmp_send()'s per-peer limiter,
        # which icmp_ratelimit=0 keeps draining to zero. Measured: after the
        # first few, connects to it mostly time out instead of failing.
        # So the upper quarter (which holds unreachable_ip) is instead routed
        # onto a link where ARP is never answered: after one 20 ms ARP probe
        # the neighbour fails and the kernel sends host-unreachable via
        # icmp_send(), limited only by icmp_ratelimit (0 here).
        _run(*ns_exec, "ip", "link", "add", _NOARP_DEV, "type", "veth", "peer", "name", _NOARP_DEV + "p")
        _run(*ns_exec, "ip", "link", "set", _NOARP_DEV + "p", "up")
        _run(*ns_exec, "ip", "link", "set", _NOARP_DEV, "up")
        for knob, value in (("mcast_solicit", "1"), ("ucast_solicit", "0"), ("app_solicit", "0"), ("retrans_time_ms", "20")):
            self._ns_sysctl(f"net.ipv4.neigh.{_NOARP_DEV}.{knob}", value)
        _run(*ns_exec, "ip", "route", "add", self._addr("198.19", 192) + "/26", "dev", _NOARP_DEV)
        _run("ip", "route", "add", self.routed_subnet, "via", self.ns_ip, "dev", self.veth_root)
        self._route_added = True

    def _ns_sysctl(self, key: str, value: str) -> None:
        # sysctl(8) may be missing in minimal images; /proc/sys is always
        # there and, under `ip netns exec`, shows the namespace's own values.
        if shutil.which("sysctl"):
            _run("ip", "netns", "exec", self.ns, "sysctl", "-q", "-w", f"{key}={value}")
        else:
            path = "/proc/sys/" + key.replace(".", "/")
            _run("ip", "netns", "exec", self.ns, "sh", "-c", f"echo {value} > {path}")

    def stop(self) -> None:
        """Idempotent; removes only what this instance created."""
        if self._route_added:
            _run("ip", "route", "del", self.routed_subnet, "via", self.ns_ip, check=False)
            self._route_added = False
        if self._veth_created:
            # Deleting either end destroys the pair (and any route over it).
            _run("ip", "link", "del", self.veth_root, check=False)
            self._veth_created = False
        if self._ns_created:
            _run("ip", "netns", "del", self.ns, check=False)
            self._ns_created = False
        _instances.discard(self)

    @staticmethod
    def reap_stale() -> list[str]:
        """Delete chtest-<pid>-* namespaces whose pid no longer exists.

        Not called automatically: a pid that looks dead here may be alive in
        another pid namespace sharing this network namespace. Use it by hand
        after a SIGKILLed test run.
        """
        reaped = []
        for line in _run("ip", "netns", "list", check=False).stdout.splitlines():
            name = line.split()[0] if line.split() else ""
            m = re.fullmatch(rf"{_NS_PREFIX}(\d+)-\w+", name)
            if not m:
                continue
            try:
                os.kill(int(m.group(1)), 0)
                continue  # owner alive
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
            _run("ip", "netns", "del", name, check=False)
            reaped.append(name)
        return reaped


class Namespace:
    """An isolated network namespace with only ``lo`` (up) and the given extra addresses on it.

    Nothing routes into or out of it: whatever runs inside (``exec_argv``)
    can reach only its own loopback, which is what a "no packet left" proof
    needs: a sniffer on its ``lo`` sees every packet any process in it sent.
    """

    def __init__(self, *addresses: str) -> None:
        with _counter_lock:
            self.name = f"{_NS_PREFIX}{os.getpid()}-ns{next(_counter)}"
        self.addresses = addresses
        self._created = False

    def __enter__(self) -> "Namespace":
        ok, why = BlackholeNet.available()
        if not ok:
            raise RuntimeError(f"Namespace unavailable: {why}")
        _instances.add(self)
        try:
            _run("ip", "netns", "add", self.name)
            self._created = True
            _run(*self.exec_argv(), "ip", "link", "set", "lo", "up")
            for address in self.addresses:
                _run(*self.exec_argv(), "ip", "addr", "add", address, "dev", "lo")
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def exec_argv(self) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.name)

    def stop(self) -> None:
        if self._created:
            _run("ip", "netns", "del", self.name, check=False)
            self._created = False
        _instances.discard(self)


@atexit.register
def _cleanup_blackholes() -> None:
    # Last line of defence when a test forgot the context manager or the run
    # was interrupted: leaked routes into 198.19.X.0/24 would poison later runs.
    for net in list(_instances):
        with contextlib.suppress(Exception):
            net.stop()


def errno_name(code: int | None) -> str:
    """errno number -> symbolic name, for readable assertion messages."""
    return errno.errorcode.get(code or 0, str(code))
