"""The http prober: HTTP/1.1 (httptools framing) or HTTP/2 (h2, over ALPN) on our own connection.

Phases per hop: dns, connect, tls (https), request (writing the request),
first_byte (request written -> first response byte: the server's processing
time, as Go's GotFirstResponseByte), transfer (headers and body). Every
redirect hop opens its own connection, so every hop's connect and TLS are
measured, never hidden by reuse; each hop keeps its own phases in the timeline.

Behaves as Go's client (and so blackbox_exporter) does where the wire allows a
choice: 1xx interim responses skipped, Content-Length and chunked framing
validated per RFC 9112, obs-fold unfolded, the request target percent-encoded,
URL userinfo sent as Basic auth, 301/302/303 turn a POST into a GET, sensitive
headers dropped on a redirect to another domain.
"""
from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import SplitResult, urljoin, urlsplit

# mrab's regex: its search() takes a timeout and can release the GIL; stdlib re can be neither
# interrupted nor run beside the loop. Until RE2 (linear time) replaces it (issue 10).
import regex as timed_re

from .. import __version__
from ..failures import ProbeFailure, Reason
from ..metrics import ProbeFamily, ProbeSamples, label_text
from ..net import http1, http2, resolve
from ..net.connection import Connection
from ..net.tls import TLSConfig
from ..result import Details, ProbeResult
from ..schema import ConfigError, Fields, Secret, compile_regex, parse_ip_protocol, reveal
from . import keepalive, resumption, stream
from .base import CONNECT, DNS, TLS, PhaseSpec, ProbeContext, Prober, parse_headers, register, tls_section
from .stream import DEFAULT_SECRET_QUERY_PARAMS, redact_url
from .connect import open_connection, start_tls

MAX_REDIRECTS = 10
USER_AGENT = f"connhealth/{__version__}"
# Go's http.Transport default MaxResponseHeaderBytes.
MAX_HEADER_BYTES = 1 << 20
# A body kept for the body regexps is never larger than this unless body_size_limit says otherwise:
# an endless body must end as a failure, not as the exporter's memory.
DEFAULT_KEEP_LIMIT = 8 << 20
_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_VERSIONS = {"HTTP/1.0": "HTTP/1.0", "HTTP/1.1": "HTTP/1.1", "HTTP/2": "HTTP/2.0", "HTTP/2.0": "HTTP/2.0"}
# Go drops these on a redirect to a host that is neither the original one nor its subdomain.
_SENSITIVE_ON_REDIRECT = frozenset({"authorization", "www-authenticate", "cookie", "cookie2"})

REASONS = {
    "http_timeout_first_byte": Reason("first_byte", "the request was sent but no response byte arrived before the deadline", "slow backend, stuck worker pool"),
    "http_status_5xx": Reason("first_byte", "the server answered with a 5xx status not in valid_status_codes", "backend error, overload, bad gateway"),
    "http_status_4xx": Reason("first_byte", "the server answered with a 4xx status not in valid_status_codes", "wrong path, auth required, rate limited"),
    "http_status_unexpected": Reason("first_byte", "the status (1xx/2xx/3xx) is not in valid_status_codes, or the HTTP version is not in valid_http_versions", "redirect not followed, unexpected success code"),
    "http_too_many_redirects": Reason("first_byte", "more than the allowed number of redirects (10)", "redirect loop"),
    "http_body_mismatch": Reason("transfer", "the body failed a fail_if_body_(not_)matches_regexp check", "error page served with 200, wrong content"),
    "http_header_mismatch": Reason("first_byte", "a header failed a fail_if_header_(not_)matches check", "missing security header, wrong content type"),
    "http_ssl_expectation": Reason("first_byte", "fail_if_ssl / fail_if_not_ssl was violated", "redirect from https to http or the other way round"),
    "http_header_too_large": Reason("transfer", "the response headers exceed 1 MiB (Go's limit)", "cookie or header explosion, not an HTTP server"),
    "http_body_too_large": Reason("transfer", "the body exceeds body_size_limit (or, kept for a body regexp, 8 MiB when no limit is set)", "endless or huge response, streaming endpoint probed as a page"),
}


