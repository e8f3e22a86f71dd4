"""The sse prober: hold a Server-Sent Events stream open and time its heartbeats (seed 000).

An SSE stream can go silent while its TCP connection looks alive, a proxy
can cut it at 60 s or buffer it, and a reconnect can restart the stream
instead of resuming it. So the prober opens the stream (dns, connect, tls,
request, first_byte as the http prober), checks the status and
``Content-Type: text/event-stream``, then times every event and every ``:``
comment (a heartbeat) while it holds the stream for ``hold``: first_event
(head → first event or comment) and stream (the rest of the hold). With
``resume: true`` it reconnects as a second hop with ``Last-Event-ID`` and
checks that the first event id is after the last one seen.

Parsing is the WHATWG event-stream format, written here because each line
has to be timed as it arrives: lines end in CRLF, LF or CR; a blank line
dispatches an event; ``id``, ``retry`` and ``data`` fields are read, the
data itself is only counted. Lines are bounded (``MAX_LINE``).
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..failures import ProbeFailure, Reason
from .. import metrics as m
from ..metrics import MetricSpec, ProbeFamily, ProbeSamples
from ..net import http1
from ..net.connection import Connection
from ..net.tls import TLSConfig
from ..result import Details, ProbeResult
from ..schema import ConfigError, Fields, Secret, parse_ip_protocol
from . import stream
from .base import CONNECT, DNS, TLS, PhaseSpec, ProbeContext, Prober, parse_headers, register, tls_section
from .http import USER_AGENT
from .stream import DEFAULT_SECRET_QUERY_PARAMS, redact_url

MAX_LINE = 64 * 1024  # a longer line (no line end within it) is a protocol error, not memory
MAX_GAPS = 4096  # gaps kept in the details (the count and the max cover every gap)
MAX_SEEN_IDS = 4096
RETRY_RANGE_MS = (1000, 30000)  # a retry: outside this is flagged (too eager or too lazy to reconnect)
# Seconds kept for the resume hop's connect and request, beyond its first_event_timeout.
_RESUME_RESERVE = 1.0
GAP_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 120.0)

REASONS = {
    "sse_bad_content_type": Reason("first_byte", "the response is not Content-Type: text/event-stream", "endpoint moved, error page, proxy answering for the backend"),
    "sse_no_event": Reason("first_event", "no event and no `:` comment arrived within first_event_timeout", "stream stuck at start, server waits for data before the first flush"),
    "sse_buffered": Reason("stream", "two or more events (or two `:` comments) arrived in one read after more than one heartbeat_interval of silence", "a buffering proxy (nginx proxy_buffering on, a CDN) between client and server"),
    "sse_heartbeat_missed": Reason("stream", "no event or comment for longer than heartbeat_interval × (missed_heartbeats + 1)", "stalled stream behind a live TCP connection, server event loop blocked"),
    "sse_stream_closed": Reason("stream", "the server or a proxy ended the stream before hold", "proxy read timeout (often 60 s), server restart, load balancer idle timeout"),
    "sse_resume_failed": Reason("stream", "after reconnecting with Last-Event-ID, the first event id was not after the last one seen (or the stream had no id)", "server ignores Last-Event-ID, restarts from 0, no event ids"),
}


@dataclass(frozen=True, slots=True)
class SSEProbeConfig:
    headers: tuple[tuple[str, str | Secret], ...] = ()  # credentials typed Secret (base.parse_headers)
    hold: float = 60.0
    heartbeat_interval: float = 15.0
    missed_heartbeats: int = 2
    first_event_timeout: float = 5.0
    resume: bool = False
    preferred_ip_protocol: str = "ip6"
    ip_protocol_fallback: bool = True
    tls_config: TLSConfig = field(default_factory=TLSConfig)

    @property
    def max_gap(self) -> float:
        return self.heartbeat_interval * (self.missed_heartbeats + 1)


@dataclass(frozen=True, slots=True)
class SSEDetails(Details):
    status: int | None = None
    content_type: str | None = None
    first_event_seconds: float | None = None  # head → first event (not comment)
    first_comment_seconds: float | None = None  # head → first `:` comment
    events: int = 0
    heartbeats: int = 0  # `:` comments
    max_gap_seconds: float | None = None  # the longest silence between events/comments (incl. the one that failed)
    gaps: tuple[float, ...] = ()  # every gap between events/comments (the first MAX_GAPS)
    retry_ms: int | None = None
    retry_out_of_range: bool = False
    last_event_id: str | None = None
    resumed: bool | None = None  # None: resume not checked
    resume_first_id: str | None = None

    def summary(self) -> str:
        gap = "-" if self.max_gap_seconds is None else f"{self.max_gap_seconds:.3f}s"
        text = f"SSE {self.status}  events {self.events}  heartbeats {self.heartbeats}  max gap {gap}"
        if self.retry_ms is not None:
            text += f"  retry {self.retry_ms}ms" + (" (out of range)" if self.retry_out_of_range else "")
        if self.last_event_id is not None:
            text += f"  last id {self.last_event_id!r}"
        if self.resumed is not None:
            text += f"  resumed {'yes' if self.resumed else 'no'} (first id {self.resume_first_id!r})"
        return text


# --- the event-stream format ----------------------------------------------------
@dataclass(frozen=True, slots=True)
class Item:
    kind: str  # "event" | "comment"
    id: str | None = None  # the event's last event id


class SSEParser:
    """Bytes in, items out: dispatched events and comments; ``retry`` and ``last_id`` as they were set."""

    __slots__ = ("_buf", "_data", "_event_id", "_pending_cr", "retry", "last_id")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._data = False  # a data field since the last dispatch
        self._event_id: str | None = None  # the last event id buffer
        self._pending_cr = False  # the last byte fed was a CR: an LF right after it belongs to it
        self.retry: int | None = None
        self.last_id: str | None = None

    def feed(self, data: bytes) -> list[Item]:
        if self._pending_cr and data[:1] == b"\n":
            data = data[1:]
        self._pending_cr = data[-1:] == b"\r"
        buf = self._buf
        buf += data
        items: list[Item] = []
        start = 0
        while True:
            lf, cr = buf.find(b"\n", start), buf.find(b"\r", start)
            ends = [i for i in (lf, cr) if i != -1]
            if not ends:
                break
            end = min(ends)
            line = bytes(buf[start:end])
            start = end + 2 if end == cr and buf[end + 1:end + 2] == b"\n" else end + 1
            item = self._line(line)
            if item is not None:
                items.append(item)
        del buf[:start]
        if len(buf) > MAX_LINE:
            raise http1.ProtocolError(f"event-stream line longer than {MAX_LINE} bytes")
        return items

    def _line(self, line: bytes) -> Item | None:
        if not line:
            if not self._data:
                return None
            self._data = False
            self.last_id = self._event_id
            return Item("event", self._event_id)
        if line.startswith(b":"):
            return Item("comment")
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            self._data = True
        elif name == b"id" and b"\0" not in value:
            self._event_id = value.decode("utf-8", "replace")
        elif name == b"retry" and value.isdigit() and len(value) < 12:
            self.retry = int(value)
        return None


# --- the prober --------------------------------------------------------------------
_SCHEMES = stream.HTTP_SCHEMES


class _Stream:
    """What one probe learned, filled as it goes so that a failure still reports it."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.content_type: str | None = None
        self.first_event: float | None = None
        self.first_comment: float | None = None
        self.events = 0
        self.heartbeats = 0
        self.gaps: list[float] = []
        self.max_gap: float | None = None
        self.retry: int | None = None
        self.last_id: str | None = None
        self.seen_ids: set[str] = set()
        self.resumed: bool | None = None
        self.resume_first_id: str | None = None

    def gap(self, seconds: float) -> None:
        if len(self.gaps) < MAX_GAPS:
            self.gaps.append(seconds)
        self.max_gap = seconds if self.max_gap is None else max(self.max_gap, seconds)

    def details(self) -> SSEDetails:
        low, high = RETRY_RANGE_MS
        return SSEDetails(
            status=self.status, content_type=self.content_type, first_event_seconds=self.first_event,
            first_comment_seconds=self.first_comment, events=self.events, heartbeats=self.heartbeats,
            max_gap_seconds=self.max_gap, gaps=tuple(self.gaps), retry_ms=self.retry,
            retry_out_of_range=self.retry is not None and not low <= self.retry <= high,
            last_event_id=self.last_id, resumed=self.resumed, resume_first_id=self.resume_first_id,
        )


