"""The tcp prober: connect, optional TLS, optional query_response dialogue."""
from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from ..failures import ProbeFailure
from ..metrics import ProbeFamily, ProbeSamples
from ..net import resolve
from ..net.connection import Connection
from ..net.resolve import is_ip
from ..net.tls import TLSConfig
from ..result import Details, ProbeResult
from ..schema import (ConfigError, Fields, Regexp, Secret, brief, compile_regex, expand, go_text, parse_ip_protocol, reveal,
                      split_host_port)
from .base import CONNECT, DNS, TLS, PhaseSpec, ProbeContext, Prober, register, source_ip_address, tls_section
from . import resumption
from .connect import connect_only, open_connection, start_tls, target_host_port, tls_context


@dataclass(frozen=True, slots=True)
class QueryStep:
    expect: Regexp | None = None  # RE2 over the line's bytes
    expect_bytes: bytes | None = None  # an exact byte string (a YAML !!binary value, or text as UTF-8)
    # probe_expect_info labels: (name, value template expanded from the expect match)
    labels: tuple[tuple[str, bytes], ...] = ()
    send: bytes | Secret | None = None  # Secret when the step says secret: true (AUTH PLAIN ...)
    starttls: bool = False


@dataclass(frozen=True, slots=True)
class TCPProbeConfig:
    preferred_ip_protocol: str = "ip6"
    ip_protocol_fallback: bool = True
    query_response: tuple[QueryStep, ...] = ()
    source_ip_address: str | None = None  # the local address the probe's socket is bound to
    tls: bool = False
    tls_config: TLSConfig = field(default_factory=TLSConfig)


@dataclass(frozen=True, slots=True)
class TCPDetails(Details):
    """What blackbox's query_response exports beyond the shared families."""

    failed_due_to_bytes: bool = False
    expect_labels: tuple[tuple[str, str], ...] | None = None  # probe_expect_info's labels, from the last labelled step

    def summary(self) -> str:
        labels = ", ".join(f"{k}={v!r}" for k, v in self.expect_labels or ())
        return "  ".join(part for part in ("expect_bytes did not match" if self.failed_due_to_bytes else "",
                                           f"expect_info {labels}" if labels else "") if part)


_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def _text_or_binary(qf: Fields, key: str) -> bytes | None:
    """A string, or a YAML ``!!binary`` value (bytes), as blackbox's Go string fields take both."""
    value = qf.get(key, (str, bytes), None)
    return value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value


def _parse_labels(qf: Fields) -> tuple[tuple[str, bytes], ...]:
    labels: list[tuple[str, bytes]] = []
    for i, raw in enumerate(qf.get("labels", list, [])):
        lf = Fields(raw, f"{qf.p('labels')}[{i}]")
        name = lf.get("name", str, "")
        if not _LABEL_NAME.fullmatch(name) or name.startswith("__"):
            raise ConfigError(f"{lf.p('name')}: invalid label name {brief(name)} (must match [a-zA-Z_][a-zA-Z0-9_]*)")
        if any(name == other for other, _ in labels):
            raise ConfigError(f"{lf.p('name')}: label {name} given twice")
        labels.append((name, _text_or_binary(lf, "value") or b""))
        lf.done()
    return tuple(labels)