@dataclass(frozen=True, slots=True)
class HeaderMatch:
    header: str
    regexp: re.Pattern[str]
    allow_missing: bool = False


@dataclass(frozen=True, slots=True)
class HTTPProbeConfig:
    valid_status_codes: tuple[int, ...] = ()  # empty = any 2xx
    valid_http_versions: tuple[str, ...] = ()  # normalised: "HTTP/2" is "HTTP/2.0"
    method: str = "GET"
    headers: tuple[tuple[str, str | Secret], ...] = ()
    body: str | Secret | None = None  # Secret when secret_body is set
    secret_query_params: frozenset[str] = DEFAULT_SECRET_QUERY_PARAMS  # lower case
    follow_redirects: bool = True
    enable_http2: bool = True  # as blackbox: offer h2 over ALPN on https
    body_size_limit: int = 0  # 0: no limit (blackbox's default)
    fail_if_ssl: bool = False
    fail_if_not_ssl: bool = False
    # timed_re patterns: searched in a thread, bounded by the probe's deadline.
    fail_if_body_matches_regexp: tuple[Any, ...] = ()
    fail_if_body_not_matches_regexp: tuple[Any, ...] = ()
    fail_if_header_matches: tuple[HeaderMatch, ...] = ()
    fail_if_header_not_matches: tuple[HeaderMatch, ...] = ()
    preferred_ip_protocol: str = "ip6"
    ip_protocol_fallback: bool = True
    tls_config: TLSConfig = field(default_factory=TLSConfig)
    keepalive: keepalive.KeepAliveConfig | None = None  # connhealth: request, idle, request on one connection

    @property
    def keeps_body(self) -> bool:
        return bool(self.fail_if_body_matches_regexp or self.fail_if_body_not_matches_regexp)


@dataclass(frozen=True, slots=True)
class HTTPDetails(Details):
    status: int | None
    version: str | None  # "HTTP/1.1", "HTTP/2.0"
    redirects: int
    content_length: int | None  # the Content-Length header, when sent
    body_length: int | None  # bytes of the (decoded-transfer) body actually read
    final_url: str

    def summary(self) -> str:
        length = self.content_length if self.content_length is not None else "-"
        return (f"HTTP {self.version or '?'} {self.status}  redirects {self.redirects}  content-length {length}"
                f"  body {self.body_length} bytes")


class _Response:
    """Filled as the exchange goes: a failure mid-body still knows the status."""

    __slots__ = ("version", "status", "headers", "body", "body_length", "content_length")

    def __init__(self) -> None:
        self.version: str | None = None
        self.status: int | None = None
        self.headers: tuple[tuple[str, str], ...] = ()
        self.body = b""
        self.body_length = 0
        self.content_length: int | None = None

    def header(self, name: str) -> str | None:
        values = self.header_values(name)
        return values[0] if values else None

    def header_values(self, name: str) -> list[str]:
        lname = name.lower()
        return [value for key, value in self.headers if key.lower() == lname]