class SSEProber(Prober):
    name = "sse"
    phases = (
        DNS, CONNECT, TLS,
        PhaseSpec("request", "Request sent", "request bytes handed to the socket → written"),
        PhaseSpec("first_byte", "Server processing", "request written → first byte of the response",
                  timeout_reason="http_timeout_first_byte", limitable=True),
        PhaseSpec("first_event", "First event", "response head → first event or `:` comment (limit: first_event_timeout)",
                  timeout_reason="sse_no_event"),
        PhaseSpec("stream", "Stream held", "first event → hold ends (the resume hop: its first event with an id)"),
    )
    reasons = REASONS
    errors = ((http1.IncompleteBody, "sse_stream_closed"), (http1.IncompleteResponse, "connection_reset"),
              (http1.ProtocolError, "protocol_error"))
    metrics = (
        MetricSpec(m.SSE_HEARTBEAT_GAP, "histogram", ("target", "module"),
                   "Gaps between consecutive SSE events and `:` comments (sse prober).", GAP_BUCKETS),
        MetricSpec(m.SSE_MAX_GAP, "gauge", ("target", "module"),
                   "Longest gap between SSE events/comments in the last probe (sse prober)."),
        MetricSpec(m.SSE_EVENTS, "counter", ("target", "module"), "SSE events received (sse prober)."),
        MetricSpec(m.SSE_HEARTBEATS, "counter", ("target", "module"),
                   "SSE `:` comments (heartbeats) received (sse prober)."),
    )

    def parse(self, f: Fields, module: str) -> SSEProbeConfig:
        proto, fallback = parse_ip_protocol(f)
        defaults = SSEProbeConfig()
        cfg = SSEProbeConfig(
            headers=parse_headers(f),
            hold=_positive(f, "hold", defaults.hold),
            heartbeat_interval=_positive(f, "heartbeat_interval", defaults.heartbeat_interval),
            missed_heartbeats=f.get("missed_heartbeats", int, defaults.missed_heartbeats),
            first_event_timeout=_positive(f, "first_event_timeout", defaults.first_event_timeout),
            resume=f.get("resume", bool, defaults.resume),
            preferred_ip_protocol=proto, ip_protocol_fallback=fallback, tls_config=tls_section(f),
        )
        f.done()
        if not 0 <= cfg.missed_heartbeats <= 1000:
            raise ConfigError(f"{f.p('missed_heartbeats')}: must be between 0 and 1000, got {cfg.missed_heartbeats}")
        return cfg

    def display_target(self, target: str, settings: SSEProbeConfig) -> str:
        return redact_url(target, DEFAULT_SECRET_QUERY_PARAMS)

    def expected_phases(self, target: str, settings: SSEProbeConfig) -> tuple[str, ...]:
        return stream.expected_phases(self.phases, target, _SCHEMES)

    def check_target(self, target: str) -> None:
        stream.split_url(target, _SCHEMES)

    async def probe(self, ctx: ProbeContext, target: str, settings: SSEProbeConfig) -> None:
        cfg = settings
        url = stream.split_url(target, _SCHEMES)
        state = _Stream()
        reserve = cfg.first_event_timeout + _RESUME_RESERVE if cfg.resume else 0.0
        hold = min(cfg.hold, max(ctx.remaining() - reserve - 0.05, 0.0))
        if hold < cfg.hold:
            ctx.log("hold cut to %.3fs to fit the probe's timeout", hold)
        try:
            await _hop(ctx, url, cfg, state, hold, ())
            if cfg.resume:
                if state.last_id is None:
                    raise ProbeFailure("sse_resume_failed", "the stream carried no event id to resume from", phase="stream")
                await _hop(ctx, url, cfg, state, None, (("Last-Event-ID", state.last_id),))
        finally:
            ctx.details = state.details()

    def exposition(self, result: ProbeResult) -> Iterable[tuple[ProbeFamily, ProbeSamples]]:
        d = result.details
        if not isinstance(d, SSEDetails):
            return
        yield _EVENTS, float(d.events)
        yield _HEARTBEATS, float(d.heartbeats)
        if d.max_gap_seconds is not None:
            yield _MAX_GAP, d.max_gap_seconds
        if d.first_event_seconds is not None:
            yield _FIRST_EVENT, d.first_event_seconds
        if d.retry_ms is not None:
            yield _RETRY, d.retry_ms / 1000
        if d.resumed is not None:
            yield _RESUMED, 1.0 if d.resumed else 0.0

    def observations(self, result: ProbeResult) -> Iterable[tuple[str, float]]:
        d = result.details
        if not isinstance(d, SSEDetails):
            return
        for gap in d.gaps:
            yield m.SSE_HEARTBEAT_GAP, gap
        if d.max_gap_seconds is not None:
            yield m.SSE_MAX_GAP, d.max_gap_seconds
        yield m.SSE_EVENTS, float(d.events)
        yield m.SSE_HEARTBEATS, float(d.heartbeats)


