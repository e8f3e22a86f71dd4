"""Prometheus text exposition of one /probe result, in blackbox_exporter's names.

Written as text directly: a registry per probe costs more than the probe on
loopback. Where blackbox reports a metric, connhealth reports it with the same
name, labels and meaning — including blackbox's 0 for a phase that was never
reached in ``probe_http_duration_seconds``. connhealth's own truthful view
(absent when not reached) is ``probe_phase_duration_seconds``.
"""
from __future__ import annotations

import functools
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


_INF = float("inf")
# The integral values almost every probe reports (flags, ip protocol, status
# codes, -1 content length, timeouts): one dict lookup instead of the checks below.
_COMMON_VALUES = {float(v): str(v) for v in (-1, 0, 1, 4, 5, 6, 10, 15, 30, 60, 200, 204, 301, 302, 304, 404, 500)}


def fmt(value: float) -> str:
    text = _COMMON_VALUES.get(value)
    if text is not None:
        return text
    if value != value:
        return "NaN"
    if value == _INF:
        return "+Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def fnv32a(data: bytes | str) -> int:
    h = 0x811C9DC5
    for byte in data.encode() if isinstance(data, str) else data:
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h


@functools.lru_cache(maxsize=4096)  # a probe's target resolves to the same few addresses
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


class _Family:
    """A metric family's name and its '# HELP'/'# TYPE' lines, built once at import, not per probe."""

    __slots__ = ("name", "header")

    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.name = name
        self.header = f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n"


def _gauge(name: str, help_text: str) -> _Family:
    return _Family(name, "gauge", help_text)


_DNS_LOOKUP = _gauge("probe_dns_lookup_time_seconds", "Returns the time taken for probe dns lookup in seconds")
_DURATION = _gauge("probe_duration_seconds", "Returns how long the probe took to complete in seconds")
_FAILED_DUE_TO_REGEX = _gauge("probe_failed_due_to_regex", "Indicates if probe failed due to regex")
_IP_ADDR_HASH = _gauge("probe_ip_addr_hash", "Specifies the hash of IP address. It's useful to detect if the IP address changes.")
_IP_PROTOCOL = _gauge("probe_ip_protocol", "Specifies whether probe ip protocol is IP4 or IP6")
_SSL_EARLIEST_EXPIRY = _gauge("probe_ssl_earliest_cert_expiry", "Returns last SSL chain expiry in unixtime")
_SSL_LAST_CHAIN_EXPIRY = _gauge("probe_ssl_last_chain_expiry_timestamp_seconds", "Returns last SSL chain expiry in timestamp")
_SSL_LAST_CHAIN_INFO = _gauge("probe_ssl_last_chain_info", "Contains SSL leaf certificate information")
_TLS_VERSION_INFO = _gauge("probe_tls_version_info", "Returns the TLS version used or NaN when unknown")
_TLS_CIPHER_INFO = _gauge("probe_tls_cipher_info", "Returns the TLS cipher negotiated during handshake")
_SUCCESS = _gauge("probe_success", "Displays whether or not the probe was a success")
_TIMEOUT = _gauge("probe_timeout_seconds", "Returns how long the probe timeout is in seconds")
_HTTP_DURATION = _gauge("probe_http_duration_seconds", "Duration of http request by phase, summed over all redirects")
_HTTP_CONTENT_LENGTH = _gauge("probe_http_content_length", "Length of http content response")
_HTTP_REDIRECTS = _gauge("probe_http_redirects", "The number of redirects")
_HTTP_SSL = _gauge("probe_http_ssl", "Indicates if SSL was used for the final redirect")
_HTTP_STATUS_CODE = _gauge("probe_http_status_code", "Response HTTP status code")
_HTTP_BODY_LENGTH = _gauge("probe_http_uncompressed_body_length", "Length of uncompressed response body")
_HTTP_VERSION = _gauge("probe_http_version", "Returns the version of HTTP of the probe response")
_EXTRA = {s.name: _gauge(s.name, s.help) for s in m.PROBE_ENDPOINT_EXTRA}


class _Writer:
    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[str] = []  # each ends with a newline

    def family(self, fam: _Family, samples: list[tuple[str, float]]) -> None:
        """samples: (label string without braces, value)."""
        self.parts.append(fam.header)
        name = fam.name
        for label_text, value in samples:
            self.parts.append(f"{name}{{{label_text}}} {fmt(value)}\n" if label_text else f"{name} {fmt(value)}\n")

    def gauge(self, fam: _Family, value: float) -> None:
        self.parts.append(f"{fam.header}{fam.name} {fmt(value)}\n")


