"""One probe connection: our own TCP connect, and TLS driven by us through ssl.SSLObject.

Why not asyncio streams and ``loop.start_tls``: the StreamReader +
StreamReaderProtocol + StreamWriter trio costs more to set up than a loopback
HTTP exchange (docs/benchmarks.md), and asyncio's TLS hides what a prober has
to report: it cannot offer a session for resumption, and when verification
fails the chain the server presented is gone with the transport (blackbox
#1119: an expired certificate then exports no expiry at all).

So ``Connection`` is a plain ``asyncio.Protocol`` on a plain socket, which
``_SocketTransport`` reads with ``recvmsg`` so that every read carries the
kernel's receive timestamp (SO_TIMESTAMPNS): the end of a phase is then when
its packet arrived, not when the event loop got round to it (issue 15).
Before ``start_tls`` its read/write methods move bytes as they are; after it,
the same methods move plaintext through an ``ssl.SSLObject`` over two
``MemoryBIO``s that this class pumps itself. This works the same on the stdlib
loop and on uvloop: the sockets' readiness comes from an epoll set of our own
(``_Poller``), which the loop watches as one descriptor (a Connection on a
loop's own transport works too, without timestamps).

Exceptions are the ones asyncio streams raised, so failure attribution is
unchanged: ``IncompleteReadError`` at EOF, ``LimitOverrunError`` past a
limit, the transport's own error once the connection is lost (it wins over
buffered data, as in StreamReader), ``ConnectionResetError('Connection
lost')`` from ``drain()`` after the connection is gone, and from the
handshake ``ssl.SSLCertVerificationError`` / ``ssl.SSLError`` as OpenSSL
raised them. One deliberate difference: a peer that hangs up (FIN) during the
handshake gives ``ssl.SSLEOFError`` (OpenSSL's own UNEXPECTED_EOF_WHILE_READING)
where asyncio raised a bare ``ConnectionResetError()``; failures.classify maps
both to a hang-up. A reset (RST) stays ``ConnectionResetError`` with errno
ECONNRESET. No method here raises TimeoutError: callers set deadlines by
cancelling.
"""
from __future__ import annotations

import asyncio
import dataclasses
import errno
import functools
import select
import socket
import ssl
import struct
import weakref
from collections import OrderedDict
from time import perf_counter_ns, time_ns
from typing import Any, Callable, cast

from ..result import Certificate, TCPInfo, TLSInfo
from .resolve import is_ip
from .tls import describe, describe_failure

__all__ = ["STREAM_LIMIT", "Connection", "connect", "open_socket", "tcp_info_of", "wrap"]

# Linux: SO_TIMESTAMPNS (SCM_TIMESTAMPNS in the ancillary data) has the same number; the socket
# module does not export it. A struct timespec (two longs) per recvmsg.
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("@ll")
_ANC_SIZE = socket.CMSG_SPACE(_TIMESPEC.size)
# What asyncio's selector transport reads per call, and its write buffer limits.
_READ_SIZE = 256 * 1024
_HIGH_WATER = 64 * 1024
_LOW_WATER = 16 * 1024


# What asyncio.open_connection was given: the longest line readuntil accepts by
# default. The receive buffer is paused at twice this (as StreamReader does).
STREAM_LIMIT = 2**20

# Decryption scratch, reused for every record: a TLS record holds at most
# 16 KiB of plaintext and OpenSSL returns one record per read.
_SCRATCH_SIZE = 16 * 1024

_PLAIN, _HANDSHAKE, _TLS, _TLS_FAILED = range(4)

# The chain a full handshake verified, by session id: a resumed handshake has no
# Certificate message, and OpenSSL then knows only the leaf (no presented or
# verified chain), which would make the chain's expiry flip with resumption.
_SESSION_CHAINS: OrderedDict[bytes, tuple[tuple[Certificate, ...], float | None]] = OrderedDict()
_SESSION_CHAINS_SIZE = 4096


