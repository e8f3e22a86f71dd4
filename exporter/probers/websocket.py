"""The websocket prober: the upgrade (Sec-WebSocket-Accept checked), optional send/expect, ping/pong RTT, close.

blackbox_exporter's websocket prober only checks the upgrade and its
query_response dialogue; a WebSocket that upgrades fine can still stop
answering pings (a stuck event loop behind a live proxy) or be closed by
a proxy. So after the upgrade and the optional dialogue the prober sends
``pings`` pings ``ping_interval`` apart and times each pong (phase ping, one
entry per ping), then closes with 1000 and records the server's close code.

Framing and the handshake are wsproto's (sans-IO), on our own connection:
dns, connect and tls are the shared phases; upgrade runs from the upgrade
request being written to the 101 response being accepted. blackbox's module
shape is accepted: ``headers``, ``query_response`` (``expect`` regexps with
``${1}`` expansion into ``send``), ``preferred_ip_protocol``,
``ip_protocol_fallback`` and ``http_config`` with ``tls_config``,
``basic_auth`` and ``authorization``.
"""
from __future__ import annotations

import asyncio
import base64
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from wsproto import ConnectionState, ConnectionType, WSConnection
from wsproto.events import (AcceptConnection, BytesMessage, CloseConnection, Event, Ping, Pong, RejectConnection, Request,
                            TextMessage)
from wsproto.utilities import ProtocolError as WSProtocolError

from ..failures import ProbeFailure, Reason
from .. import metrics as m
from ..metrics import MetricSpec, ProbeFamily, ProbeSamples, label_text
from ..net import http1
from ..net.connection import Connection
from ..net.tls import TLSConfig
from ..result import Details, ProbeResult
from ..schema import ConfigError, Fields, Regexp, Secret, compile_regex, expand, parse_ip_protocol, reveal
from . import stream
from .base import CONNECT, DNS, TLS, PhaseSpec, ProbeContext, Prober, parse_headers, parse_tls_config, register, tls_section
from .http import USER_AGENT
from .stream import DEFAULT_SECRET_QUERY_PARAMS, redact_url

MAX_MESSAGE = 1 << 20  # a longer message (text or binary) is a protocol error, not memory
CLOSE_WAIT = 1.0  # at most this long for the server's answer to our close
RTT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

REASONS = {
    "ws_upgrade_failed": Reason("upgrade", "the server did not switch protocols (status other than 101) or its Sec-WebSocket-Accept was wrong", "not a WebSocket endpoint, proxy strips Upgrade headers, auth required"),
    "ws_pong_timeout": Reason("ping", "no pong within pong_timeout after a ping", "server event loop stuck, proxy not forwarding control frames"),
    "ws_closed": Reason("any", "the server or a proxy closed the WebSocket before the probe was done (the message has the close code)", "proxy idle timeout, server restart, policy violation (1008)"),
    "ws_unexpected_message": Reason("exchange", "a message did not match the query_response expect regexp", "wrong endpoint, protocol version change"),
}


@dataclass(frozen=True, slots=True)
class Step:
    expect: Regexp | None = None
    send: str | None = None


@dataclass(frozen=True, slots=True)
class WebSocketProbeConfig:
    headers: tuple[tuple[str, str | Secret], ...] = ()  # credentials typed Secret
    pings: int = 3
    ping_interval: float = 1.0
    pong_timeout: float = 2.0
    query_response: tuple[Step, ...] = ()
    preferred_ip_protocol: str = "ip6"
    ip_protocol_fallback: bool = True
    tls_config: TLSConfig = field(default_factory=TLSConfig)


