"""Prometheus text exposition of one /probe result, in blackbox_exporter's names.

Written as text directly: a registry per probe costs more than the probe on
loopback. Where blackbox reports a metric, connhealth reports it with the same
name, labels and meaning — including blackbox's 0 for a phase that was never
reached in ``probe_http_duration_seconds``. connhealth's own truthful view
(absent when not reached) is ``probe_phase_duration_seconds``.
"""
from __future__ import annotations

import ipaddress

from . import metrics as m
from .result import ProbeResult

# blackbox phase names for probe_http_duration_seconds, mapped from ours. Its
# "processing" runs from getting the connection to the first response byte
# (Go's httptrace GotConn -> GotFirstResponseByte), so it includes writing the
# request: our request + first_byte.
_BLACKBOX_HTTP_PHASES = (
    ("connect", ("connect",)),
    ("processing", ("request", "first_byte")),
    ("resolve", ("dns",)),
    ("tls", ("tls",)),
    ("transfer", ("transfer",)),
)


# time.Time{}.Unix() in Go: what blackbox reports for a chain expiry it does not know.
_GO_ZERO_TIME_UNIX = -62135596800.0


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def labels(pairs: tuple[tuple[str, str], ...] | list[tuple[str, str]]) -> str:
    return ",".join(f'{k}="{escape(v)}"' for k, v in pairs)


def fmt(value: float) -> str:
    if value != value:
        return "NaN"
    if value == float("inf"):
        return "+Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def fnv32a(data: bytes | str) -> int:
    h = 0x811C9DC5
    for byte in data.encode() if isinstance(data, str) else data:
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h


def ip_hash(ip: str) -> int:
    """blackbox's probe_ip_addr_hash: FNV-1a 32 of the address bytes (4 for IPv4, incl. v4-mapped v6; else 16)."""
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return fnv32a(addr.packed)


def _dns_sans(sans: tuple[str, ...]) -> list[str]:
    """blackbox's subjectalternative label lists the leaf's DNS names only, not its IP SANs."""
    out = []
    for san in sans:
        try:
            ipaddress.ip_address(san)
        except ValueError:
            out.append(san)
    return out


class _Writer:
    __slots__ = ("lines",)

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        """samples: (label string without braces, value)."""
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for label_text, value in samples:
            self.lines.append(f"{name}{{{label_text}}} {fmt(value)}" if label_text else f"{name} {fmt(value)}")

    def gauge(self, name: str, help_text: str, value: float) -> None:
        self.family(name, "gauge", help_text, [("", value)])


def probe_text(result: ProbeResult) -> str:
    w = _Writer()
    phases_total = result.total_phases()
    w.gauge("probe_dns_lookup_time_seconds", "Returns the time taken for probe dns lookup in seconds", phases_total.get("dns", 0.0))
    w.gauge("probe_duration_seconds", "Returns how long the probe took to complete in seconds", result.duration_seconds)
    w.gauge("probe_failed_due_to_regex", "Indicates if probe failed due to regex", 1.0 if result.failed_due_to_regex else 0.0)
    if result.peer is not None:
        w.gauge("probe_ip_addr_hash", "Specifies the hash of IP address. It's useful to detect if the IP address changes.", float(ip_hash(result.peer.ip)))
        w.gauge("probe_ip_protocol", "Specifies whether probe ip protocol is IP4 or IP6", 6.0 if result.peer.family == "ipv6" else 4.0)
    if result.prober == "http":
        _http(w, result, phases_total)
    tls = result.tls
    if tls is not None:
        expiry = tls.earliest_expiry
        if expiry is not None:
            # blackbox: earliest notAfter of the presented certificates ...
            w.gauge("probe_ssl_earliest_cert_expiry", "Returns last SSL chain expiry in unixtime", expiry)
            # ... and, of the verified chain(s), including the trust anchor the
            # server did not send. Without verification (insecure_skip_verify)
            # blackbox has no verified chain and reports Go's zero time.
            last_chain = tls.verified_chain_expiry
            w.gauge("probe_ssl_last_chain_expiry_timestamp_seconds", "Returns last SSL chain expiry in timestamp",
                    last_chain if last_chain is not None else _GO_ZERO_TIME_UNIX)
        if tls.chain:
            leaf = tls.chain[0]
            w.family(
                "probe_ssl_last_chain_info", "gauge", "Contains SSL leaf certificate information",
                [(labels([("fingerprint_sha256", leaf.fingerprint_sha256), ("issuer", leaf.issuer), ("subject", leaf.subject),
                          ("subjectalternative", ",".join(_dns_sans(leaf.sans)))]), 1.0)],
            )
        if tls.version:
            w.family("probe_tls_version_info", "gauge", "Returns the TLS version used or NaN when unknown", [(labels([("version", tls.version)]), 1.0)])
        if tls.cipher:
            w.family("probe_tls_cipher_info", "gauge", "Returns the TLS cipher negotiated during handshake", [(labels([("cipher", tls.cipher)]), 1.0)])
    w.gauge("probe_success", "Displays whether or not the probe was a success", 1.0 if result.success else 0.0)
    w.gauge("probe_timeout_seconds", "Returns how long the probe timeout is in seconds", result.timeout_seconds)
    _connhealth(w, result)
    return "\n".join(w.lines) + "\n"


