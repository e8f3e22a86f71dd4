"""Human-readable rendering of a ProbeResult: an httpstat-like waterfall."""
from __future__ import annotations

import ipaddress
import re
import time
from urllib.parse import urlsplit

from .failures import REASONS
from .probers import PROBERS, all_phases, phase_label
from .result import Phase, ProbeResult

_WIDTH = 40


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:9.2f} ms"


def _bar(start: float, duration: float, span: float, width: int, fill: str = "█") -> str:
    """A bar at its real place on the probe's time axis (phases start where they started, gaps show)."""
    first = min(int(start / span * width), width - 1) if span > 0 else 0
    length = max(1, int(round(duration / span * width))) if span > 0 else 1
    return " " * first + fill * min(length, width - first)


def waterfall(result: ProbeResult, hop: int | None = None, ip_literal: bool = False, width: int = _WIDTH,
              color: bool = False) -> list[str]:
    """One row per phase of the prober, in connection order, on the probe's own time axis (bars scaled to the total).

    A failed phase shows the time spent in it before it failed, marked ✗; a
    phase after the failure says "not reached", one that does not apply "n/a".
    The last row, "Other", holds what no phase covers, so the rows add up to the total.
    """
    phases: dict[str, list[Phase]] = {}
    for p in result.timeline:
        if hop is None or p.hop == hop:
            phases.setdefault(p.name, []).append(p)
    last = hop is None or hop == result.last_hop
    failure = result.failure if last else None
    failed_start = result.failed_phase_start if failure is not None else None
    span = result.duration_seconds
    specs = PROBERS[result.prober].phases if result.prober in PROBERS else ()
    failed = result.failure.phase if result.failure is not None else None
    names = [spec.name for spec in specs if not spec.optional or spec.name in phases or spec.name == failed]
    names += [n for n in phases if n not in names]
    lines = []
    covered = 0.0
    red, reset = ("\033[31m", "\033[0m") if color else ("", "")
    for name in names:
        label = f"  {phase_label(name):<18}"
        done = phases.get(name)
        if done:
            seconds = sum(p.duration for p in done)
            covered += seconds
            bar = "".join(_bar(p.start, p.duration, span, width) for p in done[:1])
            # A phase that completed and then failed its check (a 5xx status, an echo mismatch).
            mark = f"  {red}✗ failed here{reset}" if failure is not None and name == failure.phase and failed_start is None else ""
            lines.append(f"{label}{_ms(seconds)}  |{bar:<{width}}|{_clock(result, name, done)}{mark}")
        elif failure is not None and name == failure.phase:
            if failed_start is not None:
                spent = max(result.duration_seconds - failed_start, 0.0)
                covered += spent
                bar = _bar(failed_start, spent, span, width, "▒")
                lines.append(f"{label}{_ms(spent)}  |{red}{bar:<{width}}{reset}|  {red}✗ failed here{reset}")
            else:
                lines.append(f"{label}{'—':>12}   {red}✗ failed here{reset}")
        elif name == "dns" and ip_literal:
            lines.append(f"{label}{'—':>12}   (skipped: IP address)")
        elif failure is not None and not _inapplicable(result, name):
            lines.append(f"{label}{'—':>12}   (not reached)")
        else:
            lines.append(f"{label}{'—':>12}   (n/a)")
    if hop is None:
        other = max(span - covered, 0.0)
        lines.append(f"  {'Other':<18}{_ms(other)}   (time outside the phases above)")
        lines.append(f"  {'Total':<18}{_ms(span)}")
    return lines


def _clock(result: ProbeResult, name: str, done: list[Phase]) -> str:
    """Which clock timed the phase: the kernel's (with the event loop's figure beside it) or the wall clock."""
    if all(p.wall is not None for p in done):
        return f"  kernel; loop {sum(p.wall or 0.0 for p in done) * 1000:.2f} ms"
    if name == "connect" and result.tcp is not None and result.tcp.retransmits:
        return "  wall clock (SYN retransmitted)"
    return ""


def _inapplicable(result: ProbeResult, name: str) -> bool:
    """A phase this probe would never have had: TLS on a plain http:// URL."""
    return name == "tls" and result.target.lower().startswith("http://")


_PYTHON_NOISE = [
    re.compile(r"\s*\(_ssl\.c:\d+\)"),
    re.compile(r"\[SSL: [A-Z0-9_]+\]\s*"),
    re.compile(r"\[Errno -?\d+\]\s*"),
    re.compile(r"Connect call failed \([^)]*\)"),
    re.compile(r"\s*\('[^']*', \d+[^)]*\)"),
]