@dataclass(frozen=True, slots=True)
class WebSocketDetails(Details):
    status: int | None = None
    upgraded: bool = False
    pings: int = 0
    pongs: int = 0
    rtts: tuple[float, ...] = ()  # seconds, one per answered ping
    messages_received: int = 0
    close_code: int | None = None  # the server's close code (1006: the connection ended without one)
    failed_due_to_regex: bool = False

    def summary(self) -> str:
        rtt = (f"rtt min/avg/max {min(self.rtts) * 1000:.2f}/{sum(self.rtts) / len(self.rtts) * 1000:.2f}/"
               f"{max(self.rtts) * 1000:.2f} ms" if self.rtts else "rtt -")
        close = "-" if self.close_code is None else self.close_code
        return f"WebSocket {self.status}  upgraded {'yes' if self.upgraded else 'no'}  pongs {self.pongs}/{self.pings}  {rtt}  close {close}"


_SCHEMES = {"ws": False, "wss": True, "http": False, "https": True}


def _parse_step(raw: object, path: str) -> Step:
    f = Fields(raw, path, frozenset({"expect_bytes", "labels", "starttls"}))
    expect = f.get("expect", str, None)
    step = Step(expect=compile_regex(expect, f"{path}.expect") if expect is not None else None, send=f.get("send", str, None))
    f.done()
    return step


def _auth_header(f: Fields) -> tuple[str, Secret] | None:
    """blackbox http_config's basic_auth / authorization as one Authorization header, its value a Secret."""
    basic = f.sub("basic_auth", frozenset({"username_file", "password_file", "username_ref", "password_ref"}))
    user, password = basic.get("username", str, None), basic.secret("password", True)
    basic.done()
    auth = f.sub("authorization", frozenset({"credentials_file", "credentials_ref"}))
    kind, credentials = auth.get("type", str, "Bearer"), auth.secret("credentials", True)
    auth.done()
    if user is not None and credentials is not None:
        raise ConfigError(f"{f.path}: basic_auth and authorization cannot both be set")
    if user is not None:
        userpass = f"{user}:{reveal(password) if password is not None else ''}"
        return "Authorization", Secret("Basic " + base64.b64encode(userpass.encode()).decode())
    if credentials is not None:
        value = f"{kind} {reveal(credentials)}"
        try:
            http1.validate_header("Authorization", value)
        except ValueError as exc:
            raise ConfigError(f"{auth.path}: {exc}") from None
        return "Authorization", Secret(value)
    return None