def _http(w: _Writer, result: ProbeResult, phases_total: dict[str, float]) -> None:
    http = result.http
    w.family(
        "probe_http_duration_seconds", "gauge", "Duration of http request by phase, summed over all redirects",
        [(f'phase="{bb}"', sum(phases_total.get(p, 0.0) for p in ours)) for bb, ours in _BLACKBOX_HTTP_PHASES],
    )
    w.gauge("probe_http_content_length", "Length of http content response",
            float(http.content_length) if http and http.content_length is not None else -1.0 if http else 0.0)
    w.gauge("probe_http_redirects", "The number of redirects", float(http.redirects) if http else 0.0)
    w.gauge("probe_http_ssl", "Indicates if SSL was used for the final redirect",
            1.0 if http and http.final_url.lower().startswith("https://") and result.tls is not None else 0.0)
    w.gauge("probe_http_status_code", "Response HTTP status code", float(http.status or 0) if http else 0.0)
    w.gauge("probe_http_uncompressed_body_length", "Length of uncompressed response body", float(http.body_length or 0) if http else 0.0)
    version = 0.0
    if http and http.version:
        version = float(http.version.split("/", 1)[1])
    w.gauge("probe_http_version", "Returns the version of HTTP of the probe response", version)


_EXTRA = {s.name: s for s in m.PROBE_ENDPOINT_EXTRA}


def _connhealth(w: _Writer, result: ProbeResult) -> None:
    spec = _EXTRA
    if result.failure is not None:
        f = result.failure
        w.family(m.FAILURE_INFO, "gauge", spec[m.FAILURE_INFO].help, [(labels([("phase", f.phase), ("reason", f.reason)]), 1.0)])
    if result.phases:
        w.family(m.PROBE_PHASE_SECONDS, "gauge", spec[m.PROBE_PHASE_SECONDS].help,
                 [(f'phase="{p}"', s) for p, s in result.phases.items()])
    if result.http is not None and len(result.http.hops) > 1:
        w.family(m.PROBE_HOP_PHASE_SECONDS, "gauge", spec[m.PROBE_HOP_PHASE_SECONDS].help,
                 [(f'hop="{i}",phase="{p}"', s) for i, hop in enumerate(result.http.hops) for p, s in hop.phases.items()])
    if result.tcp is not None:
        w.gauge(m.PROBE_TCP_RTT, spec[m.PROBE_TCP_RTT].help, result.tcp.rtt_seconds)
        w.gauge(m.PROBE_TCP_RETRANSMITS, spec[m.PROBE_TCP_RETRANSMITS].help, float(result.tcp.retransmits))