def plain_detail(message: str) -> str:
    """A failure message without Python's exception dressing ([Errno 111], ('127.0.0.1', 1), _ssl.c:1006)."""
    text = message
    for pattern in _PYTHON_NOISE:
        text = pattern.sub("", text)
    parts = [p.strip() for p in text.split(": ")]
    out: list[str] = []
    for part in parts:
        if part and part.lower() not in (o.lower() for o in out):
            out.append(part)
    return ": ".join(out)


def failure_sentence(result: ProbeResult) -> str:
    """The failure as one plain sentence: where, how long it took, what it means."""
    f = result.failure
    if f is None:
        return ""
    reason = REASONS.get(f.reason)
    where = phase_label(f.phase) if f.phase in {s.name for s in all_phases()} else f"phase {f.phase}"
    spent = ""
    if result.failed_phase_start is not None:
        spent = f" after {(result.duration_seconds - result.failed_phase_start) * 1000:.2f} ms"
    meaning = reason.meaning if reason else f.reason
    if f.reason == "internal_error":
        return f"Failed in {where}{spent}: an internal error in connhealth ({f.reason}; the detail is in --json and /logs)."
    return f"Failed in {where}{spent}: {meaning} ({f.reason})."


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
        out.append(f"  kernel: rtt {result.tcp.rtt_seconds * 1000:.3f} ms, rttvar {result.tcp.rttvar_seconds * 1000:.3f} ms, retransmits {result.tcp.retransmits}"
                   + (" (SYN retransmits: the connect waited for a retransmitted SYN)" if result.tcp.retransmits else ""))
    delay = result.self_delay_seconds
    if delay is not None:
        out.append(f"  exporter's own delay {delay * 1000:.3f} ms (event-loop clock minus kernel timestamps, kernel-timed phases)")
    out.append("")
    hops = result.hops
    if len(hops) > 1:
        for i, hop in enumerate(hops):
            out.append(f" hop {i + 1}: {hop.method} {hop.url}  -> {hop.status if hop.status is not None else 'no response'}")
            out.extend(waterfall(result, i, _ip_literal(hop.url), color=color))
        total = result.total_phases()
        out.append(f" all {len(hops)} hops (phases summed over hops): {sum(total.values()) * 1000:.2f} ms;"
                   f" other {max(result.duration_seconds - sum(total.values()), 0) * 1000:.2f} ms;"
                   f" total {result.duration_seconds * 1000:.2f} ms")
    else:
        out.extend(waterfall(result, None, _ip_literal(result.target), color=color))
    summary = result.details.summary() if result.details is not None else ""
    if summary:
        out.append("")
        out.append("  " + summary)
    out.extend(_lifecycle(result))
    if result.tls:
        t = result.tls
        out.append("")
        if t.completed:
            resumed = "  session resumed" if t.session_reused else "  session offered, not resumed" if t.session_offered else ""
            hello = f"  server hello after {t.server_hello_seconds * 1000:.2f} ms" if t.server_hello_seconds is not None else ""
            out.append(f"  TLS {t.version}  cipher {t.cipher}  ALPN {t.alpn or '-'}  verification {t.verification}{resumed}{hello}")
        else:
            out.append(f"  TLS handshake failed; verification {t.verification}: {plain_detail(t.verification_error or '-')}; "
                       "the chain the server presented:")
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
        out.append("  " + failure_sentence(result))
        detail = plain_detail(f.message)
        if detail and f.reason != "internal_error":
            out.append(f"  Detail: {detail}.")
        if reason:
            out.append(f"  Typical cause: {reason.typical_cause}.")
    return "\n".join(out)


def _lifecycle(result: ProbeResult) -> list[str]:
    """The keep-alive and TLS resumption checks, one line each."""
    out = []
    ka = result.keepalive
    if ka is not None:
        ended = "kept it" if ka.ended_by == "silence" else f"ended it ({ka.ended_by})"
        after = f" after {ka.server_idle_seconds:.3f}s" if ka.server_idle_seconds is not None else ""
        out.append(f"  keep-alive: reused {'yes' if ka.reused else 'no'} after {ka.idle_seconds:g}s idle; the server {ended}{after}"
                   f"; Connection {ka.connection_header or '-'}, Keep-Alive {ka.keep_alive_header or '-'}")
    r = result.resumption
    if r is not None:
        again = f", second {r.resumed_seconds * 1000:.3f} ms" if r.resumed_seconds is not None else ", nothing to offer"
        out.append(f"  TLS resumption: {'resumed' if r.resumed else 'not resumed'} ({r.version}); full {r.full_seconds * 1000:.3f} ms{again}")
    return [""] + out if out else out


def _ip_literal(target: str) -> bool:
    host = urlsplit(target).hostname if "://" in target else target.rsplit(":", 1)[0].strip("[]")
    try:
        ipaddress.ip_address(host or "")
    except ValueError:
        return False
    return True