@functools.lru_cache(maxsize=4096)  # targets repeat every probe; parsing costs more than caching
def _split_url(url: str) -> tuple[SplitResult, str, int, str]:
    """(parts, host, port, request target) of an http(s) URL; ValueError names what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{redact_url(url, DEFAULT_SECRET_QUERY_PARAMS)!r} is not an http:// or https:// URL")
    try:
        port = parts.port
        resolve.check_host(parts.hostname)
        # Go's url.Parse refuses control characters and bad %-escapes in the path.
        target = http1.request_target(parts.path, parts.query)
    except ValueError as exc:
        raise ValueError(f"{redact_url(url, DEFAULT_SECRET_QUERY_PARAMS)!r}: {exc}") from None
    return parts, parts.hostname, port or (443 if parts.scheme == "https" else 80), target


def _split_target(target: str) -> tuple[SplitResult, str, int, str]:
    try:
        return _split_url(target)
    except ValueError as exc:
        raise ProbeFailure("invalid_target", f"target {exc}") from None


def _parse_header_matches(f: Fields, key: str) -> tuple[HeaderMatch, ...]:
    out = []
    for i, raw in enumerate(f.get(key, list, [])):
        hf = Fields(raw, f"{f.path}.{key}[{i}]")
        header = hf.get("header", str, None)
        regexp = hf.get("regexp", str, None)
        if not header:
            raise ConfigError(f"{hf.path}.header: required")
        if regexp is None:
            raise ConfigError(f"{hf.path}.regexp: required")
        out.append(HeaderMatch(header, compile_regex(regexp, f"{hf.path}.regexp"), hf.get("allow_missing", bool, False)))
        hf.done()
    return tuple(out)


def _body_regexes(f: Fields, key: str) -> tuple[Any, ...]:
    out = []
    for i, pattern in enumerate(f.list_of(key, str)):
        path = f"{f.path}.{key}[{i}]"
        compile_regex(pattern, path)  # the syntax check (and its message) every regexp gets
        try:
            out.append(timed_re.compile(pattern))
        except timed_re.error as exc:
            raise ConfigError(f"{path}: invalid regexp: {exc}") from None
    return tuple(out)


class HTTPProber(Prober):
    name = "http"
    phases = (
        DNS, CONNECT, TLS,
        PhaseSpec("request", "Request sent", "request bytes handed to the socket → written (HTTP/2: preface, SETTINGS, HEADERS, DATA)"),
        PhaseSpec("first_byte", "Server processing", "request written → first byte of the response (1xx included, as Go's GotFirstResponseByte)",
                  timeout_reason="http_timeout_first_byte", limitable=True),
        PhaseSpec("transfer", "Content transfer", "first response byte → last body byte (headers, 1xx skipped, body)"),
        keepalive.IDLE, *resumption.PHASES,
    )
    reasons = {**REASONS, **keepalive.REASONS, **resumption.REASONS}
    resumable = True
    errors = (
        (http1.HeaderTooLarge, "http_header_too_large"),
        (http2.HeadersTooLarge, "http_header_too_large"),
        (http1.BodyTooLarge, "http_body_too_large"),
        (http2.BodyTooLarge, "http_body_too_large"),
        (http1.IncompleteResponse, "connection_reset"),
        (http1.ProtocolError, "protocol_error"),
        (http2.H2ProtocolError, "protocol_error"),
    )
    unsupported = frozenset({
        "basic_auth", "bearer_token", "bearer_token_file", "proxy_url", "proxy_connect_header",
        "oauth2", "http_client_config", "compression", "body_file",
        "no_proxy", "proxy_from_environment", "skip_resolve_phase_with_proxy",
        "authorization", "follow_redirects_with_auth", "no_follow_redirects", "ip_protocol_fallback_with_proxy",
        "fail_if_body_json_matches_cel", "fail_if_body_json_not_matches_cel", "http_headers",
    })

    def parse(self, f: Fields, module: str) -> HTTPProbeConfig:
        codes = tuple(f.list_of("valid_status_codes", int))
        for i, code in enumerate(codes):
            if not 100 <= code <= 599:
                raise ConfigError(f"{f.path}.valid_status_codes[{i}]: {code} is not an HTTP status code")
        versions = []
        for i, version in enumerate(f.list_of("valid_http_versions", str)):
            if version not in _VERSIONS:
                raise ConfigError(f"{f.path}.valid_http_versions[{i}]: unknown version {version!r} ({', '.join(_VERSIONS)})")
            versions.append(_VERSIONS[version])
        method = f.get("method", str, "GET").upper()
        if not re.fullmatch(r"[A-Z]+", method):
            raise ConfigError(f"{f.path}.method: invalid method {method!r}")
        proto, fallback = parse_ip_protocol(f)
        cfg = HTTPProbeConfig(
            valid_status_codes=codes,
            valid_http_versions=tuple(versions),
            method=method,
            headers=parse_headers(f),
            body=f.secret("body", f.get("secret_body", bool, False)),
            secret_query_params=DEFAULT_SECRET_QUERY_PARAMS | {p.lower() for p in f.list_of("secret_query_params", str)},
            follow_redirects=f.get("follow_redirects", bool, True),
            enable_http2=f.get("enable_http2", bool, True),
            body_size_limit=f.size("body_size_limit", 0),
            fail_if_ssl=f.get("fail_if_ssl", bool, False),
            fail_if_not_ssl=f.get("fail_if_not_ssl", bool, False),
            fail_if_body_matches_regexp=_body_regexes(f, "fail_if_body_matches_regexp"),
            fail_if_body_not_matches_regexp=_body_regexes(f, "fail_if_body_not_matches_regexp"),
            fail_if_header_matches=_parse_header_matches(f, "fail_if_header_matches"),
            fail_if_header_not_matches=_parse_header_matches(f, "fail_if_header_not_matches"),
            preferred_ip_protocol=proto,
            ip_protocol_fallback=fallback,
            tls_config=tls_section(f),
            keepalive=keepalive.parse(f),
        )
        f.done()
        if cfg.keepalive is not None and cfg.keeps_body:
            raise ConfigError(f"{f.path}.keepalive: the body regexps do not apply to a keep-alive check")
        if cfg.fail_if_ssl and cfg.fail_if_not_ssl:
            raise ConfigError(f"{f.path}: fail_if_ssl and fail_if_not_ssl cannot both be true")
        return cfg

    def display_target(self, target: str, settings: HTTPProbeConfig) -> str:
        return redact_url(target, settings.secret_query_params)

    def check_target(self, target: str) -> None:
        _split_target(target)

    def expected_phases(self, target: str, settings: HTTPProbeConfig) -> tuple[str, ...]:
        return stream.expected_phases(self.phases, target, stream.HTTP_SCHEMES,
                                      frozenset({"idle"}) if settings.keepalive is not None else frozenset())

    async def probe(self, ctx: ProbeContext, target: str, settings: HTTPProbeConfig) -> None:
        cfg = settings
        if cfg.keepalive is not None:
            await _keepalive(ctx, target, cfg, cfg.keepalive)
            await _resumption(ctx, target, cfg)
            return
        first_host = _split_target(target)[1]
        url, method = target, cfg.method
        body = reveal(cfg.body).encode() if cfg.body is not None else None
        headers = [(k, reveal(v)) for k, v in cfg.headers]  # secrets are typed until they go on the wire
        response: _Response | None = None
        try:
            for redirects in range(MAX_REDIRECTS + 2):
                if redirects > MAX_REDIRECTS:
                    last = redact_url(url, cfg.secret_query_params)
                    raise ProbeFailure("http_too_many_redirects", f"more than {MAX_REDIRECTS} redirects (last: {last})",
                                       phase="first_byte")
                current = _Response()
                try:
                    await _exchange(ctx, url, method, headers, body, cfg, current)
                finally:
                    if current.status is not None:  # a failure mid-body still knows its status
                        response = current
                assert response is not None
                location = response.header("Location")
                if not (cfg.follow_redirects and response.status in _REDIRECT_CODES and location):
                    break
                previous, url = url, urljoin(url, location)
                headers = _with_referer(headers, cfg.headers, previous, url)
                if response.status in (301, 302, 303):
                    # Go: RFC 7231 would allow keeping the method; browsers and Go turn it into GET, without the body.
                    if method not in ("GET", "HEAD"):
                        method = "GET"
                    body = None
                if not _same_or_subdomain(first_host, urlsplit(url).hostname or ""):
                    headers = [(k, v) for k, v in headers if k.lower() not in _SENSITIVE_ON_REDIRECT]
                ctx.log(f"redirect {response.status} to {redact_url(url, cfg.secret_query_params)} ({method})")
        finally:
            if response is not None:
                ctx.details = HTTPDetails(
                    status=response.status, version=response.version, redirects=len(ctx.hops) - 1,
                    content_length=response.content_length, body_length=response.body_length,
                    final_url=redact_url(url, cfg.secret_query_params),
                )
        assert response is not None
        _check(ctx, cfg, url, response)
        if cfg.keeps_body:
            await _check_body(ctx, cfg, response)
        await _resumption(ctx, url, cfg)

    def exposition(self, result: ProbeResult) -> Iterable[tuple[ProbeFamily, ProbeSamples]]:
        http = result.details if isinstance(result.details, HTTPDetails) else None
        total = result.total_phases()
        yield _HTTP_DURATION, [(text, sum([total.get(p, 0.0) for p in ours])) for text, ours in _BLACKBOX_HTTP_PHASES]
        if http is None:  # no response at all: blackbox's zero values
            yield from ((family, 0.0) for family in _HTTP_GAUGES)
            return
        ssl = http.final_url.lower().startswith("https://") and result.tls is not None and result.tls.completed
        yield _HTTP_CONTENT_LENGTH, float(http.content_length) if http.content_length is not None else -1.0
        yield _HTTP_REDIRECTS, float(http.redirects)
        yield _HTTP_SSL, 1.0 if ssl else 0.0
        yield _HTTP_STATUS_CODE, float(http.status or 0)
        yield _HTTP_BODY_LENGTH, float(http.body_length or 0)
        yield _HTTP_VERSION, float(http.version.split("/", 1)[1]) if http.version else 0.0


# blackbox phase names for probe_http_duration_seconds, mapped from ours. Its
# "processing" runs from getting the connection to the first response byte
# (Go's httptrace GotConn -> GotFirstResponseByte), so it includes writing the
# request: our request + first_byte.
_BLACKBOX_HTTP_PHASES = tuple((label_text((("phase", bb),)), ours) for bb, ours in (
    ("connect", ("connect",)),
    ("processing", ("request", "first_byte")),
    ("resolve", ("dns",)),
    ("tls", ("tls",)),
    ("transfer", ("transfer",)),
))
_HTTP_DURATION = ProbeFamily("probe_http_duration_seconds", "Duration of http request by phase, summed over all redirects")
_HTTP_CONTENT_LENGTH = ProbeFamily("probe_http_content_length", "Length of http content response")
_HTTP_REDIRECTS = ProbeFamily("probe_http_redirects", "The number of redirects")
_HTTP_SSL = ProbeFamily("probe_http_ssl", "Indicates if SSL was used for the final redirect")
_HTTP_STATUS_CODE = ProbeFamily("probe_http_status_code", "Response HTTP status code")
_HTTP_BODY_LENGTH = ProbeFamily("probe_http_uncompressed_body_length", "Length of uncompressed response body")
_HTTP_VERSION = ProbeFamily("probe_http_version", "Returns the version of HTTP of the probe response")
_HTTP_GAUGES = (_HTTP_CONTENT_LENGTH, _HTTP_REDIRECTS, _HTTP_SSL, _HTTP_STATUS_CODE, _HTTP_BODY_LENGTH, _HTTP_VERSION)


def _with_referer(headers: list[tuple[str, str]], configured: tuple[tuple[str, str | Secret], ...], previous: str,
                  url: str) -> list[tuple[str, str]]:
    """Go's client sends the previous URL (without userinfo) as Referer on a redirect, never from https to http."""
    if any(k.lower() == "referer" for k, _ in configured):
        return headers
    kept = [(k, v) for k, v in headers if k.lower() != "referer"]
    prev = urlsplit(previous)
    if prev.scheme == "https" and urlsplit(url).scheme == "http":
        return kept
    return [*kept, ("Referer", prev._replace(netloc=prev.netloc.rpartition("@")[2]).geturl())]


