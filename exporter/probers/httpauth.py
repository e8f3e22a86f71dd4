"""The http prober's credentials: basic_auth, bearer_token(_file), authorization and oauth2.

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
"""
from __future__ import annotations

import base64
from dataclasses import dataclass

from .. import filerefs
from ..schema import ConfigError, Fields, Secret, reveal

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
