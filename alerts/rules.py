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
    connhealth_slo:period_seconds{service, slo}               the SLO period, e.g. 2592000 for 30d
    connhealth_slo:error_budget_remaining{service, slo}       1 - error_ratio{window=<period>} / error_budget
    connhealth_slo:burn_rate_threshold{service, slo, severity, long_window, short_window}
    connhealth_slo:latency_threshold_seconds{service, slo}    the latency SLO's bucket bound

``slo`` is ``availability`` or ``latency``. Only the 5m window reads the raw
counters; every longer window (up to the 30-day period) is a
``sum_over_time`` of the recorded 5m increases at a 5m step, so no rule reads
more than 5 minutes of raw samples per target.

Burn policy (SRE Workbook multi-window, multi-burn-rate; windows scaled as in
pyrra): the factors stay 14.4 / 6 / 3 / 1 (2 % / 5 % / 10 % / 10 % of a 30d
budget in 1h / 6h / 1d / 3d) for every period, and the windows scale with it::

    long  = round5m(base_long  * period / 30d)      base: 1h, 6h, 1d, 3d
    short = round5m(base_short * period / 30d)      base: 5m, 30m, 2h, 6h   (at least 5m)
    share of the budget the long window spends at the threshold = factor * long / period

An alert fires when both windows burn faster than the factor and both hold at
least ``min_probes`` probes. A spec may set longer windows for low-rate SLOs.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

if __package__ and __package__.startswith("connhealth."):  # installed: connhealth.alerts (pyproject's package-dir)
    from ..exporter import metrics as m
    from ..exporter.slo import WINDOW_STEP, Availability, Latency, Objective, SLOSpec
else:  # a checkout: exporter/, dashboards/ and alerts/ side by side
    from exporter import metrics as m
    from exporter.slo import WINDOW_STEP, Availability, Latency, Objective, SLOSpec

_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
TINY = "1e-12"  # denominators are clamped to this: 0 probes -> 0 errors / TINY = 0, never NaN
BASE_PERIOD = 30 * 86400.0
RESOLUTION = "5m"  # the only window read from raw counters
# Windows recorded for every SLO besides its burn windows and its period: the dashboards' "budget consumed in ...".
DISPLAY_WINDOWS: tuple[str, ...] = ("1h", "6h", "1d", "3d")
PROMETHEUS_DS = "prometheus"  # uid of the provisioned Prometheus data source (exporter/generate.py)
BURN_ALERT = "ConnhealthErrorBudgetBurn"


def seconds(window: str) -> float:
    """Seconds of a Prometheus duration made of d/h/m/s parts, e.g. "2d19h10m"."""
    total, num_ = 0.0, ""
    for ch in window:
        if ch.isdigit() or ch == ".":
            num_ += ch
        else:
            total += float(num_) * _SECONDS[ch]
            num_ = ""
    return total


def duration(value: float) -> str:
    """The shortest Prometheus duration for whole seconds: 5400 -> "1h30m", 86400 -> "1d"."""
    rest, out = int(round(value)), ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            out += f"{rest // size}{unit}"
            rest %= size
    return out or "0s"


@dataclass(frozen=True, slots=True)
class BurnWindow:
    """One multi-window burn-rate alert: fire when both windows burn faster than ``factor``."""

    severity: str  # page | ticket
    long: str
    short: str
    factor: float
    for_: str

    def budget_share(self, period_seconds: float) -> float:
        """Share of the period's budget the long window spends when burning at exactly ``factor``."""
        return self.factor * seconds(self.long) / period_seconds


# SRE Workbook, table 5-8, for a 30-day period.
BASE_WINDOWS: tuple[BurnWindow, ...] = (
    BurnWindow("page", "1h", "5m", 14.4, "2m"),
    BurnWindow("page", "6h", "30m", 6, "15m"),
    BurnWindow("ticket", "1d", "2h", 3, "1h"),
    BurnWindow("ticket", "3d", "6h", 1, "3h"),
)


def _round_step(value: float) -> float:
    return max(WINDOW_STEP, round(value / WINDOW_STEP) * WINDOW_STEP)


def burn_windows(o: Objective) -> tuple[BurnWindow, ...]:
    """The four burn alerts of ``o``: the spec's windows, or the 30d ones scaled to its period."""
    scale = o.period_seconds / BASE_PERIOD
    out = []
    for i, base in enumerate(BASE_WINDOWS):
        if o.windows:
            long, short = o.windows[i]
        else:
            long, short = _round_step(seconds(base.long) * scale), _round_step(seconds(base.short) * scale)
        # `for` keeps its share of the long window (2m of 1h), at least one minute.
        for_ = max(60.0, round(seconds(base.for_) * long / seconds(base.long) / 60) * 60)
        out.append(BurnWindow(base.severity, duration(long), duration(short), base.factor, duration(for_)))
    return tuple(out)