_EVENTS = ProbeFamily("probe_sse_events", "SSE events received while the stream was held")
_HEARTBEATS = ProbeFamily("probe_sse_heartbeats", "SSE `:` comments (heartbeats) received while the stream was held")
_MAX_GAP = ProbeFamily("probe_sse_max_gap_seconds", "Longest gap between SSE events or comments")
_FIRST_EVENT = ProbeFamily("probe_sse_first_event_seconds", "Response head to the first SSE event")
_RETRY = ProbeFamily("probe_sse_retry_seconds", "The stream's retry: field")
_RESUMED = ProbeFamily("probe_sse_resumed", "1 if the stream resumed after Last-Event-ID")


def _positive(f: Fields, key: str, default: float) -> float:
    value = f.duration(key, default)
    assert value is not None
    if value <= 0:
        raise ConfigError(f"{f.p(key)}: must be greater than 0")
    return value


async def _hop(ctx: ProbeContext, url: stream.StreamURL, cfg: SSEProbeConfig, state: _Stream,
               hold: float | None, extra: tuple[tuple[str, str], ...]) -> None:
    """One connection: hold it for ``hold`` seconds, or (resume: hold None) read up to the first event with an id."""
    ctx.begin_hop("GET", ctx.target)  # as shown: its secrets masked
    conn: Connection | None = None
    try:
        conn = await stream.open_stream(ctx, url, cfg.preferred_ip_protocol, cfg.ip_protocol_fallback, cfg.tls_config)
        headers = stream.request_headers(ctx, cfg.headers, (("Accept", "text/event-stream"), ("Cache-Control", "no-cache"), *extra))
        conn.write(http1.build_request("GET", url.target, url.authority, headers, None, user_agent=USER_AGENT,
                                       keep_alive=True))
        await ctx.phase("request", conn.drain())
        reader = http1.ResponseReader("GET", keep_alive=True, max_header_bytes=stream.MAX_HEADER_BYTES)
        head = await stream.read_head(ctx, conn, reader)
        state.status = head.status
        state.content_type = stream.header(head, "Content-Type")
        stream.check_status(head.status)
        if (state.content_type or "").split(";")[0].strip().lower() != "text/event-stream":
            raise ProbeFailure("sse_bad_content_type", f"Content-Type {state.content_type!r}, expected text/event-stream",
                               phase="first_byte")
        events = _Events(ctx, conn, reader, cfg, state)
        if hold is None:
            await events.resume()
        else:
            await events.hold(hold)
    finally:
        ctx.end_hop(state.status)
        if conn is not None:
            conn.close()


