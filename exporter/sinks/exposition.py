"""Prometheus text exposition of one /probe result, in blackbox_exporter's names.

Written as text directly: a registry per probe costs more than the probe on
loopback. The shared families are written here; a prober adds its own
(``Prober.exposition``), e.g. the http prober's ``probe_http_*``. Where blackbox reports a metric, connhealth reports it with the same
name, labels and meaning — including blackbox's 0 for a phase that was never
reached in ``probe_http_duration_seconds``. connhealth's own truthful view
(absent when not reached) is ``probe_phase_duration_seconds``.
"""
from __future__ import annotations

import functools
import ipaddress

from .. import metrics as m
from ..metrics import ProbeFamily, ProbeSamples, label_text
from ..probers import PROBERS
from ..result import Certificate, ProbeResult, TLSResumption

# time.Time{}.Unix() in Go: what blackbox reports for a chain expiry it does not know.
_GO_ZERO_TIME_UNIX = -62135596800.0


escape = m.escape_label_value
labels = functools.lru_cache(maxsize=4096)(m.label_text)  # the same label sets come back every probe


_INF = float("inf")
# The integral values almost every probe reports (flags, ip protocol, status
# codes, -1 content length, timeouts): one dict lookup instead of the checks below.
_COMMON_VALUES = {float(v): str(v) for v in (-1, 0, 1, 4, 5, 6, 10, 15, 30, 60, 200, 204, 301, 302, 304, 404, 500)}


def fmt(value: float) -> str:
    """A sample value as Go's strconv 'g' -1 writes it (so blackbox and the Prometheus client)."""
    text = _COMMON_VALUES.get(value)
    if text is not None:
        return text
    if value != value:
        return "NaN"
    if value == _INF:
        return "+Inf"
    if value == -_INF:
        return "-Inf"
    if value % 1 or abs(value) >= 1e15:  # a fraction (a duration), or large: Python's shortest repr is Go's
        return repr(float(value))
    return str(int(value))


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


def _gauge(name: str, help_text: str) -> ProbeFamily:
    return ProbeFamily(name, help_text)


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
_EXTRA = {s.name: _gauge(s.name, s.help) for s in m.PROBE_ENDPOINT_EXTRA}


def _family(parts: list[str], family: ProbeFamily, samples: ProbeSamples) -> None:
    if not isinstance(samples, list):  # one unlabelled value
        parts.append(f"{family.unlabelled}{fmt(samples)}\n")
        return
    parts.append(family.header)
    name = family.name
    for pairs, value in samples:
        if not pairs:
            parts.append(f"{name} {fmt(value)}\n")
        else:
            parts.append(f"{name}{{{pairs if type(pairs) is str else labels(pairs)}}} {fmt(value)}\n")


@functools.lru_cache(maxsize=256)
def _phase_label(phase: str) -> str:
    return labels((("phase", phase),))


_KIND_FULL, _KIND_RESUMED = label_text((("kind", "full"),)), label_text((("kind", "resumed"),))


def _handshakes(r: TLSResumption) -> ProbeSamples:
    if r.resumed_seconds is None:
        return [(_KIND_FULL, r.full_seconds)]
    return [(_KIND_FULL, r.full_seconds), (_KIND_RESUMED, r.resumed_seconds)]


def probe_text(result: ProbeResult) -> str:
    """blackbox's /probe body for ``result``: the shared families, the prober's own, then connhealth's extras."""
    peer = result.peer
    parts = [f"{_DNS_LOOKUP.unlabelled}{fmt(result.total_phases().get('dns', 0.0))}\n"
             f"{_DURATION.unlabelled}{fmt(result.duration_seconds)}\n"
             f"{_FAILED_DUE_TO_REGEX.unlabelled}{'1' if result.failed_due_to_regex else '0'}\n"]
    if peer is not None:
        parts.append(f"{_IP_ADDR_HASH.unlabelled}{ip_hash(peer.ip)}\n"
                     f"{_IP_PROTOCOL.unlabelled}{'6' if peer.family == 'ipv6' else '4'}\n")
    for family, samples in PROBERS[result.prober].exposition(result):
        _family(parts, family, samples)
    tls = result.tls
    if tls is not None:
        expiry = tls.earliest_expiry
        if expiry is not None:
            # blackbox: earliest notAfter of the presented certificates (also
            # when verification failed: blackbox #1119, which we fix) ...
            parts.append(f"{_SSL_EARLIEST_EXPIRY.unlabelled}{fmt(expiry)}\n")
            if tls.completed:
                # ... and, of the verified chain(s), including the trust anchor the
                # server did not send. Without verification (insecure_skip_verify)
                # blackbox has no verified chain and reports Go's zero time.
                last_chain = tls.verified_chain_expiry
                parts.append(f"{_SSL_LAST_CHAIN_EXPIRY.unlabelled}"
                             f"{fmt(last_chain if last_chain is not None else _GO_ZERO_TIME_UNIX)}\n")
        if tls.chain and tls.completed:
            parts.append(f"{_SSL_LAST_CHAIN_INFO.header}{_SSL_LAST_CHAIN_INFO.name}{{{_chain_info(tls.chain[0])}}} 1\n")
        if tls.version:
            _family(parts, _TLS_VERSION_INFO, [((("version", tls.version),), 1.0)])
        if tls.cipher:
            _family(parts, _TLS_CIPHER_INFO, [((("cipher", tls.cipher),), 1.0)])
    parts.append(f"{_SUCCESS.unlabelled}{'1' if result.failure is None else '0'}\n"
                 f"{_TIMEOUT.unlabelled}{fmt(result.timeout_seconds)}\n")
    extra = _EXTRA
    if result.failure is not None:
        f = result.failure
        _family(parts, extra[m.FAILURE_INFO], [((("phase", f.phase), ("reason", f.reason)), 1.0)])
    if result.timeline:
        _family(parts, extra[m.PROBE_PHASE_SECONDS], [(_phase_label(p), s) for p, s in result.phases.items()])
    if len(result.hops) > 1:
        _family(parts, extra[m.PROBE_HOP_PHASE_SECONDS],
                [((("hop", str(i)), ("phase", p)), s) for i in range(len(result.hops)) for p, s in result.hop_phases(i).items()])
    tcp = result.tcp
    if tcp is not None:
        parts.append(f"{extra[m.PROBE_TCP_RTT].unlabelled}{fmt(tcp.rtt_seconds)}\n"
                     f"{extra[m.PROBE_TCP_RETRANSMITS].unlabelled}{tcp.retransmits}\n")
    ka = result.keepalive
    if ka is not None:
        parts.append(f"{extra[m.PROBE_KEEPALIVE_REUSED].unlabelled}{'1' if ka.reused else '0'}\n")
        if ka.server_idle_seconds is not None:
            _family(parts, extra[m.PROBE_KEEPALIVE_SERVER_IDLE], ka.server_idle_seconds)
    resumption = result.resumption
    if resumption is not None:
        parts.append(f"{extra[m.PROBE_TLS_SESSION_RESUMED].unlabelled}{'1' if resumption.resumed else '0'}\n")
        _family(parts, extra[m.PROBE_TLS_HANDSHAKE], _handshakes(resumption))
    return "".join(parts)


@functools.lru_cache(maxsize=1024)  # the same leaf comes back every probe
def _chain_info(leaf: Certificate) -> str:
    return labels((("fingerprint_sha256", leaf.fingerprint_sha256), ("issuer", leaf.issuer),
                   ("subject", leaf.subject), ("subjectalternative", ",".join(_dns_sans(leaf.sans)))))
