"""The http prober's client settings: credentials (basic_auth, bearer_token(_file), authorization,
oauth2) and proxies (proxy_url and friends).

Field names and meanings are prometheus/common's HTTPClientConfig, as
blackbox_exporter reads them. Every credential is a ``schema.Secret`` from the
moment it is parsed; files (``password_file``, ``bearer_token_file``,
``credentials_file``, ``client_secret_file``) are read when a probe uses them
(``filerefs.read``: a missing file fails that probe with
``config_file_missing``), their content trimmed of surrounding whitespace as
Go's ``strings.TrimSpace`` does.

Precedence is Go's: an ``Authorization`` header configured in ``headers`` (or
URL userinfo) wins over basic_auth / authorization, as prometheus/common's
round trippers only add theirs when the request has none; oauth2 sets its
bearer token on every request.

oauth2 (client credentials): the token request is its own ``oauth2`` phase,
before the target's dns phase, so it is never counted as the target's server
processing (blackbox counts it there). A token is cached until 10 s before it
expires (x/oauth2's expiry delta), shared by every probe with the same
client; concurrent probes wait for one fetch. The token endpoint's
connection passes the SSRF guard like any other.
"""
from __future__ import annotations

import asyncio
import base64
import json
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote_plus, urlencode, urlsplit

from .. import __version__, filerefs
from ..failures import ProbeFailure, Reason
from ..net import connection, http1, proxy, resolve
from ..net.tls import TLSConfig, client_context
from ..schema import ConfigError, Fields, Secret, join_host_port, reveal
from .base import ProbeContext, PhaseSpec, tls_section

# A credential file is a line, a token or a key: not a CA bundle.
MAX_CREDENTIAL_FILE = 64 << 10


@dataclass(frozen=True, slots=True)
class Credential:
    """A secret given inline or as a file (read at probe time)."""

    value: Secret | None = None
    file: str | None = None

    async def read(self, what: str) -> str:
        if self.file is not None:
            data = await filerefs.read(self.file, what, MAX_CREDENTIAL_FILE)
            return data.decode("utf-8", "replace").strip()
        return reveal(self.value) if self.value is not None else ""


@dataclass(frozen=True, slots=True)
class BasicAuth:
    username: str
    password: Credential
    username_file: str | None = None

    async def header(self) -> str:
        username = self.username
        if self.username_file is not None:
            username = await Credential(file=self.username_file).read("basic_auth.username_file")
        password = await self.password.read("basic_auth.password_file")
        token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        return f"Basic {token}"


@dataclass(frozen=True, slots=True)
class Authorization:
    type: str
    credentials: Credential

    async def header(self) -> str:
        return f"{self.type} {await self.credentials.read('authorization.credentials_file')}"


def credential(f: Fields, key: str, file_key: str) -> Credential | None:
    """``key`` (inline, Secret) or ``file_key`` (a path), never both; None when neither is set."""
    value = f.get(key, str, None)
    file = f.get(file_key, str, None)
    if value is not None and file is not None:
        raise ConfigError(f"{f.path}: at most one of {key} and {file_key} may be set")
    if value is None and file is None:
        return None
    return Credential(Secret(value) if value is not None else None, file)


def parse(f: Fields) -> BasicAuth | Authorization | None:
    """The section's request credentials (oauth2 is parsed apart: it needs a token fetch).

    prometheus/common's rules: at most one of basic_auth, authorization, bearer_token(_file) and oauth2
    (the caller checks oauth2); bearer_token(_file) is the legacy spelling of authorization type Bearer.
    """
    chosen: list[tuple[str, BasicAuth | Authorization]] = []
    if "basic_auth" in f.raw:
        b = f.sub("basic_auth")
        username = b.get("username", str, None)
        username_file = b.get("username_file", str, None)
        if username is not None and username_file is not None:
            raise ConfigError(f"{b.path}: at most one of username and username_file may be set")
        password = credential(b, "password", "password_file") or Credential(Secret(""))
        b.done()
        chosen.append(("basic_auth", BasicAuth(username or "", password, username_file)))
    bearer = credential(f, "bearer_token", "bearer_token_file")
    if bearer is not None:
        chosen.append(("bearer_token", Authorization("Bearer", bearer)))
    if "authorization" in f.raw:
        a = f.sub("authorization")
        kind = a.get("type", str, "Bearer") or "Bearer"
        if kind.lower() == "basic":
            raise ConfigError(f"{a.path}.type: authorization type cannot be set to \"basic\", use \"basic_auth\" instead")
        if not kind.isascii() or not kind.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"{a.path}.type: {kind!r} is not an HTTP auth scheme")
        creds = credential(a, "credentials", "credentials_file") or Credential(Secret(""))
        a.done()
        chosen.append(("authorization", Authorization(kind, creds)))
    if len(chosen) > 1:
        raise ConfigError(f"{f.path}: at most one of {', '.join(name for name, _ in chosen)} may be set")
    return chosen[0][1] if chosen else None


