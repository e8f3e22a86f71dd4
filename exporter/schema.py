"""Parsing primitives every config section shares: the ground floor under config.py and probers/.

Defaults are applied while parsing, before validation; unknown keys are errors
that name their path (``modules.web.http.foo: unknown field``). Every number is
checked to be finite and in range here, so nothing downstream sees NaN or Inf.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any


class ConfigError(ValueError):
    """A config that cannot be used; the message names the offending path."""


SECRET_MASK = "<secret>"


class Secret:
    """A config value that is never shown: str(), repr() and format() give ``<secret>``.

    Only the code that puts it on the wire calls ``reveal()``. Every output
    surface (debug output, /logs, /config, the status page, spans, logs,
    metric labels) renders the config through ``plain()``, so a secret there
    is masked by its type, not recognised by its name.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __str__(self) -> str:
        return SECRET_MASK

    __repr__ = __str__

    def __format__(self, spec: str) -> str:
        return SECRET_MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash((Secret, self._value))


def reveal(value: str | Secret) -> str:
    return value.reveal() if isinstance(value, Secret) else value


def plain(value: Any) -> Any:
    """A typed config value as YAML-able data for display: secrets masked, regexps as their pattern.

    Dataclasses become mappings, and so do tuples of (name, value) pairs (headers,
    labels, baggage, phase limits).
    """
    if isinstance(value, Secret):
        return SECRET_MASK
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value) if not f.name.startswith("_")}
    if isinstance(value, re.Pattern):
        pattern = value.pattern
        return pattern.decode("utf-8", "replace") if isinstance(pattern, bytes) else pattern
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list, frozenset, set)):
        items = sorted(value, key=str) if isinstance(value, (frozenset, set)) else list(value)
        if items and all(isinstance(i, tuple) and len(i) == 2 and isinstance(i[0], str) for i in items):
            return {k: plain(v) for k, v in items}
        return [plain(i) for i in items]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
class StartupError(Exception):
    """The process cannot start (a port in use, ...): the CLI prints one line and exits 1."""


_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, "y": 31536000.0}


def parse_duration(value: Any, path: str) -> float:
    """Prometheus-style duration ("5s", "1m30s", "250ms") or a number of seconds."""
    if isinstance(value, bool):
        raise ConfigError(f"{path}: expected a duration like 5s, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        pos, seconds = 0, 0.0
        for m in _DURATION_RE.finditer(text):
            if m.start() != pos:
                break
            seconds += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
            pos = m.end()
        if pos != len(text) or not text:
            raise ConfigError(f"{path}: invalid duration {value!r} (use e.g. 500ms, 5s, 1m30s)")
    else:
        raise ConfigError(f"{path}: expected a duration like 5s, got {type(value).__name__}")
    if not math.isfinite(seconds):
        raise ConfigError(f"{path}: duration must be finite, got {value!r}")
    if seconds < 0:
        raise ConfigError(f"{path}: duration must not be negative")
    return seconds


_SIZE_UNITS = {"": 1, "b": 1, "kb": 1 << 10, "kib": 1 << 10, "mb": 1 << 20, "mib": 1 << 20, "gb": 1 << 30, "gib": 1 << 30,
               "tb": 1 << 40, "tib": 1 << 40}
_SIZE_RE = re.compile(r"(\d+)\s*([a-zA-Z]*)")


def parse_size(value: Any, path: str) -> int:
    """A byte count: an integer or a base-2 size like blackbox's units.Base2Bytes ("10MB" = 10 MiB, "512KiB")."""
    if isinstance(value, bool):
        raise ConfigError(f"{path}: expected a size like 10MB, got {value!r}")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (m := _SIZE_RE.fullmatch(value.strip())) and m.group(2).lower() in _SIZE_UNITS:
        size = int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
    else:
        raise ConfigError(f"{path}: invalid size {value!r} (use e.g. 1048576, 512KB, 10MB)")
    if size < 0:
        raise ConfigError(f"{path}: size must not be negative")
    return size


class Fields:
    """Reads a mapping field by field; whatever is left at the end is an error."""

    def __init__(self, raw: Any, path: str, unsupported: frozenset[str] = frozenset()) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(raw).__name__}")
        self.raw = dict(raw)
        self.path = path
        self.unsupported = unsupported

    def p(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        if key not in self.raw:
            return default
        value = self.raw.pop(key)
        if value is None:
            return default
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool) and bool not in _as_tuple(kind)):
            names = "/".join(k.__name__ for k in _as_tuple(kind))
            raise ConfigError(f"{self.p(key)}: expected {names}, got {type(value).__name__} {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{self.p(key)}: must be a finite number, got {value!r}")
        return value

    def secret(self, key: str, secret: bool) -> str | Secret | None:
        """A string field, typed Secret when ``secret`` (the section marked it so)."""
        value = self.get(key, str, None)
        return Secret(value) if secret and value is not None else value

    def duration(self, key: str, default: float | None) -> float | None:
        if key not in self.raw or self.raw[key] is None:
            self.raw.pop(key, None)
            return default
        return parse_duration(self.raw.pop(key), self.p(key))

    def size(self, key: str, default: int) -> int:
        if key not in self.raw or self.raw[key] is None:
            self.raw.pop(key, None)
            return default
        return parse_size(self.raw.pop(key), self.p(key))

    def sub(self, key: str, unsupported: frozenset[str] = frozenset()) -> Fields:
        return Fields(self.raw.pop(key, None), self.p(key), unsupported)

    def list_of(self, key: str, kind: type | tuple[type, ...]) -> list[Any]:
        items = self.get(key, list, [])
        for i, item in enumerate(items):
            if not isinstance(item, kind) or isinstance(item, bool) and bool not in _as_tuple(kind):
                names = "/".join(k.__name__ for k in _as_tuple(kind))
                raise ConfigError(f"{self.p(key)}[{i}]: expected {names}, got {item!r}")
            if isinstance(item, float) and not math.isfinite(item):
                raise ConfigError(f"{self.p(key)}[{i}]: must be a finite number, got {item!r}")
        return items

    def regexes(self, key: str) -> tuple[re.Pattern[str], ...]:
        return tuple(compile_regex(pattern, f"{self.p(key)}[{i}]") for i, pattern in enumerate(self.list_of(key, str)))

    def done(self) -> None:
        for key in sorted(self.raw, key=str):
            if key in self.unsupported:
                raise ConfigError(f"{self.p(str(key))}: unsupported field (valid in blackbox_exporter, not implemented by connhealth)")
            raise ConfigError(f"{self.p(str(key))}: unknown field")


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def compile_regex(pattern: str, path: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"{path}: invalid regexp {pattern!r}: {exc}") from exc


