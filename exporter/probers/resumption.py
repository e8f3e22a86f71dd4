"""TLS session resumption check (``tls_resumption`` in a tcp or http module): a full handshake, then one that offers its session.

Seed 002: when resumption silently stops working (tickets off behind a new
load balancer, a session cache that is not shared) every connection pays a
full handshake, which doubles the handshake round trips on TLS 1.2 and costs
the server a signature each time. After a successful probe, the check opens
two more connections to the peer the probe used (no new resolution: the
address already passed every check): the first makes a full handshake
(phase ``tls_full``) and keeps its session; for TLS 1.3 that waits for the
tickets the server sends after the handshake (they are processed as they
arrive, see ``Connection.session``). The second offers it (phase
``tls_resumed``) and reports whether the server accepted it. The context is
the probe's own (``client_context`` is cached), as OpenSSL resumes a session
only through the context that made it.
"""
from __future__ import annotations

import asyncio
import socket
import ssl
from time import perf_counter_ns

from ..failures import ProbeFailure, Reason
from ..net import connection
from ..net.tls import TLSConfig
from ..result import TLSResumption
from .base import PhaseSpec, ProbeContext, TLSResumptionConfig
from .connect import tls_context

TLS_FULL = PhaseSpec("tls_full", "TLS full (check)", "tls_resumption: the first handshake of the check, without a session",
                    optional=True)
TLS_RESUMED = PhaseSpec("tls_resumed", "TLS resume (check)", "tls_resumption: the second handshake, offering the first one's session",
                       optional=True)
PHASES = (TLS_FULL, TLS_RESUMED)
TICKET_WAIT = 1.0  # at most this long for a TLS 1.3 ticket after the first handshake

REASONS = {
    "tls_resumption_failed": Reason("tls_resumed", "the second handshake did not resume the first one's session (only with tls_resumption.require)", "session tickets off, no shared session cache behind a load balancer, ticket keys rotated per node"),
}


async def check(ctx: ProbeContext, host: str, tls: TLSConfig, alpn: tuple[str, ...] = ()) -> None:
    """Run the check when the module asks for it (ctx.tls_resumption); fills ctx.resumption."""
    cfg: TLSResumptionConfig = ctx.tls_resumption
    if not cfg.check:
        return
    peer = ctx.peer
    if peer is None:  # pragma: no cover - a successful connection-oriented probe always has one
        return
    family = socket.AF_INET6 if peer.family == "ipv6" else socket.AF_INET
    sslctx = await tls_context(tls, alpn)  # the probe's own context: OpenSSL resumes only through it
    server_name = tls.server_name or host

    async def handshake(phase: str, session: ssl.SSLSession | None) -> tuple[connection.Connection, float, bool, str | None]:
        """Connect (not a phase: the probe timed its connect), then the handshake as ``phase``."""
        if ctx.guard is not None:  # every connection passes the SSRF guard, this one too
            ctx.guard.check_address(host, peer.ip, peer.port)
        pacer = ctx.pacer
        if pacer is not None and not pacer.try_take():
            await ctx.wait_for_token(pacer)
        conn = await connection.connect(peer.ip, peer.port, family)
        try:
            info = await ctx.phase(phase, conn.start_tls(sslctx, server_name, session=session))
        except BaseException:
            conn.close()
            raise
        return conn, ctx.timeline[-1].duration, info.session_reused, info.version

    conn, full, _, version = await handshake("tls_full", None)
    try:
        session = await _session(conn, min(TICKET_WAIT, max(ctx.remaining() / 2, 0.0)))
    finally:
        conn.close()
    if session is None:
        ctx.resumption = TLSResumption(resumed=False, offered=False, full_seconds=full, resumed_seconds=None, version=version)
        ctx.log("tls_resumption: the server gave no resumable session (%s)", version)
        if cfg.require:
            raise ProbeFailure("tls_resumption_failed", f"the server gave no session ticket or id to resume ({version})",
                               phase="tls_full")
        return
    conn, again, resumed, _ = await handshake("tls_resumed", session)
    conn.close()
    ctx.resumption = TLSResumption(resumed=resumed, offered=True, full_seconds=full, resumed_seconds=again, version=version)
    ctx.log("tls_resumption: %s (%s); full %.3f ms, second %.3f ms", "resumed" if resumed else "NOT resumed", version,
            full * 1000, again * 1000)
    if cfg.require and not resumed:
        raise ProbeFailure("tls_resumption_failed", f"the server did not resume the offered session ({version}): every "
                           "connection pays a full handshake", phase="tls_resumed")


async def _session(conn: connection.Connection, wait: float) -> ssl.SSLSession | None:
    """The session to offer; TLS 1.3 tickets come after the handshake, so poll a little for one."""
    deadline = perf_counter_ns() + int(wait * 1e9)
    while True:
        session = conn.session
        if session is not None or perf_counter_ns() >= deadline or conn.is_closing():
            return session
        await asyncio.sleep(0.002)
