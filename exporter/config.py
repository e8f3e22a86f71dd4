"""Module configuration in blackbox_exporter's format, parsed strictly.

Defaults are applied while parsing, before validation; unknown keys are errors
that name their path (``modules.web.http.foo: unknown field``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config that cannot be used; the message names the offending path."""


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
    if seconds < 0:
        raise ConfigError(f"{path}: duration must not be negative")
    return seconds


class _Fields:
    """Reads a mapping field by field; whatever is left at the end is an error."""

    def __init__(self, raw: Any, path: str, unsupported: frozenset[str] = frozenset()) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(raw).__name__}")
        self.raw = dict(raw)
        self.path = path
        self.unsupported = unsupported

    def _p(self, key: str) -> str:
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
            raise ConfigError(f"{self._p(key)}: expected {names}, got {type(value).__name__} {value!r}")
        return value

    def duration(self, key: str, default: float | None) -> float | None:
        if key not in self.raw or self.raw[key] is None:
            self.raw.pop(key, None)
            return default
        return parse_duration(self.raw.pop(key), self._p(key))

    def sub(self, key: str, unsupported: frozenset[str] = frozenset()) -> _Fields:
        return _Fields(self.raw.pop(key, None), self._p(key), unsupported)

    def list_of(self, key: str, kind: type) -> list[Any]:
        items = self.get(key, list, [])
        for i, item in enumerate(items):
            if not isinstance(item, kind) or isinstance(item, bool) and kind is not bool:
                raise ConfigError(f"{self._p(key)}[{i}]: expected {kind.__name__}, got {item!r}")
        return items

    def regexes(self, key: str) -> tuple[re.Pattern[str], ...]:
        out = []
        for i, pattern in enumerate(self.list_of(key, str)):
            out.append(compile_regex(pattern, f"{self._p(key)}[{i}]"))
        return tuple(out)

    def done(self) -> None:
        for key in sorted(self.raw, key=str):
            if key in self.unsupported:
                raise ConfigError(f"{self._p(str(key))}: unsupported field (valid in blackbox_exporter, not implemented by connhealth)")
            raise ConfigError(f"{self._p(str(key))}: unknown field")


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


TLS_VERSIONS = {"TLS10": "TLSv1", "TLS11": "TLSv1_1", "TLS12": "TLSv1_2", "TLS13": "TLSv1_3"}


@dataclass(frozen=True, slots=True)
class TLSConfig:
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None
    insecure_skip_verify: bool = False
    min_version: str | None = None  # "TLS12"
    max_version: str | None = None


@dataclass(frozen=True, slots=True)
class HeaderMatch:
    header: str
    regexp: re.Pattern[str]
    allow_missing: bool = False


@dataclass(frozen=True, slots=True)
class HTTPProbeConfig:
    valid_status_codes: tuple[int, ...] = ()  # empty = any 2xx
    valid_http_versions: tuple[str, ...] = ()
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    body: str | None = None
    follow_redirects: bool = True
    fail_if_ssl: bool = False
    fail_if_not_ssl: bool = False
    fail_if_body_matches_regexp: tuple[re.Pattern[str], ...] = ()
    fail_if_body_not_matches_regexp: tuple[re.Pattern[str], ...] = ()
    fail_if_header_matches: tuple[HeaderMatch, ...] = ()
    fail_if_header_not_matches: tuple[HeaderMatch, ...] = ()
    preferred_ip_protocol: str = "ip6"
    ip_protocol_fallback: bool = True
    tls_config: TLSConfig = field(default_factory=TLSConfig)


@dataclass(frozen=True, slots=True)
class QueryStep:
    expect: re.Pattern[bytes] | None = None
    send: str | None = None
    starttls: bool = False


@dataclass(frozen=True, slots=True)
class TCPProbeConfig:
    preferred_ip_protocol: str = "ip6"
    ip_protocol_fallback: bool = True
    query_response: tuple[QueryStep, ...] = ()
    tls: bool = False
    tls_config: TLSConfig = field(default_factory=TLSConfig)


@dataclass(frozen=True, slots=True)
class ResolverConfig:
    """connhealth extension: which resolver the dns phase uses."""

    nameservers: tuple[tuple[str, int], ...] = ()  # empty = the system resolver
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class TracingConfig:
    """connhealth extension: trace-context propagation into probe requests."""

    inject: bool = True
    # W3C baggage sent with every request: marks probe traffic as synthetic.
    baggage: tuple[tuple[str, str], ...] = (("synthetic", "true"),)


