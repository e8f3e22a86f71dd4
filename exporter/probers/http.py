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
import dataclasses
import functools
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import SplitResult, urljoin, urlsplit

import cel

from .. import __version__, filerefs
from ..failures import ProbeFailure, Reason
from ..metrics import ProbeFamily, ProbeSamples, label_text
from ..net import codings, http1, http2, proxy, resolve
from ..net.connection import Connection
from ..net.guard import TargetForbidden
from ..net.tls import TLSConfig
from ..result import Details, ProbeResult
from ..schema import ConfigError, Fields, Regexp, Secret, compile_regex, go_text, join_host_port, parse_ip_protocol, reveal
from . import httpauth, keepalive, resumption, stream
from .base import CONNECT, DNS, TLS, PhaseSpec, ProbeContext, Prober, parse_headers, register, tls_section
from .stream import DEFAULT_SECRET_QUERY_PARAMS, redact_url
from .connect import open_connection, peer_address, start_tls, tls_context

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
    "http_body_cel": Reason("transfer", "the body is not JSON, or failed a fail_if_body_json_(not_)matches_cel expression (or it did not evaluate to a bool)", "error payload served with 200, wrong API version, health field false"),
    "http_header_mismatch": Reason("first_byte", "a header failed a fail_if_header_(not_)matches check", "missing security header, wrong content type"),
    "http_ssl_expectation": Reason("first_byte", "fail_if_ssl / fail_if_not_ssl was violated", "redirect from https to http or the other way round"),
    "http_header_too_large": Reason("transfer", "the response headers exceed 1 MiB (Go's limit)", "cookie or header explosion, not an HTTP server"),
    "http_body_too_large": Reason("transfer", "the body (decoded, with compression) exceeds body_size_limit (or, kept for a body regexp, 8 MiB when no limit is set)", "endless or huge response, streaming endpoint probed as a page, compression bomb"),
    "proxy_connect_failed": Reason("proxy", "the proxy refused the CONNECT (non-2xx), or closed or garbled its answer", "proxy ACL denies the target or port, proxy authentication required (407), target unreachable from the proxy (502)"),
    "http_content_decoding": Reason("transfer", "the body is not valid in the module's compression (gzip, deflate, br, zstd)", "server ignored Accept-Encoding, truncated or corrupt compressed body"),
}


@dataclass(frozen=True, slots=True)
class HeaderMatch:
    header: str
    regexp: Regexp
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
    # RE2 over the raw body bytes, as Go's regexp.Match (schema.compile_regex).
    fail_if_body_matches_regexp: tuple[Regexp, ...] = ()
    fail_if_body_not_matches_regexp: tuple[Regexp, ...] = ()
    fail_if_header_matches: tuple[HeaderMatch, ...] = ()
    fail_if_header_not_matches: tuple[HeaderMatch, ...] = ()
    preferred_ip_protocol: str = "ip6"
    ip_protocol_fallback: bool = True
    tls_config: TLSConfig = field(default_factory=TLSConfig)
    keepalive: keepalive.KeepAliveConfig | None = None  # connhealth: request, idle, request on one connection
    auth: httpauth.BasicAuth | httpauth.Authorization | None = None  # basic_auth, bearer_token(_file), authorization
    compression: str = ""  # decode the final body so (codings.CODINGS); "" and identity: as sent
    proxy: proxy.ProxyConfig | None = None  # proxy_url / proxy_from_environment and friends
    oauth2: httpauth.OAuth2 | None = None  # client credentials: a bearer token fetched (and cached) per client
    body_file: str | None = None  # the request body, read from this file when a probe uses it
    # http_headers (prometheus/common's format): (name, value); a str, a Secret, or a file path (is_file).
    http_headers: tuple[tuple[str, str | Secret, bool], ...] = ()
    fail_if_body_json_matches_cel: Any = None  # cel.Program
    fail_if_body_json_not_matches_cel: Any = None

    @property
    def keeps_body(self) -> bool:
        return bool(self.fail_if_body_matches_regexp or self.fail_if_body_not_matches_regexp or self.has_cel)

    @property
    def has_cel(self) -> bool:
        return self.fail_if_body_json_matches_cel is not None or self.fail_if_body_json_not_matches_cel is not None


