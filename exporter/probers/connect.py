"""The steps every connection-oriented prober shares: resolve, connect, TLS — each one named phase."""
from __future__ import annotations

import dataclasses
import socket
import ssl

from .. import filerefs
from ..failures import ProbeFailure
from ..net import connection, resolve
from ..net.tls import TLSConfig, client_context, tls_info_of
from ..result import Peer
from ..schema import join_host_port, split_host_port
from .base import ProbeContext

_FAMILY_NAMES: dict[int, str] = {socket.AF_INET: "ipv4", socket.AF_INET6: "ipv6"}


def target_host_port(target: str, default_port: int | None = None) -> tuple[str, int]:
    """(host, port) of a ``host:port`` target, or ProbeFailure("invalid_target") saying what is wrong."""
    try:
        host, port = split_host_port(target, default_port)
        resolve.check_host(host)
        return host, port
    except ValueError as exc:
        raise ProbeFailure("invalid_target", f"target {exc}") from None


def check_source_family(source: str | None, family: int) -> None:
    """A source_ip_address must be of the family of the address it sends to."""
    if source is not None and (":" in source) != (family == socket.AF_INET6):
        raise ProbeFailure("invalid_target", f"source_ip_address {source} is not of the target address's family "
                           f"({'IPv6' if family == socket.AF_INET6 else 'IPv4'})", phase="probe")


async def _address(ctx: ProbeContext, host: str, preferred_ip_protocol: str, fallback: bool) -> tuple[str, int]:
    """The dns phase, for a name."""
    cfg = ctx.resolver
    families = resolve.families(preferred_ip_protocol, fallback)
    ip, family = await ctx.phase("dns", resolve.resolve(host, families, cfg.nameservers, cfg.timeout,
                                                        max(ctx.remaining(), 0.001)))
    ctx.log("resolved %s to %s", host, ip)
    return ip, family


async def peer_address(ctx: ProbeContext, host: str, port: int, preferred_ip_protocol: str, fallback: bool) -> tuple[str, int, int]:
    """(ip, family, port) to send to: the dns phase (absent for an IP literal), the guard's checks, ctx.peer set.

    For probers that open sockets of their own kind (UDP for dns, ICMP).
    """
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
    return ip, family, port


async def _connect(ctx: ProbeContext, host: str, port: int, preferred_ip_protocol: str, fallback: bool,
                   source: str | None = None, *, peer: bool = True, data: bool = True) -> socket.socket:
    """dns (absent for an IP literal: nothing to await) and connect phases on a bare socket.

    ``peer=False`` (a proxy): the connection is not the target's, ctx.peer stays as it is.
    """
    saved = ctx.peer
    ip, family, port = await peer_address(ctx, host, port, preferred_ip_protocol, fallback)
    if not peer:
        ctx.peer = saved
    check_source_family(source, family)
    pacer = ctx.pacer
    if pacer is not None and not pacer.try_take():
        await ctx.wait_for_token(pacer)
    ctx.log("connecting to %s", join_host_port(ip, port))
    sock, info = await ctx.phase("connect", connection.open_socket(ip, port, family, source, data=data))
    ctx.tcp = tcp = connection.tcp_info_of(sock, info)
    # The kernel's RTT of the SYN / SYN-ACK exchange, untouched by how late the loop resumed us;
    # after a retransmitted SYN it measures one attempt, not the connect: the wall clock stays.
    if tcp is not None and not tcp.retransmits:
        ctx.kernel_duration(tcp.rtt_seconds)
    ctx.log("connected to %s", join_host_port(ip, port))
    return sock


async def open_connection(ctx: ProbeContext, host: str, port: int, preferred_ip_protocol: str,
                          ip_protocol_fallback: bool, source: str | None = None, *, peer: bool = True) -> connection.Connection:
    """dns + connect phases; ctx.peer (unless ``peer=False``: a proxy) and ctx.tcp filled; ``source``: the local address to bind first."""
    return await connection.wrap(await _connect(ctx, host, port, preferred_ip_protocol, ip_protocol_fallback, source, peer=peer))


async def connect_only(ctx: ProbeContext, host: str, port: int, preferred_ip_protocol: str, ip_protocol_fallback: bool,
                       *, source: str | None = None) -> None:
    """dns + connect phases on a bare socket, closed at once: a plain tcp_connect needs no transport (and,
    carrying nothing, neither TCP_NODELAY nor receive timestamps)."""
    (await _connect(ctx, host, port, preferred_ip_protocol, ip_protocol_fallback, source, data=False)).close()


async def start_tls(ctx: ProbeContext, conn: connection.Connection, host: str, cfg: TLSConfig,
                    alpn: tuple[str, ...] = ()) -> None:
    """The tls phase on an established connection. A failed verification still reports the chain (blackbox #1119)."""
    server_name = cfg.server_name or host
    try:
        sslctx = await tls_context(cfg, alpn)
        ctx.tls = await ctx.phase("tls", conn.start_tls(sslctx, server_name))
        ctx.kernel_end(conn.arrival_ns())  # the server's last handshake flight
    except ssl.SSLCertVerificationError as exc:
        ctx.tls = tls_info_of(exc)
        raise
    ctx.log(f"TLS established: {ctx.tls.version} {ctx.tls.cipher}" + (f", ALPN {ctx.tls.alpn}" if ctx.tls.alpn else ""))


async def tls_context(cfg: TLSConfig, alpn: tuple[str, ...] = ()) -> ssl.SSLContext:
    """The client context for ``cfg``, its CA, certificate and key files read now, as blackbox reads
    them when a probe uses them: a missing or broken file fails this probe (config_file_missing),
    not the config. A prober calls it before connecting, so a probe that cannot use its files sends nothing."""
    if cfg.server_name is not None:
        # The name is the handshake's, not the context's: one context for every name
        # (a /probe?hostname= of its own must not build, and evict, a context per request).
        cfg = dataclasses.replace(cfg, server_name=None)
    if not (cfg.ca_file or cfg.cert_file or cfg.key_file):
        return client_context(cfg, alpn)
    ca = await filerefs.read(cfg.ca_file, "tls_config.ca_file") if cfg.ca_file else None
    pair = None
    if cfg.cert_file and cfg.key_file:
        pair = (await filerefs.read(cfg.cert_file, "tls_config.cert_file"),
                await filerefs.read(cfg.key_file, "tls_config.key_file"))
    try:
        return client_context(cfg, alpn, ca, pair)
    except (ssl.SSLError, OSError, ValueError) as exc:
        # Not PEM, a key that does not match its certificate, a file gone since it was read.
        files = ", ".join(f"{k} {v}" for k, v in (("ca_file", cfg.ca_file), ("cert_file", cfg.cert_file),
                                                  ("key_file", cfg.key_file)) if v)
        raise ProbeFailure("config_file_missing", f"tls_config ({files}) cannot be used: {exc}", phase="probe") from None