@dataclass(frozen=True, slots=True)
class Module:
    name: str
    prober: str
    timeout: float | None = None  # None: the caller's (scrape or CLI) timeout
    http: HTTPProbeConfig = field(default_factory=HTTPProbeConfig)
    tcp: TCPProbeConfig = field(default_factory=TCPProbeConfig)
    # connhealth extensions
    phase_timeouts: tuple[tuple[str, float], ...] = ()
    resolver: ResolverConfig = field(default_factory=ResolverConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)

    def phase_timeout(self, phase: str) -> float | None:
        for name, seconds in self.phase_timeouts:
            if name == phase:
                return seconds
        return None

    @property
    def preferred_ip_protocol(self) -> str:
        return self.http.preferred_ip_protocol if self.prober == "http" else self.tcp.preferred_ip_protocol

    @property
    def ip_protocol_fallback(self) -> bool:
        return self.http.ip_protocol_fallback if self.prober == "http" else self.tcp.ip_protocol_fallback

    @property
    def tls_config(self) -> TLSConfig:
        return self.http.tls_config if self.prober == "http" else self.tcp.tls_config


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """One continuously probed target."""

    target: str
    module: str
    interval: float
    timeout: float | None
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> tuple[str, str, tuple[tuple[str, str], ...]]:
        return (self.target, self.module, self.labels)


@dataclass(frozen=True, slots=True)
class TargetFiles:
    files: tuple[str, ...]
    module: str | None  # None: http_2xx for URLs, tcp_connect otherwise
    interval: float
    timeout: float | None
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    concurrency: int = 256
    default_interval: float = 30.0
    min_interval: float = 1.0  # adaptive re-probing of failing targets never goes below this
    file_refresh_interval: float = 5.0
    buckets: tuple[float, ...] = ()  # empty: metrics.DEFAULT_BUCKETS


@dataclass(frozen=True, slots=True)
class Config:
    modules: dict[str, Module]
    source: str | None = None
    targets: tuple[TargetSpec, ...] = ()
    target_files: tuple[TargetFiles, ...] = ()
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    raw_modules: dict[str, Any] = field(default_factory=dict)
    slos: Any = None  # exporter.slo.SLOSpec | None: the `slos:` section (used by `connhealth generate`)


SUPPORTED_PROBERS = ("http", "tcp")
_BLACKBOX_PROBERS = ("icmp", "dns", "grpc")
_PHASE_TIMEOUT_NAMES = ("dns", "connect", "tls", "first_byte")

_UNSUPPORTED_HTTP = frozenset(
    {
        "basic_auth", "bearer_token", "bearer_token_file", "proxy_url", "proxy_connect_header",
        "oauth2", "http_client_config", "compression", "body_size_limit", "body_file",
        "no_proxy", "proxy_from_environment", "enable_http2", "skip_resolve_phase_with_proxy",
        "authorization", "follow_redirects_with_auth", "no_follow_redirects", "ip_protocol_fallback_with_proxy",
        "fail_if_body_json_matches_cel", "fail_if_body_json_not_matches_cel",
    }
)
_UNSUPPORTED_TCP = frozenset({"source_ip_address"})
_UNSUPPORTED_TLS = frozenset({"ca", "cert", "key", "cipher_suites"})
_UNSUPPORTED_QUERY = frozenset({"expect_bytes", "send_bytes", "labels"})


def _parse_tls_config(f: _Fields) -> TLSConfig:
    min_version = f.get("min_version", str, None)
    max_version = f.get("max_version", str, None)
    for key, value in (("min_version", min_version), ("max_version", max_version)):
        if value is not None and value not in TLS_VERSIONS:
            raise ConfigError(f"{f.path}.{key}: invalid TLS version {value!r} (one of {', '.join(TLS_VERSIONS)})")
    cfg = TLSConfig(
        ca_file=f.get("ca_file", str, None),
        cert_file=f.get("cert_file", str, None),
        key_file=f.get("key_file", str, None),
        server_name=f.get("server_name", str, None),
        insecure_skip_verify=f.get("insecure_skip_verify", bool, False),
        min_version=min_version,
        max_version=max_version,
    )
    f.done()
    if cfg.key_file and not cfg.cert_file or cfg.cert_file and not cfg.key_file:
        raise ConfigError(f"{f.path}: cert_file and key_file must be given together")
    for key in ("ca_file", "cert_file", "key_file"):
        value = getattr(cfg, key)
        if value is not None and not Path(value).is_file():
            raise ConfigError(f"{f.path}.{key}: file {value!r} does not exist")
    return cfg


