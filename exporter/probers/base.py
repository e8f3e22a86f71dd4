"""The prober contract and the registry every other part of connhealth reads.

A prober is one module that subclasses ``Prober`` and calls ``register`` once.
It declares its config section (parser, defaults, unsupported fields; secret
values typed ``schema.Secret``), its target check and how a target is shown,
its ordered phases with waterfall labels, its failure reasons and how its own
exceptions map to them, its typed result details, its ``/probe`` exposition
fragment and its probe coroutine. Config, failures, exposition, the
continuous store, the CLI, SLO phase validation and the docs tables all ask
the registry; nothing outside ``probers/`` names a prober.

The engine hands a prober a ``ProbeContext``: the phase clock, the deadline,
the log, the trace-propagation headers and the SSRF guard (``ctx.guard``,
enforced by ``probers/connect.py``; a prober that opens sockets of its own
must call ``guard.check_name`` / ``guard.check_address`` itself). A prober
never sees the engine, a metric or a span.
"""
from __future__ import annotations

import abc
import asyncio
import dataclasses
import functools
import ipaddress
import time
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar
from urllib.parse import quote

from ..failures import DeadlineExceeded, Reason, Rules, register_reasons, unregister_reasons
from ..metrics import MetricSpec, ProbeFamily, ProbeSamples
from ..net import http1
from ..net.guard import ProbeGuard
from ..net.pacing import ConnectPacer
from ..net.tls import TLS_VERSIONS, TLSConfig, check_server_name
from ..result import Details, Hop, KeepAlive, Peer, Phase, ProbeResult, TCPInfo, TLSInfo, TLSResumption
from ..schema import ConfigError, Fields, Secret, brief

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class PhaseSpec:
    name: str
    label: str  # for the waterfall: "TCP connect"
    description: str = ""  # "from -> to", for the docs
    timeout_reason: str | None = None  # None: a timeout here is probe_timeout (dns/connect/tls have shared ones)
    limitable: bool = False  # may be given its own limit in phase_timeouts
    optional: bool = False  # only some modules reach it (an opt-in check): the waterfall hides it when not reached


# The phases a connection goes through, shared by every connection-oriented prober.
DNS = PhaseSpec("dns", "DNS lookup", "start of resolution → address chosen (absent for IP-literal targets)", limitable=True)
CONNECT = PhaseSpec("connect", "TCP connect", "`connect()` → TCP handshake complete (resolution is not included)", limitable=True)
TLS = PhaseSpec("tls", "TLS handshake", "ClientHello → handshake complete, certificate verified", limitable=True)


@dataclass(frozen=True, slots=True)
class ResolverConfig:
    """connhealth extension: which resolver the dns phase uses."""

    nameservers: tuple[tuple[str, int], ...] = ()  # empty = the system resolver
    timeout: float | None = None
    # curl's --resolve / --connect-to (set by `connhealth probe`): (host, port, to_host, to_port);
    # "" and 0 match any host / port, or keep the original one. Host header and SNI stay the target's.
    overrides: tuple[tuple[str, int, str, int], ...] = ()

    def connect_address(self, host: str, port: int) -> tuple[str, int]:
        """Where to connect for ``host:port``: the first matching override, else the target itself."""
        for from_host, from_port, to_host, to_port in self.overrides:
            if from_host in ("", host.lower()) and from_port in (0, port):
                return to_host or host, to_port or port
        return host, port


@dataclass(frozen=True, slots=True)
class TLSResumptionConfig:
    """connhealth extension (tcp and http): after the probe, a full handshake and one offering its session."""

    check: bool = False
    require: bool = False  # a handshake that did not resume fails the probe (tls_resumption_failed)


@dataclass(frozen=True, slots=True)
class TracingConfig:
    """connhealth extension: trace-context propagation into probe requests."""

    inject: bool = True
    # W3C baggage sent with every request: marks probe traffic as synthetic.
    baggage: tuple[tuple[str, str], ...] = (("synthetic", "true"),)