WindowsFn = Callable[[Objective], tuple[BurnWindow, ...]]

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


def link(spec: SLOSpec, uid: str, time_from: str, **params: str) -> str:
    """A Grafana dashboard URL with the data source, the given variables and a time range."""
    query = "&".join([f"var-datasource={PROMETHEUS_DS}", *(f"var-{k}={v}" for k, v in params.items()),
                      f"from=now-{time_from}", "to=now"])
    return f"{spec.grafana_url}/d/{uid}/{uid}?{query}"


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


def _fact(expr: str, fmt: str) -> str:
    """Alert template text showing the value of ``expr`` when the alert is sent ("no data" without one)."""
    return f"{{{{ with query `{expr}` }}}}{{{{ . | first | value | {fmt} }}}}{{{{ else }}}}no data{{{{ end }}}}"


BURN = 'printf "%.2fx"'  # burn rates: 0.40x, 14.40x, 1000.00x (humanize would write 1kx)


def recorded_windows(o: Objective, windows: tuple[BurnWindow, ...], resolution: str = RESOLUTION) -> list[str]:
    """Every window recorded for ``o``, shortest first; ``resolution`` is the one read from raw counters."""
    names = {resolution, *DISPLAY_WINDOWS, o.period, *(w for b in windows for w in (b.long, b.short))}
    return sorted(names, key=seconds)


def _records(o: Objective, slo: str, total_t: str, good_t: str, probes_t: str, windows: list[str],
             resolution: str, budget: float) -> list[dict[str, Any]]:
    labels = {"service": o.service, "slo": slo}
    sel = f'service="{o.service}",slo="{slo}"'
    rules: list[dict[str, Any]] = []
    for w in windows:
        wl = {**labels, "window": w}
        wsel = f'{sel},window="{w}"'
        if w == resolution:
            total, good = total_t.replace("@W@", w), good_t.replace("@W@", w)
            rules += [
                {"record": "connhealth_slo:probes:increase", "expr": probes_t.replace("@W@", w), "labels": wl},
                {"record": "connhealth_slo:events:increase", "expr": total, "labels": wl},
                # total - good (not the failures counter): both series exist from the moment a
                # target is scheduled, so zero failures is 0, not an empty result.
                {"record": "connhealth_slo:errors:increase", "expr": f"clamp_min({total} - {good}, 0)", "labels": wl},
            ]
        else:
            # Whole 5m increases tiled over the window: no raw sample older than 5 minutes is read, and a 30d
            # window takes 8640 samples of one series. The range is 1s short of the window so it holds window/5m
            # steps whether subquery ranges are left-closed (Prometheus 2) or left-open (3).
            rules += [{"record": f"connhealth_slo:{q}:increase",
                       "expr": f'sum_over_time(connhealth_slo:{q}:increase{{{sel},window="{resolution}"}}'
                               f'[{duration(seconds(w) - 1)}:{resolution}])',
                       "labels": wl} for q in ("probes", "events", "errors")]
        rules += [
            {"record": "connhealth_slo:error_ratio",
             "expr": f"connhealth_slo:errors:increase{{{wsel}}} / clamp_min(connhealth_slo:events:increase{{{wsel}}}, {TINY})",
             "labels": wl},
            {"record": "connhealth_slo:sli", "expr": f"1 - connhealth_slo:error_ratio{{{wsel}}}", "labels": wl},
            {"record": "connhealth_slo:burn_rate", "expr": f"connhealth_slo:error_ratio{{{wsel}}} / {num(budget)}",
             "labels": wl},
        ]
    return rules