class WebSocketProber(Prober):
    name = "websocket"
    phases = (
        DNS, CONNECT, TLS,
        PhaseSpec("upgrade", "WebSocket upgrade", "upgrade request written → 101 Switching Protocols accepted (Sec-WebSocket-Accept checked)",
                  timeout_reason="ws_upgrade_failed", limitable=True),
        PhaseSpec("exchange", "Send/expect", "each query_response step: expect a message, send (steps add up)"),
        PhaseSpec("ping", "Ping/pong", "each ping written → its pong (pings add up; limit: pong_timeout)", timeout_reason="ws_pong_timeout"),
        PhaseSpec("close", "Close", "our close frame → the server's close (at most 1 s)"),
    )
    reasons = REASONS
    errors = ((WSProtocolError, "protocol_error"),)
    metrics = (
        MetricSpec(m.WS_PING_RTT, "histogram", ("target", "module"),
                   "Ping → pong round trips (websocket prober); its _count is the pongs received.", RTT_BUCKETS),
        MetricSpec(m.WS_PINGS, "counter", ("target", "module"), "Pings sent (websocket prober)."),
    )

    def parse(self, f: Fields, module: str) -> WebSocketProbeConfig:
        proto, fallback = parse_ip_protocol(f)
        headers = list(parse_headers(f))
        hc = f.sub("http_config", frozenset({"proxy_url", "oauth2", "bearer_token", "bearer_token_file", "follow_redirects",
                                             "enable_http2", "proxy_connect_header", "no_proxy", "proxy_from_environment"}))
        auth = _auth_header(hc)
        if auth is not None and not any(k.lower() == "authorization" for k, _ in headers):
            headers.append(auth)
        nested_tls = parse_tls_config(hc.sub("tls_config", frozenset({"ca", "cert", "key", "cipher_suites"})))
        hc.done()
        own_tls = "tls_config" in f.raw
        tls = tls_section(f)
        if own_tls and nested_tls != TLSConfig():
            raise ConfigError(f"{f.path}: tls_config and http_config.tls_config cannot both be set")
        defaults = WebSocketProbeConfig()
        cfg = WebSocketProbeConfig(
            headers=tuple(headers),
            pings=f.get("pings", int, defaults.pings),
            ping_interval=f.duration("ping_interval", defaults.ping_interval) or 0.0,
            pong_timeout=f.duration("pong_timeout", defaults.pong_timeout) or 0.0,
            query_response=tuple(_parse_step(raw, f"{f.p('query_response')}[{i}]")
                                 for i, raw in enumerate(f.get("query_response", list, []))),
            preferred_ip_protocol=proto, ip_protocol_fallback=fallback,
            tls_config=tls if own_tls else nested_tls,
        )
        f.done()
        if not 0 <= cfg.pings <= 1000:
            raise ConfigError(f"{f.p('pings')}: must be between 0 and 1000, got {cfg.pings}")
        if cfg.pong_timeout <= 0:
            raise ConfigError(f"{f.p('pong_timeout')}: must be greater than 0")
        return cfg

    def display_target(self, target: str, settings: WebSocketProbeConfig) -> str:
        return redact_url(target, DEFAULT_SECRET_QUERY_PARAMS)

    def expected_phases(self, target: str, settings: WebSocketProbeConfig) -> tuple[str, ...]:
        phases = stream.expected_phases(self.phases, target, _SCHEMES)
        skipped = {"exchange"} if not settings.query_response else set()
        if not settings.pings:
            skipped.add("ping")
        return tuple(p for p in phases if p not in skipped)

    def check_target(self, target: str) -> None:
        stream.split_url(target, _SCHEMES)

    async def probe(self, ctx: ProbeContext, target: str, settings: WebSocketProbeConfig) -> None:
        cfg = settings
        url = stream.split_url(target, _SCHEMES)
        if cfg.pings > 1 and (cfg.pings - 1) * cfg.ping_interval >= ctx.remaining():
            # Else the deadline would strike between pings and read as a pong timeout.
            raise ProbeFailure("probe_timeout", f"{cfg.pings} pings {cfg.ping_interval:g}s apart do not fit the probe's "
                               f"timeout {ctx.timeout:g}s: raise the module's timeout", phase="probe")
        session = _Session(ctx)
        ctx.begin_hop("GET", ctx.target)  # as shown: its secrets masked
        conn: Connection | None = None
        try:
            conn = session.conn = await stream.open_stream(ctx, url, cfg.preferred_ip_protocol, cfg.ip_protocol_fallback,
                                                           cfg.tls_config)
            await ctx.phase("upgrade", session.upgrade(url, stream.request_headers(ctx, cfg.headers, (("User-Agent", USER_AGENT),))))
            for i, step in enumerate(cfg.query_response):
                await ctx.phase("exchange", session.step(i, step))
            for i in range(cfg.pings):
                if i:
                    await asyncio.sleep(cfg.ping_interval)
                await session.ping(i, cfg.pong_timeout)
            if cfg.pings:
                ctx.log("%d/%d pongs, rtt max %.3f ms", session.pongs, session.pings, max(session.rtts) * 1000)
            await ctx.phase("close", session.close())
        finally:
            ctx.end_hop(session.status)
            ctx.details = session.details()
            if conn is not None:
                conn.close()

    def exposition(self, result: ProbeResult) -> Iterable[tuple[ProbeFamily, ProbeSamples]]:
        d = result.details if isinstance(result.details, WebSocketDetails) else WebSocketDetails()
        phases = result.total_phases()
        yield _WS_STATUS, float(d.status or 0)
        yield _WS_UPGRADED, 1.0 if d.upgraded else 0.0
        yield _WS_REGEX, 1.0 if d.failed_due_to_regex else 0.0
        yield _WS_DURATION, [(text, sum([phases.get(p, 0.0) for p in ours])) for text, ours in _BLACKBOX_PHASES]
        if d.rtts:
            yield _WS_RTT, [(_STAT_MIN, min(d.rtts)), (_STAT_AVG, sum(d.rtts) / len(d.rtts)), (_STAT_MAX, max(d.rtts))]
        yield _WS_PONGS, float(d.pongs)
        if d.close_code is not None:
            yield _WS_CLOSE, float(d.close_code)

    def observations(self, result: ProbeResult) -> Iterable[tuple[str, float]]:
        d = result.details
        if not isinstance(d, WebSocketDetails):
            return
        for rtt in d.rtts:
            yield m.WS_PING_RTT, rtt
        yield m.WS_PINGS, float(d.pings)