def _parse_step(raw: object, path: str) -> QueryStep:
    qf = Fields(raw, path)
    expect = qf.get("expect", str, None)
    expect_bytes = _text_or_binary(qf, "expect_bytes")
    if expect and expect_bytes:
        raise ConfigError(f"{path}: expect and expect_bytes are mutually exclusive")
    send = _text_or_binary(qf, "send")
    secret = qf.get("secret", bool, False)
    step = QueryStep(
        # Go's bytes regexp over the line: compiled from the UTF-8 the user wrote, errors name that text.
        expect=compile_regex(expect.encode("utf-8", "surrogatepass"), f"{path}.expect") if expect else None,
        expect_bytes=expect_bytes or None,
        labels=_parse_labels(qf),
        # Go writes send + "\n" when send is not empty; an empty send sends nothing.
        send=(Secret(send.decode("latin-1")) if secret else send) if send else None,
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

    def with_hostname(self, settings: TCPProbeConfig, hostname: str) -> TCPProbeConfig:
        # blackbox: /probe?hostname= is the TLS server name when tls_config sets none.
        if settings.tls_config.server_name:
            return settings
        return replace(settings, tls_config=replace(settings.tls_config, server_name=hostname))

    def parse(self, f: Fields, module: str) -> TCPProbeConfig:
        proto, fallback = parse_ip_protocol(f)
        steps = tuple(_parse_step(raw, f"{f.path}.query_response[{i}]") for i, raw in enumerate(f.get("query_response", list, [])))
        cfg = TCPProbeConfig(preferred_ip_protocol=proto, ip_protocol_fallback=fallback, query_response=steps,
                             source_ip_address=source_ip_address(f), tls=f.get("tls", bool, False), tls_config=tls_section(f))
        f.done()
        return cfg

    def check_target(self, target: str) -> None:
        target_host_port(target)

    def expected_phases(self, target: str, settings: TCPProbeConfig) -> tuple[str, ...]:
        try:
            host, _ = split_host_port(target)
        except ValueError:
            return ()
        steps = settings.query_response
        reached = {"dns": not is_ip(host), "connect": True,
                   "tls": settings.tls or any(s.starttls for s in steps),
                   "request": any(s.send is not None for s in steps),
                   "first_byte": any(s.expect is not None or s.expect_bytes is not None for s in steps)}
        return tuple(p.name for p in self.phases if not p.optional and reached.get(p.name, True))

    async def probe(self, ctx: ProbeContext, target: str, settings: TCPProbeConfig) -> None:
        cfg = settings
        host, port = target_host_port(target)
        if not cfg.tls and not cfg.query_response:
            await connect_only(ctx, host, port, cfg.preferred_ip_protocol, cfg.ip_protocol_fallback,
                               source=cfg.source_ip_address)
            return
        if cfg.tls or any(step.starttls for step in cfg.query_response):
            await tls_context(cfg.tls_config)  # its files are read (or missing) before anything is sent
        conn = await open_connection(ctx, host, port, cfg.preferred_ip_protocol, cfg.ip_protocol_fallback,
                                     source=cfg.source_ip_address)
        await converse(ctx, conn, host, cfg.tls, cfg.tls_config, cfg.query_response)
        if ctx.tls is not None:  # tls: true, or a starttls step
            await resumption.check(ctx, host, cfg.tls_config)

    def exposition(self, result: ProbeResult) -> Iterable[tuple[ProbeFamily, ProbeSamples]]:
        if "connect" not in result.total_phases():
            return  # never connected: blackbox registers these after the dial
        details = result.details if isinstance(result.details, TCPDetails) else TCPDetails()
        yield _FAILED_DUE_TO_BYTES, 1.0 if details.failed_due_to_bytes else 0.0
        if details.expect_labels is not None:
            yield _EXPECT_INFO, [(details.expect_labels, 1.0)]


_FAILED_DUE_TO_BYTES = ProbeFamily("probe_failed_due_to_bytes", "Indicates if probe failed due to bytes")
_EXPECT_INFO = ProbeFamily("probe_expect_info", "Explicit content matched")


async def converse(ctx: ProbeContext, conn: Connection, server_name: str, tls: bool, tls_config: TLSConfig,
                   steps: tuple[QueryStep, ...]) -> None:
    """TLS from the start when ``tls``, then the query_response steps; the connection is closed and
    ctx.details set however it ends. The tcp and unix probers' exchange."""
    dialogue = _Dialogue(ctx, conn)
    try:
        if tls:
            await start_tls(ctx, conn, server_name, tls_config)
        for i, step in enumerate(steps):
            await dialogue.step(server_name, tls_config, i, step)
    finally:
        conn.close()
        ctx.details = TCPDetails(failed_due_to_bytes=dialogue.failed_due_to_bytes, expect_labels=dialogue.labels)


class _Dialogue:
    """query_response as blackbox runs it: lines as Go's bufio.ScanLines gives them (without the
    line end and one \\r before it), send and label values expanded from the step's expect match."""

    def __init__(self, ctx: ProbeContext, conn: Connection) -> None:
        self.ctx, self.conn = ctx, conn
        self.failed_due_to_bytes = False
        self.labels: tuple[tuple[str, str], ...] | None = None

    async def step(self, host: str, tls_config: TLSConfig, index: int, step: QueryStep) -> None:
        ctx, conn = self.ctx, self.conn
        send = reveal(step.send).encode("latin-1") if isinstance(step.send, Secret) else step.send
        if step.expect is not None:
            match = await ctx.phase("first_byte", self._expect(index, step.expect))
            ctx.kernel_end(conn.arrival_ns())
            if send is not None:
                send = expand(send, match)
            if step.labels:
                self.labels = tuple((name, expand(value, match).decode("utf-8", "replace")) for name, value in step.labels)
        if step.expect_bytes is not None:
            await ctx.phase("first_byte", self._expect_bytes(index, step.expect_bytes))
        if send is not None:
            conn.write(send + b"\n")
            await ctx.phase("request", conn.drain())
        if step.starttls:
            await start_tls(ctx, conn, host, tls_config)

    async def _expect(self, index: int, expect: Regexp) -> Any:
        """The match of the first line ``expect`` finds."""
        closed = False
        while not closed:
            try:
                line = (await self.conn.readuntil(b"\n"))[:-1]
            except asyncio.IncompleteReadError as exc:
                line, closed = exc.partial, True  # the peer closed: its last, unterminated line still counts
                if not line:
                    break
            line = go_text(line[:-1] if line.endswith(b"\r") else line)
            match = expect.search(line)
            if match is not None:
                self.ctx.log("query_response[%d]: matched %r", index, line[:200])
                return match
        self.ctx.failed_due_to_regex = True
        raise ProbeFailure("protocol_error", f"query_response[{index}]: connection closed before a line matched "
                                             f"{expect.pattern.decode('utf-8', 'replace')!r}")

    async def _expect_bytes(self, index: int, expected: bytes) -> None:
        try:
            data = await self.conn.readexactly(len(expected))
        except asyncio.IncompleteReadError as exc:
            raise ProbeFailure("protocol_error", f"query_response[{index}]: connection closed after {len(exc.partial)} "
                                                 f"of the {len(expected)} expected bytes") from None
        if data != expected:
            self.failed_due_to_bytes = True
            raise ProbeFailure("protocol_error", f"query_response[{index}]: expected bytes {expected[:64]!r}, "
                                                 f"got {data[:64]!r}")
        self.ctx.log("query_response[%d]: bytes matched", index)


register(TCPProber())