def _same_or_subdomain(first: str, host: str) -> bool:
    first, host = first.lower().rstrip("."), host.lower().rstrip(".")
    return host == first or host.endswith("." + first)


async def _exchange(ctx: ProbeContext, url: str, method: str, config_headers: list[tuple[str, str]], body: bytes | None,
                    cfg: HTTPProbeConfig, response: _Response) -> None:
    try:
        parts, host, port, target = _split_url(url)
    except ValueError as exc:
        # Only a redirect can get here: the target itself passed check_target.
        raise ProbeFailure("protocol_error", f"redirect to an unusable URL: {exc}", phase="first_byte") from None
    headers = list(config_headers)
    if parts.username is not None and not any(k.lower() == "authorization" for k, _ in headers):
        # Go's client: URL userinfo becomes Basic auth unless an Authorization header is set.
        try:
            headers.append(("Authorization", http1.basic_auth(parts.username, parts.password)))
        except ValueError as exc:
            raise ProbeFailure("invalid_target", f"URL userinfo: {exc}", phase="probe") from None
    tls = parts.scheme == "https"
    conn: Connection | None = None
    ctx.begin_hop(method, redact_url(url, cfg.secret_query_params))
    try:
        conn = await open_connection(ctx, host, port, cfg.preferred_ip_protocol, cfg.ip_protocol_fallback)
        if tls:
            await start_tls(ctx, conn, host, cfg.tls_config, ("h2", "http/1.1") if cfg.enable_http2 else ("http/1.1",))
        # Per-probe values (traceparent) travel apart from the headers: the request head is built once per URL.
        propagation = [(k, v) for k, v in ctx.propagation_headers() if not any(k == h.lower() for h, _ in config_headers)]
        keep_limit = cfg.body_size_limit or DEFAULT_KEEP_LIMIT
        if tls and ctx.tls is not None and ctx.tls.alpn == "h2":
            await _h2(ctx, conn, method, _authority(host, port, tls), target, headers + propagation, body, cfg, keep_limit,
                      response)
        else:
            await _h1(ctx, conn, method, _authority(host, port, tls), target, headers, propagation, body, cfg, keep_limit,
                      response)
        ctx.log("%s %s, %d body bytes", response.version, response.status, response.body_length)
    finally:
        ctx.end_hop(response.status)
        if conn is not None:
            conn.close()


