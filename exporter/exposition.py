"""Prometheus text exposition of one /probe result, in blackbox_exporter's names.

Written as text directly: a registry per probe costs more than the probe on
loopback. Where blackbox reports a metric, connhealth reports it with the same
name, labels and meaning — including blackbox's 0 for a phase that was never
reached in ``probe_http_duration_seconds``. connhealth's own truthful view
(absent when not reached) is ``probe_phase_duration_seconds``.
"""
from __future__ import annotations

from . import metrics as m
from .result import ProbeResult

# blackbox phase names for probe_http_duration_seconds, mapped from ours
_BLACKBOX_HTTP_PHASES = (
    ("connect", "connect"),
    ("processing", "first_byte"),
    ("resolve", "dns"),
    ("tls", "tls"),
    ("transfer", "transfer"),
)


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


def fnv32a(text: str) -> int:
    h = 0x811C9DC5
    for byte in text.encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h


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
        w.gauge("probe_ip_addr_hash", "Specifies the hash of IP address. It's useful to detect if the IP address changes.", float(fnv32a(result.peer.ip)))
        w.gauge("probe_ip_protocol", "Specifies whether probe ip protocol is IP4 or IP6", 6.0 if result.peer.family == "ipv6" else 4.0)
    if result.prober == "http":
        _http(w, result, phases_total)
    tls = result.tls
    if tls is not None:
        expiry = tls.earliest_expiry
        if expiry is not None:
            w.gauge("probe_ssl_earliest_cert_expiry", "Returns last SSL chain expiry in unixtime", expiry)
            w.gauge("probe_ssl_last_chain_expiry_timestamp_seconds", "Returns last SSL chain expiry in timestamp", expiry)
        if tls.chain:
            leaf = tls.chain[0]
            w.family(
                "probe_ssl_last_chain_info", "gauge", "Contains SSL leaf certificate information",
                [(labels([("fingerprint_sha256", leaf.fingerprint_sha256), ("issuer", leaf.issuer), ("subject", leaf.subject),
                          ("subjectalternative", ",".join(leaf.sans))]), 1.0)],
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
        [(f'phase="{bb}"', phases_total.get(ours, 0.0)) for bb, ours in _BLACKBOX_HTTP_PHASES],
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


def _connhealth(w: _Writer, result: ProbeResult) -> None:
    spec = {s.name: s for s in m.PROBE_ENDPOINT_EXTRA}
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
