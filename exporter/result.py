"""The value a probe produces: plain, frozen, and free of any sink's concerns.

A phase that was not reached is absent; it is never a fake 0. Each phase is a
``Phase(name, start, duration, hop, wall)``: ``start`` is its offset from the start
of the probe, so waterfalls and trace spans are derived from the result alone.
Where the kernel timed a phase (docs/metrics.md, "Kernel timing"), ``duration``
is the kernel's figure and ``wall`` what the event loop's clock said; the
difference is the exporter's own delay.
"""
from __future__ import annotations

from collections.abc import Mapping
import dataclasses
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple, TypeVar

_T = TypeVar("_T")


def fast_init(cls: type[_T]) -> type[_T]:
    """Give a frozen, slotted dataclass an ``__init__`` that stores each field through its slot.

    The generated one calls ``object.__setattr__`` per field, and every probe
    builds these values: a ProbeResult (two dozen fields) cost 35k CPU
    instructions that way and 20k this way, 5 % of a tcp_connect probe
    (bench/probe_instructions.py). Same signature and defaults, still frozen
    (tests/test_probe_results.py).
    """
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    assert not hasattr(cls, "__post_init__"), cls
    assert not any(f.kw_only or f.default_factory is not dataclasses.MISSING for f in fields), cls
    env: dict[str, Any] = {}
    params, body = [], []
    for i, f in enumerate(fields):
        env[f"_set{i}"] = cls.__dict__[f.name].__set__
        has_default = f.default is not dataclasses.MISSING
        if has_default:
            env[f"_default{i}"] = f.default
        if f.init:
            params.append(f"{f.name}=_default{i}" if has_default else f.name)
        body.append(f"    _set{i}(self, {f.name if f.init else f'_default{i}'})")
    exec(f"def __init__(self, {', '.join(params)}):\n" + "\n".join(body or ["    pass"]), env)  # noqa: S102
    init = env["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    cls.__init__ = init  # type: ignore[method-assign]
    return cls


@dataclass(frozen=True, slots=True)
class Failure:
    phase: str
    reason: str
    message: str


class Phase(NamedTuple):
    """One completed phase: offsets in seconds from the start of the probe.

    A NamedTuple, not a frozen dataclass: probes make several each, and a
    frozen dataclass costs twice as much to build.
    """

    name: str
    start: float
    duration: float
    hop: int = 0  # index into ProbeResult.hops (0 when the prober has no hops; the last one after them)
    # The event loop's figure when ``duration`` is the kernel's (None: duration is the wall clock).
    wall: float | None = None

    @property
    def end(self) -> float:
        return self.start + self.duration


@dataclass(frozen=True, slots=True)
class Certificate:
    subject: str
    issuer: str
    sans: tuple[str, ...]
    not_before: float  # unix seconds
    not_after: float  # unix seconds
    serial: str
    fingerprint_sha256: str


@dataclass(frozen=True, slots=True)
class TLSInfo:
    version: str | None  # "TLS 1.3"; None when the handshake did not complete
    cipher: str | None
    alpn: str | None
    server_name: str | None
    # "verified", "skipped" (insecure_skip_verify) or "failed" (see verification_error)
    verification: str
    chain: tuple[Certificate, ...] = ()
    # Earliest notAfter of the chain OpenSSL verified, trust anchor included
    # (blackbox's probe_ssl_last_chain_expiry_timestamp_seconds); None when
    # verification was skipped or failed.
    verified_chain_expiry: float | None = None
    # OpenSSL's verification message when verification failed (the chain above
    # is still the one the server presented: blackbox #1119).
    verification_error: str | None = None
    session_offered: bool = False  # a previous session was offered for resumption
    session_reused: bool = False  # the server accepted it (abbreviated handshake)
    # ClientHello written -> first bytes of the server's answer (its ServerHello
    # flight): one round trip plus the server's key exchange. The rest of the tls
    # phase is certificate processing and the client's finish.
    server_hello_seconds: float | None = None

    @property
    def earliest_expiry(self) -> float | None:
        return min((c.not_after for c in self.chain), default=None)

    @property
    def completed(self) -> bool:
        return self.version is not None


@fast_init
@dataclass(frozen=True, slots=True)
class Peer:
    ip: str
    family: str  # "ipv4" | "ipv6"
    port: int


@fast_init
@dataclass(frozen=True, slots=True)
class TCPInfo:
    """The kernel's view of the connection, read from TCP_INFO right after connect."""

    rtt_seconds: float
    rttvar_seconds: float
    retransmits: int  # tcpi_total_retrans: includes SYN retransmissions


@fast_init
@dataclass(frozen=True, slots=True)
class KeepAlive:
    """A keep-alive check: request 1, idle, request 2 on the same connection (http keepalive)."""

    idle_seconds: float  # the configured client idle
    reused: bool  # request 2 was answered on the first connection
    # How the server ended the idle connection: "fin", "rst", "silence" (nothing seen during the idle),
    # "connection_close" (response 1 said it would close) or "on_reuse" (request 2 found it dead).
    ended_by: str
    server_idle_seconds: float | None = None  # response 1 complete -> the server's FIN/RST (or the searched bound)
    connection_header: str | None = None  # response 1's Connection header
    keep_alive_header: str | None = None  # response 1's Keep-Alive header (e.g. "timeout=5")
    searched: bool = False  # server_idle_seconds comes from search: true


@dataclass(frozen=True, slots=True)
class TLSResumption:
    """A second handshake that offered the first one's session (tls_resumption.check)."""

    resumed: bool
    offered: bool  # False: the server gave no resumable session or ticket to offer
    full_seconds: float  # the first (full) handshake
    resumed_seconds: float | None  # the second handshake, resumed or not (None: it did not complete)
    version: str | None = None


@dataclass(frozen=True, slots=True)
class Hop:
    """One request/response exchange (a redirect makes several), as a span sees it."""

    url: str
    method: str
    start: float  # offset from the probe's start, seconds
    duration: float
    status: int | None = None
    peer: Peer | None = None
    span_id: str = ""  # the id sent in this request's traceparent


class Details:
    """Base of a prober's typed result details (frozen dataclasses)."""

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    def summary(self) -> str:
        """One line for the waterfall."""
        return "  ".join(f"{k} {'-' if v is None else v}" for k, v in self.to_dict().items())


def durations(phases: tuple[Phase, ...], hop: int | None = None) -> dict[str, float]:
    """name -> seconds (summed when a name repeats), optionally of one hop only."""
    out: dict[str, float] = {}
    for p in phases:
        if hop is None or p.hop == hop:
            out[p.name] = out.get(p.name, 0.0) + p.duration
    return out


@fast_init
@dataclass(frozen=True, slots=True)
class ProbeResult:
    target: str
    module: str
    prober: str
    started_at: float  # unix seconds, wall clock, for display only
    duration_seconds: float  # monotonic
    timeout_seconds: float
    timeline: tuple[Phase, ...] = ()  # every completed phase of every hop, in order
    failure: Failure | None = None
    # Where the failed phase started (offset, seconds): the time spent in it is
    # duration_seconds - failed_phase_start.
    failed_phase_start: float | None = None
    peer: Peer | None = None
    tcp: TCPInfo | None = None
    tls: TLSInfo | None = None
    hops: tuple[Hop, ...] = ()
    details: Details | None = None
    keepalive: KeepAlive | None = None
    resumption: TLSResumption | None = None
    failed_due_to_regex: bool = False
    # (nanoseconds from the start, message, %-arguments): formatted only when
    # read (``logs``), as most probes' logs are never looked at.
    log_records: tuple[tuple[int, str, tuple[Any, ...]], ...] = ()
    # The probe's trace; sampled=False means no span is exported for it.
    trace_id: str | None = None
    span_id: str | None = None
    parent_span_id: str | None = None  # the scrape's span, when Prometheus traced it
    tracestate: str = ""  # W3C tracestate carried on from the scrape
    sampled: bool = False
    # total_phases(), computed on first use: every sink asks for it.
    _totals: Mapping[str, float] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def logs(self) -> tuple[str, ...]:
        """The probe's log lines: ``  0.0012s message``."""
        return tuple(f"{ns / 1e9:8.4f}s {message % args if args else message}" for ns, message, args in self.log_records)

    @property
    def success(self) -> bool:
        return self.failure is None

    @property
    def self_delay_seconds(self) -> float | None:
        """The exporter's own delay: what the event loop's clock added to the kernel-timed phases
        (None when no phase was kernel-timed)."""
        delay = None
        for p in self.timeline:
            if p.wall is not None:
                delay = (delay or 0.0) + p.wall - p.duration
        return max(delay, 0.0) if delay is not None else None

    @property
    def last_hop(self) -> int:
        return max(len(self.hops) - 1, 0)

    @property
    def phases(self) -> Mapping[str, float]:
        """Durations of the last hop's phases (all phases when there are no hops)."""
        if len(self.hops) <= 1:
            return self.total_phases()
        return MappingProxyType(durations(self.timeline, self.last_hop))

    def hop_phases(self, hop: int) -> dict[str, float]:
        return durations(self.timeline, hop)

    def total_phases(self) -> Mapping[str, float]:
        """Phases summed over every redirect hop (a summary; hops keep the detail)."""
        totals = self._totals
        if totals is None:
            totals = MappingProxyType(durations(self.timeline))
            object.__setattr__(self, "_totals", totals)  # a cache of a frozen value's own data
        return totals

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "target": self.target,
            "module": self.module,
            "prober": self.prober,
            "success": self.success,
            "started_at": self.started_at,
            "duration_seconds": self.duration_seconds,
            "timeout_seconds": self.timeout_seconds,
            "phases": dict(self.phases),
            "timeline": [p._asdict() for p in self.timeline],
            "failure": asdict(self.failure) if self.failure else None,
            "failed_phase_seconds": (self.duration_seconds - self.failed_phase_start
                                     if self.failed_phase_start is not None else None),
            "peer": asdict(self.peer) if self.peer else None,
            "tcp": asdict(self.tcp) if self.tcp else None,
            "tls": None,
            "hops": [{**asdict(h), "phases": self.hop_phases(i)} for i, h in enumerate(self.hops)],
            "details": self.details.to_dict() if self.details is not None else None,
            "keepalive": asdict(self.keepalive) if self.keepalive else None,
            "tls_resumption": asdict(self.resumption) if self.resumption else None,
            "failed_due_to_regex": self.failed_due_to_regex,
            "self_delay_seconds": self.self_delay_seconds,
            "trace_id": self.trace_id,
            "trace_sampled": self.sampled,
        }
        if self.tls is not None:
            tls = asdict(self.tls)
            tls["earliest_expiry"] = self.tls.earliest_expiry
            d["tls"] = tls
        if len(self.hops) > 1:
            d["phases_total"] = dict(self.total_phases())
        return d
