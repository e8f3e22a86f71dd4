"""Human-readable rendering of a ProbeResult: an httpstat-like waterfall."""
from __future__ import annotations

import ipaddress
import time
from urllib.parse import urlsplit

from .failures import REASONS
from .result import PHASES, ProbeResult

_LABELS = {
    "dns": "DNS lookup",
    "connect": "TCP connect",
    "tls": "TLS handshake",
    "request": "Request sent",
    "first_byte": "Server processing",
    "transfer": "Content transfer",
}
_WIDTH = 40


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:9.2f} ms"


def waterfall(phases: dict[str, float], failed_phase: str | None = None, ip_literal: bool = False,
              width: int = _WIDTH) -> list[str]:
    total = sum(phases.values())
    lines = []
    offset = 0.0
    for name in PHASES:
        label = f"  {_LABELS[name]:<18}"
        if name not in phases:
            if name == failed_phase:
                note = "✗ failed here"
            elif name == "dns" and ip_literal:
                note = "(skipped: IP address)"
            else:
                note = "(not reached)"
            lines.append(f"{label}{'—':>12}   {note}")
            continue
        seconds = phases[name]
        start = int(round(offset / total * width)) if total else 0
        length = max(1, int(round(seconds / total * width))) if total else 1
        start = min(start, width - 1)
        bar = " " * start + "█" * min(length, width - start)
        lines.append(f"{label}{_ms(seconds)}  |{bar:<{width}}|")
        offset += seconds
    return lines


def render(result: ProbeResult, *, color: bool = False) -> str:
    ok = result.success
    status = "OK" if ok else "FAILED"
    if color:
        status = f"\033[32m{status}\033[0m" if ok else f"\033[31m{status}\033[0m"
    out = [f"{result.target}  (module {result.module}, prober {result.prober})  {status} in {result.duration_seconds * 1000:.2f} ms"]
    if result.peer:
        peer = result.peer
        out.append(f"  peer {peer.ip} port {peer.port} ({peer.family})")
    if result.trace_id:
        out.append(f"  trace {result.trace_id}{'' if result.sampled else ' (not sampled: no span exported)'}")
    if result.tcp:
        out.append(f"  kernel: rtt {result.tcp.rtt_seconds * 1000:.3f} ms, rttvar {result.tcp.rttvar_seconds * 1000:.3f} ms, retransmits {result.tcp.retransmits}")
    out.append("")
    hops = result.http.hops if result.http else ()
    if len(hops) > 1:
        for i, hop in enumerate(hops):
            out.append(f" hop {i + 1}: {hop.url}  -> {hop.status if hop.status is not None else 'no response'}")
            failed = result.failure.phase if result.failure and i == len(hops) - 1 else None
            out.extend(waterfall(hop.phases, failed, _ip_literal(hop.url)))
        total = result.total_phases()
        out.append(f" all {len(hops)} hops (phases summed over hops): {sum(total.values()) * 1000:.2f} ms")
    else:
        out.extend(waterfall(result.phases, result.failure.phase if result.failure else None, _ip_literal(result.target)))
    if result.http:
        h = result.http
        out.append("")
        out.append(
            f"  HTTP {h.version or '?'} {h.status}  redirects {h.redirects}  content-length {h.content_length if h.content_length is not None else '-'}"
            f"  body {h.body_length} bytes"
        )
    if result.tls:
        t = result.tls
        out.append("")
        out.append(f"  TLS {t.version}  cipher {t.cipher}  ALPN {t.alpn or '-'}  verification {t.verification}")
        now = time.time()
        for i, cert in enumerate(t.chain):
            days = (cert.not_after - now) / 86400
            out.append(f"   [{i}] {cert.subject}")
            out.append(f"       issuer {cert.issuer}; expires {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(cert.not_after))} UTC ({days:.1f} days)")
            if cert.sans:
                out.append(f"       SANs {', '.join(cert.sans)}")
            out.append(f"       sha256 {cert.fingerprint_sha256}")
    if result.failure:
        f = result.failure
        reason = REASONS.get(f.reason)
        out.append("")
        out.append(f"  Failed in phase '{f.phase}' with reason '{f.reason}': {reason.meaning if reason else ''}.")
        out.append(f"  Detail: {f.message}")
        if reason:
            out.append(f"  Typical cause: {reason.typical_cause}.")
    return "\n".join(out)


def _ip_literal(target: str) -> bool:
    host = urlsplit(target).hostname if "://" in target else target.rsplit(":", 1)[0].strip("[]")
    try:
        ipaddress.ip_address(host or "")
    except ValueError:
        return False
    return True
