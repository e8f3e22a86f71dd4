"""exporter.net: our own connection (plain and TLS over MemoryBIO) against real loopback peers.

Every test runs on the stdlib loop and on uvloop: only the plain transport comes
from the loop, TLS is ours, and both must behave the same.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import socket
import ssl
import struct
import subprocess
import sys
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import dns.exception
import dns.resolver
import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from exporter.certs import CertFactory, Issued, server_context
from exporter.net import connection, resolve
from exporter.net.connection import STREAM_LIMIT, Connection, connect
from exporter.net.tls import TLSConfig, client_context, tls_info_of
from exporter.result import TCPInfo

from peers import DNSServer  # tests/ is on sys.path under pytest's default import mode

LOCALHOST = "127.0.0.1"
T = 30.0  # bound on one test's coroutine; nothing here should come near it

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Awaitable[Any]], Any]:
    factory = asyncio.new_event_loop if request.param == "asyncio" else uvloop.new_event_loop

    def runner(coro: Awaitable[Any]) -> Any:
        async def bounded() -> Any:
            async with asyncio.timeout(T):
                return await coro

        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(bounded())

    return runner


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Issued]:
    f = CertFactory(tmp_path)
    root = f.ca()
    inter = f.ca("connhealth test intermediate", issuer=root)
    now = datetime.now(timezone.utc)
    return {
        "root": root,
        "inter": inter,
        "leaf": f.leaf(inter),
        "expired": f.leaf(root, not_after=now - timedelta(days=1)),
        "future": f.leaf(root, not_before=now + timedelta(days=2)),
        "self_signed": f.leaf(None),
        "no_chain": f.leaf(inter, include_chain=False),
        "wrong_name": f.leaf(root, sans=("other.test",)),
    }


def _x509(issued: Issued) -> x509.Certificate:
    return x509.load_pem_x509_certificate(issued.cert_pem)


def _trusting(ca: Issued, alpn: tuple[str, ...] = ()) -> ssl.SSLContext:
    return client_context(TLSConfig(ca_file=ca.cert_file), alpn)


@contextlib.asynccontextmanager
async def serve(handler: Handler, ssl_ctx: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, LOCALHOST, 0, ssl=ssl_ctx, limit=STREAM_LIMIT)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def _echo_lines(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while line := await reader.readline():
            writer.write(line)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def _open(port: int) -> Connection:
    return await connect(LOCALHOST, port, socket.AF_INET)


class ThreadServer:
    """One connection handled by a blocking function in a thread: for what asyncio
    servers cannot do (RST, FIN without close_notify, a sender that really blocks)."""

    def __init__(self, handle: Callable[[socket.socket], None]) -> None:
        self.listener = socket.create_server((LOCALHOST, 0))
        self.listener.settimeout(T)
        self.port: int = self.listener.getsockname()[1]
        self.handle = handle
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(T)
            with contextlib.suppress(OSError):
                self.handle(conn)

    async def __aenter__(self) -> ThreadServer:
        self.thread.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.listener.close()
        # Off the loop: the client's close() only takes effect on a later loop iteration.
        await asyncio.to_thread(self.thread.join, T)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("client went away")
        data += chunk
    return data


def _read_client_hello(sock: socket.socket) -> bytes:
    head = _recv_exactly(sock, 5)
    assert head[0] == 0x16, head  # a TLS handshake record
    return head + _recv_exactly(sock, int.from_bytes(head[3:5], "big"))


def _wait_closed_by_client(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while socket.socket.recv(sock, 65536):
            pass


# --- plain ------------------------------------------------------------------------


def test_plain_reads_keep_stream_reader_semantics_up_to_eof(run: Any) -> None:
    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"line1\nline2\nabcdef")
        await writer.drain()
        await reader.read(1)  # wait for the client's go
        writer.close()

    async def main() -> None:
        async with serve(server) as port:
            conn = await _open(port)
            try:
                assert conn.peer == (LOCALHOST, port)
                info = conn.tcp_info()
                assert isinstance(info, TCPInfo) and info.retransmits == 0
                assert await conn.readuntil(b"\n") == b"line1\n"
                assert await conn.readexactly(6) == b"line2\n"
                assert await conn.read(3) == b"abc"
                assert not conn.is_closing()
                conn.write(b"!")
                await conn.drain()
                assert await conn.readexactly(3) == b"def"
                assert await conn.read(100) == b""
                assert conn.at_eof() and conn.is_closing()
                with pytest.raises(asyncio.IncompleteReadError) as e:
                    await conn.readuntil(b"\n")
                assert e.value.partial == b""
            finally:
                conn.close()

    run(main())


def test_the_poller_is_level_triggered_and_skips_a_dropped_descriptors_stale_event(run: Any) -> None:
    """The probes' sockets are watched through one epoll set of ours (connection._Poller), with
    add_reader's semantics: a socket left readable is reported again on the next turn, and when a
    callback closes a socket and a new one gets its number during the same dispatch, the closed
    one's event does not reach the new socket's callback."""
    async def main() -> tuple[list[str], int]:
        loop = asyncio.get_running_loop()
        poller = connection._poller_of(loop)
        assert connection._poller_of(loop) is poller  # one per loop
        a, b = socket.socketpair()
        c, d = socket.socketpair()
        calls: list[str] = []
        got_a = asyncio.Event()
        reused: list[socket.socket] = []

        def on_a() -> None:
            calls.append("a")
            if calls.count("a") == 2:  # reported again: not read, still readable
                got_a.set()

        def on_c() -> None:
            calls.append("c")
            # Close c and open a socket that takes its number, while c's event may still be pending.
            poller.remove_reader(c.fileno())
            number = c.fileno()
            c.close()
            x, y = socket.socketpair()
            reused.extend((x, y))
            if number in (x.fileno(), y.fileno()):
                poller.add_reader(number, lambda: calls.append("stale"))

        poller.add_reader(a.fileno(), on_a)
        poller.add_reader(c.fileno(), on_c)
        b.send(b"1")
        d.send(b"1")
        await asyncio.wait_for(got_a.wait(), T)
        for _ in range(3):  # a few more turns: the new socket is not readable, nothing may call it
            await asyncio.sleep(0)
        poller.remove_reader(a.fileno())
        for sock in (a, b, d, *reused):
            poller.remove_reader(sock.fileno())
            sock.close()
        return calls, len(poller._masks)

    calls, left = run(main())
    assert calls.count("c") == 1 and "stale" not in calls and calls.count("a") >= 2
    assert left == 0


def test_the_poller_recovers_a_descriptor_closed_while_watched(run: Any) -> None:
    """A socket closed while still watched leaves the epoll set with it; the next socket with its number
    is watched all the same (the poller's bookkeeping gives way to the kernel's)."""
    async def main() -> bytes:
        poller = connection._poller_of(asyncio.get_running_loop())
        a, b = socket.socketpair()
        number = a.fileno()
        poller.add_reader(number, lambda: None)
        a.close()  # not removed first
        b.close()
        c, d = socket.socketpair()
        try:
            reused = c if c.fileno() == number else d if d.fileno() == number else None
            assert reused is not None  # the lowest free number comes back
            other = d if reused is c else c
            got = asyncio.get_running_loop().create_future()
            # The bookkeeping still has the closed socket watched for reading: a change of what the
            # number is watched for tries epoll's modify, which the kernel refuses, then registers it.
            poller.add_writer(number, lambda: None)
            poller.add_reader(number, lambda: got.done() or got.set_result(reused.recv(10)))
            other.send(b"hello")
            data = await asyncio.wait_for(got, T)
            poller.remove_writer(number)
            poller.remove_reader(number)
            return data
        finally:
            c.close()
            d.close()

    assert run(main()) == b"hello"


def test_a_poller_and_its_epoll_set_go_with_their_loop(run: Any) -> None:
    async def main() -> weakref.ref[Any]:
        return weakref.ref(connection._poller_of(asyncio.get_running_loop()))

    poller = run(main())
    gc.collect()
    assert poller() is None  # the loop is gone, and with it its poller (whose epoll set closes with it)


def test_receive_timestamps_only_where_read_and_kept_switched_on_for_the_process(run: Any) -> None:
    """A socket that will carry data asks for kernel receive timestamps (and TCP_NODELAY), a bare connect's
    for neither; one socket held for the process keeps the host's timestamping switch on, so probes'
    sockets do not flip it. Both come non-blocking, with the TCP_INFO read when the connect was seen over."""
    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    def options(sock: socket.socket) -> tuple[int, int, bool]:
        return (sock.getsockopt(socket.SOL_SOCKET, connection._SO_TIMESTAMPNS),
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), sock.getblocking())

    async def main() -> tuple[tuple[int, int, bool], tuple[int, int, bool], list[bytes]]:
        async with serve(server) as port:
            with_ts, info1 = await connection.open_socket(LOCALHOST, port, socket.AF_INET)
            without, info2 = await connection.open_socket(LOCALHOST, port, socket.AF_INET, data=False)
            try:
                return options(with_ts), options(without), [info1[:1], info2[:1]]
            finally:
                with_ts.close()
                without.close()

    # On loopback the handshake is over when connect returns: TCP_INFO then said ESTABLISHED (1).
    assert run(main()) == ((1, 1, False), (0, 0, False), [b"\x01", b"\x01"])
    [keeper] = connection._TIMESTAMP_KEEPER
    assert keeper.fileno() >= 0 and keeper.getsockopt(socket.SOL_SOCKET, connection._SO_TIMESTAMPNS) == 1


def test_plain_incomplete_reads_at_eof_carry_the_partial_data(run: Any) -> None:
    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"no newline")
        writer.close()

    async def main() -> None:
        async with serve(server) as port:
            conn = await _open(port)
            with pytest.raises(asyncio.IncompleteReadError) as e:
                await conn.readexactly(100)
            assert (e.value.partial, e.value.expected) == (b"no newline", 100)
            conn.close()
            conn = await _open(port)
            with pytest.raises(asyncio.IncompleteReadError) as e:
                await conn.readuntil(b"\n")
            assert (e.value.partial, e.value.expected) == (b"no newline", None)
            conn.close()

    run(main())


def test_plain_readuntil_limit_overrun(run: Any) -> None:
    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"x" * 50 + b"\n" + b"y" * 50)
        await writer.drain()
        await reader.read(1)
        writer.close()

    async def main() -> None:
        async with serve(server) as port:
            conn = await _open(port)
            with pytest.raises(asyncio.LimitOverrunError) as e:
                await conn.readuntil(b"\n", limit=10)  # found, but past the limit
            assert e.value.consumed == 50
            assert await conn.readuntil(b"\n") == b"x" * 50 + b"\n"  # the data stays buffered
            with pytest.raises(asyncio.LimitOverrunError):
                await conn.readuntil(b"\n", limit=40)  # 50 bytes without a newline
            conn.close()

    run(main())


def test_plain_reset_raises_the_kernels_error_on_read_and_drain(run: Any) -> None:
    def reset(sock: socket.socket) -> None:
        _recv_exactly(sock, 1)  # the client is connected: the RST cannot hit its connect()
        sock.sendall(b"partial")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    async def main() -> None:
        async with ThreadServer(reset) as srv:
            conn = await _open(srv.port)
            conn.write(b"!")
            with pytest.raises(ConnectionResetError) as e:
                while await conn.read(100):
                    pass
            assert e.value.errno == errno.ECONNRESET
            with pytest.raises(ConnectionResetError):
                await conn.drain()
            assert conn.is_closing()
            conn.close()

    run(main())


# --- TLS: handshakes that succeed ------------------------------------------------------


def test_tls_handshake_reports_version_cipher_alpn_and_chain(run: Any, pki: dict[str, Issued]) -> None:
    server_ctx = server_context(pki["leaf"])
    server_ctx.set_alpn_protocols(["http/1.1"])

    async def main() -> None:
        async with serve(_echo_lines, server_ctx) as port:
            conn = await _open(port)
            try:
                info = await conn.start_tls(_trusting(pki["root"], ("h2", "http/1.1")), "localhost")
                assert info.version == "TLS 1.3" and info.cipher
                assert info.alpn == conn.alpn == "http/1.1"
                assert info.server_name == "localhost"
                assert info.verification == "verified" and info.verification_error is None
                leaf, inter, root = (_x509(pki[k]) for k in ("leaf", "inter", "root"))
                assert [c.subject for c in info.chain] == [leaf.subject.rfc4514_string(), inter.subject.rfc4514_string()]
                assert info.chain[0].not_after == leaf.not_valid_after_utc.timestamp()
                # the verified chain includes the trust anchor
                assert info.verified_chain_expiry == min(c.not_valid_after_utc.timestamp() for c in (leaf, inter, root))
                assert (info.session_offered, info.session_reused) == (False, False)
                assert info.server_hello_seconds is not None and info.server_hello_seconds > 0
                assert conn.tls is not None and conn.tls.version() == "TLSv1.3"
                # two exchanges on one connection
                for request in (b"first\n", b"second\n"):
                    conn.write(request)
                    await conn.drain()
                    assert await conn.readuntil(b"\n") == request
            finally:
                conn.close()

    run(main())


def test_tls_to_an_ip_sends_no_server_name_and_verifies_the_ip_san(run: Any, pki: dict[str, Issued]) -> None:
    async def main() -> None:
        async with serve(_echo_lines, server_context(pki["leaf"])) as port:
            conn = await _open(port)
            info = await conn.start_tls(_trusting(pki["root"]), LOCALHOST)
            assert (info.server_name, info.verification) == (None, "verified")
            conn.close()

    run(main())


def test_tls_insecure_skip_verify_reports_skipped_with_the_chain(run: Any, pki: dict[str, Issued]) -> None:
    async def main() -> None:
        async with serve(_echo_lines, server_context(pki["self_signed"])) as port:
            conn = await _open(port)
            info = await conn.start_tls(client_context(TLSConfig(insecure_skip_verify=True)), "localhost")
            assert info.verification == "skipped" and info.verified_chain_expiry is None
            assert [c.fingerprint_sha256 for c in info.chain] == [
                _x509(pki["self_signed"]).fingerprint(hashes.SHA256()).hex()
            ]
            conn.close()

    run(main())


def test_tls_server_speaking_first_is_read_after_the_handshake(run: Any, pki: dict[str, Issued]) -> None:
    async def banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 hello\r\n")
        await _echo_lines(reader, writer)

    async def main() -> None:
        async with serve(banner, server_context(pki["leaf"])) as port:
            conn = await _open(port)
            await conn.start_tls(_trusting(pki["root"]), "localhost")
            assert await conn.readuntil(b"\r\n") == b"220 hello\r\n"
            conn.write(b"x" * 100_000 + b"\n")  # many records each way
            assert await conn.readexactly(100_001) == b"x" * 100_000 + b"\n"
            conn.close()

    run(main())


def test_tls_close_notify_is_eof(run: Any, pki: dict[str, Issued]) -> None:
    async def bye(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"bye")
        await writer.drain()
        writer.close()  # asyncio's TLS transport sends close_notify

    async def main() -> None:
        async with serve(bye, server_context(pki["leaf"])) as port:
            conn = await _open(port)
            await conn.start_tls(_trusting(pki["root"]), "localhost")
            with pytest.raises(asyncio.IncompleteReadError) as e:
                await conn.readexactly(10)
            assert e.value.partial == b"bye"
            assert await conn.read(10) == b""
            assert conn.at_eof() and conn.is_closing()
            conn.close()

    run(main())


def test_tls_fin_without_close_notify_after_the_handshake_is_eof(run: Any, pki: dict[str, Issued]) -> None:
    ctx = server_context(pki["leaf"])

    def truncate(sock: socket.socket) -> None:
        tls = ctx.wrap_socket(sock, server_side=True)
        tls.sendall(b"bye\n")
        tls.shutdown(socket.SHUT_WR)  # SSLSocket.shutdown: a bare FIN, no close_notify
        _wait_closed_by_client(tls)

    async def main() -> None:
        async with ThreadServer(truncate) as srv:
            conn = await _open(srv.port)
            await conn.start_tls(_trusting(pki["root"]), "localhost")
            assert await conn.readuntil(b"\n") == b"bye\n"
            assert await conn.read(10) == b""
            assert conn.at_eof()
            conn.close()

    run(main())


def test_tls_idle_connection_closed_by_the_server_is_closing_without_a_read(run: Any, pki: dict[str, Issued]) -> None:
    async def idle_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.close()

    async def main() -> None:
        async with serve(idle_close, server_context(pki["leaf"])) as port:
            conn = await _open(port)
            await conn.start_tls(_trusting(pki["root"]), "localhost")
            assert not conn.is_closing()
            conn.write(b"done\n")
            while not conn.is_closing():  # what a keep-alive pool checks before reuse
                await asyncio.sleep(0.01)
            assert await conn.read(1) == b""
            conn.close()

    run(main())


def test_tls_handshake_cancelled_is_reraised_and_leaves_the_connection_unusable(run: Any) -> None:
    async def main() -> None:
        got_hello = asyncio.Event()

        async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1)
            got_hello.set()
            await reader.read()  # never answers

        async with serve(mute) as port:
            conn = await _open(port)
            task = asyncio.ensure_future(conn.start_tls(client_context(TLSConfig(insecure_skip_verify=True)), "localhost"))
            await got_hello.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert conn.is_closing() and conn.tls is None
            with pytest.raises(RuntimeError):
                conn.write(b"x")
            conn.close()

    run(main())


# --- TLS: verification failures keep OpenSSL's error and report the chain -------------------


@pytest.mark.parametrize(
    ("cert", "server_hostname", "code"),
    [
        ("expired", "localhost", 10),  # X509_V_ERR_CERT_HAS_EXPIRED
        ("future", "localhost", 9),  # X509_V_ERR_CERT_NOT_YET_VALID
        ("self_signed", "localhost", 18),  # X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
        ("no_chain", "localhost", 20),  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
        ("wrong_name", "localhost", 62),  # X509_V_ERR_HOSTNAME_MISMATCH
        ("wrong_name", LOCALHOST, 64),  # X509_V_ERR_IP_ADDRESS_MISMATCH
    ],
)
def test_tls_verification_failure_keeps_the_code_and_captures_the_chain(
    run: Any, pki: dict[str, Issued], cert: str, server_hostname: str, code: int
) -> None:
    issued = pki[cert]

    async def main() -> None:
        async with serve(_echo_lines, server_context(issued)) as port:
            conn = await _open(port)
            with pytest.raises(ssl.SSLCertVerificationError) as e:
                await conn.start_tls(_trusting(pki["root"]), server_hostname)
            assert e.value.verify_code == code
            info = tls_info_of(e.value)
            assert info is not None and info is getattr(e.value, "tls_info")
            assert (info.version, info.cipher, info.verification) == (None, None, "failed")
            assert info.verification_error == e.value.verify_message
            assert info.verified_chain_expiry is None
            assert info.chain[0].not_after == issued.not_valid_after.timestamp()
            assert info.earliest_expiry == issued.not_valid_after.timestamp()
            assert info.server_hello_seconds is not None
            # the connection is dead: reads give the handshake's error again
            assert conn.is_closing() and conn.tls is None
            with pytest.raises(ssl.SSLCertVerificationError):
                await conn.read(1)
            conn.close()

    run(main())


# --- TLS: the server hangs up during the handshake ------------------------------------


def test_tls_fin_during_the_handshake_is_ssl_eof_error(run: Any) -> None:
    def hang_up(sock: socket.socket) -> None:
        _read_client_hello(sock)  # everything read: close() sends a FIN, not a RST
        sock.shutdown(socket.SHUT_WR)
        _wait_closed_by_client(sock)

    async def main() -> None:
        async with ThreadServer(hang_up) as srv:
            conn = await _open(srv.port)
            with pytest.raises(ssl.SSLEOFError):
                await conn.start_tls(client_context(TLSConfig(insecure_skip_verify=True)), "localhost")
            conn.close()

    run(main())


def test_tls_reset_during_the_handshake_is_connection_reset_with_errno(run: Any) -> None:
    def reset(sock: socket.socket) -> None:
        _read_client_hello(sock)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    async def main() -> None:
        async with ThreadServer(reset) as srv:
            conn = await _open(srv.port)
            with pytest.raises(ConnectionResetError) as e:
                await conn.start_tls(client_context(TLSConfig(insecure_skip_verify=True)), "localhost")
            assert e.value.errno == errno.ECONNRESET
            conn.close()

    run(main())


# --- TLS: session resumption ------------------------------------------------------------


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_session_offered_to_a_new_connection_is_resumed(
    run: Any, pki: dict[str, Issued], version: ssl.TLSVersion
) -> None:
    server_ctx = server_context(pki["leaf"], max_version=version)
    client_ctx = _trusting(pki["root"])

    async def exchange(conn: Connection) -> None:
        conn.write(b"ping\n")
        assert await conn.readuntil(b"\n") == b"ping\n"

    async def main() -> None:
        async with serve(_echo_lines, server_ctx) as port:
            first = await _open(port)
            info1 = await first.start_tls(client_ctx, "localhost")
            if version == ssl.TLSVersion.TLSv1_3:
                # the tickets come one round trip after the handshake, with the first response
                assert first.session is None
            await exchange(first)
            session = first.session
            assert session is not None
            first.close()

            second = await _open(port)
            info2 = await second.start_tls(client_ctx, "localhost", session=session)
            assert (info2.session_offered, info2.session_reused) == (True, True)
            assert info2.version == info1.version
            # a resumed handshake has no Certificate message; the chain is the one first verified
            assert info2.chain == info1.chain and len(info2.chain) == 2
            assert info2.verified_chain_expiry == info1.verified_chain_expiry
            await exchange(second)
            second.close()

            third = await _open(port)
            info3 = await third.start_tls(client_ctx, "localhost")
            assert (info3.session_offered, info3.session_reused) == (False, False)
            third.close()

    run(main())


def test_tls_session_of_another_context_is_not_offered(run: Any, pki: dict[str, Issued]) -> None:
    async def main() -> None:
        async with serve(_echo_lines, server_context(pki["leaf"], max_version=ssl.TLSVersion.TLSv1_2)) as port:
            first = await _open(port)
            await first.start_tls(_trusting(pki["root"]), "localhost")
            session = first.session
            first.close()
            other_ctx = ssl.create_default_context(cafile=pki["root"].cert_file)
            second = await _open(port)
            info = await second.start_tls(other_ctx, "localhost", session=session)
            assert (info.session_offered, info.session_reused, info.verification) == (False, False, "verified")
            second.close()

    run(main())


# --- streaming with bounded memory -----------------------------------------------------------


def _rss() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


STREAM_TOTAL = 50 * 2**20


def test_tls_50mb_stream_read_incrementally_with_bounded_memory(run: Any, pki: dict[str, Issued]) -> None:
    ctx = server_context(pki["leaf"])
    sent = [0]

    def stream(sock: socket.socket) -> None:
        tls = ctx.wrap_socket(sock, server_side=True)
        chunk = bytes(range(256)) * 4096  # 1 MiB
        while sent[0] < STREAM_TOTAL:
            tls.sendall(chunk)
            sent[0] += len(chunk)
        tls.shutdown(socket.SHUT_WR)
        _wait_closed_by_client(tls)

    async def main() -> None:
        async with ThreadServer(stream) as srv:
            conn = await _open(srv.port)
            await conn.start_tls(_trusting(pki["root"]), "localhost")
            received = len(await conn.read(65536))
            base = _rss()
            # Read nothing until the sender is stuck: only flow control can stop it.
            last, still = -1, 0
            while still < 10:
                await asyncio.sleep(0.05)
                still = still + 1 if sent[0] == last else 0
                last = sent[0]
            assert sent[0] < STREAM_TOTAL, "the sender was never stopped: the receive buffer is unbounded"
            assert _rss() - base < 16 * 2**20
            peak, reads = 0, 0
            while chunk := await conn.read(65536):
                assert len(chunk) <= 65536
                received += len(chunk)
                reads += 1
                if reads % 64 == 0:
                    peak = max(peak, _rss() - base)
            assert received == STREAM_TOTAL
            assert peak < 16 * 2**20
            conn.close()

    run(main())


def test_large_readexactly_beyond_the_pause_mark_completes(run: Any, pki: dict[str, Issued]) -> None:
    size = 3 * STREAM_LIMIT  # more than the 2 * STREAM_LIMIT that pauses reading

    async def blob(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"z" * size)
        await writer.drain()
        await _echo_lines(reader, writer)

    async def main() -> None:
        async with serve(blob, server_context(pki["leaf"])) as port:
            conn = await _open(port)
            await conn.start_tls(_trusting(pki["root"]), "localhost")
            assert await conn.readexactly(size) == b"z" * size
            conn.close()

    run(main())


# --- resolution and layering -------------------------------------------------------------


def test_resolve_ip_literal_and_system_resolver(run: Any) -> None:
    async def main() -> None:
        assert await resolve.resolve("::1", [socket.AF_INET]) == ("::1", socket.AF_INET6)
        assert await resolve.resolve("localhost", [socket.AF_INET]) == ("127.0.0.1", socket.AF_INET)

    run(main())
    assert resolve.families("ip6", True) == [socket.AF_INET6, socket.AF_INET]
    assert resolve.families("ip4", False) == [socket.AF_INET]
    assert resolve.is_ip("10.0.0.1") and not resolve.is_ip("example.test")


def test_resolve_with_nameservers_follows_the_family_order_and_keeps_dnspythons_errors(run: Any) -> None:
    zone = {"both.test": "A:192.0.2.1,AAAA:2001:db8::1", "v6only.test": "AAAA:2001:db8::2", "broken.test": "SERVFAIL",
            "slow.test": "DROP"}

    async def main() -> None:
        async with DNSServer(zone) as srv:
            ns = ((LOCALHOST, srv.port),)
            v6_first = resolve.families("ip6", True)
            assert await resolve.resolve("both.test", v6_first, ns) == ("2001:db8::1", socket.AF_INET6)
            assert await resolve.resolve("both.test", [socket.AF_INET], ns) == ("192.0.2.1", socket.AF_INET)
            assert await resolve.resolve("v6only.test", resolve.families("ip4", True), ns) == ("2001:db8::2", socket.AF_INET6)
            with pytest.raises(dns.resolver.NoAnswer):
                await resolve.resolve("v6only.test", [socket.AF_INET], ns)
            with pytest.raises(dns.resolver.NXDOMAIN):
                await resolve.resolve("missing.test", [socket.AF_INET], ns)
            with pytest.raises(dns.resolver.NoNameservers):
                await resolve.resolve("broken.test", [socket.AF_INET], ns)
            with pytest.raises(dns.exception.Timeout):
                await resolve.resolve("slow.test", [socket.AF_INET], ns, timeout=0.2)

    run(main())


def test_net_imports_no_engine_config_probers_or_failures() -> None:
    # The package __init__ of exporter is not net's business: load net's modules as
    # they would load under an empty exporter package.
    code = (
        "import sys, types\n"
        "pkg = types.ModuleType('exporter'); pkg.__path__ = [sys.argv[1]]; sys.modules['exporter'] = pkg\n"
        "import exporter.net.connection, exporter.net.tls, exporter.net.resolve\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('exporter'))))\n"
    )
    root = Path(__file__).resolve().parent.parent / "exporter"
    out = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, timeout=T, check=True)
    outside = {m for m in out.stdout.split() if m != "exporter.net" and not m.startswith("exporter.net.")}
    assert outside <= {"exporter", "exporter.result", "exporter.schema"}, outside