def _burn_alert(spec: SLOSpec, o: Objective, slo: str, objective: float, b: BurnWindow) -> dict[str, Any]:
    sel = f'service="{o.service}",slo="{slo}"'

    def over(metric: str, window: str) -> str:
        # `window` dropped so both windows' series match and the alert carries no stray window label.
        return f'max without (window) (connhealth_slo:{metric}{{{sel},window="{window}"}})'

    cond = [f"{over('burn_rate', b.long)} > {num(b.factor)}", f"{over('burn_rate', b.short)} > {num(b.factor)}"]
    if o.min_probes:
        cond += [f"{over('probes:increase', w)} >= {o.min_probes}" for w in (b.long, b.short)]
    expr = "(\n  " + "\nand\n  ".join(cond) + "\n)\n"
    absent = f"absent({m.PROBE_ATTEMPTS}{{{o.matchers()}}})"
    if b.severity == "page":
        # The page stays while the SLO's probe series are gone mid-outage (target removed, exporter restarted):
        # it holds itself through its own ALERTS series until the series are back (or the SLO is silenced).
        expr += (f'or\n(\n  max without (alertname, alertstate, severity, long_window, short_window) '
                 f'(ALERTS{{alertname="{BURN_ALERT}",alertstate="firing",{sel},severity="page",long_window="{b.long}"}})\n'
                 f"  and on () {absent}\n)\n")
    what = "time-weighted availability (share of the observed time up)" if slo == "availability" else (
        f"share of {o.latency.phase} phases <= {o.latency.threshold * 1000:g} ms" if o.latency else "")
    def fact(metric: str, window: str | None, fmt: str) -> str:
        w = f',window="{window}"' if window else ""
        return _fact(f"connhealth_slo:{metric}{{{sel}{w}}}", fmt)

    burn_long = fact("burn_rate", b.long, BURN)
    share = b.budget_share(o.period_seconds)
    description = (
        f"The {what} of {o.service} ({o.matchers()}) burns the error budget of its {num(objective * 100)}% / "
        f"{o.period} objective at {burn_long} over the last {b.long} and {fact('burn_rate', b.short, BURN)} "
        f"over the last {b.short} (threshold {num(b.factor)}x). Error ratio over {b.long}: "
        f"{fact('error_ratio', b.long, 'humanizePercentage')}. Error budget left for the {o.period}: "
        f"{fact('error_budget_remaining', None, 'humanizePercentage')}. At the threshold, "
        f"{num(round(share * 100, 2))}% of the {o.period} budget is gone within {b.long}."
    )
    if b.severity == "page":
        description += (f"{{{{ with query `{absent}` }}}} The probe series are gone: this page stays until they are "
                        f"back or the SLO is silenced.{{{{ end }}}}")
    return {
        "alert": BURN_ALERT,
        "expr": expr,
        "for": b.for_,
        "labels": {"service": o.service, "slo": slo, "severity": b.severity, "long_window": b.long,
                   "short_window": b.short},
        "annotations": {
            "summary": f"{o.service} {slo} SLO burns its {o.period} error budget at {burn_long} "
                       f"(above {num(b.factor)}x over {b.long} and {b.short})",
            "description": description,
            "runbook_url": _runbook(spec, BURN_ALERT, o),
            "dashboard": link(spec, DASHBOARD_UIDS["slo"], duration(max(6 * 3600, 2 * seconds(b.long))),
                              service=o.service, slo=slo),
        },
    }


def slo_groups(spec: SLOSpec, windows_fn: WindowsFn = burn_windows,
               resolution: str = RESOLUTION) -> list[dict[str, Any]]:
    """One group per (service, slo): constants, windowed recordings, then the burn alerts."""
    groups = []
    for o in spec.objectives:
        windows = windows_fn(o)
        for slo, objective, total_t, good_t, probes_t in _slo_kinds(o):
            labels = {"service": o.service, "slo": slo}
            sel = f'service="{o.service}",slo="{slo}"'
            budget = round(1 - objective, 10)
            rules: list[dict[str, Any]] = [
                {"record": "connhealth_slo:objective", "expr": f"vector({num(objective)})", "labels": dict(labels)},
                {"record": "connhealth_slo:error_budget", "expr": f"vector({num(budget)})", "labels": dict(labels)},
                {"record": "connhealth_slo:period_seconds", "expr": f"vector({num(o.period_seconds)})",
                 "labels": dict(labels)},
            ]
            if slo == "latency":
                assert o.latency is not None
                rules.append({"record": "connhealth_slo:latency_threshold_seconds",
                              "expr": f"vector({num(o.latency.threshold)})", "labels": dict(labels)})
            for b in windows:
                rules.append({"record": "connhealth_slo:burn_rate_threshold", "expr": f"vector({num(b.factor)})",
                              "labels": {**labels, "severity": b.severity, "long_window": b.long,
                                         "short_window": b.short}})
            rules += _records(o, slo, total_t, good_t, probes_t, recorded_windows(o, windows, resolution), resolution, budget)
            rules.append({
                "record": "connhealth_slo:error_budget_remaining",
                "expr": f'1 - max without (window) (connhealth_slo:error_ratio{{{sel},window="{o.period}"}}) / {num(budget)}',
                "labels": dict(labels),
            })
            rules += [_burn_alert(spec, o, slo, objective, b) for b in windows]
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
                    "dashboard": link(spec, DASHBOARD_UIDS["slo"], duration(max(6 * 3600, 2 * floor.for_seconds)),
                                      service=o.service, slo=slo),
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
            "dashboard": link(spec, DASHBOARD_UIDS[dashboard], "6h", **params),
        },
    }