class _Events:
    """Reads one stream's events and comments, timing each against the head and the previous one."""

    def __init__(self, ctx: ProbeContext, conn: Connection, reader: http1.ResponseReader, cfg: SSEProbeConfig,
                 state: _Stream) -> None:
        self.ctx, self.conn, self.reader, self.cfg, self.state = ctx, conn, reader, cfg, state
        self.parser = SSEParser()
        self.head_ns = self.last_ns = time.perf_counter_ns()  # last: the last event or comment (the head before any)
        self.counted = False  # the first item has no gap before it

    async def _next(self, limit_ns: int) -> tuple[list[Item], int]:
        """The next items to arrive before ``limit_ns`` and when; TimeoutError at the limit."""
        while True:
            remaining = (limit_ns - time.perf_counter_ns()) / 1e9
            if remaining <= 0:
                raise TimeoutError()
            try:
                async with asyncio.timeout(remaining):
                    data = await stream.next_body(self.conn, self.reader)
            except (ConnectionError, http1.IncompleteBody) as exc:
                data, how = None, f"cut ({type(exc).__name__})"
            else:
                how = "ended"
            now = time.perf_counter_ns()
            if data is None:
                raise ProbeFailure("sse_stream_closed", f"the server {how} the stream after {(now - self.head_ns) / 1e9:.3f}s",
                                   phase=self.ctx.phase_name)
            items = self.parser.feed(data)
            if self.parser.retry is not None and self.parser.retry != self.state.retry:
                self.state.retry = self.parser.retry
                self.ctx.log("retry: %d ms", self.parser.retry)
            if items:
                return items, now

    def _account(self, items: list[Item], now: int, *, keep_ids: bool) -> None:
        state = self.state
        gap_ns = now - self.last_ns
        # A server sends one heartbeat (maybe with an event) per tick; two of a kind in one read
        # after a silence longer than its promise were held back on the way: a buffering proxy.
        if gap_ns > self.cfg.heartbeat_interval * 1e9 and _same_kind_twice(items):
            raise ProbeFailure("sse_buffered", f"{len(items)} events/comments arrived together after {gap_ns / 1e9:.3f}s of "
                               f"silence (heartbeat_interval {self.cfg.heartbeat_interval:g}s)", phase=self.ctx.phase_name)
        since_head = (now - self.head_ns) / 1e9
        for i, item in enumerate(items):
            if self.counted:
                state.gap(gap_ns / 1e9 if i == 0 else 0.0)
            self.counted = True
            if item.kind == "comment":
                state.heartbeats += 1
                if state.first_comment is None:
                    state.first_comment = since_head
                continue
            state.events += 1
            if state.first_event is None:
                state.first_event = since_head
            if item.id is not None and keep_ids:
                state.last_id = item.id
                if len(state.seen_ids) < MAX_SEEN_IDS:
                    state.seen_ids.add(item.id)
        self.last_ns = now

    async def _first(self) -> tuple[list[Item], int]:
        try:
            return await self.ctx.phase("first_event", self._next(self.head_ns + int(self.cfg.first_event_timeout * 1e9)))
        except TimeoutError:
            raise ProbeFailure("sse_no_event", f"no event or comment within first_event_timeout "
                               f"{self.cfg.first_event_timeout:g}s", phase="first_event") from None

    async def hold(self, hold: float) -> None:
        cfg, state = self.cfg, self.state
        self._account(*await self._first(), keep_ids=True)
        hold_end_ns = self.head_ns + int(hold * 1e9)
        max_gap_ns = int(cfg.max_gap * 1e9)

        async def held() -> None:
            while True:
                try:
                    items, now = await self._next(min(hold_end_ns, self.last_ns + max_gap_ns))
                except TimeoutError:
                    now = time.perf_counter_ns()
                    if hold_end_ns - self.last_ns <= max_gap_ns:
                        return  # hold reached
                    gap = (now - self.last_ns) / 1e9
                    state.max_gap = gap if state.max_gap is None else max(state.max_gap, gap)
                    raise ProbeFailure("sse_heartbeat_missed", f"no event or comment for {gap:.3f}s (limit {cfg.max_gap:g}s "
                                       f"= heartbeat_interval {cfg.heartbeat_interval:g}s × {cfg.missed_heartbeats + 1})",
                                       phase="stream") from None
                self._account(items, now, keep_ids=True)

        try:
            await self.ctx.phase("stream", held())
        except ProbeFailure as exc:
            if exc.reason == "sse_stream_closed":
                exc.message += f" (hold {hold:g}s)"
                exc.args = (exc.message,)
            raise
        gap = "-" if state.max_gap is None else f"{state.max_gap:.3f}s"
        self.ctx.log("held the stream %gs: %d events, %d heartbeats, max gap %s", hold, state.events, state.heartbeats, gap)

    async def resume(self) -> None:
        """The reconnect with Last-Event-ID: the first event with an id must come after the last one seen."""
        state, cfg = self.state, self.cfg
        previous = state.last_id
        items, now = await self._first()
        limit_ns = self.head_ns + int(cfg.first_event_timeout * 1e9)

        async def first_id() -> str:
            nonlocal items, now
            while True:
                self._account(items, now, keep_ids=False)
                found = next((i.id for i in items if i.kind == "event" and i.id is not None), None)
                if found is not None:
                    return found
                try:
                    items, now = await self._next(limit_ns)
                except TimeoutError:
                    raise ProbeFailure("sse_resume_failed", f"no event with an id within first_event_timeout "
                                       f"{cfg.first_event_timeout:g}s after reconnecting", phase="stream") from None

        state.resume_first_id = found = await self.ctx.phase("stream", first_id())
        state.resumed = _after(found, previous, state.seen_ids)
        self.ctx.log("reconnected with Last-Event-ID %r: first id %r", previous, found)
        if not state.resumed:
            raise ProbeFailure("sse_resume_failed", f"reconnected with Last-Event-ID {previous!r}, the first event id was "
                               f"{found!r}, not after it", phase="stream")


def _same_kind_twice(items: list[Item]) -> bool:
    kinds = [i.kind for i in items]
    return kinds.count("event") > 1 or kinds.count("comment") > 1


def _after(first_id: str, last: str | None, seen: set[str]) -> bool:
    """Numeric ids must grow; any other id must be one not seen before the reconnect."""
    if last is not None and first_id.isdigit() and last.isdigit():
        return int(first_id) > int(last)
    return first_id not in seen


register(SSEProber())
