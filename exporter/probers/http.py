"""The http prober: HTTP/1.1 over our own connection, so every phase is ours to time.

Phases per hop: dns, connect, tls (https), request (writing the request),
first_byte (request written -> status line received: the server's processing
time), transfer (headers and body). Every redirect hop opens its own
connection and keeps its own phases (``HTTPInfo.hops``); ``ProbeResult.phases``
are the last hop's.

The connection is a ``connect.Connection`` (a plain asyncio.Protocol),
not asyncio streams: setting those up and tearing them down cost more than a
loopback exchange; its read methods keep StreamReader's semantics.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import SplitResult, urljoin, urlsplit

from ..failures import ProbeFailure
from ..result import Hop, HTTPInfo
from .connect import Connection, connect, start_tls

if TYPE_CHECKING:
    from ..config import HeaderMatch, HTTPProbeConfig, Module
    from ..engine import ProbeContext

MAX_REDIRECTS = 10
USER_AGENT = "connhealth/0.1"
_STATUS_RE = re.compile(rb"HTTP/(\d)\.(\d) (\d{3})(?: ([^\r\n]*))?\r?\n")
_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})


class _Response:
    __slots__ = ("version", "status", "headers", "body", "body_length", "content_length")

    def __init__(self, version: str, status: int, headers: list[tuple[str, str]]) -> None:
        self.version = version
        self.status = status
        self.headers = headers
        self.body = b""
        self.body_length = 0
        self.content_length: int | None = None

    def header(self, name: str) -> str | None:
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None

    def header_values(self, name: str) -> list[str]:
        lname = name.lower()
        return [value for key, value in self.headers if key.lower() == lname]


def _split_url(url: str) -> tuple[SplitResult, str, int]:
    """(parts, host, port) of an http(s) URL; ValueError names what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http:// or https:// URL")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{url!r}: {exc}") from None
    return parts, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def check_target(target: str) -> None:
    try:
        _split_url(target)
    except ValueError as exc:
        raise ProbeFailure("invalid_target", f"target {exc}") from None


async def probe(ctx: ProbeContext, target: str, module: Module) -> None:
    cfg = module.http
    check_target(target)
    url = target
    hops: list[Hop] = []
    response: _Response | None = None
    try:
        for redirects in range(MAX_REDIRECTS + 2):
            if redirects > MAX_REDIRECTS:
                raise ProbeFailure("http_too_many_redirects", f"more than {MAX_REDIRECTS} redirects (last: {url})", phase="first_byte")
            if hops:
                # A new hop starts with fresh phases; the finished hop keeps its own.
                ctx.phases = {}
            response = await _exchange(ctx, url, cfg, module, hops)
            location = response.header("Location")
            if not (cfg.follow_redirects and response.status in _REDIRECT_CODES and location):
                break
            url = urljoin(url, location)
            ctx.log(f"redirect {response.status} to {url}")
    finally:
        if response is not None:
            ctx.http = HTTPInfo(
                status=response.status,
                version=response.version,
                redirects=len(hops) - 1,
                content_length=response.content_length,
                body_length=response.body_length,
                final_url=url,
                hops=tuple(hops),
            )
    assert response is not None
    _check(ctx, cfg, url, response)