TGT_Q = "{{ $labels.target | urlquery }}"
SVC_Q = "{{ $labels.service | urlquery }}"


def probe_groups(spec: SLOSpec) -> list[dict[str, Any]]:
    """Certificates, targets gone absent or stale: independent of any SLO."""
    days = "(%s - time()) / 86400" % m.CERT_EXPIRY
    tgt = "{{ $labels.target }}"
    target_link = {"service": SVC_Q, "target": TGT_Q}
    cert = [
        _alert("ConnhealthCertificateExpiringSoon", f"{days} < 14 and {days} >= 3", "15m", "warning",
               f"Certificate of {tgt} expires in {{{{ $value | printf \"%.1f\" }}}} days",
               f"The earliest notAfter in the chain presented by {tgt} (module {{{{ $labels.module }}}}) is less than "
               "14 days away. Renew it.", spec, "target", **target_link),
        _alert("ConnhealthCertificateExpiringCritical", f"{days} < 3 and {days} >= 0", "5m", "critical",
               f"Certificate of {tgt} expires in {{{{ $value | printf \"%.1f\" }}}} days",
               f"The earliest notAfter in the chain presented by {tgt} is less than 3 days away; clients will fail "
               "the handshake once it passes.", spec, "target", **target_link),
        _alert("ConnhealthCertificateExpired", f"{days} < 0", "0m", "critical",
               f"Certificate of {tgt} has expired",
               # The expiry also comes from handshakes that failed verification (blackbox #1119), so this fires
               # for a certificate that was already expired when first probed. OpenSSL reports an untrusted chain
               # or a wrong name before an expired one, hence the "unless".
               f"The last TLS handshake with {tgt} that received the server's certificates (completed, or failed "
               "verification) presented a chain whose earliest notAfter is in the past; verifying clients reject "
               "it (tls_cert_expired, unless an untrusted chain or a hostname mismatch is reported first).",
               spec, "target", **target_link),
    ]
    limit = f"clamp_min({num(spec.stale_intervals)} * {m.PROBE_INTERVAL}, {num(spec.stale_after)})"
    stale = [
        _alert("ConnhealthTargetStale", f"time() - {m.LAST_PROBE} > {limit}", "5m", "warning",
               f"No probe of {tgt} finished for {{{{ $value | humanizeDuration }}}}",
               f"The exporter still lists {tgt} but its last probe finished {{{{ $value | humanizeDuration }}}} ago, "
               f"more than {num(spec.stale_intervals)} of its probe intervals (and at least "
               f"{duration(spec.stale_after)}): the scheduler is stuck or overloaded.", spec, "target", **target_link),
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
               "1 s or more on connect.", spec, "target", target=TGT_Q),
    ]
    return [{"name": "connhealth-lifecycle", "rules": rules}]


REGION_RATIO = "connhealth_prober:availability:ratio_5m"
ONE_REGION_ALERT = "ConnhealthTargetFailingFromOneRegion"
# A region counts as failing a target below this availability over 5m, as healthy at or above REGION_OK.
REGION_FAILING, REGION_OK = 0.5, 0.95


def region_groups(spec: SLOSpec) -> list[dict[str, Any]]:
    """Several probers (regions) probing the same targets, told apart by the ``prober`` label.

    The SLOs already sum over every prober (one SLO over all regions). Here: each target's availability per
    prober, each SLO's per-prober breakdown, and the alert for a target that fails from one region while
    another succeeds: the network path from that region, not the service.
    """
    p = m.PROBER_LABEL
    keep = "sum without (job, instance, worker)"
    # No probe in 5m (observed 0): no ratio at all, rather than a 0 that reads as down.
    rules: list[dict[str, Any]] = [{
        "record": REGION_RATIO,
        "expr": f"{keep} (increase({m.UP_SECONDS}[5m])) / ({keep} (increase({m.OBSERVED_SECONDS}[5m])) > 0)",
    }]
    for o in spec.objectives:
        if o.availability is None:
            continue
        sel = o.matchers()
        observed = f"sum by ({p}) (increase({m.OBSERVED_SECONDS}{{{sel}}}[5m]))"
        up = f"sum by ({p}) (increase({m.UP_SECONDS}{{{sel}}}[5m]))"
        rules.append({"record": "connhealth_slo:sli:by_prober", "expr": f"{up} / ({observed} > 0)",
                      "labels": {"service": o.service, "slo": "availability", "window": "5m"}})
    tgt = "{{ $labels.target }}"
    others = f"on (target, module) (count without ({p}) ({REGION_RATIO} >= {num(REGION_OK)}) >= 1)"
    expr = (f"{REGION_RATIO} < {num(REGION_FAILING)}\n"
            f"and on (target, module) (count without ({p}) ({REGION_RATIO} < {num(REGION_FAILING)}) == 1)\n"
            f"and {others}\n")
    rules.append(_alert(
        ONE_REGION_ALERT, expr, "5m", "warning",
        f"{tgt} fails from prober {{{{ $labels.{p} }}}} only",
        f"Over 5 minutes {tgt} (module {{{{ $labels.module }}}}) was up {{{{ $value | humanizePercentage }}}} of the time "
        f"as seen from prober {{{{ $labels.{p} }}}}, while at least one other prober saw it up at least "
        f"{num(REGION_OK * 100)}% of the time: the network path from that region fails, not the service.",
        spec, "target", target=TGT_Q))
    return [{"name": "connhealth-regions", "rules": rules}]


