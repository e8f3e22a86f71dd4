"""``--web.config.file``: TLS, basic auth and security headers for the exporter's own endpoints.

The file is exporter-toolkit's (what blackbox_exporter, node_exporter and
Prometheus read), so one file serves them all::

    tls_server_config:
      cert_file: server.crt
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # or VerifyClientCertIfGiven, NoClientCert
      client_ca_file: clients-ca.crt
      min_version: TLS12
      cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384]
    http_server_config:
      headers: {Strict-Transport-Security: max-age=31536000}
    basic_auth_users:
      prometheus: $2y$10$...   # bcrypt (htpasswd -nbBC 10 "" password)

It applies to every endpoint. Unknown keys are errors, as exporter-toolkit's
strict unmarshalling makes them; the few toolkit fields Python's ssl module
cannot honour are named as unsupported.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ssl
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import yaml
from aiohttp import web

from .schema import ConfigError, Fields

__all__ = ["WebConfig", "load_web_config"]

_TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1, "TLS12": ssl.TLSVersion.TLSv1_2,
                 "TLS13": ssl.TLSVersion.TLSv1_3}
_CLIENT_AUTH = {"NoClientCert": ssl.CERT_NONE, "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
                "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}
# Accepting a client certificate without verifying it is not something Python's ssl can do.
_CLIENT_AUTH_UNSUPPORTED = ("RequestClientCert", "RequireAnyClientCert")
# Go's crypto/tls names (what the file holds) -> OpenSSL's. TLS 1.3 suites are not configurable, in Go neither.
_CIPHERS = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
}
# exporter-toolkit accepts only these headers, and only these values for two of them.
_HEADER_VALUES: dict[str, tuple[str, ...] | None] = {
    "Strict-Transport-Security": None,
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": None,
    "Content-Security-Policy": None,
}
_UNSUPPORTED_TLS = frozenset({"cert", "key", "client_ca", "curve_preferences", "client_allowed_sans"})
# Verified passwords are remembered by a keyed hash, never as text; bcrypt costs ~50-400 ms of CPU.
_AUTH_CACHE_SIZE = 256
# bcrypt checks running at once: a flood of wrong passwords queues here instead of taking every core from the probes.
_AUTH_CONCURRENCY = 2
# Compared against for an unknown user, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = b"$2b$10$qP8sfbTC3tQAfDJ3hTxkYOsH/rZCEzJV/dUgAYJBGQhbkACCfMQ5S"


@dataclass(frozen=True, slots=True)
class WebConfig:
    ssl_context: ssl.SSLContext | None = None
    users: tuple[tuple[str, bytes], ...] = ()  # (user, bcrypt hash)
    headers: tuple[tuple[str, str], ...] = ()

    def middlewares(self) -> list[Callable[..., Awaitable[web.StreamResponse]]]:
        return [_BasicAuth(dict(self.users)).middleware] if self.users else []

    def add_headers(self, app: web.Application) -> None:
        """http_server_config.headers on every response, errors and 401s included."""
        if not self.headers:
            return
        headers = self.headers

        async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
            for name, value in headers:
                response.headers[name] = value

        app.on_response_prepare.append(on_prepare)


class _BasicAuth:
    def __init__(self, users: dict[str, bytes]) -> None:
        self.users = users
        self.key = bcrypt.gensalt()  # per process: cache keys mean nothing elsewhere
        self.verified: OrderedDict[bytes, bool] = OrderedDict()
        self.slots = asyncio.Semaphore(_AUTH_CONCURRENCY)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        credentials = _credentials(request.headers.get("Authorization", ""))
        if credentials is None or not await self.check(*credentials):
            return web.Response(status=401, text="Unauthorized\n", headers={"WWW-Authenticate": 'Basic realm="connhealth"'})
        return await handler(request)

    async def check(self, user: str, password: str) -> bool:
        key = hmac.new(self.key, f"{user}\0{password}".encode(), hashlib.sha256).digest()
        if (known := self.verified.get(key)) is not None:
            self.verified.move_to_end(key)
            return known
        hashed = self.users.get(user)
        async with self.slots:  # off the loop: a bcrypt check is tens of milliseconds of CPU
            ok = await asyncio.to_thread(_bcrypt_ok, password.encode(), hashed or _DUMMY_HASH)
        ok = ok and hashed is not None
        self.verified[key] = ok
        if len(self.verified) > _AUTH_CACHE_SIZE:
            self.verified.popitem(last=False)
        return ok


def _bcrypt_ok(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:
        return False


def _credentials(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


def load_web_config(path: str) -> WebConfig:
    """The parsed file; ConfigError naming the field for anything wrong."""
    where = "--web.config.file"
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where} {path}: cannot read: {exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} {path}: invalid YAML: {exc}") from None
    base = Path(path).resolve().parent
    f = Fields(raw, "")
    tls = f.sub("tls_server_config", _UNSUPPORTED_TLS)
    ssl_context = _tls(tls, base) if tls.raw else None
    headers = _http_server_config(f.sub("http_server_config"))
    users = _users(f.get("basic_auth_users", dict, {}))
    f.done()
    return WebConfig(ssl_context=ssl_context, users=users, headers=headers)


def _file(f: Fields, key: str, base: Path) -> str | None:
    value = f.get(key, str, None)
    if not value:
        return None
    resolved = base / value  # relative to the web config file, as exporter-toolkit does
    if not resolved.is_file():
        raise ConfigError(f"{f.p(key)}: file {value!r} does not exist")
    return str(resolved)


def _tls(f: Fields, base: Path) -> ssl.SSLContext:
    cert, key, client_ca = _file(f, "cert_file", base), _file(f, "key_file", base), _file(f, "client_ca_file", base)
    if not cert or not key:
        raise ConfigError(f"{f.path}: cert_file and key_file are both required")
    auth = f.get("client_auth_type", str, "NoClientCert")
    if auth in _CLIENT_AUTH_UNSUPPORTED:
        raise ConfigError(f"{f.p('client_auth_type')}: {auth} (a client certificate accepted without verification) is not "
                          f"supported; use VerifyClientCertIfGiven or RequireAndVerifyClientCert")
    if auth not in _CLIENT_AUTH:
        raise ConfigError(f"{f.p('client_auth_type')}: invalid client auth type {auth!r} (one of {', '.join(_CLIENT_AUTH)})")
    if client_ca and auth == "NoClientCert":
        raise ConfigError(f"{f.p('client_ca_file')}: client CAs are configured without a client_auth_type that verifies")
    if auth != "NoClientCert" and not client_ca:
        raise ConfigError(f"{f.p('client_ca_file')}: required for client_auth_type {auth}")
    versions = {}
    for name, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        value = f.get(name, str, default)
        if value not in _TLS_VERSIONS:
            raise ConfigError(f"{f.p(name)}: unknown TLS version {value!r} (one of {', '.join(_TLS_VERSIONS)})")
        versions[name] = _TLS_VERSIONS[value]
    ciphers = []
    for i, suite in enumerate(f.list_of("cipher_suites", str)):
        if suite not in _CIPHERS:
            raise ConfigError(f"{f.p('cipher_suites')}[{i}]: unknown or unsupported cipher suite {suite!r}")
        ciphers.append(_CIPHERS[suite])
    prefer_server = f.get("prefer_server_cipher_suites", bool, True)
    f.done()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version, ctx.maximum_version = versions["min_version"], versions["max_version"]
    if ctx.minimum_version > ctx.maximum_version:
        raise ConfigError(f"{f.path}: min_version is above max_version")
    try:
        ctx.load_cert_chain(cert, key)
        if ciphers:
            ctx.set_ciphers(":".join(ciphers))
        if client_ca:
            ctx.load_verify_locations(client_ca)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"{f.path}: {exc}") from None
    ctx.verify_mode = _CLIENT_AUTH[auth]
    if prefer_server:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    return ctx


def _http_server_config(f: Fields) -> tuple[tuple[str, str], ...]:
    f.get("http2", bool, True)  # accepted for compatibility: aiohttp serves HTTP/1.1
    headers = []
    for name, value in f.get("headers", dict, {}).items():
        path = f"{f.p('headers')}.{name}"
        canonical = {k.lower(): k for k in _HEADER_VALUES}.get(str(name).lower())
        if canonical is None:
            raise ConfigError(f"{path}: header not allowed (one of {', '.join(_HEADER_VALUES)})")
        if not isinstance(value, str) or any(c in value for c in "\r\n\0"):
            raise ConfigError(f"{path}: expected a single-line string")
        allowed = _HEADER_VALUES[canonical]
        if allowed is not None and value.lower() not in allowed:
            raise ConfigError(f"{path}: invalid value {value!r} (one of {', '.join(allowed)})")
        headers.append((canonical, value))
    f.done()
    return tuple(headers)


def _users(raw: dict[Any, Any]) -> tuple[tuple[str, bytes], ...]:
    users = []
    for user, hashed in raw.items():
        path = f"basic_auth_users.{user}"
        if not isinstance(user, str) or not user or ":" in user:
            raise ConfigError(f"{path}: a user name is a non-empty string without ':'")
        if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")) or len(hashed) != 60:
            # Never echo the value: it may be a plain password put there by mistake.
            raise ConfigError(f"{path}: expected a bcrypt hash ($2y$..., 60 characters; htpasswd -nbBC 10 \"\" PASSWORD)")
        users.append((user, hashed.encode()))
    return tuple(users)
