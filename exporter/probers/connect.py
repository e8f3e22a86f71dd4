"""What every connection-oriented prober shares: resolve, connect, TLS."""
from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import ssl
import struct
from typing import TYPE_CHECKING, Any

import dns.asyncresolver
import dns.nameserver
import dns.rdatatype

from ..config import Module, ResolverConfig, TLSConfig
from ..failures import NoAddressError
from ..result import Peer, TCPInfo
from ..tlsinfo import client_context, describe

if TYPE_CHECKING:
    from ..engine import ProbeContext

_FAMILY_NAMES: dict[int, str] = {socket.AF_INET: "ipv4", socket.AF_INET6: "ipv6"}


# What asyncio.open_connection was given: longest line readuntil accepts.
STREAM_LIMIT = 2**20


class Connection(asyncio.Protocol):
    """One probe connection as a plain asyncio.Protocol: a receive buffer plus write/drain.

    Instead of asyncio.open_connection: the StreamReader + StreamReaderProtocol
    + StreamWriter trio costs more to set up and tear down than a loopback HTTP
    exchange (docs/benchmarks.md). The read/drain methods keep
    StreamReader/StreamWriter semantics exactly, exceptions included, so failure
    attribution (failures.classify) sees the same exceptions as before:
    IncompleteReadError at EOF, LimitOverrunError past STREAM_LIMIT, the
    transport's own error once the connection is lost (it wins over buffered
    data, as in StreamReader), ConnectionResetError('Connection lost') from
    drain() after the connection is gone.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport = None  # type: ignore[assignment]  # set by connection_made
        self._buffer = bytearray()
        self._eof = False
        self._exception: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None  # a read waiting for data, EOF or an error
        self._connection_lost = False
        self._over_ssl = False
        self._reading_paused = False
        self._writing_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None

    # --- asyncio.Protocol callbacks -------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._wake()
        # Flow control as StreamReader: stop reading while 2 limits are unread.
        if not self._reading_paused and len(self._buffer) > 2 * STREAM_LIMIT:
            self._transport.pause_reading()
            self._reading_paused = True

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        # As StreamReaderProtocol: keep a plain socket half-open (we may still
        # write); over TLS returning True has no effect but a warning.
        return not self._over_ssl

    def connection_lost(self, exc: Exception | None) -> None:
        self._connection_lost = True
        if exc is None:
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

    # --- the probe's side -------------------------------------------------------
    def write(self, data: bytes) -> None:
        self._transport.write(data)

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

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        """StreamReader.readuntil: up to and including ``separator``."""
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
                if offset > STREAM_LIMIT:
                    raise asyncio.LimitOverrunError(f"no {separator!r} in the first {STREAM_LIMIT} bytes", offset)
            if self._eof:
                chunk = bytes(self._buffer)
                self._buffer.clear()
                raise asyncio.IncompleteReadError(chunk, None)
            await self._wait_for_data()
        if isep > STREAM_LIMIT:
            raise asyncio.LimitOverrunError(f"{separator!r} found after more than {STREAM_LIMIT} bytes", isep)
        return self._take(isep + seplen)

    async def read(self, n: int) -> bytes:
        """StreamReader.read(n), n > 0: what is there (at most n), b'' at EOF."""
        if self._exception is not None:
            raise self._exception
        if not self._buffer and not self._eof:
            await self._wait_for_data()
        return self._take(n)

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

    async def upgrade_tls(self, sslctx: ssl.SSLContext, server_hostname: str, handshake_timeout: float) -> None:
        """StreamWriter.start_tls: TLS on the same transport (connect and tls stay separate phases)."""
        await self.drain()  # as StreamWriter.start_tls: a connection already lost fails here
        self._transport = await self._loop.start_tls(  # type: ignore[assignment]
            self._transport, self, sslctx, server_hostname=server_hostname, ssl_handshake_timeout=handshake_timeout
        )
        self._over_ssl = True

    def get_extra_info(self, name: str) -> Any:
        return self._transport.get_extra_info(name)

    def close(self) -> None:
        # abort, not close: a probe never waits for a graceful shutdown.
        self._transport.abort()

    # --- internals ----------------------------------------------------------------
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
        assert self._waiter is None, "two reads at once on one connection"
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
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        if self._reading_paused and len(self._buffer) <= STREAM_LIMIT:
            self._reading_paused = False
            self._transport.resume_reading()
        return data


@functools.lru_cache(maxsize=1024)  # parsing costs µs on every probe; targets repeat
def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=64)
def _dns_resolver(cfg: ResolverConfig) -> dns.asyncresolver.Resolver:
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [dns.nameserver.Do53Nameserver(host, port) for host, port in cfg.nameservers]
    resolver.retry_servfail = False
    return resolver


async def _resolve_with_nameservers(cfg: ResolverConfig, host: str, families: list[int], budget: float) -> tuple[str, int]:
    resolver = _dns_resolver(cfg)
    lifetime = min(cfg.timeout or budget, budget)
    last_exc: Exception | None = None
    for family in families:
        rdtype = dns.rdatatype.AAAA if family == socket.AF_INET6 else dns.rdatatype.A
        try:
            answer = await resolver.resolve(host.rstrip(".") + ".", rdtype, lifetime=lifetime, search=False)
        except dns.resolver.NoAnswer as exc:
            last_exc = exc
            continue
        return str(answer[0]), family
    assert last_exc is not None
    raise last_exc


async def _resolve_system(host: str, families: list[int]) -> tuple[str, int]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, None, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM)
    for family in families:
        for fam, _type, _proto, _canon, sockaddr in infos:
            if fam == family:
                return str(sockaddr[0]), family
    raise NoAddressError(f"{host} has no {'/'.join(_FAMILY_NAMES[f] for f in families)} address")


def _families(module: Module) -> list[int]:
    preferred = socket.AF_INET6 if module.preferred_ip_protocol == "ip6" else socket.AF_INET
    other = socket.AF_INET if preferred == socket.AF_INET6 else socket.AF_INET6
    return [preferred, other] if module.ip_protocol_fallback else [preferred]


async def resolve(ctx: ProbeContext, host: str, module: Module) -> tuple[str, int]:
    """The dns phase. An IP literal needs no resolution, so the phase stays absent."""
    if _is_ip(host):
        return host, socket.AF_INET6 if ":" in host else socket.AF_INET
    families = _families(module)
    if module.resolver.nameservers:
        coro = _resolve_with_nameservers(module.resolver, host, families, max(ctx.remaining(), 0.001))
    else:
        coro = _resolve_system(host, families)
    ip, family = await ctx.phase("dns", coro)
    ctx.log(f"resolved {host} to {ip}")
    return ip, family


def _tcp_info(sock: socket.socket) -> TCPInfo | None:
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    except (OSError, AttributeError):
        return None
    if len(raw) < 104:
        return None
    # struct tcp_info: 8 one-byte fields, then u32s; tcpi_rtt/rttvar are the
    # 16th/17th u32 (µs), tcpi_total_retrans the 24th.
    u32 = struct.unpack_from("24I", raw, 8)
    return TCPInfo(rtt_seconds=u32[15] / 1e6, rttvar_seconds=u32[16] / 1e6, retransmits=u32[23])


async def connect(ctx: ProbeContext, host: str, port: int, module: Module) -> Connection:
    """dns + connect phases; returns the connection. Closes the socket on failure."""
    sock = await open_socket(ctx, host, port, module)
    loop = asyncio.get_running_loop()
    conn = Connection(loop)
    try:
        await loop.create_connection(lambda: conn, sock=sock)
    except BaseException:
        sock.close()
        raise
    return conn


async def open_socket(ctx: ProbeContext, host: str, port: int, module: Module) -> socket.socket:
    """dns + connect phases on a bare socket (a plain tcp_connect needs no streams)."""
    ip, family = await resolve(ctx, host, module)
    loop = asyncio.get_running_loop()
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ctx.log(f"connecting to {ip}:{port}")
        # The address chosen, known even when the connect fails (blackbox sets
        # probe_ip_protocol / probe_ip_addr_hash right after resolution too).
        ctx.peer = Peer(ip=ip, family=_FAMILY_NAMES[family], port=port)
        await ctx.phase("connect", loop.sock_connect(sock, (ip, port)))
        ctx.tcp = _tcp_info(sock)
    except BaseException:
        sock.close()
        raise
    ctx.log(f"connected to {ip}:{port}")
    return sock


async def start_tls(ctx: ProbeContext, conn: Connection, host: str, cfg: TLSConfig,
                    alpn: tuple[str, ...] = ()) -> None:
    """The tls phase, on an established connection."""
    sslctx = client_context(cfg, alpn)
    server_name = cfg.server_name or host
    # asyncio's own handshake timeout must never fire before ours does.
    handshake = conn.upgrade_tls(sslctx, server_name, max(ctx.remaining(), 0) + 1)
    await ctx.phase("tls", handshake)
    ssl_object = conn.get_extra_info("ssl_object")
    ctx.tls = describe(ssl_object, server_name if not _is_ip(server_name) else None, verified=not cfg.insecure_skip_verify)
    ctx.log(f"TLS established: {ctx.tls.version} {ctx.tls.cipher}")