async def _exchange(ctx: ProbeContext, url: str, cfg: HTTPProbeConfig, module: Module, hops: list[Hop]) -> _Response:
    try:
        parts, host, port = _split_url(url)
    except ValueError as exc:
        # Only a redirect can get here: the target itself passed check_target.
        raise ProbeFailure("protocol_error", f"redirect to an unusable URL: {exc}", phase="first_byte") from None
    tls = parts.scheme == "https"
    response: _Response | None = None
    conn: Connection | None = None
    ctx.begin_hop(cfg.method, url, host, port)
    try:
        conn = await connect(ctx, host, port, module)
        if tls:
            await start_tls(ctx, conn, host, cfg.tls_config, ("http/1.1",))
        request = _request_bytes(cfg, parts.path or "/", parts.query, host, port, tls, ctx.propagation_headers())
        conn.write(request)
        await ctx.phase("request", conn.drain())
        status_line = await ctx.phase("first_byte", conn.readuntil(b"\n"))
        response = await ctx.phase("transfer", _read_response(conn, status_line, cfg))
        ctx.log(f"{response.version} {response.status}, {response.body_length} body bytes")
        return response
    finally:
        hops.append(
            Hop(url=url, phases=dict(ctx.phases), status=response.status if response else None, peer=ctx.peer)
        )
        ctx.end_hop(response.status if response else None)
        if conn is not None:
            conn.close()


def _request_bytes(cfg: HTTPProbeConfig, path: str, query: str, host: str, port: int, tls: bool,
                   extra_headers: list[tuple[str, str]]) -> bytes:
    target = path + ("?" + query if query else "")
    default_port = 443 if tls else 80
    host_header = f"[{host}]" if ":" in host else host
    if port != default_port:
        host_header += f":{port}"
    lines = [f"{cfg.method} {target} HTTP/1.1"]
    names = {name.lower() for name, _ in cfg.headers}
    if "host" not in names:
        lines.append(f"Host: {host_header}")
    if "user-agent" not in names:
        lines.append(f"User-Agent: {USER_AGENT}")
    if "accept" not in names:
        lines.append("Accept: */*")
    lines.extend(f"{name}: {value}" for name, value in cfg.headers)
    lines.extend(f"{name}: {value}" for name, value in extra_headers if name not in names)
    body = cfg.body.encode() if cfg.body is not None else b""
    if body or cfg.method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    # One connection per hop: every hop's connect and TLS are measured, never hidden by reuse.
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def _read_response(conn: Connection, status_line: bytes, cfg: HTTPProbeConfig) -> _Response:
    m = _STATUS_RE.fullmatch(status_line)
    if not m:
        # The status line is what the first_byte phase waited for; it is not a valid one.
        raise ProbeFailure("protocol_error", f"malformed status line {status_line[:80]!r}", phase="first_byte")
    version = f"HTTP/{m.group(1).decode()}.{m.group(2).decode()}"
    status = int(m.group(3))
    headers: list[tuple[str, str]] = []
    while True:
        line = await conn.readuntil(b"\n")
        if line in (b"\r\n", b"\n"):
            break
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise ProbeFailure("protocol_error", f"malformed header line {line[:80]!r}")
        headers.append((name.decode("latin-1"), value.strip().decode("latin-1")))
        if len(headers) > 500:
            raise ProbeFailure("protocol_error", "more than 500 response headers")
    response = _Response(version, status, headers)
    keep_body = bool(cfg.fail_if_body_matches_regexp or cfg.fail_if_body_not_matches_regexp)
    cl = response.header("Content-Length")
    if cl is not None:
        try:
            response.content_length = int(cl)
        except ValueError:
            raise ProbeFailure("protocol_error", f"invalid Content-Length {cl!r}") from None
    if cfg.method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return response
    te = (response.header("Transfer-Encoding") or "").lower()
    chunks: list[bytes] = []
    if "chunked" in te:
        await _read_chunked(conn, chunks, response, keep_body)
    elif response.content_length is not None:
        remaining = response.content_length
        while remaining > 0:
            data = await conn.read(min(remaining, 65536))
            if not data:
                raise ProbeFailure(
                    "connection_reset",
                    f"connection closed after {response.content_length - remaining} of {response.content_length} body bytes",
                )
            remaining -= len(data)
            _take(data, chunks, response, keep_body)
    else:
        while data := await conn.read(65536):
            _take(data, chunks, response, keep_body)
    if keep_body:
        response.body = b"".join(chunks)
    return response


def _take(data: bytes, chunks: list[bytes], response: _Response, keep: bool) -> None:
    response.body_length += len(data)
    if keep:
        chunks.append(data)


