"""What the HTTP-family probers share: URL (and how it is shown), headers, connection, response head.

The long-lived-stream probers (sse, websocket) and the http prober's
keep-alive check open one HTTP/1.1 connection (never HTTP/2: an event stream or an
upgrade is one request on one connection), send one GET and then keep
reading. The steps are the http prober's: dns, connect, tls, request,
first_byte, each one named phase. Headers are parsed by base.parse_headers
(secrets typed), and revealed only in ``request_headers``, for the wire.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit

from ..failures import ProbeFailure
from ..net import http1
from ..net.connection import Connection
from ..net.tls import TLSConfig
from ..net.resolve import is_ip
from ..schema import Secret, reveal
from .base import DNS, TLS, PhaseSpec, ProbeContext
from .connect import open_connection, start_tls

HTTP_SCHEMES = {"http": False, "https": True}  # scheme -> TLS
MAX_HEADER_BYTES = 1 << 20  # as the http prober (Go's default)
# Query parameters whose values never leave as text (OTel's url.full list plus common credentials);
# secret_query_params adds more. Matched without regard to case.
DEFAULT_SECRET_QUERY_PARAMS = frozenset({
    "token", "access_token", "id_token", "refresh_token", "key", "api_key", "apikey", "password", "passwd", "secret",
    "client_secret", "sig", "signature", "awsaccesskeyid", "x-amz-signature", "x-amz-credential",
    "x-amz-security-token", "x-goog-signature", "x-goog-credential",
})
READ_SIZE = 65536


@dataclass(frozen=True, slots=True)
class StreamURL:
    host: str
    port: int
    tls: bool
    target: str  # the request target: path and query, percent-encoded
    authority: str  # the Host header


@functools.lru_cache(maxsize=4096)
def redact_url(url: str, secret_params: frozenset[str]) -> str:
    """The URL as every output shows it (OTel's url.full rule): userinfo and secret query values as REDACTED."""
    parts = urlsplit(url)
    if "@" in parts.netloc:
        parts = parts._replace(netloc="REDACTED:REDACTED@" + parts.netloc.rpartition("@")[2])
    if parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        if any(k.lower() in secret_params for k, _ in pairs):
            query = urlencode([(k, "REDACTED" if k.lower() in secret_params else v) for k, v in pairs], safe="")
            parts = parts._replace(query=query)
    return parts.geturl()


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
        try:
            shown = repr(redact_url(url, DEFAULT_SECRET_QUERY_PARAMS))
        except ValueError:  # not even a URL to mask: say so, without echoing it
            shown = "(not a URL)"
        raise ProbeFailure("invalid_target", f"target {shown}: {exc}") from None
    host = parts.hostname
    authority = f"[{host}]" if ":" in host else host
    if port != (443 if tls else 80):
        authority = f"{authority}:{port}"
    return StreamURL(host, port, tls, target, authority)


def expected_phases(phases: tuple[PhaseSpec, ...], target: str, schemes: Mapping[str, bool],
                    opted: frozenset[str] = frozenset()) -> tuple[str, ...]:
    """The phases a successful probe of ``target`` goes through: dns unless it is an IP, tls only over TLS,
    an optional phase only when ``opted`` (the module asked for its check)."""
    try:
        url = split_url(target, schemes)
    except ProbeFailure:
        return ()
    return tuple(p.name for p in phases
                 if (p.name in opted if p.optional else not (p is DNS and is_ip(url.host) or p is TLS and not url.tls)))


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


def request_headers(ctx: ProbeContext, configured: tuple[tuple[str, str | Secret], ...],
                    extra: tuple[tuple[str, str], ...] = ()) -> list[tuple[str, str]]:
    """The headers to write: configured ones (secrets revealed, for the wire only), then ``extra`` and trace
    propagation unless configured."""
    given = {k.lower() for k, _ in configured}
    headers = [(k, reveal(v)) for k, v in configured]
    headers.extend((k, v) for k, v in (*extra, *ctx.propagation_headers()) if k.lower() not in given)
    return headers


async def read_head(ctx: ProbeContext, conn: Connection, reader: http1.ResponseReader) -> http1.Head:
    """first_byte phase (request written → first response byte), then the head (not a phase of its own)."""
    await ctx.phase("first_byte", http1.wait_first_byte(conn, reader))
    ctx.kernel_end(conn.arrival_ns())
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