class Connection(asyncio.Protocol):
    """A connection as a receive buffer plus write/drain, with optional TLS on top.

    Reads: ``read(n)`` returns what has arrived (at most n, b"" at EOF) so an
    endless body can be consumed incrementally; ``readuntil`` and
    ``readexactly`` as StreamReader. Nothing assumes one exchange: several
    requests can follow each other (keep-alive). Memory stays bounded without
    a reader: the transport is paused while more than ``2 * STREAM_LIMIT``
    bytes are unread, in TLS mode too (ciphertext is decrypted as it arrives,
    so the incoming BIO never holds more than one partial record and the
    plaintext buffer is bounded exactly like the plain one). A reader waiting
    for more than that (readexactly(n) with a large n) resumes reading, as
    StreamReader does.
    """

    __slots__ = ("_loop", "_transport", "_buffer", "_eof", "_exception", "_waiter", "_connection_lost",
                 "_reading_paused", "_writing_paused", "_drain_waiter", "_state", "_incoming", "_outgoing", "_tls",
                 "_scratch", "_scratch_view", "_answer_ns", "_tls_info")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport = None  # type: ignore[assignment]  # set by connection_made
        self._buffer = bytearray()  # plaintext not yet read
        self._eof = False  # no byte will be added to _buffer any more
        self._exception: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None  # a read waiting for data, EOF or an error
        self._connection_lost = False
        self._reading_paused = False
        self._writing_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        # TLS
        self._state = _PLAIN
        self._incoming: ssl.MemoryBIO | None = None
        self._outgoing: ssl.MemoryBIO | None = None
        self._tls: ssl.SSLObject | None = None
        self._scratch: bytearray | None = None
        self._scratch_view: memoryview | None = None
        self._answer_ns = 0  # first bytes of the server's handshake answer
        self._tls_info: TLSInfo | None = None

    # --- asyncio.Protocol callbacks -------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Nothing else here: get_extra_info("peername") costs a system call, which most
        # probes never need.
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        incoming = self._incoming
        if incoming is None:
            self._buffer += data
            self._wake()
        elif self._state == _TLS:
            if not incoming.eof:
                incoming.write(data)
                self._decrypt()
        elif self._state == _HANDSHAKE:
            if not incoming.eof:
                incoming.write(data)
            if not self._answer_ns:
                self._answer_ns = perf_counter_ns()
            self._wake()
        # After a failed handshake nothing reads the BIO any more: dropped, not kept.
        # Flow control as StreamReader: stop reading while 2 limits are unread.
        if not self._reading_paused and len(self._buffer) > 2 * STREAM_LIMIT:
            self._transport.pause_reading()
            self._reading_paused = True

    def eof_received(self) -> bool:
        incoming = self._incoming
        if incoming is None:
            self._eof = True
            self._wake()
        else:
            self._tls_eof(incoming)
        # Keep the socket half-open: we may still write. Over TLS too, since the
        # transport under us is a plain one.
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._connection_lost = True
        if exc is None:
            incoming = self._incoming
            if incoming is not None:
                self._tls_eof(incoming)
            self._eof = True
            self._wake()
        else:
            self._exception = exc
            self._wake(exc)
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- what the connection is ---------------------------------------------------
    @property
    def peer(self) -> tuple[str, int]:
        """(ip, port) of the other end, ("", 0) once unknown."""
        peername = self._transport.get_extra_info("peername") if self._transport is not None else None
        return (str(peername[0]), int(peername[1])) if peername else ("", 0)

    @property
    def socket(self) -> Any:
        """The transport's socket (asyncio's TransportSocket or uvloop's pseudo-socket):
        getsockopt/setsockopt work on both, I/O on it does not belong here."""
        return self._transport.get_extra_info("socket") if self._transport is not None else None

    def tcp_info(self) -> TCPInfo | None:
        """TCP_INFO now (None where the kernel has none)."""
        sock = self.socket
        return tcp_info_of(sock) if sock is not None else None

    def arrival_ns(self) -> int:
        """When the last packet read arrived, by the kernel's receive timestamp, on the
        ``perf_counter_ns`` clock; 0 when unknown (no timestamp, or a loop's own transport).

        The kernel stamps in CLOCK_REALTIME; the offset to the monotonic clock is
        read now, so a step of the wall clock between the arrival and this call
        shifts the figure (callers check it lies inside the phase). One read may
        carry several packets: the stamp is the last one's.
        """
        raw = getattr(self._transport, "rx_stamp", b"")
        if len(raw) < _TIMESPEC.size:
            return 0
        sec, nsec = _TIMESPEC.unpack_from(raw)
        return perf_counter_ns() - (time_ns() - (sec * 1_000_000_000 + nsec))

    @property
    def tls(self) -> ssl.SSLObject | None:
        """The SSLObject once the handshake has completed, else None."""
        return self._tls

    @property
    def alpn(self) -> str | None:
        return self._tls.selected_alpn_protocol() if self._tls is not None else None

    @property
    def session(self) -> ssl.SSLSession | None:
        """The session to offer to a later connection (``start_tls(session=...)``), or None.

        The rule for TLS 1.3: the server sends its session tickets after it has
        received our Finished, i.e. about one round trip after ``start_tls``
        returned, and before its first application data. They are processed as
        soon as they arrive (ciphertext is decrypted eagerly), so a session taken
        after any response byte has been read is resumable; one taken right after
        the handshake usually is not, and this property returns None for it
        rather than a session the server would not accept. TLS 1.2 sessions are
        complete when the handshake is (the ticket is part of it).
        """
        tls = self._tls
        if tls is None:
            return None
        session = tls.session
        if session is None or (tls.version() == "TLSv1.3" and not session.has_ticket):
            return None
        info = self._tls_info
        if info is not None and info.chain and session.id:
            _SESSION_CHAINS[session.id] = (info.chain, info.verified_chain_expiry)
            _SESSION_CHAINS.move_to_end(session.id)
            if len(_SESSION_CHAINS) > _SESSION_CHAINS_SIZE:
                _SESSION_CHAINS.popitem(last=False)
        return session

    def at_eof(self) -> bool:
        """EOF seen and every byte read (StreamReader.at_eof)."""
        return self._eof and not self._buffer

    def is_closing(self) -> bool:
        """The peer has gone (EOF, close_notify, reset) or we closed: not reusable for keep-alive."""
        return (
            self._eof
            or self._exception is not None
            or self._connection_lost
            or self._state == _TLS_FAILED
            or self._transport.is_closing()
        )

    def close(self) -> None:
        # abort, not close: a probe never waits for a graceful shutdown (and sends
        # no close_notify for the same reason).
        if self._transport is not None:
            self._transport.abort()
        # A stored handshake error holds its traceback, whose frames hold this
        # connection: drop it so refcounting, not the cyclic GC, frees both.
        if self._state == _TLS_FAILED:
            self._exception = ssl.SSLError("connection closed after a failed TLS handshake")

    # --- TLS --------------------------------------------------------------------
    async def start_tls(
        self,
        sslctx: ssl.SSLContext,
        server_hostname: str | None,
        *,
        session: ssl.SSLSession | None = None,
    ) -> TLSInfo:
        """Handshake over this connection; afterwards every read and write is plaintext.

        Returns the TLSInfo of the completed handshake. On a failed verification
        raises OpenSSL's own ``ssl.SSLCertVerificationError`` (verify_code
        intact) with ``exc.tls_info`` attached: verification "failed", OpenSSL's
        message, and the chain the server presented (``tls.tls_info_of(exc)``
        reads it). Other handshake failures raise as OpenSSL did (alerts,
        version mismatch: ssl.SSLError; FIN: ssl.SSLEOFError; RST: the
        transport's ConnectionResetError). After any failure the connection is
        unusable: close it.

        ``session`` offers a previous session of the same ``sslctx`` for
        resumption; TLSInfo says whether it was offered and reused. A session of
        another context (a rebuilt context after a reload) is not offered at all,
        rather than failing the probe.

        Splitting the handshake: ``server_hello_seconds`` is the time from our
        ClientHello being written to the first bytes of the server's answer
        arriving (its ServerHello flight: one round trip plus the server's key
        exchange and signature); the rest of the phase is verifying the chain and
        our Finished. That is as far as the stdlib goes: it has no handshake
        state or message callback (only the private, debug-only
        ``SSLContext._msg_callback``, which we do not use), and in TLS 1.3 the
        server usually sends ServerHello through Finished in one flight that a
        single ``do_handshake`` call consumes, so there is nothing finer to time
        from outside OpenSSL.
        """
        if self._state != _PLAIN:
            raise RuntimeError("TLS was already started on this connection")
        if self._exception is not None:
            raise self._exception
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        try:
            sslobj = sslctx.wrap_bio(incoming, outgoing, server_side=False,
                                     server_hostname=server_hostname, session=session)
        except ValueError:
            if session is None:
                raise
            # "Session refers to a different SSLContext": nothing to resume.
            session = None
            sslobj = sslctx.wrap_bio(incoming, outgoing, server_side=False, server_hostname=server_hostname)
        # Bytes that arrived before TLS started are the start of the TLS stream.
        if self._buffer:
            incoming.write(self._buffer)
            self._buffer.clear()
        if self._eof:
            incoming.write_eof()
            self._eof = False  # from now on EOF is what the TLS layer says
        self._incoming, self._outgoing = incoming, outgoing
        self._state = _HANDSHAKE
        self._answer_ns = 0
        sent_ns = 0
        transport = self._transport
        reported_name = server_hostname if server_hostname and not is_ip(server_hostname) else None
        try:
            while True:
                try:
                    sslobj.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    pass
                if outgoing.pending:
                    if not sent_ns:
                        # Before the write: on a busy host the send can hand the CPU to
                        # the server, whose answer then seems to take no time at all.
                        sent_ns = perf_counter_ns()
                    transport.write(outgoing.read())
                if incoming.eof:
                    continue  # OpenSSL raises its EOF error on the next step
                await self._wait_for_data()
        except ssl.SSLError as exc:
            self._state = _TLS_FAILED
            self._exception = exc
            if outgoing.pending:  # our alert: the server learns why, as from any TLS client
                transport.write(outgoing.read())
            if isinstance(exc, ssl.SSLCertVerificationError):
                exc.tls_info = describe_failure(  # type: ignore[attr-defined]
                    sslobj, reported_name, exc, session_offered=session is not None,
                    server_hello_seconds=_seconds(sent_ns, self._answer_ns),
                )
            raise
        except BaseException:
            self._state = _TLS_FAILED
            raise
        if outgoing.pending:  # our Finished (TLS 1.3, and resumed TLS 1.2)
            transport.write(outgoing.read())
        self._tls = sslobj
        self._state = _TLS
        if self._scratch is None:
            self._scratch = bytearray(_SCRATCH_SIZE)
            self._scratch_view = memoryview(self._scratch)
        info = describe(
            sslobj, reported_name, sslctx.verify_mode != ssl.CERT_NONE,
            session_offered=session is not None, server_hello_seconds=_seconds(sent_ns, self._answer_ns),
        )
        if info.session_reused and session is not None and session.id:
            known = _SESSION_CHAINS.get(session.id)
            if known is not None:
                info = dataclasses.replace(info, chain=known[0], verified_chain_expiry=known[1])
        self._tls_info = info
        # Whatever followed the server's Finished in the same flight (tickets,
        # early application data), and an EOF seen during the handshake.
        self._decrypt()
        return info

    # --- the prober's side ----------------------------------------------------------
    def write(self, data: bytes) -> None:
        tls = self._tls
        if tls is None:
            if self._state != _PLAIN:
                raise RuntimeError("write on a connection whose TLS handshake has not completed")
            self._transport.write(data)
        elif data:  # SSL_write refuses an empty write
            tls.write(data)
            self._transport.write(self._outgoing.read())  # type: ignore[union-attr]

    async def drain(self) -> None:
        """StreamWriter.drain: wait until the transport has taken the written data."""
        if self._exception is not None:
            raise self._exception
        if self._transport.is_closing():
            # Let a pending connection_lost() run so that a failed write is seen now.
            await asyncio.sleep(0)
        if self._connection_lost:
            raise ConnectionResetError("Connection lost")
        if not self._writing_paused:
            return
        waiter = self._drain_waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self._drain_waiter = None

    async def read(self, n: int) -> bytes:
        """StreamReader.read(n), n > 0: what is there (at most n), b'' at EOF."""
        if self._exception is not None:
            raise self._exception
        if not self._buffer and not self._eof:
            await self._wait_for_data()
        return self._take(n)

    async def readuntil(self, separator: bytes = b"\n", limit: int = STREAM_LIMIT) -> bytes:
        """StreamReader.readuntil: up to and including ``separator``, within ``limit`` bytes."""
        if self._exception is not None:
            raise self._exception
        seplen = len(separator)
        offset = 0
        while True:
            buflen = len(self._buffer)
            if buflen - offset >= seplen:
                isep = self._buffer.find(separator, offset)
                if isep != -1:
                    break
                offset = buflen + 1 - seplen
                if offset > limit:
                    raise asyncio.LimitOverrunError(f"no {separator!r} in the first {limit} bytes", offset)
            if self._eof:
                chunk = bytes(self._buffer)
                self._buffer.clear()
                raise asyncio.IncompleteReadError(chunk, None)
            await self._wait_for_data()
        if isep > limit:
            raise asyncio.LimitOverrunError(f"{separator!r} found after more than {limit} bytes", isep)
        return self._take(isep + seplen)

    async def readexactly(self, n: int) -> bytes:
        """StreamReader.readexactly: n bytes, or IncompleteReadError at EOF."""
        if self._exception is not None:
            raise self._exception
        while len(self._buffer) < n:
            if self._eof:
                incomplete = bytes(self._buffer)
                self._buffer.clear()
                raise asyncio.IncompleteReadError(incomplete, n)
            await self._wait_for_data()
        return self._take(n)

    # --- internals ----------------------------------------------------------------
    def _decrypt(self) -> None:
        """Move every complete record from the incoming BIO into the plaintext buffer."""
        tls = self._tls
        scratch = self._scratch
        view = self._scratch_view
        if tls is None or scratch is None or view is None or self._eof:
            return
        buf = self._buffer
        before = len(buf)
        incoming = self._incoming
        assert incoming is not None
        try:
            # Only when there is something to read (or the EOF to learn about):
            # a read that ends in SSLWantReadError costs an exception each time.
            while incoming.pending or tls.pending() or incoming.eof:
                # With a buffer, read() returns a count (typeshed says bytes).
                n = cast(int, tls.read(_SCRATCH_SIZE, scratch))
                if not n:  # close_notify
                    self._eof = True
                    break
                buf += view[:n]
        except ssl.SSLWantReadError:
            pass
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
            # The transport's EOF without close_notify: EOF, as asyncio treats it
            # (HTTP servers commonly just close; framing catches truncation).
            self._eof = True
        except ssl.SSLError as exc:
            self._exception = exc
            self._wake(exc)
            return
        outgoing = self._outgoing
        if outgoing is not None and outgoing.pending:  # e.g. a KeyUpdate answer
            self._transport.write(outgoing.read())
        if self._eof or len(buf) != before:
            self._wake()

    def _tls_eof(self, incoming: ssl.MemoryBIO) -> None:
        if not incoming.eof:
            incoming.write_eof()
        if self._state == _TLS:
            self._decrypt()
        elif self._state == _HANDSHAKE:
            self._wake()
        else:
            self._eof = True
            self._wake()

    def _wake(self, exc: BaseException | None = None) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.cancelled():
                if exc is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(exc)

    async def _wait_for_data(self) -> None:
        if self._waiter is not None:
            raise RuntimeError("two reads at once on one connection")
        if self._reading_paused:
            # Waiting for data while paused would deadlock.
            self._reading_paused = False
            self._transport.resume_reading()
        waiter = self._waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def _take(self, n: int) -> bytes:
        """The first ``n`` buffered bytes (fewer if fewer are there); reading resumes once drained."""
        buf = self._buffer
        if n >= len(buf):
            data = bytes(buf)
            buf.clear()
        else:
            data = bytes(buf[:n])
            del buf[:n]
        if self._reading_paused and len(buf) <= STREAM_LIMIT:
            self._reading_paused = False
            self._transport.resume_reading()
        return data