def _parse_ip_protocol(f: _Fields) -> tuple[str, bool]:
    proto = f.get("preferred_ip_protocol", str, "ip6")
    if proto not in ("ip4", "ip6"):
        raise ConfigError(f"{f.path}.preferred_ip_protocol: must be ip4 or ip6, got {proto!r}")
    return proto, f.get("ip_protocol_fallback", bool, True)


def _parse_header_matches(f: _Fields, key: str) -> tuple[HeaderMatch, ...]:
    out = []
    for i, raw in enumerate(f.get(key, list, [])):
        hf = _Fields(raw, f"{f.path}.{key}[{i}]")
        header = hf.get("header", str, None)
        regexp = hf.get("regexp", str, None)
        if not header:
            raise ConfigError(f"{hf.path}.header: required")
        if regexp is None:
            raise ConfigError(f"{hf.path}.regexp: required")
        out.append(HeaderMatch(header, compile_regex(regexp, f"{hf.path}.regexp"), hf.get("allow_missing", bool, False)))
        hf.done()
    return tuple(out)


def _parse_http(f: _Fields) -> HTTPProbeConfig:
    codes = tuple(f.list_of("valid_status_codes", int))
    for i, code in enumerate(codes):
        if not 100 <= code <= 599:
            raise ConfigError(f"{f.path}.valid_status_codes[{i}]: {code} is not an HTTP status code")
    versions = tuple(f.list_of("valid_http_versions", str))
    for i, version in enumerate(versions):
        if version not in ("HTTP/1.0", "HTTP/1.1", "HTTP/2.0"):
            raise ConfigError(f"{f.path}.valid_http_versions[{i}]: unknown version {version!r} (HTTP/1.0, HTTP/1.1, HTTP/2.0)")
    method = f.get("method", str, "GET").upper()
    if not re.fullmatch(r"[A-Z]+", method):
        raise ConfigError(f"{f.path}.method: invalid method {method!r}")
    headers_raw = f.get("headers", dict, {})
    headers = []
    for name, value in headers_raw.items():
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{f.path}.headers.{name}: expected a string value")
        headers.append((str(name), str(value)))
    proto, fallback = _parse_ip_protocol(f)
    cfg = HTTPProbeConfig(
        valid_status_codes=codes,
        valid_http_versions=versions,
        method=method,
        headers=tuple(headers),
        body=f.get("body", str, None),
        follow_redirects=f.get("follow_redirects", bool, True),
        fail_if_ssl=f.get("fail_if_ssl", bool, False),
        fail_if_not_ssl=f.get("fail_if_not_ssl", bool, False),
        fail_if_body_matches_regexp=f.regexes("fail_if_body_matches_regexp"),
        fail_if_body_not_matches_regexp=f.regexes("fail_if_body_not_matches_regexp"),
        fail_if_header_matches=_parse_header_matches(f, "fail_if_header_matches"),
        fail_if_header_not_matches=_parse_header_matches(f, "fail_if_header_not_matches"),
        preferred_ip_protocol=proto,
        ip_protocol_fallback=fallback,
        tls_config=_parse_tls_config(f.sub("tls_config", _UNSUPPORTED_TLS)),
    )
    f.done()
    if cfg.fail_if_ssl and cfg.fail_if_not_ssl:
        raise ConfigError(f"{f.path}: fail_if_ssl and fail_if_not_ssl cannot both be true")
    return cfg


def _parse_tcp(f: _Fields) -> TCPProbeConfig:
    proto, fallback = _parse_ip_protocol(f)
    steps = []
    for i, raw in enumerate(f.get("query_response", list, [])):
        qf = _Fields(raw, f"{f.path}.query_response[{i}]", _UNSUPPORTED_QUERY)
        expect = qf.get("expect", str, None)
        steps.append(
            QueryStep(
                expect=re.compile(expect.encode()) if expect is not None and _check_re(expect, f"{qf.path}.expect") else None,
                send=qf.get("send", str, None),
                starttls=qf.get("starttls", bool, False),
            )
        )
        qf.done()
    cfg = TCPProbeConfig(
        preferred_ip_protocol=proto,
        ip_protocol_fallback=fallback,
        query_response=tuple(steps),
        tls=f.get("tls", bool, False),
        tls_config=_parse_tls_config(f.sub("tls_config", _UNSUPPORTED_TLS)),
    )
    f.done()
    return cfg