class Prober(abc.ABC):
    """One protocol. Subclasses set the class attributes and implement parse/check_target/probe."""

    name: ClassVar[str]
    phases: ClassVar[tuple[PhaseSpec, ...]]
    reasons: ClassVar[Mapping[str, Reason]] = {}
    # (exception type, reason) for the prober's own parsers' errors, most specific first.
    errors: ClassVar[tuple[tuple[type[BaseException], str], ...]] = ()
    # blackbox fields of this section that connhealth does not implement (a clear error, not "unknown").
    unsupported: ClassVar[frozenset[str]] = frozenset()
    # Module keys of the form "<name>:" that belong to this prober (default: its name).
    section: ClassVar[str] = ""
    # Whether the module-level tls_resumption check applies to this prober (probers/resumption.py).
    resumable: ClassVar[bool] = False
    # Continuous-mode families of this prober's own (labels: the target's), fed by observations().
    metrics: ClassVar[tuple[MetricSpec, ...]] = ()

    @abc.abstractmethod
    def parse(self, f: Fields, module: str) -> Any:
        """The section's typed settings (defaults applied, validated); must call f.done()."""

    @abc.abstractmethod
    def check_target(self, target: str) -> None:
        """Raise ProbeFailure("invalid_target", ...) for a target this prober cannot probe."""

    @abc.abstractmethod
    async def probe(self, ctx: ProbeContext, target: str, settings: Any) -> None:
        """Probe through ctx.phase(...), fill ctx, raise on failure."""

    def expected_phases(self, target: str, settings: Any) -> tuple[str, ...]:
        """The phases a successful probe of ``target`` with these settings goes through.

        The continuous store creates their histograms at 0 as soon as the target is scheduled
        (so ``increase()`` counts the first observation) and no others (a never-reached phase
        would cost a histogram's series per target for nothing). Default: every phase but the
        optional ones; the engine adds the module-level tls_resumption check's.
        """
        return tuple(p.name for p in self.phases if not p.optional)

    def exposition(self, result: ProbeResult) -> Iterable[tuple[ProbeFamily, ProbeSamples]]:
        """This prober's families in /probe (blackbox names), beyond the shared ones."""
        return ()

    def with_hostname(self, settings: Any, hostname: str) -> Any:
        """The settings for a /probe request with ``hostname=`` (blackbox: tcp's TLS server name, http's
        Host header); the default ignores it, as blackbox does for its other probers. ValueError: the
        request's 400, in its message."""
        return settings

    def referenced_files(self, settings: Any) -> Iterable[tuple[str, str]]:
        """(where, path) of every file the settings name, read at probe time (filerefs): check-config
        warns about those it cannot read. Default: every str field named ``*_file``, at any depth
        (tls_config.ca_file, body_file, basic_auth.password_file, ...)."""
        return _files_in(settings, "")

    def display_target(self, target: str, settings: Any) -> str:
        """The target as every output shows it (result, logs, labels, spans): its secrets masked.

        Secrets in the settings are typed (schema.Secret) by parse(); a target is
        plain text, so a prober whose targets can carry credentials masks them here.
        """
        return target

    def observations(self, result: ProbeResult) -> Iterable[tuple[str, float]]:
        """(name of one of ``metrics``, value) pairs for a finished probe: a gauge is set to the value,
        a counter grows by it, a histogram observes it (once per pair)."""
        return ()

    @property
    def rules(self) -> Rules:
        return Rules(
            timeout_reasons={p.name: p.timeout_reason for p in self.phases if p.timeout_reason},
            errors=self.errors,
        )


def _files_in(value: Any, where: str) -> Iterable[tuple[str, str]]:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            path = f"{where}.{f.name}" if where else f.name
            if f.name.endswith("_file") and isinstance(item, str):
                yield path, item
            else:
                yield from _files_in(item, path)
    elif isinstance(value, tuple):
        for i, item in enumerate(value):
            yield from _files_in(item, f"{where}[{i}]")


PROBERS: dict[str, Prober] = {}
# blackbox_exporter probers that connhealth does not implement (yet): named in errors as such.
BLACKBOX_ONLY: tuple[str, ...] = ()


def register(prober: Prober) -> Prober:
    if not prober.section:
        type(prober).section = prober.name
    names = [p.name for p in prober.phases]
    if len(set(names)) != len(names):
        raise ValueError(f"prober {prober.name}: phase names repeat: {names}")
    register_reasons(prober.reasons)
    PROBERS[prober.name] = prober
    all_phases.cache_clear()
    return prober


def unregister(name: str) -> None:
    """Remove a prober and the reasons only it declared (tests register probers of their own)."""
    prober = PROBERS.pop(name)
    others = {r for p in PROBERS.values() for r in p.reasons}
    unregister_reasons([r for r in prober.reasons if r not in others])
    all_phases.cache_clear()


@functools.cache
def all_phases() -> tuple[PhaseSpec, ...]:
    """Every registered phase, once, in connection order (first appearance over the probers)."""
    seen: dict[str, PhaseSpec] = {}
    for prober in PROBERS.values():
        for spec in prober.phases:
            seen.setdefault(spec.name, spec)
    return tuple(seen.values())


def phase_label(name: str) -> str:
    for spec in all_phases():
        if spec.name == name:
            return spec.label
    return name


# --- shared section parsers ---------------------------------------------------------
_UNSUPPORTED_TLS = frozenset({"ca", "cert", "key", "cipher_suites"})