def probe_text(result: ProbeResult) -> str:
    w = _Writer()
    phases_total = result.total_phases()
    w.gauge(_DNS_LOOKUP, phases_total.get("dns", 0.0))
    w.gauge(_DURATION, result.duration_seconds)
    w.gauge(_FAILED_DUE_TO_REGEX, 1.0 if result.failed_due_to_regex else 0.0)
    if result.peer is not None:
        w.gauge(_IP_ADDR_HASH, float(ip_hash(result.peer.ip)))
        w.gauge(_IP_PROTOCOL, 6.0 if result.peer.family == "ipv6" else 4.0)
    if result.prober == "http":
        _http(w, result, phases_total)
    tls = result.tls
    if tls is not None:
        expiry = tls.earliest_expiry
        if expiry is not None:
            # blackbox: earliest notAfter of the presented certificates ...
            w.gauge(_SSL_EARLIEST_EXPIRY, expiry)
            # ... and, of the verified chain(s), including the trust anchor the
            # server did not send. Without verification (insecure_skip_verify)
            # blackbox has no verified chain and reports Go's zero time.
            last_chain = tls.verified_chain_expiry
            w.gauge(_SSL_LAST_CHAIN_EXPIRY, last_chain if last_chain is not None else _GO_ZERO_TIME_UNIX)
        if tls.chain:
            leaf = tls.chain[0]
            w.family(
                _SSL_LAST_CHAIN_INFO,
                [(labels([("fingerprint_sha256", leaf.fingerprint_sha256), ("issuer", leaf.issuer), ("subject", leaf.subject),
                          ("subjectalternative", ",".join(_dns_sans(leaf.sans)))]), 1.0)],
            )
        if tls.version:
            w.family(_TLS_VERSION_INFO, [(labels([("version", tls.version)]), 1.0)])
        if tls.cipher:
            w.family(_TLS_CIPHER_INFO, [(labels([("cipher", tls.cipher)]), 1.0)])
    w.gauge(_SUCCESS, 1.0 if result.success else 0.0)
    w.gauge(_TIMEOUT, result.timeout_seconds)
    _connhealth(w, result)
    return "".join(w.parts)


def _http(w: _Writer, result: ProbeResult, phases_total: dict[str, float]) -> None:
    http = result.http
    w.family(
        _HTTP_DURATION,
        [(f'phase="{bb}"', sum(phases_total.get(p, 0.0) for p in ours)) for bb, ours in _BLACKBOX_HTTP_PHASES],
    )
    w.gauge(_HTTP_CONTENT_LENGTH, float(http.content_length) if http and http.content_length is not None else -1.0 if http else 0.0)
    w.gauge(_HTTP_REDIRECTS, float(http.redirects) if http else 0.0)
    w.gauge(_HTTP_SSL, 1.0 if http and http.final_url.lower().startswith("https://") and result.tls is not None else 0.0)
    w.gauge(_HTTP_STATUS_CODE, float(http.status or 0) if http else 0.0)
    w.gauge(_HTTP_BODY_LENGTH, float(http.body_length or 0) if http else 0.0)
    version = 0.0
    if http and http.version:
        version = float(http.version.split("/", 1)[1])
    w.gauge(_HTTP_VERSION, version)


def _connhealth(w: _Writer, result: ProbeResult) -> None:
    extra = _EXTRA
    if result.failure is not None:
        f = result.failure
        w.family(extra[m.FAILURE_INFO], [(labels([("phase", f.phase), ("reason", f.reason)]), 1.0)])
    if result.phases:
        w.family(extra[m.PROBE_PHASE_SECONDS], [(f'phase="{p}"', s) for p, s in result.phases.items()])
    if result.http is not None and len(result.http.hops) > 1:
        w.family(extra[m.PROBE_HOP_PHASE_SECONDS],
                 [(f'hop="{i}",phase="{p}"', s) for i, hop in enumerate(result.http.hops) for p, s in hop.phases.items()])
    if result.tcp is not None:
        w.gauge(extra[m.PROBE_TCP_RTT], result.tcp.rtt_seconds)
        w.gauge(extra[m.PROBE_TCP_RETRANSMITS], float(result.tcp.retransmits))
