"""The value a probe produces: plain, frozen, and free of any sink's concerns.

A phase that was not reached is absent from ``phases``; it is never a fake 0.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# Phase names, in the order a connection goes through them.
PHASES: tuple[str, ...] = ("dns", "connect", "tls", "request", "first_byte", "transfer")


@dataclass(frozen=True, slots=True)
class Failure:
    phase: str
    reason: str
    message: str


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
    version: str | None  # "TLS 1.3"
    cipher: str | None
    alpn: str | None
    server_name: str | None
    # "verified", "skipped" (insecure_skip_verify) or "failed: <reason>"
    verification: str
    chain: tuple[Certificate, ...] = ()
    # Earliest notAfter of the chain OpenSSL verified, trust anchor included
    # (blackbox's probe_ssl_last_chain_expiry_timestamp_seconds); None when
    # verification was skipped.
    verified_chain_expiry: float | None = None

    @property
    def earliest_expiry(self) -> float | None:
        return min((c.not_after for c in self.chain), default=None)


@dataclass(frozen=True, slots=True)
class Peer:
    ip: str
    family: str  # "ipv4" | "ipv6"
    port: int


@dataclass(frozen=True, slots=True)
class TCPInfo:
    """The kernel's view of the connection, read from TCP_INFO right after connect."""

    rtt_seconds: float
    rttvar_seconds: float
    retransmits: int  # tcpi_total_retrans: includes SYN retransmissions


@dataclass(frozen=True, slots=True)
class Hop:
    """One request/response exchange; redirects produce several hops."""

    url: str
    phases: dict[str, float]
    status: int | None = None
    peer: Peer | None = None
    reused_connection: bool = False


@dataclass(frozen=True, slots=True)
class HTTPInfo:
    status: int | None
    version: str | None  # "HTTP/1.1"
    redirects: int
    content_length: int | None  # the Content-Length header, when sent
    body_length: int | None  # bytes of the (decoded-transfer) body actually read
    final_url: str
    hops: tuple[Hop, ...] = ()


@dataclass(frozen=True, slots=True)
class ProbeResult:
    target: str
    module: str
    prober: str
    started_at: float  # unix seconds, wall clock, for display only
    duration_seconds: float  # monotonic
    timeout_seconds: float
    # Phases of the last hop for http (see HTTPInfo.hops for each hop), or of the
    # one connection for tcp. Absent key = phase not reached.
    phases: dict[str, float]
    failure: Failure | None = None
    peer: Peer | None = None
    tcp: TCPInfo | None = None
    tls: TLSInfo | None = None
    http: HTTPInfo | None = None
    failed_due_to_regex: bool = False
    logs: tuple[str, ...] = ()
    # The probe's trace; sampled=False means no span was exported for it.
    trace_id: str | None = None
    span_id: str | None = None
    sampled: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def success(self) -> bool:
        return self.failure is None

    def total_phases(self) -> dict[str, float]:
        """Phases summed over every redirect hop (a summary; hops keep the detail)."""
        if self.http is None or len(self.http.hops) <= 1:
            return dict(self.phases)
        total: dict[str, float] = {}
        for hop in self.http.hops:
            for name, seconds in hop.phases.items():
                total[name] = total.get(name, 0.0) + seconds
        return total

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
            "failure": asdict(self.failure) if self.failure else None,
            "peer": asdict(self.peer) if self.peer else None,
            "tcp": asdict(self.tcp) if self.tcp else None,
            "tls": None,
            "http": asdict(self.http) if self.http else None,
            "failed_due_to_regex": self.failed_due_to_regex,
            "trace_id": self.trace_id,
            "trace_sampled": self.sampled,
        }
        if self.tls is not None:
            tls = asdict(self.tls)
            tls["earliest_expiry"] = self.tls.earliest_expiry
            d["tls"] = tls
        if self.http is not None and len(self.http.hops) > 1:
            d["phases_total"] = self.total_phases()
        d.update(self.extra)
        return d