def parse_proxy(f: Fields) -> proxy.ProxyConfig | None:
    """prometheus/common's proxy fields and their rules."""
    url = f.get("proxy_url", str, None)
    from_env = f.get("proxy_from_environment", bool, False)
    no_proxy = f.get("no_proxy", str, None)
    connect_raw = f.get("proxy_connect_header", dict, {})
    skip_resolve = f.get("skip_resolve_phase_with_proxy", bool, False)
    if url and from_env:
        raise ConfigError(f"{f.path}: if proxy_from_environment is configured, proxy_url must not be configured")
    if no_proxy and not url:
        raise ConfigError(f"{f.path}.no_proxy: if no_proxy is configured, proxy_url must also be configured")
    if connect_raw and not (url or from_env):
        raise ConfigError(f"{f.path}.proxy_connect_header: proxy_url or proxy_from_environment must also be configured")
    headers: list[tuple[str, Secret]] = []
    for name, values in connect_raw.items():
        path = f"{f.p('proxy_connect_header')}.{name}"
        values = values if isinstance(values, list) else [values]
        for value in values:
            if not isinstance(value, str):
                raise ConfigError(f"{path}: expected a list of strings")
            try:
                http1.validate_header(str(name), value)
            except ValueError as exc:
                raise ConfigError(f"{path}: {exc}") from None
            headers.append((str(name), Secret(value)))  # <secret> in blackbox: credentials for the proxy
    try:
        if from_env:
            http_url, https_url, env_no_proxy = proxy.from_environment()
            return proxy.ProxyConfig(
                http=proxy.parse_proxy_url(http_url) if http_url else None,
                https=proxy.parse_proxy_url(https_url) if https_url else None,
                no_proxy=proxy.parse_no_proxy(env_no_proxy), connect_headers=tuple(headers), skip_resolve=skip_resolve)
        if not url:
            return None
        via = proxy.parse_proxy_url(url)
    except ValueError as exc:
        raise ConfigError(f"{f.p('proxy_url')}: {exc}") from None
    return proxy.ProxyConfig(http=via, https=via, no_proxy=proxy.parse_no_proxy(no_proxy) if no_proxy else None,
                             connect_headers=tuple(headers), skip_resolve=skip_resolve)


# --- oauth2 client credentials ------------------------------------------------------------------

OAUTH2_PHASE = PhaseSpec("oauth2", "OAuth2 token", "token request to token_url → access token (absent when cached)",
                         limitable=True, optional=True)
REASONS = {
    "oauth2_token_failed": Reason("oauth2", "the token endpoint refused the client or answered without a usable access token",
                                  "wrong client_id/secret, scope not granted, token endpoint down"),
}
MAX_TOKEN_RESPONSE = 1 << 20
EXPIRY_DELTA = 10.0  # x/oauth2: a token is renewed this long before it expires
_CACHE_ENTRIES = 256


@dataclass(frozen=True, slots=True)
class OAuth2:
    client_id: str
    client_secret: Credential
    token_url: str
    scopes: tuple[str, ...] = ()
    endpoint_params: tuple[tuple[str, str], ...] = ()
    tls_config: TLSConfig = field(default_factory=TLSConfig)
    proxy: proxy.ProxyConfig | None = None