def _authority(host: str, port: int, tls: bool) -> str:
    authority = f"[{host}]" if ":" in host else host
    return authority if port == (443 if tls else 80) else f"{authority}:{port}"


async def _h1(ctx: ProbeContext, conn: Connection, method: str, authority: str, target: str, headers: list[tuple[str, str]],
              propagation: list[tuple[str, str]], body: bytes | None, cfg: HTTPProbeConfig, keep_limit: int,
              response: _Response) -> None:
    conn.write(http1.build_request(method, target, authority, headers, body, user_agent=USER_AGENT, extra=propagation))
    await ctx.phase("request", conn.drain())
    reader = http1.ResponseReader(method, max_header_bytes=MAX_HEADER_BYTES)
    await ctx.phase("first_byte", http1.wait_first_byte(conn, reader))
    first = ctx.kernel_end(conn.arrival_ns())

    async def receive() -> None:
        head = await http1.read_head(conn, reader)
        response.version, response.status, response.headers = head.version, head.status, head.headers
        response.content_length = head.content_length
        response.body_length, response.body = await http1.read_body(
            conn, reader, limit=cfg.body_size_limit or None, keep=cfg.keeps_body, keep_limit=keep_limit)

    try:
        await ctx.phase("transfer", receive())
        ctx.kernel_end(conn.arrival_ns(), first)
    finally:
        # A body cut short (timeout, reset, limit) still reports what arrived, as blackbox's byte
        # counter does; its MaxBytesReader hands out at most body_size_limit bytes.
        response.body_length = max(response.body_length, min(reader.body_bytes, cfg.body_size_limit or reader.body_bytes))


