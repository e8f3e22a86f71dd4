"""Prometheus recording and alerting rules generated from the SLO spec.

Conventions (sloth/pyrra-like, one name per quantity, the window as a label):

    connhealth_slo:probes:increase{service, slo, window}      probes in the window (what min_probes counts)
    connhealth_slo:events:increase{service, slo, window}      the SLI's denominator in the window: observed
                                                              seconds (availability), phase observations (latency)
    connhealth_slo:errors:increase{service, slo, window}      bad events in the window, in the same unit
    connhealth_slo:error_ratio{service, slo, window}          errors / events, 0 on zero traffic
    connhealth_slo:sli{service, slo, window}                  1 - error_ratio
    connhealth_slo:burn_rate{service, slo, window}            error_ratio / error_budget
    connhealth_slo:objective{service, slo}                    e.g. 0.999
    connhealth_slo:error_budget{service, slo}                 1 - objective
    connhealth_slo:error_budget_remaining{service, slo}       1 - error_ratio{window=<period>} / error_budget
    connhealth_slo:burn_rate_threshold{service, slo, severity, long_window, short_window}
    connhealth_slo:latency_threshold_seconds{service, slo}    the latency SLO's bucket bound

``slo`` is ``availability`` or ``latency``; ``window`` is one of 5m, 30m, 1h,
2h, 6h, 1d, 3d and the SLO period (7d, 28d or 30d). Burn-rate alerts follow
the SRE Workbook's multi-window, multi-burn-rate policy; each factor is the
share of the budget the long window may consume times period / long window
(2 % in 1h of 30d = 14.4), so 28d and 7d SLOs get factors of their own.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

if __package__ and __package__.startswith("connhealth."):  # installed: connhealth.alerts (pyproject's package-dir)
    from ..exporter import metrics as m
    from ..exporter.slo import Availability, Latency, Objective, SLOSpec
else:  # a checkout: exporter/, dashboards/ and alerts/ side by side
    from exporter import metrics as m
    from exporter.slo import Availability, Latency, Objective, SLOSpec

WINDOWS: tuple[str, ...] = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# The failure reason of a probe that failed before a phase histogram could
# observe it does not count against the latency SLO: that is the availability SLO's job.
TINY = "1e-12"  # denominators are clamped to this: 0 probes -> 0 errors / TINY = 0, never NaN


def seconds(window: str) -> float:
    return float(window[:-1]) * _SECONDS[window[-1]]


@dataclass(frozen=True, slots=True)
class BurnPolicy:
    """One multi-window burn-rate alert: fire when both windows burn faster than ``factor``."""

    severity: str  # page | ticket
    long: str
    short: str
    budget_share: float  # share of the period's budget the long window may consume
    for_: str
    factor: float | None = None  # None: derived from budget_share and the SLO period

    def factor_for(self, period_seconds: float) -> float:
        if self.factor is not None:
            return self.factor
        return round(self.budget_share * period_seconds / seconds(self.long), 6)


# SRE Workbook, table 5-8 (30d: 14.4, 6, 3, 1).
DEFAULT_POLICY: tuple[BurnPolicy, ...] = (
    BurnPolicy("page", "1h", "5m", 0.02, "2m"),
    BurnPolicy("page", "6h", "30m", 0.05, "15m"),
    BurnPolicy("ticket", "1d", "2h", 0.10, "1h"),
    BurnPolicy("ticket", "3d", "6h", 0.10, "3h"),
)

DASHBOARD_UIDS = {
    "slo": "connhealth-slo",
    "failures": "connhealth-failures",
    "target": "connhealth-target",
    "exporter": "connhealth-exporter",
}


def num(value: float) -> str:
    return f"{value:.10g}"


def _slo_kinds(o: Objective) -> list[tuple[str, float, str, str, str]]:
    """(slo, objective, total, good, probes expr templates) — templates take the window.

    Availability is time-weighted (observed and up seconds, docs/metrics.md): re-probing a failing
    target more often must not weigh the SLI toward failures. ``probes`` counts probes, for min_probes.
    """
    out = []
    if o.availability is not None:
        sel = o.matchers()
        out.append(("availability", o.availability.objective,
                    f"sum(increase({m.OBSERVED_SECONDS}{{{sel}}}[@W@]))",
                    f"sum(increase({m.UP_SECONDS}{{{sel}}}[@W@]))",
                    f"sum(increase({m.PROBE_ATTEMPTS}{{{sel}}}[@W@]))"))
    if o.latency is not None:
        lat = o.latency
        sel = o.matchers(phase=lat.phase)
        count = f"sum(increase({m.PHASE_DURATION}_count{{{sel}}}[@W@]))"
        out.append(("latency", lat.objective, count,
                    f"sum(increase({m.PHASE_DURATION}_bucket{{{o.matchers(phase=lat.phase, le=lat.le)}}}[@W@]))",
                    count))
    return out


def _link(spec: SLOSpec, uid: str, **params: str) -> str:
    query = "&".join(f"var-{k}={v}" for k, v in params.items())
    return f"{spec.grafana_url}/d/{uid}/{uid}" + (f"?{query}" if query else "")


def _runbook(spec: SLOSpec, alert: str, o: Objective | None = None) -> str:
    """``<base>#<anchor>`` as GitHub makes it from the alert's heading in alerts/RUNBOOKS.md; "" without a base."""
    base = (o.runbook_url if o is not None and o.runbook_url else spec.runbook_url)
    return f"{base}#{alert.lower()}" if base else ""