async def _read_chunked(reader: Connection, chunks: list[bytes], response: _Response, keep: bool) -> None:
    while True:
        size_line = await reader.readuntil(b"\n")
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise ProbeFailure("protocol_error", f"malformed chunk size {size_line[:40]!r}") from None
        if size == 0:
            while (await reader.readuntil(b"\n")) not in (b"\r\n", b"\n"):
                pass  # trailers
            return
        _take(await reader.readexactly(size), chunks, response, keep)
        if await reader.readuntil(b"\n") not in (b"\r\n", b"\n"):
            raise ProbeFailure("protocol_error", "chunk not terminated by CRLF")


def _check(ctx: ProbeContext, cfg: HTTPProbeConfig, url: str, response: _Response) -> None:
    """The module's expectations, in blackbox_exporter's order."""
    status = response.status
    if cfg.valid_status_codes:
        ok = status in cfg.valid_status_codes
    else:
        ok = 200 <= status < 300
    if not ok:
        reason = "http_status_5xx" if status >= 500 else "http_status_4xx" if status >= 400 else "http_status_unexpected"
        raise ProbeFailure(reason, f"status {status} is not in valid_status_codes ({_codes(cfg)})", phase="first_byte")
    if cfg.valid_http_versions and response.version not in cfg.valid_http_versions:
        raise ProbeFailure(
            "http_status_unexpected",
            f"{response.version} is not in valid_http_versions ({', '.join(cfg.valid_http_versions)})",
            phase="first_byte",
        )
    is_ssl = url.lower().startswith("https://")
    if cfg.fail_if_ssl and is_ssl:
        raise ProbeFailure("http_ssl_expectation", "final response came over TLS and fail_if_ssl is set", phase="first_byte")
    if cfg.fail_if_not_ssl and not is_ssl:
        raise ProbeFailure("http_ssl_expectation", "final response did not come over TLS and fail_if_not_ssl is set", phase="first_byte")
    for match in cfg.fail_if_header_matches:
        _header_check(ctx, response, match, must_match=False)
    for match in cfg.fail_if_header_not_matches:
        _header_check(ctx, response, match, must_match=True)
    if cfg.fail_if_body_matches_regexp or cfg.fail_if_body_not_matches_regexp:
        body = response.body.decode("utf-8", "replace")
        for regexp in cfg.fail_if_body_matches_regexp:
            if regexp.search(body):
                ctx.failed_due_to_regex = True
                raise ProbeFailure("http_body_mismatch", f"body matched fail_if_body_matches_regexp {regexp.pattern!r}", phase="transfer")
        for regexp in cfg.fail_if_body_not_matches_regexp:
            if not regexp.search(body):
                ctx.failed_due_to_regex = True
                raise ProbeFailure("http_body_mismatch", f"body did not match fail_if_body_not_matches_regexp {regexp.pattern!r}", phase="transfer")


def _header_check(ctx: ProbeContext, response: _Response, match: HeaderMatch, *, must_match: bool) -> None:
    values = response.header_values(match.header)
    kind = "fail_if_header_not_matches" if must_match else "fail_if_header_matches"
    if not values:
        if match.allow_missing:
            return
        ctx.failed_due_to_regex = True
        raise ProbeFailure("http_header_mismatch", f"{kind}: header {match.header!r} is missing", phase="first_byte")
    matched = any(match.regexp.search(v) for v in values)
    if matched != must_match:
        ctx.failed_due_to_regex = True
        verb = "did not match" if must_match else "matched"
        raise ProbeFailure("http_header_mismatch", f"{kind}: header {match.header!r} {verb} {match.regexp.pattern!r}", phase="first_byte")


def _codes(cfg: HTTPProbeConfig) -> str:
    return ", ".join(map(str, cfg.valid_status_codes)) if cfg.valid_status_codes else "2xx"