def parse_oauth2(f: Fields) -> OAuth2 | None:
    if "oauth2" not in f.raw:
        return None
    o = f.sub("oauth2")
    client_id = o.get("client_id", str, "")
    secret = credential(o, "client_secret", "client_secret_file") or Credential(Secret(""))
    token_url = o.get("token_url", str, "")
    if not token_url:
        raise ConfigError(f"{o.path}.token_url: required")
    parts = urlsplit(token_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{o.path}.token_url: {token_url!r} is not an http:// or https:// URL")
    params = o.get("endpoint_params", dict, {})
    for key, value in params.items():
        if not isinstance(value, str):
            raise ConfigError(f"{o.path}.endpoint_params.{key}: expected a string")
        if key in ("scope", "client_id", "client_secret"):  # x/oauth2: "cannot overwrite parameter"
            raise ConfigError(f"{o.path}.endpoint_params.{key}: cannot overwrite parameter {key!r}")
    cfg = OAuth2(client_id=client_id, client_secret=secret, token_url=token_url, scopes=tuple(o.list_of("scopes", str)),
                 endpoint_params=tuple((str(k), v) for k, v in params.items()), tls_config=tls_section(o),
                 proxy=parse_proxy(o))
    o.done()
    return cfg


@dataclass(slots=True)
class _Token:
    authorization: Secret  # "Bearer <access token>"
    expires: float | None  # time.monotonic(); None: never (no expires_in)


_tokens: OrderedDict[tuple[object, ...], _Token] = OrderedDict()
_locks: dict[tuple[object, ...], asyncio.Lock] = {}


async def oauth2_header(ctx: ProbeContext, cfg: OAuth2) -> str:
    """``Authorization`` for the request: a cached token, or one fetched now as the oauth2 phase."""
    secret = await cfg.client_secret.read("oauth2.client_secret_file")
    key = (cfg.token_url, cfg.client_id, secret, cfg.scopes, cfg.endpoint_params)
    lock = _locks.setdefault(key, asyncio.Lock())
    async with lock:
        token = _tokens.get(key)
        if token is not None and (token.expires is None or time.monotonic() < token.expires - EXPIRY_DELTA):
            _tokens.move_to_end(key)
            ctx.log("oauth2: cached token")
            return reveal(token.authorization)
        token = await ctx.phase("oauth2", _fetch(ctx, cfg, secret))
        _tokens[key] = token
        _tokens.move_to_end(key)
        while len(_tokens) > _CACHE_ENTRIES:
            old, _ = _tokens.popitem(last=False)
            _locks.pop(old, None)
        ctx.log("oauth2: new token from %s", cfg.token_url)
        return reveal(token.authorization)


async def _fetch(ctx: ProbeContext, cfg: OAuth2, secret: str) -> _Token:
    form = [("grant_type", "client_credentials")]
    if cfg.scopes:
        form.append(("scope", " ".join(cfg.scopes)))
    form = [(k, v) for k, v in form if k not in dict(cfg.endpoint_params)] + list(cfg.endpoint_params)
    # x/oauth2's AuthStyleAutoDetect: the client in a Basic header first, then in the form.
    in_header = "Basic " + base64.b64encode(f"{quote_plus(cfg.client_id)}:{quote_plus(secret)}".encode()).decode()
    status, headers, body = await _post(ctx, cfg, urlencode(form).encode(), [("Authorization", in_header)])
    if status >= 400:
        in_form = form + [("client_id", cfg.client_id), ("client_secret", secret)]
        status, headers, body = await _post(ctx, cfg, urlencode(in_form).encode(), [])
    if not 200 <= status < 300:
        raise ProbeFailure("oauth2_token_failed", f"token endpoint answered {status}", phase="oauth2")
    return _token(headers, body)


def _token(headers: tuple[tuple[str, str], ...], body: bytes) -> _Token:
    content_type = next((v for k, v in headers if k.lower() == "content-type"), "").split(";")[0].strip().lower()
    try:
        if content_type in ("application/x-www-form-urlencoded", "text/plain"):
            data: dict[str, object] = dict(parse_qsl(body.decode("utf-8")))
        else:
            data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProbeFailure("oauth2_token_failed", f"token response is not JSON or a form: {exc}", phase="oauth2") from None
    if not isinstance(data, dict) or not isinstance(data.get("access_token"), str) or not data["access_token"]:
        raise ProbeFailure("oauth2_token_failed", "token response has no access_token", phase="oauth2")
    kind = str(data.get("token_type") or "Bearer")
    kind = {"bearer": "Bearer", "mac": "MAC", "basic": "Basic"}.get(kind.lower(), kind)
    expires_in = data.get("expires_in")
    try:
        seconds = float(expires_in) if expires_in not in (None, "", 0, "0") else None  # type: ignore[arg-type]
    except (TypeError, ValueError):
        seconds = None
    if seconds is not None and not 0 < seconds < 10 * 365 * 86400:
        seconds = None
    token = data["access_token"]
    try:
        http1.validate_header("Authorization", f"{kind} {token}")
    except ValueError as exc:
        raise ProbeFailure("oauth2_token_failed", f"access token unusable in a header: {exc}", phase="oauth2") from None
    return _Token(Secret(f"{kind} {token}"), time.monotonic() + seconds if seconds is not None else None)


async def _post(ctx: ProbeContext, cfg: OAuth2, body: bytes,
                headers: list[tuple[str, str]]) -> tuple[int, tuple[tuple[str, str], ...], bytes]:
    """One POST to token_url (through the oauth2 section's proxy when set), on a connection of its own."""
    parts = urlsplit(cfg.token_url)
    tls = parts.scheme == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if tls else 80)
    target = http1.request_target(parts.path or "/", parts.query)
    via = cfg.proxy.for_target(parts.scheme, host, port) if cfg.proxy is not None else None
    guard = ctx.guard
    if guard is not None:
        guard.check_name(host, port)
    dest_host, dest_port = (via.host, via.port) if via is not None else (host, port)
    ip, family = await resolve.resolve(dest_host, resolve.families("ip6", True), ctx.resolver.nameservers,
                                       ctx.resolver.timeout, max(ctx.remaining(), 0.001))
    if guard is not None:
        if via is None:
            guard.check_address(host, ip, port)
        else:
            guard.check(dest_host, ip, dest_port)
    conn: connection.Connection | None = None
    try:
        conn = await connection.connect(ip, dest_port, family)
        if via is not None and tls:
            assert cfg.proxy is not None
            await proxy.tunnel(conn, join_host_port(host, port), connect_headers(cfg.proxy, via))
        elif via is not None:
            target = f"http://{parts.netloc.rpartition('@')[2]}{target}"
            if via.authorization is not None:
                headers = [*headers, ("Proxy-Authorization", reveal(via.authorization))]
        if tls:
            await conn.start_tls(client_context(cfg.tls_config, ("http/1.1",)), cfg.tls_config.server_name or host)
        headers = [*headers, ("Content-Type", "application/x-www-form-urlencoded"), ("Accept", "application/json")]
        conn.write(http1.build_request("POST", target, parts.netloc.rpartition("@")[2], headers, body,
                                       user_agent=f"connhealth/{__version__}"))
        await conn.drain()
        reader = http1.ResponseReader("POST")
        head = await http1.read_head(conn, reader)
        _, data = await http1.read_body(conn, reader, limit=MAX_TOKEN_RESPONSE, keep=True, keep_limit=MAX_TOKEN_RESPONSE)
        return head.status, head.headers, data
    except (OSError, http1.ProtocolError, http1.BodyTooLarge, proxy.ProxyError) as exc:
        raise ProbeFailure("oauth2_token_failed", f"token request to {parts.scheme}://{parts.netloc.rpartition('@')[2]} "
                                                  f"failed: {exc or type(exc).__name__}", phase="oauth2") from None
    finally:
        if conn is not None:
            conn.close()


def connect_headers(pcfg: proxy.ProxyConfig, via: proxy.ProxyURL) -> list[tuple[str, str]]:
    """The CONNECT's headers: proxy_connect_header, and the proxy URL's credentials (which win, as in Go)."""
    headers = [(k, reveal(v)) for k, v in pcfg.connect_headers
               if via.authorization is None or k.lower() != "proxy-authorization"]
    if via.authorization is not None:
        headers.append(("Proxy-Authorization", reveal(via.authorization)))
    return headers