def exporter_groups(spec: SLOSpec) -> list[dict[str, Any]]:
    """The exporter's own health."""
    inst = "{{ $labels.instance }}"
    inst_q = "{{ $labels.instance | urlquery }}"
    job = spec.exporter_job.replace("\\", "\\\\").replace('"', '\\"')
    rules = [
        _alert("ConnhealthExporterDown", f'up{{job="{job}"}} == 0', "2m", "critical",
               f"connhealth exporter {inst} is down",
               f"Prometheus cannot scrape the connhealth exporter {inst} (job {{{{ $labels.job }}}}): none of its "
               "targets is probed or measured. ConnhealthTargetsAbsent and ConnhealthTargetStale are inhibited "
               "while this fires.", spec, "exporter", instance=inst_q),
        _alert("ConnhealthExporterAbsent", f"absent({m.BUILD_INFO})", "5m", "critical",
               "No connhealth exporter is reporting",
               f"{m.BUILD_INFO} is absent: no exporter is scraped, so no probe result (and no SLO) is measured.",
               spec, "exporter"),
        _alert("ConnhealthConfigReloadFailed", f"{m.RELOAD_SUCCESS} == 0", "5m", "warning",
               f"connhealth {inst} failed to reload its configuration",
               "The last configuration reload failed; the exporter keeps probing with the previous config. "
               "Run `connhealth check-config` on the file.", spec, "exporter", instance=inst_q),
        _alert("ConnhealthSchedulerLagging",
               f"histogram_quantile(0.99, sum by (job, instance, le) (rate({m.SCHEDULER_LAG}_bucket[10m]))) > 1",
               "15m", "warning", f"connhealth {inst} starts probes late",
               "The 99th percentile of (actual - planned) probe start is {{ $value | humanizeDuration }}: "
               "the scheduler is saturated (raise scheduler.concurrency or intervals) or the event loop is blocked.",
               spec, "exporter", instance=inst_q),
        _alert("ConnhealthProbesDropped", f"sum by (job, instance, reason) (rate({m.SKIPPED}[10m])) > 0", "15m",
               "warning", f"connhealth {inst} skips scheduled probes ({{{{ $labels.reason }}}})",
               "Scheduled probes are not run (still_running: the previous probe of the target had not finished). "
               "Probe timeouts longer than intervals, or too little concurrency.", spec, "exporter", instance=inst_q),
        _alert("ConnhealthTraceSpansDropped", f"sum by (job, instance) (rate({m.TRACE_EXPORT_DROPS}[10m])) > 0",
               "15m", "warning", f"connhealth {inst} drops trace spans",
               "Probe traces are dropped before export (collector unreachable or queue full): exemplar links "
               "from dashboards will lead nowhere.", spec, "exporter", instance=inst_q),
    ]
    return [{"name": "connhealth-exporter", "rules": rules}]


def rule_files(spec: SLOSpec, windows_fn: WindowsFn = burn_windows,
               resolution: str = RESOLUTION) -> dict[str, dict[str, Any]]:
    """File name -> rule file content (``{"groups": [...]}``)."""
    return {
        "connhealth-slo.rules.yml": {"groups": _without_empty_annotations(
            slo_groups(spec, windows_fn, resolution) + sli_floor_groups(spec))},
        "connhealth-probes.rules.yml": {"groups": _without_empty_annotations(probe_groups(spec) + lifecycle_groups(spec)
                                                                                + region_groups(spec))},
        "connhealth-exporter.rules.yml": {"groups": _without_empty_annotations(exporter_groups(spec))},
    }