# blackbox's probe_websocket_duration_seconds phases, from ours.
_BLACKBOX_PHASES = tuple((label_text((("phase", bb),)), ours) for bb, ours in (
    ("resolve", ("dns",)), ("connect", ("connect",)), ("processing", ("tls", "upgrade")), ("transfer", ("exchange",))))
_STAT_MIN, _STAT_AVG, _STAT_MAX = (label_text((("stat", stat),)) for stat in ("min", "avg", "max"))
_WS_STATUS = ProbeFamily("probe_websocket_status_code", "Response HTTP status code")
_WS_UPGRADED = ProbeFamily("probe_websocket_connection_upgraded", "Indicates if the websocket connection was successfully upgraded")
_WS_REGEX = ProbeFamily("probe_websocket_failed_due_to_regex", "Indicates if probe failed due to regex")
_WS_DURATION = ProbeFamily("probe_websocket_duration_seconds", "Duration of websocket request by phase")
_WS_RTT = ProbeFamily("probe_websocket_ping_rtt_seconds", "Ping to pong round trip of this probe (min, avg, max)")
_WS_PONGS = ProbeFamily("probe_websocket_pongs", "Pongs received for this probe's pings")
_WS_CLOSE = ProbeFamily("probe_websocket_close_code", "The server's close code (1006: no close frame)")