async def _h2(ctx: ProbeContext, conn: Connection, method: str, authority: str, target: str, headers: list[tuple[str, str]],
              body: bytes | None, cfg: HTTPProbeConfig, keep_limit: int, response: _Response) -> None:
    exchange = http2.H2Exchange(conn)
    h2_headers = [(k.lower(), v) for k, v in headers if k.lower() not in ("host", "connection")]
    if not any(k == "user-agent" for k, _ in h2_headers):
        h2_headers.append(("user-agent", USER_AGENT))
    if not any(k == "accept" for k, _ in h2_headers):
        h2_headers.append(("accept", "*/*"))
    await ctx.phase("request", exchange.send_request(method, authority, target, "https", h2_headers, body))
    await ctx.phase("first_byte", exchange.wait_first_byte())
    first = ctx.kernel_end(conn.arrival_ns())

    async def receive() -> None:
        status, head = await exchange.read_head()
        response.version, response.status, response.headers = "HTTP/2.0", status, head
        cl = response.header("content-length")
        response.content_length = int(cl) if cl is not None and cl.isdigit() else None
        response.body_length, response.body = await exchange.read_body(
            limit=cfg.body_size_limit or None, keep=cfg.keeps_body, keep_limit=keep_limit)

    await ctx.phase("transfer", receive())
    ctx.kernel_end(conn.arrival_ns(), first)


