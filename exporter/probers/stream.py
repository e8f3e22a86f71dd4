"""What the long-lived-stream probers (sse, websocket) share: URL, headers, connection, response head.

Both open one HTTP/1.1 connection (never HTTP/2: an event stream or an
upgrade is one request on one connection), send one GET and then keep
reading. The steps are the http prober's: dns, connect, tls, request,
first_byte, each one named phase.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..failures import ProbeFailure
from ..net import http1
from ..net.connection import Connection
from ..net.tls import TLSConfig
from ..schema import ConfigError, Fields
from .base import ProbeContext
from .connect import open_connection, start_tls

MAX_HEADER_BYTES = 1 << 20  # as the http prober (Go's default)
READ_SIZE = 65536


@dataclass(frozen=True, slots=True)
class StreamURL:
    host: str
    port: int
    tls: bool
    target: str  # the request target: path and query, percent-encoded
    authority: str  # the Host header


def split_url(url: str, schemes: Mapping[str, bool]) -> StreamURL:
    """``schemes`` maps each allowed scheme to whether it means TLS; ProbeFailure("invalid_target") otherwise."""
    try:
        parts = urlsplit(url)
        if parts.scheme not in schemes or not parts.hostname:
            raise ValueError(f"is not a {' or '.join(s + '://' for s in schemes)} URL")
        tls = schemes[parts.scheme]
        port = parts.port or (443 if tls else 80)
        target = http1.request_target(parts.path, parts.query)
    except ValueError as exc:
        raise ProbeFailure("invalid_target", f"target {url.rpartition('@')[2]!r}: {exc}") from None
    host = parts.hostname
    authority = f"[{host}]" if ":" in host else host
    if port != (443 if tls else 80):
        authority = f"{authority}:{port}"
    return StreamURL(host, port, tls, target, authority)


def parse_headers(f: Fields, key: str = "headers") -> tuple[tuple[str, str], ...]:
    """A mapping of request headers, each validated as the http prober does."""
    headers = []
    for name, value in f.get(key, dict, {}).items():
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{f.p(key)}.{name}: expected a string value")
        try:
            http1.validate_header(str(name), str(value))
        except ValueError as exc:
            raise ConfigError(f"{f.p(key)}.{name}: {exc}") from None
        headers.append((str(name), str(value)))
    return tuple(headers)


def redact_headers(section: Any) -> Any:
    """The http prober's redaction of ``headers`` (secret-looking names become <secret>)."""
    from . import PROBERS  # the registry, not the http module's internals

    return PROBERS["http"].redact(section)


async def open_stream(ctx: ProbeContext, url: StreamURL, preferred_ip_protocol: str, fallback: bool,
                      tls_config: TLSConfig) -> Connection:
    """dns, connect and (for TLS) tls phases; HTTP/1.1 offered over ALPN."""
    conn = await open_connection(ctx, url.host, url.port, preferred_ip_protocol, fallback)
    try:
        if url.tls:
            await start_tls(ctx, conn, url.host, tls_config, ("http/1.1",))
    except BaseException:
        conn.close()
        raise
    return conn


def request_headers(ctx: ProbeContext, configured: tuple[tuple[str, str], ...],
                    extra: tuple[tuple[str, str], ...] = ()) -> list[tuple[str, str]]:
    """Configured headers, then ``extra`` and trace propagation unless configured."""
    given = {k.lower() for k, _ in configured}
    headers = list(configured)
    headers.extend((k, v) for k, v in (*extra, *ctx.propagation_headers()) if k.lower() not in given)
    return headers


async def read_head(ctx: ProbeContext, conn: Connection, reader: http1.ResponseReader) -> http1.Head:
    """first_byte phase (request written → first response byte), then the head (not a phase of its own)."""
    await ctx.phase("first_byte", http1.wait_first_byte(conn, reader))
    return await http1.read_head(conn, reader)


def check_status(status: int) -> None:
    if 200 <= status < 300:
        return
    reason = "http_status_5xx" if status >= 500 else "http_status_4xx" if status >= 400 else "http_status_unexpected"
    raise ProbeFailure(reason, f"status {status} (expected 2xx)", phase="first_byte")


def header(head: http1.Head, name: str) -> str | None:
    lname = name.lower()
    return next((v for k, v in head.headers if k.lower() == lname), None)


async def next_body(conn: Connection, reader: http1.ResponseReader) -> bytes | None:
    """The next piece of the body as it arrives; None once the response has ended."""
    while True:
        event = reader.next_event()
        if event is None:
            data = await conn.read(READ_SIZE)
            if data:
                reader.feed(data)
            else:
                reader.eof()
        elif type(event) is http1.Body:
            return event.data
        elif type(event) is http1.End:
            return None