def parse_tls_config(f: Fields) -> TLSConfig:
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
    if cfg.server_name:
        try:
            check_server_name(cfg.server_name)
        except ValueError as exc:
            raise ConfigError(f"{f.path}.server_name: {exc}") from None
    # The files are read when a probe uses them (probers/connect.tls_context), as blackbox does:
    # a missing one fails those probes, not the whole config; check-config warns about it.
    return cfg


def source_ip_address(f: Fields) -> str | None:
    """blackbox's source_ip_address: the local address to send from (None: the kernel's choice)."""
    text = f.get("source_ip_address", str, None)
    if not text:
        return None
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ConfigError(f"{f.p('source_ip_address')}: {brief(text)} is not an IP address") from None


def tls_section(f: Fields) -> TLSConfig:
    return parse_tls_config(f.sub("tls_config", _UNSUPPORTED_TLS))


# Credentials by definition (RFC 9110, RFC 6265): their values are always Secret; secret_headers adds more.
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})


def parse_headers(f: Fields) -> tuple[tuple[str, str | Secret], ...]:
    """``headers`` (request headers, validated as HTTP/1.1 allows) and ``secret_headers``: a credential
    header's value, or one named in secret_headers, is typed Secret (revealed only on the wire)."""
    secret = CREDENTIAL_HEADERS | {h.lower() for h in f.list_of("secret_headers", str)}
    headers: list[tuple[str, str | Secret]] = []
    for name, value in f.get("headers", dict, {}).items():
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{f.p('headers')}.{name}: expected a string value")
        name, value = str(name), str(value)
        try:
            http1.validate_header(name, value)
        except ValueError as exc:
            raise ConfigError(f"{f.p('headers')}.{name}: {exc}") from None
        headers.append((name, Secret(value) if name.lower() in secret else value))
    return tuple(headers)