@dataclass(frozen=True, slots=True)
class HTTPDetails(Details):
    status: int | None
    version: str | None  # "HTTP/1.1", "HTTP/2.0"
    redirects: int
    content_length: int | None  # the Content-Length header, when sent
    body_length: int | None  # bytes of the (decoded-transfer) body actually read
    final_url: str
    failed_due_to_cel: bool | None = None  # None: the module has no CEL check (blackbox then has no such series)

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


def _body_regexes(f: Fields, key: str) -> tuple[Regexp, ...]:
    # Bytes patterns: Go matches the body's bytes, not a decoded copy. No groups: a yes/no
    # answer comes from RE2's DFA alone (an 8 MiB body in ~35 ms instead of ~500 ms).
    return tuple(compile_regex(pattern.encode("utf-8", "surrogatepass"), f"{f.p(key)}[{i}]", capture=False)
                 for i, pattern in enumerate(f.list_of(key, str)))


class HTTPProber(Prober):
    name = "http"
    phases = (
        httpauth.OAUTH2_PHASE, DNS, CONNECT,
        PhaseSpec("proxy", "Proxy CONNECT", "CONNECT sent to the proxy → its 2xx answer (https targets through a proxy)",
                  limitable=True, optional=True),
        TLS,
        PhaseSpec("request", "Request sent", "request bytes handed to the socket → written (HTTP/2: preface, SETTINGS, HEADERS, DATA)"),
        PhaseSpec("first_byte", "Server processing", "request written → first byte of the response (1xx included, as Go's GotFirstResponseByte)",
                  timeout_reason="http_timeout_first_byte", limitable=True),
        PhaseSpec("transfer", "Content transfer", "first response byte → last body byte (headers, 1xx skipped, body)"),
        keepalive.IDLE, *resumption.PHASES,
    )
    reasons = {**REASONS, **httpauth.REASONS, **keepalive.REASONS, **resumption.REASONS}
    resumable = True
    errors = (
        (http1.HeaderTooLarge, "http_header_too_large"),
        (http2.HeadersTooLarge, "http_header_too_large"),
        (http1.BodyTooLarge, "http_body_too_large"),
        (http2.BodyTooLarge, "http_body_too_large"),
        (codings.DecodeError, "http_content_decoding"),
        (proxy.ProxyError, "proxy_connect_failed"),
        (http1.IncompleteResponse, "connection_reset"),
        (http1.ProtocolError, "protocol_error"),
        (http2.H2ProtocolError, "protocol_error"),
    )
    unsupported = frozenset({
        "http_client_config",
        "follow_redirects_with_auth", "ip_protocol_fallback_with_proxy",
        "enable_http3",  # HTTP/3 needs a QUIC stack under our connection layer (README)
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
        follow = f.get("follow_redirects", bool, True)
        no_follow = f.get("no_follow_redirects", bool, None)  # blackbox's older spelling; it wins when set
        cfg = HTTPProbeConfig(
            valid_status_codes=codes,
            valid_http_versions=tuple(versions),
            method=method,
            headers=parse_headers(f),
            body=f.secret("body", f.get("secret_body", bool, False)),
            secret_query_params=DEFAULT_SECRET_QUERY_PARAMS | {p.lower() for p in f.list_of("secret_query_params", str)},
            follow_redirects=follow if no_follow is None else not no_follow,
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
            auth=httpauth.parse(f),
            compression=_compression(f),
            proxy=httpauth.parse_proxy(f),
            oauth2=httpauth.parse_oauth2(f),
            body_file=f.get("body_file", str, None),
            http_headers=_http_headers(f),
            fail_if_body_json_matches_cel=_cel(f, "fail_if_body_json_matches_cel"),
            fail_if_body_json_not_matches_cel=_cel(f, "fail_if_body_json_not_matches_cel"),
        )
        f.done()
        if cfg.keepalive is not None and cfg.keeps_body:
            raise ConfigError(f"{f.path}.keepalive: the body regexps do not apply to a keep-alive check, nor the CEL checks")
        if cfg.keepalive is not None and (cfg.proxy is not None or cfg.compression):
            raise ConfigError(f"{f.path}.keepalive: a keep-alive check measures the target's own connection: "
                              f"not through a proxy, and without compression")
        for name, value in cfg.headers:
            if name.lower() == "accept-encoding" and not _accepts(reveal(value), cfg.compression):
                raise ConfigError(f"{f.path}.headers.{name}: {reveal(value)!r} does not accept compression "
                                  f"{cfg.compression!r}: the response could not be decoded")
        if cfg.body is not None and cfg.body_file is not None:
            raise ConfigError(f"{f.path}: setting body and body_file both are not allowed")
        if cfg.oauth2 is not None and cfg.auth is not None:
            raise ConfigError(f"{f.path}: at most one of basic_auth, authorization, bearer_token and oauth2 may be set")
        if cfg.fail_if_ssl and cfg.fail_if_not_ssl:
            raise ConfigError(f"{f.path}: fail_if_ssl and fail_if_not_ssl cannot both be true")
        return cfg

    def display_target(self, target: str, settings: HTTPProbeConfig) -> str:
        return redact_url(target, settings.secret_query_params)

    def with_hostname(self, settings: HTTPProbeConfig, hostname: str) -> HTTPProbeConfig:
        """blackbox: /probe?hostname= is the Host header; a different Host in the module is an error (400)."""
        for name, value in settings.headers:
            if name.lower() == "host":
                if isinstance(value, Secret) or value != hostname:
                    shown = "<secret>" if isinstance(value, Secret) else value
                    raise ValueError(f"host header defined both in module configuration ({shown}) and with "
                                     f"URL-parameter 'hostname' ({hostname})")
                return settings
        return dataclasses.replace(settings, headers=(*settings.headers, ("Host", hostname)))

    def check_target(self, target: str) -> None:
        _split_target(target)

    def expected_phases(self, target: str, settings: HTTPProbeConfig) -> tuple[str, ...]:
        opted = {"idle"} if settings.keepalive is not None else set()
        if settings.oauth2 is not None:
            opted.add("oauth2")
        if settings.proxy is not None and target.lower().startswith("https:"):
            opted.add("proxy")
        return stream.expected_phases(self.phases, target, stream.HTTP_SCHEMES, frozenset(opted))

    async def probe(self, ctx: ProbeContext, target: str, settings: HTTPProbeConfig) -> None:
        cfg = settings
        if cfg.keepalive is not None:
            await _keepalive(ctx, target, cfg, cfg.keepalive)
            await _resumption(ctx, target, cfg)
            return
        first_host = _split_target(target)[1]
        if target[:8].lower() == "https://":
            await tls_context(cfg.tls_config)  # its files are read (or missing) before anything is sent
        url, method = target, cfg.method
        body = await _request_body(cfg)
        headers = await _request_headers(cfg)  # secrets are typed until they go on the wire
        # Credentials (files read now, at probe time) go to the target's host and its subdomains only.
        auth = (first_host, await _authorization(ctx, cfg)) if cfg.auth is not None or cfg.oauth2 is not None else None
        response: _Response | None = None
        not_followed = False  # a redirect left unfollowed (follow_redirects: false)
        try:
            for redirects in range(MAX_REDIRECTS + 2):
                if redirects > MAX_REDIRECTS:
                    last = redact_url(url, cfg.secret_query_params)
                    raise ProbeFailure("http_too_many_redirects", f"more than {MAX_REDIRECTS} redirects (last: {last})",
                                       phase="first_byte")
                current = _Response()
                try:
                    await _exchange(ctx, url, method, headers, body, cfg, current, auth)
                finally:
                    if current.status is not None:  # a failure mid-body still knows its status
                        response = current
                assert response is not None
                location = response.header("Location")
                if not (response.status in _REDIRECT_CODES and location):
                    break
                if not cfg.follow_redirects:
                    not_followed = True
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
                # As Go's client (so blackbox): a redirect refused by CheckRedirect counts as one, and
                # its body is closed unread.
                ctx.details = HTTPDetails(
                    status=response.status, version=response.version, redirects=len(ctx.hops) - 1 + not_followed,
                    content_length=response.content_length, body_length=0 if not_followed else response.body_length,
                    final_url=redact_url(url, cfg.secret_query_params), failed_due_to_cel=False if cfg.has_cel else None,
                )
        assert response is not None
        _check(ctx, cfg, url, response)
        if cfg.keeps_body:
            await _check_body(ctx, cfg, response)
        if cfg.has_cel:
            await _check_cel(ctx, cfg, response)
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
        if http.failed_due_to_cel is not None:
            yield _FAILED_DUE_TO_CEL, 1.0 if http.failed_due_to_cel else 0.0


# blackbox phase names for probe_http_duration_seconds, mapped from ours. Its
# "processing" runs from getting the connection to the first response byte
# (Go's httptrace GotConn -> GotFirstResponseByte), so it includes writing the
# request: our request + first_byte.
_BLACKBOX_HTTP_PHASES = tuple((label_text((("phase", bb),)), ours) for bb, ours in (
    ("connect", ("connect", "proxy")),
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
_FAILED_DUE_TO_CEL = ProbeFamily("probe_failed_due_to_cel", "Indicates if probe failed due to CEL expression not matching")
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
                    cfg: HTTPProbeConfig, response: _Response, auth: tuple[str, str] | None = None) -> None:
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
    if auth is not None and _same_or_subdomain(auth[0], host) and not any(k.lower() == "authorization" for k, _ in headers):
        headers.append(("Authorization", auth[1]))
    tls = parts.scheme == "https"
    conn: Connection | None = None
    ctx.begin_hop(method, redact_url(url, cfg.secret_query_params))
    try:
        via, address = await _choose_proxy(ctx, cfg, parts.scheme, host, port)
        if via is None:
            conn = await open_connection(ctx, address, port, cfg.preferred_ip_protocol, cfg.ip_protocol_fallback)
        else:
            conn = await _through_proxy(ctx, via, cfg, tls, address, port)
            if not tls:  # absolute form to the proxy; the Host header stays the target's
                target = f"http://{_authority(address, port, False)}{target}"
                if via.authorization is not None:
                    headers.append(("Proxy-Authorization", reveal(via.authorization)))
        if tls:
            await start_tls(ctx, conn, host, cfg.tls_config, ("h2", "http/1.1") if cfg.enable_http2 else ("http/1.1",))
        # Per-probe values (traceparent) travel apart from the headers: the request head is built once per URL.
        propagation = ctx.propagation_headers()
        if config_headers:  # a configured traceparent (or baggage) is the user's, and stays
            configured = {h.lower() for h, _ in config_headers}
            propagation = [(k, v) for k, v in propagation if k not in configured]
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


async def _choose_proxy(ctx: ProbeContext, cfg: HTTPProbeConfig, scheme: str, host: str,
                        port: int) -> tuple[proxy.ProxyURL | None, str]:
    """(the proxy for this request or None, the target as it is asked for: its address once resolved here).

    As blackbox, with a proxy the target is still resolved here (the dns phase; the proxy is then
    asked for the address) unless skip_resolve_phase_with_proxy. The SSRF guard still decides where
    the probe goes: the target's name, port and address (with skip_resolve_phase_with_proxy the name
    is resolved for the check only, untimed); the proxy's own address passes it as any connection does.
    """
    pcfg = cfg.proxy
    if pcfg is None or pcfg.for_scheme(scheme) is None:
        return None, host
    if pcfg.skip_resolve:
        via = pcfg.for_target(scheme, host, port)
        if via is not None and ctx.guard is not None:
            await _guard_unresolved(ctx, host, port, cfg)
        return via, host
    address = (await peer_address(ctx, host, port, cfg.preferred_ip_protocol, cfg.ip_protocol_fallback))[0]
    return pcfg.for_target(scheme, host, port, address), address


async def _through_proxy(ctx: ProbeContext, via: proxy.ProxyURL, cfg: HTTPProbeConfig, tls: bool, address: str,
                         port: int) -> Connection:
    """The connection to ``via``: for https a tunnel to ``address``:port (CONNECT); TLS is the caller's."""
    assert cfg.proxy is not None
    ctx.log("through proxy %s", via.shown)
    conn = await open_connection(ctx, via.host, via.port, cfg.preferred_ip_protocol, cfg.ip_protocol_fallback, peer=False)
    if tls:
        authority = join_host_port(address, port)
        try:
            await ctx.phase("proxy", proxy.tunnel(conn, authority, httpauth.connect_headers(cfg.proxy, via)))
        except BaseException:
            conn.close()
            raise
        ctx.log("CONNECT %s: tunnel established", authority)
    return conn


async def _guard_unresolved(ctx: ProbeContext, host: str, port: int, cfg: HTTPProbeConfig) -> None:
    """skip_resolve_phase_with_proxy under the guard: the address is checked all the same."""
    assert ctx.guard is not None
    ctx.guard.check_name(host, port)
    known = resolve.literal(host)
    if known is None:
        try:
            known = await resolve.resolve(host, resolve.families(cfg.preferred_ip_protocol, cfg.ip_protocol_fallback),
                                          ctx.resolver.nameservers, ctx.resolver.timeout, max(ctx.remaining(), 0.001))
        except Exception as exc:
            raise TargetForbidden(f"{host}: probe_guard needs the address it resolves to, and resolving it here failed "
                                  f"({type(exc).__name__}); skip_resolve_phase_with_proxy cannot bypass the guard") from None
    ctx.guard.check_address(host, known[0], port)


async def _authorization(ctx: ProbeContext, cfg: HTTPProbeConfig) -> str:
    if cfg.oauth2 is not None:
        return await httpauth.oauth2_header(ctx, cfg.oauth2)
    assert cfg.auth is not None
    return await cfg.auth.header()


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
    decoder: codings.Decoder | None = None
    first = ctx.kernel_end(conn.arrival_ns())

    async def receive() -> None:
        head = await http1.read_head(conn, reader)
        response.version, response.status, response.headers = head.version, head.status, head.headers
        response.content_length = head.content_length
        nonlocal decoder
        decoder = _decoder(cfg, response)
        response.body_length, response.body = await http1.read_body(
            conn, reader, limit=cfg.body_size_limit or None, keep=cfg.keeps_body, keep_limit=keep_limit, decoder=decoder)

    try:
        await ctx.phase("transfer", receive())
        ctx.kernel_end(conn.arrival_ns(), first)
    finally:
        # A body cut short (timeout, reset, limit) still reports what arrived, as blackbox's byte
        # counter does; its MaxBytesReader hands out at most body_size_limit (decoded) bytes.
        got = decoder.decoded if decoder is not None else reader.body_bytes
        response.body_length = max(response.body_length, min(got, cfg.body_size_limit or got))


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
            limit=cfg.body_size_limit or None, keep=cfg.keeps_body, keep_limit=keep_limit, decoder=_decoder(cfg, response))

    await ctx.phase("transfer", receive())
    ctx.kernel_end(conn.arrival_ns(), first)


# prometheus/common refuses these in http_headers: the client sets them itself.
_RESERVED_HEADERS = frozenset(h.lower() for h in (
    "Authorization", "Host", "Content-Encoding", "Content-Length", "Content-Type", "User-Agent", "Connection",
    "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Www-Authenticate", "Accept-Encoding",
    "X-Prometheus-Remote-Write-Version", "X-Prometheus-Remote-Read-Version", "X-Prometheus-Scrape-Timeout-Seconds",
    "X-Amz-Date", "X-Amz-Security-Token", "X-Amz-Content-Sha256"))


def _http_headers(f: Fields) -> tuple[tuple[str, str | Secret, bool], ...]:
    """http_headers: {name: {values: [...], secrets: [...], files: [...]}}, added in that order (Header.Add)."""
    out: list[tuple[str, str | Secret, bool]] = []
    for name, raw in f.get("http_headers", dict, {}).items():
        hf = Fields(raw, f"{f.p('http_headers')}.{name}")
        name = str(name)
        if name.lower() in _RESERVED_HEADERS:
            raise ConfigError(f"{hf.path}: setting header {name!r} is not allowed (the client sets it)")
        for key, kind in (("values", "value"), ("secrets", "secret"), ("files", "file")):
            for i, value in enumerate(hf.list_of(key, str)):
                if kind != "file":
                    try:
                        http1.validate_header(name, value)
                    except ValueError as exc:
                        raise ConfigError(f"{hf.path}.{key}[{i}]: {exc}") from None
                out.append((name, Secret(value) if kind == "secret" else value, kind == "file"))
        hf.done()
    return tuple(out)


async def _request_headers(cfg: HTTPProbeConfig) -> list[tuple[str, str]]:
    """headers, then http_headers (their files read now, trimmed as Go's strings.TrimSpace)."""
    headers = [(k, reveal(v)) for k, v in cfg.headers]
    for name, value, is_file in cfg.http_headers:
        if is_file:
            text = (await filerefs.read(str(value), f"http_headers.{name} file", httpauth.MAX_CREDENTIAL_FILE)).decode(
                "utf-8", "replace").strip()
            try:
                http1.validate_header(name, text)
            except ValueError as exc:
                raise ProbeFailure("config_file_missing", f"http_headers.{name} file {value}: {exc}", phase="probe") from None
            headers.append((name, text))
        else:
            headers.append((name, reveal(value)))
    return headers


async def _request_body(cfg: HTTPProbeConfig) -> bytes | None:
    if cfg.body_file is not None:
        return await filerefs.read(cfg.body_file, "body_file")
    return reveal(cfg.body).encode() if cfg.body is not None else None


def _cel(f: Fields, key: str) -> Any:
    expression = f.get(key, str, None)
    if expression is None:
        return None
    if len(expression) > 64 << 10:
        raise ConfigError(f"{f.p(key)}: CEL expression longer than 64 KiB")
    try:
        return cel.compile(expression)
    except Exception as exc:  # the binding raises ValueError with the parser's message
        raise ConfigError(f"{f.p(key)}: invalid CEL expression: {exc}") from None


def _eval_cel(program: Any, body: bytes) -> tuple[bool | None, str]:
    """(result, problem) in a thread: JSON decoding and evaluation of a body of up to the keep limit."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        return None, f"body is not JSON: {exc}"
    try:
        result = program.execute({"body": data})
    except Exception as exc:  # a missing key, a type error: blackbox fails the probe
        return None, f"error evaluating CEL expression: {type(exc).__name__}: {exc}"
    if not isinstance(result, bool):
        return None, f"CEL expression evaluated to {type(result).__name__}, not a bool"
    return result, ""


async def _check_cel(ctx: ProbeContext, cfg: HTTPProbeConfig, response: _Response) -> None:
    """blackbox's CEL checks, after the regexps: the body as JSON, bound to ``body``. Off the loop, bounded by the deadline."""
    failed = True
    try:
        for program, fail_when in ((cfg.fail_if_body_json_matches_cel, True), (cfg.fail_if_body_json_not_matches_cel, False)):
            if program is None:
                continue
            budget = ctx.remaining()
            if budget <= 0:
                raise ProbeFailure("probe_timeout", "no time left for the CEL checks", phase="transfer")
            try:
                result, problem = await asyncio.wait_for(asyncio.to_thread(_eval_cel, program, response.body), budget)
            except TimeoutError:
                raise ProbeFailure("probe_timeout", "CEL check did not finish before the deadline", phase="transfer") from None
            if result is None:
                raise ProbeFailure("http_body_cel", problem, phase="transfer")
            if result == fail_when:
                key = "fail_if_body_json_matches_cel" if fail_when else "fail_if_body_json_not_matches_cel"
                verb = "matched" if fail_when else "did not match"
                raise ProbeFailure("http_body_cel", f"body {verb} {key} {program.source!r}", phase="transfer")
        failed = False
    finally:
        if isinstance(ctx.details, HTTPDetails):
            ctx.details = dataclasses.replace(ctx.details, failed_due_to_cel=failed)


def _compression(f: Fields) -> str:
    coding = f.get("compression", str, "").lower()
    if coding not in ("", *codings.CODINGS):
        raise ConfigError(f"{f.path}.compression: unsupported compression algorithm {coding!r} ({', '.join(codings.CODINGS)})")
    return "" if coding == "identity" else coding


def _accepts(accept_encoding: str, coding: str) -> bool:
    """blackbox's rule: with a compression set, a configured Accept-Encoding must accept it (q > 0),
    by name or by ``*``, judged at the entry of the highest quality that names it."""
    if not coding or not accept_encoding:
        return True
    entries: list[tuple[float, str]] = []
    for part in accept_encoding.split(","):
        name, sep, q = part.rpartition(";") if ";" in part else (part, "", "")
        try:
            quality = round(float(q.strip().removeprefix("q=")), 3) if sep else 1.0
        except ValueError:
            quality = 0.0
        entries.append((quality, name.strip()))
    for quality, name in sorted(entries, key=lambda e: -e[0]):  # stable: ties keep their order, as Go's SliceStable
        if name in (coding, "*"):
            return quality > 0
    return False


def _decoder(cfg: HTTPProbeConfig, response: _Response) -> codings.Decoder | None:
    """The final response's decoder; a redirect's body (followed or not) is never decoded, as in blackbox."""
    if not cfg.compression or response.status in _REDIRECT_CODES and response.header("Location"):
        return None
    return codings.Decoder(cfg.compression)


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
    """The body regexps, last as in blackbox. RE2 runs in linear time, so none can stall the probe."""
    body = go_text(response.body)
    for regexp in cfg.fail_if_body_matches_regexp:
        if await _search(regexp, body):
            ctx.failed_due_to_regex = True
            raise ProbeFailure("http_body_mismatch", f"body matched fail_if_body_matches_regexp {_text(regexp)!r}",
                               phase="transfer")
    for regexp in cfg.fail_if_body_not_matches_regexp:
        if not await _search(regexp, body):
            ctx.failed_due_to_regex = True
            raise ProbeFailure("http_body_mismatch", f"body did not match fail_if_body_not_matches_regexp {_text(regexp)!r}",
                               phase="transfer")


# A body up to this size is searched on the loop (well under a millisecond); a larger one in a
# thread: RE2 releases the GIL, and an 8 MiB body takes ~35 ms (measured on a 2-core box, issue 10).
INLINE_SEARCH = 256 << 10


async def _search(regexp: Regexp, body: bytes) -> bool:
    if len(body) <= INLINE_SEARCH:
        return regexp.search(body) is not None
    return await asyncio.to_thread(_found, regexp, body)


def _found(regexp: Regexp, body: bytes) -> bool:
    return regexp.search(body) is not None


def _text(regexp: Regexp) -> str:
    pattern = regexp.pattern
    return pattern.decode("utf-8", "replace") if isinstance(pattern, bytes) else pattern


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
    headers = await _request_headers(cfg)
    if (cfg.auth is not None or cfg.oauth2 is not None) and not any(k.lower() == "authorization" for k, _ in headers):
        headers.append(("Authorization", await _authorization(ctx, cfg)))
    try:
        await keepalive.check(ctx, target, ka, answers, method=cfg.method, headers=headers,
                              body=await _request_body(cfg), user_agent=USER_AGENT,
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
        if cfg.proxy is not None and cfg.proxy.for_scheme("https") is not None and ctx.tls_resumption.check:
            # Its handshakes would go around the proxy, to a target the proxy may be the only way to.
            ctx.log("tls_resumption: not checked through a proxy")
            return
        await resumption.check(ctx, _split_url(url)[1], cfg.tls_config,
                               ("h2", "http/1.1") if cfg.enable_http2 else ("http/1.1",))


def _codes(cfg: HTTPProbeConfig) -> str:
    return ", ".join(map(str, cfg.valid_status_codes)) if cfg.valid_status_codes else "2xx"


register(HTTPProber())
