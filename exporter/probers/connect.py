"""What every connection-oriented prober shares: resolve, connect, TLS."""
from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

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


@dataclass(slots=True)
class Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    peer: Peer
    tls: bool = False

    def close(self) -> None:
        transport = self.writer.transport
        # abort, not close: a probe never waits for a graceful shutdown.
        transport.abort()


def split_host_port(target: str, default_port: int | None = None) -> tuple[str, int]:
    """'host:port', '[v6]:port', 'v4:port' -> (host, port)."""
    if target.startswith("["):
        host, sep, rest = target[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, sep, port_text = target.rpartition(":")
        if not sep or ":" in host:  # no port, or a bare IPv6 literal
            host, port_text = target, ""
    if not port_text:
        if default_port is None:
            raise ValueError(f"target {target!r} has no port (expected host:port)")
        return host, default_port
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"target {target!r} has an invalid port {port_text!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"target {target!r}: port {port} out of range")
    return host, port


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
    """dns + connect phases; returns plain streams. Closes the socket on failure."""
    sock = await open_socket(ctx, host, port, module)
    try:
        reader, writer = await asyncio.open_connection(sock=sock, limit=2**20)
    except BaseException:
        sock.close()
        raise
    assert ctx.peer is not None
    return Connection(reader, writer, ctx.peer)


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


async def start_tls(ctx: ProbeContext, conn: Connection, host: str, cfg: TLSConfig, alpn: tuple[str, ...] = ()) -> None:
    """The tls phase, on an established connection."""
    sslctx = client_context(cfg, alpn)
    server_name = cfg.server_name or host
    # asyncio's own handshake timeout must never fire before ours does.
    handshake = conn.writer.start_tls(sslctx, server_hostname=server_name, ssl_handshake_timeout=max(ctx.remaining(), 0) + 1)
    await ctx.phase("tls", handshake)
    ssl_object = conn.writer.get_extra_info("ssl_object")
    conn.tls = True
    ctx.tls = describe(ssl_object, server_name if not _is_ip(server_name) else None, verified=not cfg.insecure_skip_verify)
    ctx.log(f"TLS established: {ctx.tls.version} {ctx.tls.cipher}")