def _without_empty_annotations(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """No runbook_url configured: no annotation, rather than a link to nowhere."""
    for group in groups:
        for rule in group["rules"]:
            if "annotations" in rule:
                rule["annotations"] = {k: v for k, v in rule["annotations"].items() if v}
    return groups


def slo_groups(spec: SLOSpec, policy: tuple[BurnPolicy, ...] = DEFAULT_POLICY) -> list[dict[str, Any]]:
    groups = []
    for o in spec.objectives:
        for slo, objective, total_t, good_t, probes_t in _slo_kinds(o):
            labels = {"service": o.service, "slo": slo}
            sel = f'service="{o.service}",slo="{slo}"'
            budget = round(1 - objective, 10)
            rules: list[dict[str, Any]] = [
                {"record": "connhealth_slo:objective", "expr": f"vector({num(objective)})", "labels": dict(labels)},
                {"record": "connhealth_slo:error_budget", "expr": f"vector({num(budget)})", "labels": dict(labels)},
            ]
            if slo == "latency":
                assert o.latency is not None
                rules.append({"record": "connhealth_slo:latency_threshold_seconds",
                              "expr": f"vector({num(o.latency.threshold)})", "labels": dict(labels)})
            for p in policy:
                rules.append({"record": "connhealth_slo:burn_rate_threshold",
                              "expr": f"vector({num(p.factor_for(o.period_seconds))})",
                              "labels": {**labels, "severity": p.severity, "long_window": p.long, "short_window": p.short}})
            extra = [w for p in policy for w in (p.long, p.short) if w not in WINDOWS]
            for w in dict.fromkeys((*WINDOWS, *extra, o.period)):
                wl = {**labels, "window": w}
                wsel = f'{sel},window="{w}"'
                total, good = total_t.replace("@W@", w), good_t.replace("@W@", w)
                rules += [
                    {"record": "connhealth_slo:probes:increase", "expr": probes_t.replace("@W@", w), "labels": wl},
                    {"record": "connhealth_slo:events:increase", "expr": total, "labels": wl},
                    # total - good (not the failures counter): both series exist from the moment a
                    # target is scheduled, so zero failures is 0, not an empty result.
                    {"record": "connhealth_slo:errors:increase", "expr": f"clamp_min({total} - {good}, 0)", "labels": wl},
                    {"record": "connhealth_slo:error_ratio",
                     "expr": f"connhealth_slo:errors:increase{{{wsel}}} / clamp_min(connhealth_slo:events:increase{{{wsel}}}, {TINY})",
                     "labels": wl},
                    {"record": "connhealth_slo:sli", "expr": f"1 - connhealth_slo:error_ratio{{{wsel}}}", "labels": wl},
                    {"record": "connhealth_slo:burn_rate", "expr": f"connhealth_slo:error_ratio{{{wsel}}} / {num(budget)}",
                     "labels": wl},
                ]
            rules.append({
                "record": "connhealth_slo:error_budget_remaining",
                "expr": f'1 - max without (window) (connhealth_slo:error_ratio{{{sel},window="{o.period}"}}) / {num(budget)}',
                "labels": dict(labels),
            })
            what = "probe success ratio" if slo == "availability" else (
                f"share of {o.latency.phase} phases <= {o.latency.threshold * 1000:g} ms" if o.latency else "")
            for p in policy:
                factor = p.factor_for(o.period_seconds)
                cond = (f'connhealth_slo:burn_rate{{{sel},window="{p.long}"}} > {num(factor)}\n'
                        f'and ignoring (window)\n'
                        f'connhealth_slo:burn_rate{{{sel},window="{p.short}"}} > {num(factor)}')
                if o.min_probes:
                    cond += (f'\nand ignoring (window)\n'
                             f'connhealth_slo:probes:increase{{{sel},window="{p.long}"}} >= {o.min_probes}')
                alert = "ConnhealthErrorBudgetBurn"
                rules.append({
                    "alert": alert,
                    "expr": cond + "\n",
                    "for": p.for_,
                    "labels": {**labels, "severity": p.severity, "long_window": p.long, "short_window": p.short},
                    "annotations": {
                        "summary": f"{o.service} {slo} SLO burning its {o.period} error budget {num(factor)}x too fast "
                                   f"({p.long}/{p.short} windows)",
                        # No $value here: the annotations stay stable while the alert fires (and in unit tests);
                        # the dashboard link shows the burn rate.
                        "description": (
                            f"The {what} of {o.service} ({o.matchers()}) burns the error budget of its "
                            f"{num(objective * 100)}% / {o.period} objective more than {num(factor)}x too fast over "
                            f"both the last {p.long} and the last {p.short}: at this rate {num(p.budget_share * 100)}% "
                            f"of the {o.period} budget is gone within {p.long}."),
                        "runbook_url": _runbook(spec, alert, o),
                        "dashboard": _link(spec, DASHBOARD_UIDS["slo"], service=o.service),
                    },
                })
            groups.append({"name": f"connhealth-slo-{o.service}-{slo}", "rules": rules})
    return groups


FLOOR_WINDOW = "5m"  # the floor alert's SLI: short, so "stays below" means below all the time


def sli_floor_groups(spec: SLOSpec) -> list[dict[str, Any]]:
    """``sli_floor`` (off unless configured): the SLI stays below a floor for a while (seeds 002/003).

    Next to the burn-rate alerts, not instead: burn rates say how fast the budget goes, the floor says the
    service has been worse than an absolute level all along (no budget arithmetic to explain on call).
    """
    groups = []
    for o in spec.objectives:
        rules = []
        sections: list[tuple[str, Availability | Latency | None]] = [("availability", o.availability), ("latency", o.latency)]
        for slo, section in sections:
            if section is None or section.sli_floor is None:
                continue
            floor = section.sli_floor
            name = "ConnhealthSLIBelowFloor"
            sel = f'service="{o.service}",slo="{slo}",window="{FLOOR_WINDOW}"'
            rules.append({
                "alert": name,
                "expr": f"connhealth_slo:sli{{{sel}}} < {num(floor.objective)}\n",
                "for": floor.for_,
                "labels": {"service": o.service, "slo": slo, "severity": "ticket"},
                "annotations": {
                    "summary": f"{o.service} {slo} SLI below {num(floor.objective * 100)}% for {floor.for_}",
                    "description": (
                        f"The {slo} SLI of {o.service} ({o.matchers()}) over every {FLOOR_WINDOW} window of the last "
                        f"{floor.for_} stayed below the floor of {num(floor.objective * 100)}% (the SLO objective is "
                        f"{num(section.objective * 100)}% over {o.period})."),
                    "runbook_url": _runbook(spec, name, o),
                    "dashboard": _link(spec, DASHBOARD_UIDS["slo"], service=o.service),
                },
            })
        if rules:
            groups.append({"name": f"connhealth-slo-{o.service}-floor", "rules": rules})
    return groups


def _alert(name: str, expr: str, for_: str, severity: str, summary: str, description: str, spec: SLOSpec,
           dashboard: str, **params: str) -> dict[str, Any]:
    return {
        "alert": name,
        "expr": expr,
        "for": for_,
        "labels": {"severity": severity},
        "annotations": {
            "summary": summary,
            "description": description,
            "runbook_url": _runbook(spec, name),
            "dashboard": _link(spec, DASHBOARD_UIDS[dashboard], **params),
        },
    }


TGT_Q = "{{ $labels.target | urlquery }}"


def probe_groups(spec: SLOSpec) -> list[dict[str, Any]]:
    """Certificates, targets gone absent or stale: independent of any SLO."""
    days = "(%s - time()) / 86400" % m.CERT_EXPIRY
    tgt = "{{ $labels.target }}"
    cert = [
        _alert("ConnhealthCertificateExpiringSoon", f"{days} < 14 and {days} >= 3", "15m", "warning",
               f"Certificate of {tgt} expires in {{{{ $value | printf \"%.1f\" }}}} days",
               f"The earliest notAfter in the chain presented by {tgt} (module {{{{ $labels.module }}}}) is less than "
               "14 days away. Renew it.", spec, "failures", target=TGT_Q),
        _alert("ConnhealthCertificateExpiringCritical", f"{days} < 3 and {days} >= 0", "5m", "critical",
               f"Certificate of {tgt} expires in {{{{ $value | printf \"%.1f\" }}}} days",
               f"The earliest notAfter in the chain presented by {tgt} is less than 3 days away; clients will fail "
               "the handshake once it passes.", spec, "failures", target=TGT_Q),
        _alert("ConnhealthCertificateExpired", f"{days} < 0", "0m", "critical",
               f"Certificate of {tgt} has expired",
               # The expiry also comes from handshakes that failed verification (blackbox #1119), so this fires
               # for a certificate that was already expired when first probed. OpenSSL reports an untrusted chain
               # or a wrong name before an expired one, hence the "unless".
               f"The last TLS handshake with {tgt} that received the server's certificates (completed, or failed "
               "verification) presented a chain whose earliest notAfter is in the past; verifying clients reject "
               "it (tls_cert_expired, unless an untrusted chain or a hostname mismatch is reported first).",
               spec, "failures", target=TGT_Q),
    ]
    stale = [
        _alert("ConnhealthTargetStale", f"time() - {m.LAST_PROBE} > {num(spec.stale_after)}", "5m", "warning",
               f"No probe of {tgt} finished for over {num(spec.stale_after)}s",
               f"The exporter still lists {tgt} but its last probe finished {{{{ $value | humanizeDuration }}}} ago: "
               "the scheduler is stuck or overloaded.", spec, "target", target=TGT_Q),
    ]
    for o in spec.objectives:
        stale.append(_alert(
            "ConnhealthTargetsAbsent", f"absent({m.PROBE_ATTEMPTS}{{{o.matchers()}}})", "10m", "warning",
            f"No probe series for {o.service}",
            f"No target matching {o.matchers()} reports {m.PROBE_ATTEMPTS}: its SLO cannot be measured. "
            "Was the target removed from the config, or is the exporter not scraped?", spec, "slo", service=o.service))
        stale[-1]["labels"]["service"] = o.service
    return [{"name": "connhealth-certificates", "rules": cert}, {"name": "connhealth-targets", "rules": stale}]


def lifecycle_groups(spec: SLOSpec) -> list[dict[str, Any]]:
    """Issue 9's connection-lifecycle alerts: stream heartbeats, keep-alive idle, TLS resumption, SYN retransmits."""
    tgt = "{{ $labels.target }}"
    by = "sum by (job, instance, target, module, service, region, cluster)"
    rules = [
        _alert("ConnhealthStreamHeartbeatsMissed",
               f'{by} (increase({m.PROBE_FAILURES}{{reason="sse_heartbeat_missed"}}[15m])) > 0', "5m", "warning",
               f"Event stream {tgt} misses its heartbeats",
               f"SSE probes of {tgt} (module {{{{ $labels.module }}}}) saw no event or `:` comment for longer than "
               "heartbeat_interval × (missed_heartbeats + 1): the stream went silent while its connection stayed open.",
               spec, "target", target=TGT_Q),
        _alert("ConnhealthKeepAliveIdleShorterThanClient",
               f"{m.KEEPALIVE_SERVER_IDLE} < on (job, instance, target, module) {m.KEEPALIVE_CLIENT_IDLE}", "15m", "warning",
               f"{tgt} closes idle connections before its clients stop reusing them",
               f"The server of {tgt} closed an idle kept-alive connection after {{{{ $value | printf \"%.1f\" }}}}s, "
               "shorter than the client idle the module checks: clients reusing such connections get 'connection reset'.",
               spec, "target", target=TGT_Q),
        _alert("ConnhealthTLSResumptionStopped",
               f"{m.TLS_SESSION_RESUMED} == 0 and max_over_time({m.TLS_SESSION_RESUMED}[1d]) == 1", "30m", "warning",
               f"TLS session resumption stopped working on {tgt}",
               f"{tgt} resumed TLS sessions within the last day and no longer does: every connection pays a full "
               "handshake.", spec, "target", target=TGT_Q),
        _alert("ConnhealthSYNRetransmitsSustained",
               f"{by} (increase({m.TCP_SYN_RETRANSMITS}[15m])) / {by} (increase({m.PROBE_ATTEMPTS}[15m])) > 0.1",
               "15m", "warning", f"Connects to {tgt} keep losing SYNs",
               f"More than 1 in 10 probes of {tgt} needed a SYN retransmission over 15 minutes: each costs the client "
               "1 s or more on connect.", spec, "failures", target=TGT_Q),
    ]
    return [{"name": "connhealth-lifecycle", "rules": rules}]


def exporter_groups(spec: SLOSpec) -> list[dict[str, Any]]:
    """The exporter's own health."""
    inst = "{{ $labels.instance }}"
    rules = [
        _alert("ConnhealthExporterAbsent", f"absent({m.BUILD_INFO})", "5m", "critical",
               "No connhealth exporter is reporting",
               f"{m.BUILD_INFO} is absent: no exporter is scraped, so no probe result (and no SLO) is measured.",
               spec, "exporter"),
        _alert("ConnhealthConfigReloadFailed", f"{m.RELOAD_SUCCESS} == 0", "5m", "warning",
               f"connhealth {inst} failed to reload its configuration",
               "The last configuration reload failed; the exporter keeps probing with the previous config. "
               "Run `connhealth check-config` on the file.", spec, "exporter"),
        _alert("ConnhealthSchedulerLagging",
               f"histogram_quantile(0.99, sum by (job, instance, le) (rate({m.SCHEDULER_LAG}_bucket[10m]))) > 1",
               "15m", "warning", f"connhealth {inst} starts probes late",
               "The 99th percentile of (actual - planned) probe start is {{ $value | humanizeDuration }}: "
               "the scheduler is saturated (raise scheduler.concurrency or intervals) or the event loop is blocked.",
               spec, "exporter"),
        _alert("ConnhealthProbesDropped", f"sum by (job, instance, reason) (rate({m.SKIPPED}[10m])) > 0", "15m",
               "warning", f"connhealth {inst} skips scheduled probes ({{{{ $labels.reason }}}})",
               "Scheduled probes are not run (still_running: the previous probe of the target had not finished). "
               "Probe timeouts longer than intervals, or too little concurrency.", spec, "exporter"),
        _alert("ConnhealthTraceSpansDropped", f"sum by (job, instance) (rate({m.TRACE_EXPORT_DROPS}[10m])) > 0",
               "15m", "warning", f"connhealth {inst} drops trace spans",
               "Probe traces are dropped before export (collector unreachable or queue full): exemplar links "
               "from dashboards will lead nowhere.", spec, "exporter"),
    ]
    return [{"name": "connhealth-exporter", "rules": rules}]


def rule_files(spec: SLOSpec, policy: tuple[BurnPolicy, ...] = DEFAULT_POLICY) -> dict[str, dict[str, Any]]:
    """File name -> rule file content (``{"groups": [...]}``)."""
    return {
        "connhealth-slo.rules.yml": {"groups": _without_empty_annotations(slo_groups(spec, policy) + sli_floor_groups(spec))},
        "connhealth-probes.rules.yml": {"groups": _without_empty_annotations(probe_groups(spec) + lifecycle_groups(spec))},
        "connhealth-exporter.rules.yml": {"groups": _without_empty_annotations(exporter_groups(spec))},
    }
