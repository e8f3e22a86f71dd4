"""The steps every connection-oriented prober shares: resolve, connect, TLS — each one named phase."""
from __future__ import annotations

import socket
import ssl

from ..net import connection, resolve
from ..net.tls import TLSConfig, client_context, tls_info_of
from ..result import Peer
from ..schema import join_host_port
from .base import ProbeContext

_FAMILY_NAMES: dict[int, str] = {socket.AF_INET: "ipv4", socket.AF_INET6: "ipv6"}


async def _address(ctx: ProbeContext, host: str, preferred_ip_protocol: str, fallback: bool) -> tuple[str, int]:
    """The dns phase, for a name."""
    cfg = ctx.resolver
    families = resolve.families(preferred_ip_protocol, fallback)
    ip, family = await ctx.phase("dns", resolve.resolve(host, families, cfg.nameservers, cfg.timeout,
                                                        max(ctx.remaining(), 0.001)))
    ctx.log("resolved %s to %s", host, ip)
    return ip, family


async def _connect(ctx: ProbeContext, host: str, port: int, preferred_ip_protocol: str, fallback: bool) -> socket.socket:
    """dns (absent for an IP literal: nothing to await) and connect phases on a bare socket."""
    if ctx.resolver.overrides:
        to = ctx.resolver.connect_address(host, port)
        if to != (host, port):
            ctx.log("connecting to %s instead of %s (--resolve / --connect-to)", join_host_port(*to), join_host_port(host, port))
            host, port = to
    guard = ctx.guard
    if guard is not None:
        guard.check_name(host, port)
    known = resolve.literal(host)
    ip, family = known if known is not None else await _address(ctx, host, preferred_ip_protocol, fallback)
    if guard is not None:
        # The address connected to, whatever the target's spelling: every hop, every address tried.
        guard.check_address(host, ip, port)
    # Known even when the connect then fails: blackbox sets probe_ip_protocol /
    # probe_ip_addr_hash right after resolution too.
    ctx.peer = Peer(ip=ip, family=_FAMILY_NAMES[family], port=port)
    pacer = ctx.pacer
    if pacer is not None and not pacer.try_take():
        await ctx.wait_for_token(pacer)
    ctx.log("connecting to %s", join_host_port(ip, port))
    sock = await ctx.phase("connect", connection.open_socket(ip, port, family))
    ctx.tcp = tcp = connection.tcp_info_of(sock)
    # The kernel's RTT of the SYN / SYN-ACK exchange, untouched by how late the loop resumed us;
    # after a retransmitted SYN it measures one attempt, not the connect: the wall clock stays.
    if tcp is not None and not tcp.retransmits:
        ctx.kernel_duration(tcp.rtt_seconds)
    ctx.log("connected to %s", join_host_port(ip, port))
    return sock


async def open_connection(ctx: ProbeContext, host: str, port: int, preferred_ip_protocol: str,
                          ip_protocol_fallback: bool) -> connection.Connection:
    """dns + connect phases; ctx.peer and ctx.tcp filled."""
    return await connection.wrap(await _connect(ctx, host, port, preferred_ip_protocol, ip_protocol_fallback))


async def connect_only(ctx: ProbeContext, host: str, port: int, preferred_ip_protocol: str, ip_protocol_fallback: bool) -> None:
    """dns + connect phases on a bare socket, closed at once: a plain tcp_connect needs no transport."""
    (await _connect(ctx, host, port, preferred_ip_protocol, ip_protocol_fallback)).close()


async def start_tls(ctx: ProbeContext, conn: connection.Connection, host: str, cfg: TLSConfig,
                    alpn: tuple[str, ...] = ()) -> None:
    """The tls phase on an established connection. A failed verification still reports the chain (blackbox #1119)."""
    server_name = cfg.server_name or host
    try:
        ctx.tls = await ctx.phase("tls", conn.start_tls(client_context(cfg, alpn), server_name))
        ctx.kernel_end(conn.arrival_ns())  # the server's last handshake flight
    except ssl.SSLCertVerificationError as exc:
        ctx.tls = tls_info_of(exc)
        raise
    ctx.log(f"TLS established: {ctx.tls.version} {ctx.tls.cipher}" + (f", ALPN {ctx.tls.alpn}" if ctx.tls.alpn else ""))