def _check_re(pattern: str, path: str) -> bool:
    compile_regex(pattern, path)
    return True


def _parse_resolver(f: _Fields) -> ResolverConfig:
    servers = []
    for i, item in enumerate(f.list_of("nameservers", str)):
        try:
            servers.append(split_host_port(item, default_port=53))
        except ValueError as exc:
            raise ConfigError(f"{f.path}.nameservers[{i}]: {exc}") from None
    cfg = ResolverConfig(nameservers=tuple(servers), timeout=f.duration("timeout", None))
    f.done()
    return cfg


_BAGGAGE_KEY_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _parse_tracing(f: _Fields, module: str) -> TracingConfig:
    inject = f.get("inject", bool, True)
    baggage = {"synthetic": "true", "probe.module": module}
    for key, value in f.get("baggage", dict, {}).items():
        if not isinstance(key, str) or not _BAGGAGE_KEY_RE.fullmatch(key):
            raise ConfigError(f"{f.path}.baggage.{key}: invalid baggage key")
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{f.path}.baggage.{key}: value must be a string")
        baggage[key] = str(value)
    f.done()
    return TracingConfig(inject=inject, baggage=tuple(baggage.items()))


def parse_module(name: str, raw: Any, path: str) -> Module:
    f = _Fields(raw, path)
    prober = f.get("prober", str, None)
    if prober is None:
        raise ConfigError(f"{path}.prober: required (one of {', '.join(SUPPORTED_PROBERS)})")
    if prober in _BLACKBOX_PROBERS:
        raise ConfigError(f"{path}.prober: prober {prober!r} is not supported by connhealth (supported: {', '.join(SUPPORTED_PROBERS)})")
    if prober not in SUPPORTED_PROBERS:
        raise ConfigError(f"{path}.prober: unknown prober {prober!r} (supported: {', '.join(SUPPORTED_PROBERS)})")
    timeout = f.duration("timeout", None)
    if timeout == 0:
        timeout = None
    http = _parse_http(f.sub("http", _UNSUPPORTED_HTTP))
    tcp = _parse_tcp(f.sub("tcp", _UNSUPPORTED_TCP))
    pf = f.sub("phase_timeouts")
    phase_timeouts = []
    for phase in _PHASE_TIMEOUT_NAMES:
        seconds = pf.duration(phase, None)
        if seconds is not None:
            phase_timeouts.append((phase, seconds))
    pf.done()
    resolver = _parse_resolver(f.sub("resolver"))
    tracing = _parse_tracing(f.sub("tracing"), name)
    for other in _BLACKBOX_PROBERS:
        if other in f.raw:
            raise ConfigError(f"{path}.{other}: unsupported field (prober {other!r} is not supported by connhealth)")
    f.done()
    return Module(name=name, prober=prober, timeout=timeout, http=http, tcp=tcp, phase_timeouts=tuple(phase_timeouts), resolver=resolver, tracing=tracing)


BUILTIN_MODULES_YAML = """
modules:
  http_2xx:
    prober: http
  http_post_2xx:
    prober: http
    http:
      method: POST
  tcp_connect:
    prober: tcp
  tls_connect:
    prober: tcp
    tcp:
      tls: true
"""


def parse_config(text: str, source: str | None = None, *, with_builtins: bool = True) -> Config:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source or 'config'}: invalid YAML: {exc}") from exc
    f = _Fields(raw, "")
    modules: dict[str, Module] = {}
    if with_builtins:
        modules.update(builtin_modules())
    raw_modules = f.get("modules", dict, {})
    for name, module_raw in raw_modules.items():
        if not isinstance(name, str) or not name:
            raise ConfigError(f"modules: module names must be non-empty strings, got {name!r}")
        modules[name] = parse_module(name, module_raw, f"modules.{name}")
    scheduler = _parse_scheduler(f.sub("scheduler"))
    targets = tuple(
        _parse_target(raw_t, f"targets[{i}]", modules, scheduler) for i, raw_t in enumerate(f.get("targets", list, []))
    )
    files = tuple(
        _parse_target_files(raw_f, f"target_files[{i}]", modules, scheduler)
        for i, raw_f in enumerate(f.get("target_files", list, []))
    )
    from .slo import parse_slos  # late: slo.py builds on this module's helpers

    slos = parse_slos(f.raw.pop("slos", None), scheduler.buckets)
    f.done()
    return Config(modules=modules, source=source, targets=targets, target_files=files, scheduler=scheduler,
                  raw_modules=dict(raw_modules), slos=slos)