# --- the context a running probe fills ------------------------------------------------
class ProbeContext:
    """Mutable state of one running probe; the engine freezes it into a ProbeResult."""

    __slots__ = (
        "target", "module", "timeout", "deadline_ns", "phase_name", "phase_start_ns", "timeline", "phase_limits",
        "resolver", "tracing", "tls_resumption", "peer", "tcp", "tls", "hops", "details", "keepalive", "resumption",
        "failed_due_to_regex", "logs",
        "start_ns", "trace_id", "span_id", "sampled", "tracestate", "new_span_id", "_hop", "guard", "pacer",
    )

    def __init__(self, target: str, module: str, timeout: float, *, start_ns: int,
                 phase_limits: Mapping[str, float] | None = None, resolver: ResolverConfig = ResolverConfig(),
                 tracing: TracingConfig = TracingConfig(), tls_resumption: TLSResumptionConfig = TLSResumptionConfig(),
                 trace_id: int = 0, span_id: int = 0, sampled: bool = False,
                 tracestate: str = "", new_span_id: Any = None, guard: ProbeGuard | None = None,
                 pacer: ConnectPacer | None = None) -> None:
        self.target = target
        self.module = module
        self.timeout = timeout
        self.start_ns = start_ns
        self.deadline_ns = start_ns + int(timeout * 1e9)
        self.phase_limits = phase_limits or {}
        self.resolver = resolver
        self.tracing = tracing
        self.tls_resumption = tls_resumption
        self.trace_id, self.span_id, self.sampled, self.tracestate = trace_id, span_id, sampled, tracestate
        self.new_span_id = new_span_id  # () -> int, for each hop's traceparent
        self.guard = guard  # the SSRF guard every connection of this probe passes (None: none)
        self.pacer = pacer  # the token bucket every connect waits on, outside any phase (None: unpaced)
        self.phase_name = "probe"
        self.phase_start_ns: int | None = None
        self.timeline: list[Phase] = []
        self.peer: Peer | None = None
        self.tcp: TCPInfo | None = None
        self.tls: TLSInfo | None = None
        self.hops: list[Hop] = []
        self._hop: tuple[str, str, int, int] | None = None  # (method, url, start_ns, span id) of the open hop
        self.details: Details | None = None
        self.keepalive: KeepAlive | None = None
        self.resumption: TLSResumption | None = None
        self.failed_due_to_regex = False
        self.logs: list[tuple[int, str, tuple[Any, ...]]] = []

    def offset(self, ns: int) -> float:
        return (ns - self.start_ns) / 1e9

    def log(self, message: str, *args: Any) -> None:
        """Add a line to the probe's log; with ``args``, ``message % args``, formatted only if the log is read."""
        self.logs.append((time.perf_counter_ns() - self.start_ns, message, args))

    def remaining(self) -> float:
        return (self.deadline_ns - time.perf_counter_ns()) / 1e9

    async def wait_for_token(self, pacer: ConnectPacer) -> None:
        """Wait for a connect token (net/pacing.py); the wait is in no phase. Callers first try
        ``pacer.try_take()``, which needs no await."""
        start = time.perf_counter_ns()
        await pacer.take()
        self.log("waited %.3f ms for a connect token (paced connects)", (time.perf_counter_ns() - start) / 1e6)

    async def phase(self, name: str, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable`` as phase ``name``; it joins the timeline only if it completes."""
        self.phase_name = name
        limit = self.phase_limits.get(name)
        remaining = self.remaining()
        by_deadline = limit is None or remaining <= limit
        start = self.phase_start_ns = time.perf_counter_ns()
        try:
            if remaining <= 0 or limit is not None and limit <= 0:
                if asyncio.iscoroutine(awaitable):
                    awaitable.close()  # never awaited: the budget was already gone
                raise TimeoutError()
            if limit is None:
                # Only the overall deadline applies: the engine's own timer covers
                # it (and phase_name says where it hit); a second timer per phase
                # costs ~5 % of a loopback probe.
                value = await awaitable
            else:
                async with asyncio.timeout(min(limit, remaining)):
                    value = await awaitable
        except TimeoutError as exc:
            if limit is None and self.remaining() > 0:
                raise  # not our timer: the kernel's (ETIMEDOUT), classify says so
            if by_deadline:
                raise DeadlineExceeded(f"after {self.timeout:g}s") from exc
            raise TimeoutError(f"phase limit {limit:g}s exceeded") from exc
        end = time.perf_counter_ns()
        # Outside an open hop (a keep-alive idle, a resumption check after the exchanges): the last hop's.
        hop = len(self.hops) if self._hop else max(len(self.hops) - 1, 0)
        self.timeline.append(Phase(name, self.offset(start), (end - start) / 1e9, hop))
        self.phase_start_ns = None
        return value

    # --- kernel timing (docs/metrics.md): the last completed phase, re-timed ----------
    def kernel_duration(self, seconds: float) -> None:
        """The last completed phase took ``seconds`` by the kernel's account (connect: the
        handshake RTT from TCP_INFO); its wall-clock figure is kept as ``wall``."""
        last = self.timeline[-1] if self.timeline else None
        # Plausible only if inside the wall-clock figure (our clock also covers the syscalls).
        if last is not None and last.wall is None and 0 < seconds <= last.duration:
            self.timeline[-1] = Phase(last.name, last.start, seconds, last.hop, last.duration)

    def kernel_end(self, arrival_ns: int, since_ns: int | None = None) -> int | None:
        """The last completed phase ended when the packet that ended it arrived (``arrival_ns``,
        the kernel's receive timestamp on the perf_counter clock; 0: unknown), and began at
        ``since_ns`` (the previous phase's arrival) if given, else at its own start. Returns the
        arrival used, or None when it is not inside the phase (data that came earlier, a
        clock step): the wall clock stays."""
        last = self.timeline[-1] if self.timeline else None
        if not arrival_ns or last is None or last.wall is not None:
            return None
        start_ns = self.start_ns + round(last.start * 1e9)
        end_ns = start_ns + round(last.duration * 1e9)
        begin = since_ns if since_ns is not None and since_ns <= start_ns else start_ns
        if not begin <= arrival_ns <= end_ns:
            return None
        self.timeline[-1] = Phase(last.name, last.start, (arrival_ns - begin) / 1e9, last.hop, last.duration)
        return arrival_ns

    # --- hops: one request/response exchange each ----------------------------------
    def begin_hop(self, method: str, url: str) -> None:
        span_id = self.new_span_id() if self.new_span_id is not None else self.span_id
        self._hop = (method, url, time.perf_counter_ns(), span_id)

    def end_hop(self, status: int | None) -> None:
        if self._hop is None:
            return
        method, url, start, span_id = self._hop
        self._hop = None
        self.hops.append(Hop(url=url, method=method, start=self.offset(start),
                             duration=(time.perf_counter_ns() - start) / 1e9, status=status, peer=self.peer,
                             span_id=f"{span_id:016x}"))

    def propagation_headers(self) -> list[tuple[str, str]]:
        """W3C traceparent/tracestate for the current request, and baggage marking it synthetic."""
        cfg = self.tracing
        if not cfg.inject:
            return []
        span_id = self._hop[3] if self._hop is not None else self.span_id
        headers = [("traceparent", f"00-{self.trace_id:032x}-{span_id:016x}-{'01' if self.sampled else '00'}")]
        if self.tracestate:
            headers.append(("tracestate", self.tracestate))
        if cfg.baggage:
            headers.append(("baggage", _baggage(cfg.baggage)))
        return headers


@functools.lru_cache(maxsize=256)
def _baggage(items: tuple[tuple[str, str], ...]) -> str:
    return ",".join(f"{k}={quote(v, safe='')}" for k, v in items)