def _check(ctx: ProbeContext, cfg: HTTPProbeConfig, url: str, response: _Response) -> None:
    """The module's expectations, in blackbox_exporter's order."""
    status = response.status or 0
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


async def _check_body(ctx: ProbeContext, cfg: HTTPProbeConfig, response: _Response) -> None:
    """The body regexps, last as in blackbox. Each runs in a thread, bounded by what is left of the
    deadline: a backtracking pattern (``(a+)+$``) on a hostile body fails the probe, not the loop."""
    body = response.body.decode("utf-8", "replace")
    for regexp in cfg.fail_if_body_matches_regexp:
        if await _search(ctx, regexp, body):
            ctx.failed_due_to_regex = True
            raise ProbeFailure("http_body_mismatch", f"body matched fail_if_body_matches_regexp {regexp.pattern!r}", phase="transfer")
    for regexp in cfg.fail_if_body_not_matches_regexp:
        if not await _search(ctx, regexp, body):
            ctx.failed_due_to_regex = True
            raise ProbeFailure("http_body_mismatch", f"body did not match fail_if_body_not_matches_regexp {regexp.pattern!r}", phase="transfer")


async def _search(ctx: ProbeContext, regexp: Any, body: str) -> bool:
    budget = ctx.remaining()
    try:
        if budget <= 0:
            raise TimeoutError
        return await asyncio.to_thread(_timed_search, regexp, body, budget)
    except TimeoutError:
        raise ProbeFailure("probe_timeout", f"body regexp {regexp.pattern!r} did not finish before the deadline "
                                            f"(catastrophic backtracking?)", phase="transfer") from None


def _timed_search(regexp: Any, body: str, timeout: float) -> bool:
    return regexp.search(body, concurrent=True, timeout=timeout) is not None


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


async def _keepalive(ctx: ProbeContext, target: str, cfg: HTTPProbeConfig, ka: keepalive.KeepAliveConfig) -> None:
    """http.keepalive: two requests on one HTTP/1.1 connection with an idle between (probers/keepalive.py)."""
    answers: list[keepalive.Answer] = []
    try:
        await keepalive.check(ctx, target, ka, answers, method=cfg.method, headers=[(k, reveal(v)) for k, v in cfg.headers],
                              body=reveal(cfg.body).encode() if cfg.body is not None else None, user_agent=USER_AGENT,
                              body_limit=cfg.body_size_limit or None, ip_protocol=cfg.preferred_ip_protocol,
                              fallback=cfg.ip_protocol_fallback, tls_config=cfg.tls_config)
    finally:
        response = _Response()
        if answers:
            last = answers[-1]
            response.version, response.status, response.headers = last.version, last.status, last.headers
            response.content_length, response.body_length = last.content_length, last.body_length
            ctx.details = HTTPDetails(status=last.status, version=last.version, redirects=0, content_length=last.content_length,
                                      body_length=last.body_length, final_url=ctx.target)
    _check(ctx, cfg, target, response)


async def _resumption(ctx: ProbeContext, url: str, cfg: HTTPProbeConfig) -> None:
    """The module's tls_resumption check, against the (final) https URL's peer."""
    if ctx.tls is not None and url.lower().startswith("https://"):
        await resumption.check(ctx, _split_url(url)[1], cfg.tls_config,
                               ("h2", "http/1.1") if cfg.enable_http2 else ("http/1.1",))


def _codes(cfg: HTTPProbeConfig) -> str:
    return ", ".join(map(str, cfg.valid_status_codes)) if cfg.valid_status_codes else "2xx"


register(HTTPProber())