_LABEL_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
RESERVED_LABELS = frozenset({"target", "module", "phase", "reason", "le", "version", "job", "instance", "hop", "quantile"})


def parse_labels(raw: Any, path: str) -> tuple[tuple[str, str], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of label names to values")
    out = []
    for name, value in raw.items():
        if not isinstance(name, str) or not _LABEL_RE.fullmatch(name) or name.startswith("__"):
            raise ConfigError(f"{path}.{name}: invalid label name (must match [a-zA-Z_][a-zA-Z0-9_]* and not start with __)")
        if name in RESERVED_LABELS:
            raise ConfigError(f"{path}.{name}: label name is reserved by connhealth")
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{path}.{name}: label value must be a string")
        out.append((name, str(value)))
    return tuple(sorted(out))


def _parse_scheduler(f: _Fields) -> SchedulerConfig:
    buckets = tuple(float(b) for b in f.list_of("buckets", (int, float)))  # type: ignore[arg-type]
    if list(buckets) != sorted(set(buckets)) or any(b <= 0 for b in buckets):
        raise ConfigError(f"{f.path}.buckets: must be positive and strictly increasing")
    cfg = SchedulerConfig(
        concurrency=f.get("concurrency", int, 256),
        default_interval=f.duration("default_interval", 30.0) or 30.0,
        min_interval=f.duration("min_interval", 1.0) or 1.0,
        file_refresh_interval=f.duration("file_refresh_interval", 5.0) or 5.0,
        buckets=buckets,
    )
    f.done()
    if cfg.concurrency < 1:
        raise ConfigError(f"{f.path}.concurrency: must be at least 1")
    return cfg


def _check_module(name: str | None, path: str, modules: dict[str, Module]) -> None:
    if name is not None and name not in modules:
        raise ConfigError(f"{path}: unknown module {name!r} (known: {', '.join(sorted(modules))})")


def _interval(f: _Fields, scheduler: SchedulerConfig) -> tuple[float, float | None]:
    interval = f.duration("interval", scheduler.default_interval) or scheduler.default_interval
    if interval < 0.1:
        raise ConfigError(f"{f.path}.interval: must be at least 100ms")
    timeout = f.duration("timeout", None)
    return interval, timeout


def _parse_target(raw: Any, path: str, modules: dict[str, Module], scheduler: SchedulerConfig) -> TargetSpec:
    if isinstance(raw, str):
        raw = {"target": raw}
    f = _Fields(raw, path)
    target = f.get("target", str, None)
    if not target:
        raise ConfigError(f"{path}.target: required")
    module = f.get("module", str, None) or default_module_for(target)
    _check_module(module, f"{path}.module", modules)
    interval, timeout = _interval(f, scheduler)
    labels = parse_labels(f.raw.pop("labels", None), f"{path}.labels")
    f.done()
    return TargetSpec(target=target, module=module, interval=interval, timeout=timeout, labels=labels)


def _parse_target_files(raw: Any, path: str, modules: dict[str, Module], scheduler: SchedulerConfig) -> TargetFiles:
    if isinstance(raw, str):
        raw = {"files": [raw]}
    f = _Fields(raw, path)
    files = tuple(f.list_of("files", str))
    if not files:
        raise ConfigError(f"{path}.files: at least one glob is required")
    module = f.get("module", str, None)
    _check_module(module, f"{path}.module", modules)
    interval, timeout = _interval(f, scheduler)
    labels = parse_labels(f.raw.pop("labels", None), f"{path}.labels")
    f.done()
    return TargetFiles(files=files, module=module, interval=interval, timeout=timeout, labels=labels)


def load_config(path: str | Path) -> Config:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from exc
    return parse_config(text, str(p))


def load_config_or_builtins(path: str | Path | None) -> Config:
    """The config file, or with none given just the built-in modules."""
    return load_config(path) if path is not None else Config(modules=builtin_modules())


_BUILTINS: dict[str, Module] | None = None


def builtin_modules() -> dict[str, Module]:
    global _BUILTINS
    if _BUILTINS is None:
        _BUILTINS = parse_config(BUILTIN_MODULES_YAML, "builtin", with_builtins=False).modules
    return dict(_BUILTINS)


def default_module_for(target: str) -> str:
    """The built-in module a bare target implies: http_2xx for URLs, tcp_connect otherwise."""
    lowered = target.lower()
    return "http_2xx" if lowered.startswith(("http://", "https://")) else "tcp_connect"