class _SocketTransport:
    """The part of an asyncio transport that Connection uses, on a socket read with ``recvmsg``.

    Why not the loop's transport: it reads with ``recv``, which drops the
    kernel's receive timestamp (SO_TIMESTAMPNS comes as ancillary data, and only
    ``recvmsg`` returns that), and uvloop's reads happen in C where nothing can
    be added. So the connection drives its socket itself, through the loop's
    ``_Poller`` (which works the same on both loops), and keeps the
    ancillary data of the last read: the arrival time of the packet that ended
    a phase (``Connection.arrival_ns``). Behaviour as asyncio's
    ``_SelectorSocketTransport``: reads of up to 256 KiB, a write tried at once
    and buffered (with pause_writing above 64 KiB, resume_writing at 16 KiB)
    when the socket is full, EOF kept half-open, errors to
    ``connection_lost(exc)`` once.
    """

    __slots__ = ("_loop", "_poller", "_sock", "_fd", "_protocol", "_out", "_closing", "_reading",
                 "_protocol_paused", "rx_stamp")

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, protocol: Connection) -> None:
        self._loop = loop
        self._poller = poller = _poller_of(loop)
        self._sock = sock
        self._fd = sock.fileno()
        self._protocol = protocol
        self._out = bytearray()  # written, not yet sent
        self._closing = False  # aborted or failed: the socket is closed
        self._reading = True
        self._protocol_paused = False
        self.rx_stamp = b""  # the last read's SCM_TIMESTAMPNS (a struct timespec), b"" when none came
        poller.add_reader(self._fd, self._read_ready)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "socket":
            return self._sock
        if name == "peername":
            try:
                return self._sock.getpeername()
            except OSError:
                return default
        return default

    def is_closing(self) -> bool:
        return self._closing

    def pause_reading(self) -> None:
        if self._reading and not self._closing:
            self._reading = False
            self._poller.remove_reader(self._fd)

    def resume_reading(self) -> None:
        if not self._reading and not self._closing:
            self._reading = True
            self._poller.add_reader(self._fd, self._read_ready)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        if not self._out:
            try:
                n = self._sock.send(data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as exc:
                self._fatal(exc)
                return
            if n == len(data):
                return
            data = memoryview(data)[n:]
            self._poller.add_writer(self._fd, self._write_ready)
        self._out += data
        if not self._protocol_paused and len(self._out) > _HIGH_WATER:
            self._protocol_paused = True
            self._protocol.pause_writing()

    def abort(self) -> None:
        if not self._closing:
            self._shutdown().connection_lost(None)

    # --- loop callbacks ---------------------------------------------------------------
    def _read_ready(self) -> None:
        try:
            data, anc, _, _ = self._sock.recvmsg(_READ_SIZE, _ANC_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fatal(exc)
            return
        if anc:
            self.rx_stamp = anc[0][2]
        if data:
            self._protocol.data_received(data)
            return
        # EOF: the protocol keeps the socket half-open (it may still write).
        self.pause_reading()
        self._protocol.eof_received()

    def _write_ready(self) -> None:
        try:
            n = self._sock.send(self._out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fatal(exc)
            return
        del self._out[:n]
        if not self._out:
            self._poller.remove_writer(self._fd)
        if self._protocol_paused and len(self._out) <= _LOW_WATER:
            self._protocol_paused = False
            self._protocol.resume_writing()

    def _fatal(self, exc: Exception) -> None:
        # Later, as asyncio does: the error surfaces from a callback, not inside a write.
        if not self._closing:
            self._loop.call_soon(self._shutdown().connection_lost, exc)

    def _shutdown(self) -> Connection:
        """Stop watching and close the socket; the protocol is let go (no cycle outlives a probe)."""
        self._closing = True
        if self._reading:
            self._reading = False
            self._poller.remove_reader(self._fd)
        if self._out:
            self._out.clear()
            self._poller.remove_writer(self._fd)
        self._sock.close()
        protocol, self._protocol = self._protocol, None  # type: ignore[assignment]
        return protocol

def _seconds(start_ns: int, end_ns: int) -> float | None:
    return (end_ns - start_ns) / 1e9 if start_ns and end_ns > start_ns else None


_TCP_INFO_SIZE = 104  # up to tcpi_total_retrans


def tcp_info_of(sock: Any, raw: bytes = b"") -> TCPInfo | None:
    """The socket's TCP_INFO (``raw``: as already read, e.g. by open_socket)."""
    if not raw:
        try:
            raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
        except (OSError, AttributeError):
            return None
    if len(raw) < _TCP_INFO_SIZE:
        return None
    # struct tcp_info: 8 one-byte fields, then u32s; tcpi_rtt/rttvar are the
    # 16th/17th u32 (µs), tcpi_total_retrans the 24th.
    u32 = struct.unpack_from("24I", raw, 8)
    return TCPInfo(rtt_seconds=u32[15] / 1e6, rttvar_seconds=u32[16] / 1e6, retransmits=u32[23])


async def open_socket(ip: str, port: int, family: int, source: str | None = None, *,
                      data: bool = True) -> tuple[socket.socket, bytes]:
    """A connected non-blocking TCP socket, bound to ``source`` first if given; closed again on any failure.

    ``data``: it will carry data (TCP_NODELAY, kernel receive timestamps); False: a connect only,
    which needs neither. Also returns the socket's TCP_INFO when it was read to see that the connect
    was over (b"" when not: tcp_info_of reads it then).
    """
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)  # non-blocking without an ioctl
    info = b""
    try:
        if data:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _keep_timestamping()
            sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        if source is not None:
            sock.bind((source, 0))
        err = sock.connect_ex((ip, port))
        if err in _CONNECT_PENDING:
            # Often the handshake is already over (loopback, a peer on the same host): the socket's
            # TCP state says so, and waiting for the loop to report it would cost a turn for nothing.
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
            if info[:1] != _ESTABLISHED:
                if info[:1] == _SYN_SENT:
                    await _writable(asyncio.get_running_loop(), sock)
                info = b""
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            else:
                err = 0
        if err:
            raise OSError(err, f"Connect call failed {(ip, port)}")
    except BaseException:
        sock.close()
        raise
    return sock, info


# The kernel timestamps received packets only while some socket asks for it: the first such socket
# switches that on for the whole host and the last one to close switches it off again, which is
# done by a kernel worker that patches code and interrupts every CPU (0.24 s of CPU per second of a
# continuous-mode exporter's own, docs/benchmarks.md). One socket that asks and stays open keeps the
# switch on for the process's life, so probes' sockets come and go without flipping it.
_TIMESTAMP_KEEPER: list[socket.socket] = []


def _keep_timestamping() -> None:
    if not _TIMESTAMP_KEEPER:
        keeper = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        keeper.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        _TIMESTAMP_KEEPER.append(keeper)


# Not loop.sock_connect: uvloop's resolves every address, IP literals too, with getaddrinfo on
# its worker thread (≈ 60 µs of CPU and two thread hand-offs per connect, docs/benchmarks.md).
# ``ip`` is always an address here, so connect_ex + wait for writable is the whole job, as
# asyncio's selector loop does it. The error is OSError(errno) as both loops raise it
# (ConnectionRefusedError and so on).
_CONNECT_PENDING = frozenset((errno.EINPROGRESS, errno.EAGAIN, errno.EINTR))
# tcp_info's first byte, tcpi_state (include/net/tcp_states.h).
_ESTABLISHED = b"\x01"
_SYN_SENT = b"\x02"


async def _writable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    fd = sock.fileno()
    done = loop.create_future()
    poller = _poller_of(loop)
    poller.add_writer(fd, functools.partial(_resolve, done))
    try:
        await done
    finally:
        poller.remove_writer(fd)


def _resolve(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


class _Poller:
    """Readiness of the probes' sockets from an epoll set of our own, which the loop watches as one descriptor.

    uvloop's ``add_reader`` costs a libuv handle and about six ``epoll_ctl`` calls per descriptor
    (libuv first checks that it can be polled, with an add and a delete): ≈ 8.5 µs of CPU per probe
    socket, against ≈ 2.7 µs here for one register and one unregister (docs/benchmarks.md). The
    semantics are add_reader's: level-triggered (a socket that stays readable is reported again on
    the next turn), an error or hang-up wakes the reader and the writer; a callback runs in the loop
    turn that saw its socket ready. Events of a descriptor dropped earlier in the same dispatch are
    skipped: its number may already belong to a new socket.
    """

    __slots__ = ("_loop", "_epoll", "_readers", "_writers", "_masks", "_dropped", "__weakref__")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)  # the loop holds its poller (the reader below), not the other way round
        self._epoll = select.epoll()
        self._readers: dict[int, Callable[[], None]] = {}
        self._writers: dict[int, Callable[[], None]] = {}
        self._masks: dict[int, int] = {}  # what each registered descriptor is watched for
        self._dropped: set[int] = set()  # unregistered during the current dispatch
        loop.add_reader(self._epoll.fileno(), self._dispatch)

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        self._readers[fd] = callback
        self._watch(fd)

    def remove_reader(self, fd: int) -> None:
        if self._readers.pop(fd, None) is not None:
            self._watch(fd)

    def add_writer(self, fd: int, callback: Callable[[], None]) -> None:
        self._writers[fd] = callback
        self._watch(fd)

    def remove_writer(self, fd: int) -> None:
        if self._writers.pop(fd, None) is not None:
            self._watch(fd)

    def _watch(self, fd: int) -> None:
        mask = (select.EPOLLIN if fd in self._readers else 0) | (select.EPOLLOUT if fd in self._writers else 0)
        old = self._masks.get(fd, 0)
        if mask == old:
            return
        if not mask:
            del self._masks[fd]
            self._dropped.add(fd)
            try:
                self._epoll.unregister(fd)
            except OSError:  # already closed: the kernel dropped it with the socket
                pass
        else:
            # Registered or not as our bookkeeping says; the other way if the kernel disagrees (a
            # descriptor closed while watched leaves the set with it, and its number can come back).
            first, second = (self._epoll.modify, self._epoll.register) if old else (self._epoll.register, self._epoll.modify)
            try:
                first(fd, mask)
            except (FileNotFoundError, FileExistsError):
                second(fd, mask)
            self._masks[fd] = mask

    def _dispatch(self) -> None:
        try:
            events = self._epoll.poll(0)
        except InterruptedError:
            return
        dropped = self._dropped
        dropped.clear()
        readers, writers = self._readers, self._writers
        for fd, mask in events:
            if fd in dropped:
                continue
            if mask & _READ_EVENTS:
                callback = readers.get(fd)
                if callback is not None:
                    self._run(callback)
                    if fd in dropped:
                        continue
            if mask & _WRITE_EVENTS:
                callback = writers.get(fd)
                if callback is not None:
                    self._run(callback)
        dropped.clear()

    def _run(self, callback: Callable[[], None]) -> None:
        try:
            callback()
        except Exception as exc:  # noqa: BLE001 - as the loop treats a failing callback: reported, the others run
            loop = self._loop()
            if loop is not None:
                loop.call_exception_handler({"message": "Exception in a probe socket's callback", "exception": exc})


_READ_EVENTS = select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP
_WRITE_EVENTS = select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP
# One poller per loop, gone with its loop (and its epoll descriptor with it).
_POLLERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Poller] = weakref.WeakKeyDictionary()


def _poller_of(loop: asyncio.AbstractEventLoop) -> _Poller:
    poller = _POLLERS.get(loop)
    if poller is None:
        poller = _POLLERS[loop] = _Poller(loop)
    return poller


async def wrap(sock: socket.socket) -> Connection:
    """A Connection on a connected socket, which it now owns (closed on failure)."""
    loop = asyncio.get_running_loop()
    conn = Connection(loop)
    try:
        conn.connection_made(_SocketTransport(loop, sock, conn))  # type: ignore[arg-type]
    except BaseException:
        sock.close()
        raise
    return conn


async def connect(ip: str, port: int, family: int) -> Connection:
    """TCP connect to (ip, port) and wrap the socket; the caller times the whole call."""
    return await wrap((await open_socket(ip, port, family))[0])