class _Session:
    """wsproto over our connection: events in order, each read bounded."""

    def __init__(self, ctx: ProbeContext) -> None:
        self.ctx = ctx
        self.conn: Connection | None = None
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.events: deque[Event] = deque()
        self.status: int | None = None
        self.upgraded = False
        self.pings = 0
        self.pongs = 0
        self.rtts: list[float] = []
        self.messages = 0
        self.close_code: int | None = None
        self.regex_failed = False
        self._parts: list[str] = []
        self._size = 0

    def details(self) -> WebSocketDetails:
        return WebSocketDetails(status=self.status, upgraded=self.upgraded, pings=self.pings, pongs=self.pongs,
                                rtts=tuple(self.rtts), messages_received=self.messages, close_code=self.close_code,
                                failed_due_to_regex=self.regex_failed)

    def _send(self, event: Event, phase: str | None = None) -> None:
        """Write ``event``; ws_closed when the server's close has already arrived (it may share a read with the 101)."""
        assert self.conn is not None
        if self.ws.state is not ConnectionState.OPEN and not isinstance(event, Request) and self.upgraded:
            close = next((e for e in self.events if isinstance(e, CloseConnection)), CloseConnection(1006))
            raise self._closed(close, phase)
        self.conn.write(self.ws.send(event))

    async def _next(self) -> Event:
        assert self.conn is not None
        while not self.events:
            data = await self.conn.read(stream.READ_SIZE)
            self.ws.receive_data(data or None)
            for event in self.ws.events():
                if isinstance(event, Ping):
                    self._send(event.response())  # a client answers the server's pings
                else:
                    self.events.append(event)
            if not data and not self.events:
                self.events.append(CloseConnection(1006, "connection ended without a close frame"))
        return self.events.popleft()

    def _closed(self, event: CloseConnection, phase: str | None = None) -> ProbeFailure:
        self.close_code = event.code
        return ProbeFailure("ws_closed", f"the server closed the WebSocket with code {event.code}"
                            + (f" ({event.reason})" if event.reason else ""), phase=phase)

    async def upgrade(self, url: stream.StreamURL, headers: list[tuple[str, str]]) -> None:
        extra = [(k.encode(), v.encode()) for k, v in headers if k.lower() != "host"]
        self._send(Request(host=url.authority, target=url.target, extra_headers=extra))
        assert self.conn is not None
        await self.conn.drain()
        try:
            event = await self._next()
        except WSProtocolError as exc:
            raise ProbeFailure("ws_upgrade_failed", f"upgrade refused: {exc}") from None
        if isinstance(event, AcceptConnection):
            self.status, self.upgraded = 101, True
            self.ctx.log("upgraded to WebSocket")
            return
        if isinstance(event, RejectConnection):
            self.status = event.status_code
            raise ProbeFailure("ws_upgrade_failed", f"the server answered {event.status_code} instead of 101 Switching Protocols")
        if isinstance(event, CloseConnection):
            raise ProbeFailure("ws_upgrade_failed", "the connection ended before the upgrade response")
        raise ProbeFailure("ws_upgrade_failed", f"unexpected {type(event).__name__} during the upgrade")  # pragma: no cover

    async def message(self) -> str:
        """The next whole data message as text (binary decoded as UTF-8; server pings answered, stray pongs skipped)."""
        while True:
            event = await self._next()
            if isinstance(event, CloseConnection):
                raise self._closed(event)
            if isinstance(event, (TextMessage, BytesMessage)):
                self._size += len(event.data)
                if self._size > MAX_MESSAGE:
                    raise ProbeFailure("protocol_error", f"a WebSocket message longer than {MAX_MESSAGE} bytes")
                data = event.data
                self._parts.append(data if isinstance(data, str) else bytes(data).decode("utf-8", "replace"))
                if event.message_finished:
                    parts, self._parts, self._size = self._parts, [], 0
                    self.messages += 1
                    return "".join(parts)

    async def step(self, index: int, step: Step) -> None:
        send = step.send
        if step.expect is not None:
            text = await self.message()
            match = step.expect.search(text)
            if match is None:
                self.regex_failed = self.ctx.failed_due_to_regex = True
                raise ProbeFailure("ws_unexpected_message", f"query_response[{index}]: message {text[:200]!r} did not match "
                                   f"{step.expect.pattern!r}")
            self.ctx.log("query_response[%d]: matched %r", index, text[:200])
            if send is not None:
                send = expand(send, match)
        if send is not None:
            self._send(TextMessage(send), "exchange")
            assert self.conn is not None
            await self.conn.drain()

    async def ping(self, index: int, pong_timeout: float) -> None:
        payload = f"connhealth-{index}".encode()
        self._send(Ping(payload), "ping")
        self.pings += 1
        start = time.perf_counter_ns()

        async def pong() -> None:
            while True:
                event = await self._next()
                if isinstance(event, CloseConnection):
                    raise self._closed(event)
                if isinstance(event, Pong) and bytes(event.payload) == payload:
                    return
                # A message pushed by the server, or a pong to an earlier ping: not ours.

        try:
            async with asyncio.timeout(pong_timeout):
                await self.ctx.phase("ping", pong())
        except TimeoutError:
            if self.ctx.remaining() <= 0:
                raise
            raise ProbeFailure("ws_pong_timeout", f"no pong for ping {index + 1} within {pong_timeout:g}s", phase="ping") from None
        self.pongs += 1
        self.rtts.append((time.perf_counter_ns() - start) / 1e9)

    async def close(self) -> None:
        if self.ws.state is ConnectionState.REMOTE_CLOSING:  # the server closed first, after we were done
            close = next((e for e in self.events if isinstance(e, CloseConnection)), None)
            self.close_code = close.code if close is not None else None
            return
        self._send(CloseConnection(1000))
        try:
            async with asyncio.timeout(min(CLOSE_WAIT, max(self.ctx.remaining(), 0.0))):
                while True:
                    event = await self._next()
                    if isinstance(event, CloseConnection):
                        self.close_code = event.code
                        return
        except (TimeoutError, ConnectionError, WSProtocolError):
            self.ctx.log("no close frame from the server")


register(WebSocketProber())
