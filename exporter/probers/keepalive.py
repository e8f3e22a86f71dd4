"""The http prober's keep-alive check (``http.keepalive``): request 1, idle, request 2 on the same connection.

Seed 002's trap: the server's idle timeout (nginx ``keepalive_timeout``, Go's
``IdleTimeout``) is shorter than the client's, so the client reuses a
connection the server has already closed and gets "connection reset". This
check sends request 1 with keep-alive, then watches the idle connection for
``idle``: a FIN or RST from the server before then is
``keepalive_closed_early``, with when it came (the server's idle timeout).
Silence means the server kept it; request 2 then goes on the same
connection (no new dns/connect/tls phases in the timeline), and if the
connection turns out dead anyway (a middlebox dropped it silently) that is
``keepalive_closed_early`` too, ended ``on_reuse``. ``search: true`` then
bisects with fresh connections for the longest idle the path survives.

HTTP/1.1 only (on https only http/1.1 is offered over ALPN): a reused HTTP/2
connection is another question. Redirects are not followed.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from ..failures import ProbeFailure, Reason
from ..net import http1
from ..net.connection import Connection
from ..net.tls import TLSConfig
from ..result import KeepAlive
from ..schema import ConfigError, Fields
from . import stream
from .base import PhaseSpec, ProbeContext

IDLE = PhaseSpec("idle", "Keep-alive idle", "response 1 complete → keepalive.idle spent idle on the connection (keepalive only)",
                 optional=True)
SEARCH_STEPS = 6  # bisection steps of search: true (the bound is idle / 2**6)

REASONS = {
    "keepalive_closed_early": Reason("idle", "the server closed the kept-alive connection (FIN/RST, Connection: close, or dead on reuse) before keepalive.idle", "server idle timeout shorter than the client's (nginx keepalive_timeout, Go IdleTimeout): the client reuses a dead connection"),
}


@dataclass(frozen=True, slots=True)
class KeepAliveConfig:
    idle: float
    search: bool = False


def parse(f: Fields) -> KeepAliveConfig | None:
    """The ``keepalive`` sub-section of ``http``; None when absent."""
    if f.raw.get("keepalive") is None:
        f.raw.pop("keepalive", None)
        return None
    kf = f.sub("keepalive")
    idle = kf.duration("idle", None)
    if idle is None or idle <= 0:
        raise ConfigError(f"{kf.p('idle')}: required, a duration greater than 0")
    cfg = KeepAliveConfig(idle=idle, search=kf.get("search", bool, False))
    kf.done()
    return cfg


@dataclass(slots=True)
class Answer:
    version: str
    status: int
    headers: tuple[tuple[str, str], ...]
    content_length: int | None
    body_length: int
    reusable: bool

    def header(self, name: str) -> str | None:
        lname = name.lower()
        return next((v for k, v in self.headers if k.lower() == lname), None)


async def _request(ctx: ProbeContext, conn: Connection, url: stream.StreamURL, method: str, headers: list[tuple[str, str]],
                   body: bytes | None, user_agent: str, body_limit: int | None) -> Answer:
    """One keep-alive exchange: request, first_byte and transfer phases."""
    conn.write(http1.build_request(method, url.target, url.authority, headers, body, user_agent=user_agent, keep_alive=True))
    await ctx.phase("request", conn.drain())
    reader = http1.ResponseReader(method, keep_alive=True, max_header_bytes=stream.MAX_HEADER_BYTES)
    head = await stream.read_head(ctx, conn, reader)

    async def rest() -> int:
        return (await http1.read_body(conn, reader, limit=body_limit, keep=False, keep_limit=0))[0]

    length = await ctx.phase("transfer", rest())
    return Answer(head.version, head.status, head.headers, head.content_length, length, reader.reusable)


async def _watch(conn: Connection, idle: float) -> tuple[str, float | None]:
    """Stay idle on ``conn`` for ``idle`` seconds: ("silence", None), or how and when (s) the server ended it."""
    start = time.perf_counter_ns()
    try:
        async with asyncio.timeout(idle):
            while True:
                # Anything the server sends now (a 408, say) is not an answer to us: read on until it closes.
                if not await conn.read(stream.READ_SIZE):
                    return "fin", (time.perf_counter_ns() - start) / 1e9
    except TimeoutError:
        return "silence", None
    except ConnectionError:
        return "rst", (time.perf_counter_ns() - start) / 1e9


async def check(ctx: ProbeContext, target: str, cfg: KeepAliveConfig, answers: list[Answer], *, method: str,
                headers: list[tuple[str, str]], body: bytes | None, user_agent: str, body_limit: int | None,
                ip_protocol: str, fallback: bool, tls_config: TLSConfig) -> None:
    """Request 1, idle, request 2 (each a hop); fills ctx.keepalive and ``answers``; ProbeFailure when the server closed early."""
    url = stream.split_url(target, stream.HTTP_SCHEMES)
    if ctx.remaining() <= cfg.idle:
        raise ProbeFailure("probe_timeout", f"keepalive.idle {cfg.idle:g}s does not fit the probe's timeout "
                           f"{ctx.timeout:g}s: raise the module's timeout", phase="probe")
    sent = stream.request_headers(ctx, tuple(headers))
    conn: Connection | None = None

    async def exchange() -> Answer:
        nonlocal conn
        ctx.begin_hop(method, ctx.target)  # as shown: its secrets masked
        answer: Answer | None = None
        try:
            if conn is None:
                conn = await stream.open_stream(ctx, url, ip_protocol, fallback, tls_config)
            answer = await _request(ctx, conn, url, method, sent, body, user_agent, body_limit)
            answers.append(answer)
            return answer
        finally:
            ctx.end_hop(answer.status if answer is not None else None)

    def report(reused: bool, ended_by: str, server_idle: float | None, searched: bool = False) -> None:
        first = answers[0]
        ctx.keepalive = KeepAlive(idle_seconds=cfg.idle, reused=reused, ended_by=ended_by, server_idle_seconds=server_idle,
                                  connection_header=first.header("Connection"), keep_alive_header=first.header("Keep-Alive"),
                                  searched=searched)

    try:
        first = await exchange()
        assert conn is not None
        if not first.reusable:
            report(False, "connection_close", 0.0)
            raise ProbeFailure("keepalive_closed_early", f"the server will not keep the connection alive "
                               f"(Connection: {first.header('Connection')!r}, {first.version})", phase="idle")
        ended_by, after = await ctx.phase("idle", _watch(conn, cfg.idle))
        if ended_by != "silence":
            report(False, ended_by, after)
            raise ProbeFailure("keepalive_closed_early", f"the server closed the idle connection ({ended_by.upper()}) after "
                               f"{after:.3f}s, before keepalive.idle {cfg.idle:g}s: a client reusing it gets a reset",
                               phase="idle")
        ctx.log("connection idle %gs without a FIN or RST; request 2 on it", cfg.idle)
        try:
            await exchange()
        except (ConnectionError, http1.IncompleteHead) as exc:
            conn.close()
            server_idle = await _search(ctx, url, cfg, method, sent, body, user_agent, body_limit, ip_protocol,
                                        fallback, tls_config) if cfg.search else None
            report(False, "on_reuse", server_idle, cfg.search)
            raise ProbeFailure("keepalive_closed_early", f"request 2 after {cfg.idle:g}s idle found the connection dead "
                               f"({type(exc).__name__}: {exc}): dropped without a FIN or RST"
                               + (f"; it survives {server_idle:.3f}s" if server_idle is not None else ""), phase="idle") from None
        report(True, "silence", None)
        ctx.log("request 2 reused the connection after %gs idle", cfg.idle)
    finally:
        if conn is not None:
            conn.close()


async def _search(ctx: ProbeContext, url: stream.StreamURL, cfg: KeepAliveConfig, method: str, headers: list[tuple[str, str]],
                  body: bytes | None, user_agent: str, body_limit: int | None, ip_protocol: str, fallback: bool,
                  tls_config: TLSConfig) -> float | None:
    """The longest idle (within ``idle``) a connection survives, by bisection with fresh connections, while time remains."""
    low, high = 0.0, cfg.idle
    for _ in range(SEARCH_STEPS):
        probe = (low + high) / 2
        if ctx.remaining() <= probe + 1.0:
            break
        if await _survives(ctx, url, probe, method, headers, body, user_agent, body_limit, ip_protocol, fallback, tls_config):
            low = probe
        else:
            high = probe
    ctx.log("search: the connection survives %.3fs idle, not %.3fs", low, high)
    return low


async def _survives(ctx: ProbeContext, url: stream.StreamURL, idle: float, method: str, headers: list[tuple[str, str]],
                    body: bytes | None, user_agent: str, body_limit: int | None, ip_protocol: str, fallback: bool,
                    tls_config: TLSConfig) -> bool:
    """One trial of the search: its phases are not kept in the timeline (they are the search's, not the probe's)."""
    timeline = len(ctx.timeline)
    conn = await stream.open_stream(ctx, url, ip_protocol, fallback, tls_config)
    try:
        await _request(ctx, conn, url, method, headers, body, user_agent, body_limit)
        ended_by, _ = await _watch(conn, idle)
        if ended_by != "silence":
            return False
        await _request(ctx, conn, url, method, headers, body, user_agent, body_limit)
        return True
    except (ConnectionError, http1.IncompleteHead):
        return False
    finally:
        conn.close()
        del ctx.timeline[timeline:]