def split_host_port(target: str, default_port: int | None = None) -> tuple[str, int]:
    """'host:port', '[v6]:port', 'v4:port' -> (host, port)."""
    if target.startswith("["):
        host, sep, rest = target[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, sep, port_text = target.rpartition(":")
        if not sep or ":" in host:  # no port, or a bare IPv6 literal
            host, port_text = target, ""
    if not port_text:
        if default_port is None:
            raise ValueError(f"{target!r} has no port (expected host:port)")
        return host, default_port
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{target!r} has an invalid port {port_text!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"{target!r}: port {port} out of range")
    return host, port


def ipv6_hint(text: str) -> str:
    """For an error about ``text``: how to write the IPv6 address in it ("" when there is none)."""
    host = text.split("://", 1)[-1].split("/", 1)[0]
    if host.count(":") >= 2 and not host.startswith("["):
        head, _, port = host.rpartition(":")
        if port.isdigit() and _looks_like_ipv6(head):
            return f"; put an IPv6 address in brackets: {text.replace(host, f'[{head}]:{port}', 1)}"
        return "; put an IPv6 address in brackets, e.g. [::1]:9115"
    return ""


def _looks_like_ipv6(text: str) -> bool:
    # "::1" of "::1:9115"; not ":" of a bare "::1", nor "2001:db8:" of a bare "2001:db8::1".
    return text.count(":") >= 2 and not text.endswith(":") and set(text.lower()) <= set("0123456789abcdef:.")


def join_host_port(host: str, port: int) -> str:
    """host:port for messages, an IPv6 address in brackets ([::1]:9115), as split_host_port reads it back."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_ip_protocol(f: Fields) -> tuple[str, bool]:
    """blackbox's preferred_ip_protocol / ip_protocol_fallback pair."""
    proto = f.get("preferred_ip_protocol", str, "ip6")
    if proto not in ("ip4", "ip6"):
        raise ConfigError(f"{f.path}.preferred_ip_protocol: must be ip4 or ip6, got {proto!r}")
    return proto, f.get("ip_protocol_fallback", bool, True)
