"""The tcp prober: connect, optional TLS, optional query_response dialogue."""
from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field

from ..failures import ProbeFailure
from ..net import resolve
from ..net.connection import Connection
from ..net.resolve import is_ip
from ..net.tls import TLSConfig
from ..schema import Fields, Secret, compile_regex, parse_ip_protocol, reveal, split_host_port
from .base import CONNECT, DNS, TLS, PhaseSpec, ProbeContext, Prober, register, tls_section
from . import resumption
from .connect import connect_only, open_connection, start_tls


@dataclass(frozen=True, slots=True)
class QueryStep:
    expect: re.Pattern[bytes] | None = None
    send: str | Secret | None = None  # Secret when the step says secret: true (AUTH PLAIN ...)
    starttls: bool = False


@dataclass(frozen=True, slots=True)
class TCPProbeConfig:
    preferred_ip_protocol: str = "ip6"
    ip_protocol_fallback: bool = True
    query_response: tuple[QueryStep, ...] = ()
    tls: bool = False
    tls_config: TLSConfig = field(default_factory=TLSConfig)


def _parse_step(raw: object, path: str) -> QueryStep:
    qf = Fields(raw, path, frozenset({"expect_bytes", "send_bytes", "labels"}))
    expect = qf.get("expect", str, None)
    if expect is not None:
        compile_regex(expect, f"{path}.expect")  # the error names the str pattern the user wrote
    step = QueryStep(
        expect=re.compile(expect.encode()) if expect is not None else None,
        send=qf.secret("send", qf.get("secret", bool, False)),
        starttls=qf.get("starttls", bool, False),
    )
    qf.done()
    return step


class TCPProber(Prober):
    name = "tcp"
    # A query_response step waits for its line as first_byte and writes as request;
    # several steps add up. Their timeouts are probe_timeout (no reason of their own).
    phases = (DNS, CONNECT, TLS,
              PhaseSpec("request", "Request sent", "each `send` line handed to the socket → written (steps add up)"),
              PhaseSpec("first_byte", "Server processing", "waiting for each `expect` line (steps add up)"),
              *resumption.PHASES)
    reasons = resumption.REASONS
    resumable = True
    unsupported = frozenset({"source_ip_address"})

    def parse(self, f: Fields, module: str) -> TCPProbeConfig:
        proto, fallback = parse_ip_protocol(f)
        steps = tuple(_parse_step(raw, f"{f.path}.query_response[{i}]") for i, raw in enumerate(f.get("query_response", list, [])))
        cfg = TCPProbeConfig(preferred_ip_protocol=proto, ip_protocol_fallback=fallback, query_response=steps,
                             tls=f.get("tls", bool, False), tls_config=tls_section(f))
        f.done()
        return cfg

    def check_target(self, target: str) -> None:
        _host_port(target)

    def expected_phases(self, target: str, settings: TCPProbeConfig) -> tuple[str, ...]:
        try:
            host, _ = split_host_port(target)
        except ValueError:
            return ()
        steps = settings.query_response
        reached = {"dns": not is_ip(host), "connect": True,
                   "tls": settings.tls or any(s.starttls for s in steps),
                   "request": any(s.send is not None for s in steps),
                   "first_byte": any(s.expect is not None for s in steps)}
        return tuple(p.name for p in self.phases if not p.optional and reached.get(p.name, True))

    async def probe(self, ctx: ProbeContext, target: str, settings: TCPProbeConfig) -> None:
        cfg = settings
        host, port = _host_port(target)
        if not cfg.tls and not cfg.query_response:
            await connect_only(ctx, host, port, cfg.preferred_ip_protocol, cfg.ip_protocol_fallback)
            return
        conn = await open_connection(ctx, host, port, cfg.preferred_ip_protocol, cfg.ip_protocol_fallback)
        try:
            if cfg.tls:
                await start_tls(ctx, conn, host, cfg.tls_config)
            for i, step in enumerate(cfg.query_response):
                await _step(ctx, conn, host, cfg, i, step)
        finally:
            conn.close()
        if ctx.tls is not None:  # tls: true, or a starttls step
            await resumption.check(ctx, host, cfg.tls_config)


def _host_port(target: str) -> tuple[str, int]:
    try:
        host, port = split_host_port(target)
        resolve.check_host(host)
        return host, port
    except ValueError as exc:
        raise ProbeFailure("invalid_target", f"target {exc}") from None


async def _step(ctx: ProbeContext, conn: Connection, host: str, cfg: TCPProbeConfig, index: int, step: QueryStep) -> None:
    if step.expect is not None:
        await ctx.phase("first_byte", _expect(ctx, conn, index, step.expect))
        ctx.kernel_end(conn.arrival_ns())
    if step.send is not None:
        conn.write(reveal(step.send).encode() + b"\n")
        await ctx.phase("request", conn.drain())
    if step.starttls:
        await start_tls(ctx, conn, host, cfg.tls_config)


async def _expect(ctx: ProbeContext, conn: Connection, index: int, expect: re.Pattern[bytes]) -> None:
    while True:
        try:
            line = await conn.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            # The peer closed: its last, unterminated line still counts.
            line = exc.partial
            if not line or not expect.search(line):
                raise ProbeFailure(
                    "protocol_error",
                    f"query_response[{index}]: connection closed before a line matched {expect.pattern.decode()!r}",
                ) from None
        if expect.search(line):
            ctx.log(f"query_response[{index}]: matched {line.rstrip()!r}")
            return


register(TCPProber())
