"""The four connhealth dashboards, as grafanalib objects, generated from the SLO spec.

Every panel uses the ``datasource`` variable, has a title, a description and a
unit. Rates of raw counters use ``$__rate_interval``; tables answering "over the
time on screen" use ``$__range``. The SLO panels read the recorded
``connhealth_slo:*`` series, whose windows (5m … 30d) are part of the SLO
definition and deliberately not the dashboard's interval.

The drill-down chain: an SLO row links to Failure attribution (same service,
same time range); its failing-targets table links to Target detail; Target
detail's latency panels carry exemplars that open the probe's trace.
"""
from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from grafanalib import core as g

if __package__ and __package__.startswith("connhealth."):  # installed: connhealth.dashboards (pyproject's package-dir)
    from ..alerts.rules import DASHBOARD_UIDS, REGION_FAILING, REGION_OK, REGION_RATIO, burn_windows, duration, seconds
    from ..exporter import metrics as m
    from ..exporter.generate import TRACES_DS_UID
    from ..exporter.slo import Objective, SLOSpec
else:  # a checkout: exporter/, dashboards/ and alerts/ side by side
    from alerts.rules import DASHBOARD_UIDS, REGION_FAILING, REGION_OK, REGION_RATIO, burn_windows, duration, seconds
    from exporter import metrics as m
    from exporter.generate import TRACES_DS_UID
    from exporter.slo import Objective, SLOSpec

from .lib import BarGauge, PromTarget, Stat, Table, TimeSeries, datasource_variable, heatmap, link, query_variable

RI = "$__rate_interval"
RANGE = "$__range"
TAGS = ["connhealth"]
# Links keep the data source and the time range on screen.
KEEP = "var-datasource=${datasource}&${__url_time_range}"
JI = 'job=~"$job",instance=~"$instance"'


def T(expr: str, legend: str = "", ref: str = "A", *, instant: bool = False, exemplar: bool = False,
      fmt: str | None = None) -> PromTarget:
    # grafanalib ships no type information: mypy's attrs plugin sees only our own field.
    t = PromTarget(expr=expr, legendFormat=legend, refId=ref, instant=instant, exemplar=exemplar)  # type: ignore[call-arg]
    if fmt:
        t.format = fmt
    return t


class Grid:
    """Lays panels out left to right, wrapping at 24 columns."""

    def __init__(self) -> None:
        self.x = self.y = self.row_h = 0
        self.panels: list[Any] = []

    def add(self, panel: Any, w: int, h: int) -> None:
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        panel.gridPos = g.GridPos(h=h, w=w, x=self.x, y=self.y)
        self.x += w
        self.row_h = max(self.row_h, h)
        self.panels.append(panel)

    def row(self, title: str) -> None:
        if self.x:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        self.panels.append(g.RowPanel(title=title, gridPos=g.GridPos(h=1, w=24, x=0, y=self.y)))
        self.y += 1


def alerts_annotation(matchers: str) -> dict[str, Any]:
    """Firing connhealth alerts drawn on every time series of the dashboard."""
    return {
        "name": "Alerts", "enable": True, "iconColor": "red", "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "expr": f'ALERTS{{alertname=~"Connhealth.*",alertstate="firing"{"," + matchers if matchers else ""}}}',
        "step": "1m", "titleFormat": "{{alertname}} ({{severity}})",
        "tagKeys": "alertname,severity,service,slo,long_window,instance,target", "useValueForTime": False,
    }


def _dashboard(key: str, title: str, description: str, grid: Grid, variables: list[g.Template],
               annotation_matchers: str = "") -> g.Dashboard:
    links = [g.DashboardLink(asDropdown=False, includeVars=True, keepTime=True, tags=TAGS, title="connhealth",
                             type="dashboards")]
    return g.Dashboard(
        title=title, uid=DASHBOARD_UIDS[key], description=description, tags=TAGS, timezone="utc",
        refresh="30s", panels=grid.panels, templating=g.Templating(list=[datasource_variable(), *variables]),
        time=g.Time("now-6h", "now"), links=links, sharedCrosshair=True,
        annotations=g.Annotations(list=[alerts_annotation(annotation_matchers)]),
    ).auto_panel_ids()


def _target_link() -> dict[str, Any]:
    uid = DASHBOARD_UIDS["target"]
    return link("Target detail for ${__data.fields.target}",
                f"/d/{uid}/{uid}?{KEEP}&var-target=${{__data.fields.target}}")


def _failures_link(service: str) -> dict[str, Any]:
    uid = DASHBOARD_UIDS["failures"]
    return link(f"Failure attribution for {service}", f"/d/{uid}/{uid}?{KEEP}&var-service={service}")


def _job_instance_vars(metric: str) -> list[g.Template]:
    return [query_variable("job", "Job", f"label_values({metric}, job)"),
            query_variable("instance", "Instance", f'label_values({metric}{{job=~"$job"}}, instance)')]


def failing_targets(sel: str, title: str, description: str, traces: str) -> Any:
    """Targets by failures over the time on screen, with the reason each failed with most; each links to its
    detail dashboard and to its failing probes in the trace store (``traces``: jaeger | tempo)."""
    fail = f"sum by (target, reason) (increase({m.PROBE_FAILURES}{{{sel}}}[{RANGE}]))"
    return Table(
        title=title, unitId="none", dataLinks=[_target_link(), _trace_search_link(traces)], description=description,
        targets=[T(f"topk(10, sum by (target) ({fail}))", instant=True),
                 T(f"topk by (target) (1, {fail})", "", "B", instant=True)],
        transformations=[{"id": "joinByField", "options": {"byField": "target", "mode": "inner"}},
                         {"id": "organize", "options": {
                             "excludeByName": {"Time 1": True, "Time 2": True, "Value #B": True},
                             "renameByName": {"Value #A": "failed probes", "reason": "dominant reason"}}},
                         {"id": "sortBy", "options": {"sort": [{"field": "failed probes", "desc": True}]}}])


def sli_by(label: str, o: Objective, slo: str, objective: float) -> Any:
    """SLI over the time on screen, per ``label`` (region, cluster), from the raw counters."""
    sel = o.matchers() + "," + JI
    if slo == "availability":
        # time-weighted, as the SLI itself (docs/metrics.md)
        good = f"sum by ({label}) (increase({m.UP_SECONDS}{{{sel}}}[{RANGE}]))"
        total = f"sum by ({label}) (increase({m.OBSERVED_SECONDS}{{{sel}}}[{RANGE}]))"
    else:
        assert o.latency is not None
        lsel = o.matchers(phase=o.latency.phase) + "," + JI
        good = (f"sum by ({label}) (increase({m.PHASE_DURATION}_bucket"
                f"{{{o.matchers(phase=o.latency.phase, le=o.latency.le)},{JI}}}[{RANGE}]))")
        total = f"sum by ({label}) (increase({m.PHASE_DURATION}_count{{{lsel}}}[{RANGE}]))"
    return BarGauge(
        title=f"SLI by {label}", unitId="percentunit", fmin=0.0, fmax=1.0, orientation="horizontal",
        description=f"The {slo} SLI of {o.service} over the time on screen, per {label} (from the probe counters): "
                    f"one {label} below the objective points at its network path or deployment.",
        steps=[("red", None), ("green", objective)],
        targets=[T(f"{good} / clamp_min({total}, 1e-12)", f"{{{{{label}}}}}", instant=True)])


# The trace store's search for one target's failing probes, as Grafana's Explore shows it for the
# provisioned "Traces" data source (uid "traces"); the query shape is the store's own.
_TRACE_QUERIES: dict[str, dict[str, str]] = {
    "jaeger": {"queryType": "search", "service": "connhealth", "tags": 'probe.target="TARGET_VALUE" error=true'},
    "tempo": {"queryType": "traceql",
              "query": '{ resource.service.name="connhealth" && span.probe.target="TARGET_VALUE" && status=error }'},
}


def _trace_search_link(traces: str) -> dict[str, Any]:
    query = {"refId": "A", "datasource": {"type": traces, "uid": TRACES_DS_UID}, **_TRACE_QUERIES[traces]}
    panes = {"traces": {"datasource": TRACES_DS_UID, "queries": [query], "range": {"from": "FROM_VALUE", "to": "TO_VALUE"}}}
    encoded = quote(json.dumps(panes, separators=(",", ":")), safe="")
    # Grafana fills the placeholders in; the target is percent-encoded once more, so the URL's own
    # decoding gives back the raw target inside the query.
    for placeholder, variable in (("TARGET_VALUE", "${__data.fields.target:percentencode}"),
                                  ("FROM_VALUE", "${__from}"), ("TO_VALUE", "${__to}")):
        encoded = encoded.replace(placeholder, variable)
    return link("Failing probes of ${__data.fields.target} in " + traces.capitalize(),
                f"/explore?schemaVersion=1&orgId=1&panes={encoded}")


# --- SLO overview -----------------------------------------------------------------


def _slo_row(grid: Grid, o: Objective, slo: str, objective: float, heat: bool, traces: str) -> None:
    s = f'service="{o.service}",slo="{slo}"'
    period = o.period_seconds
    windows = burn_windows(o)
    what = "the observed time the targets were up (time-weighted)" if slo == "availability" else (
        f"{o.latency.phase} phases <= {o.latency.threshold * 1000:g} ms" if o.latency else "")
    links = [_failures_link(o.service)]
    grid.row(f"{o.service} · {slo} · {objective * 100:g}% over {o.period}")
    grid.add(Stat(title="SLI over the period", unitId="percentunit", reduceCalc="lastNotNull", decimals=3,
                  description=f"Share of {what} over the SLO's {o.period}, from connhealth_slo:sli. Red below the "
                              f"{objective * 100:g}% objective.",
                  steps=[("red", None), ("green", objective)], panelLinks=links,
                  targets=[T(f'connhealth_slo:sli{{{s},window="{o.period}"}}', "SLI")]), 4, 5)
    grid.add(Stat(title="Error budget left", unitId="percentunit", reduceCalc="lastNotNull", decimals=1,
                  description=f"1 - (error ratio over the {o.period} / error budget). Below 0 the SLO is breached "
                              "for the period.",
                  steps=[("red", None), ("orange", 0.0), ("green", 0.25)], panelLinks=links,
                  targets=[T(f"connhealth_slo:error_budget_remaining{{{s}}}", "budget left")]), 4, 5)
    grid.add(Stat(title="Time to budget exhaustion", unitId="s", reduceCalc="lastNotNull", graphMode="none",
                  description="At the burn rate of the last hour, how long the budget left lasts (capped at the "
                              "period; 0 when it is spent).",
                  steps=[("red", None), ("orange", 86400.0), ("green", period / 4)], panelLinks=links,
                  targets=[T(f"clamp(connhealth_slo:error_budget_remaining{{{s}}} * {period:g} / "
                             f'clamp_min(max without (window) (connhealth_slo:burn_rate{{{s},window="1h"}}), 1e-9), 0, {period:g})',
                             "time left")]), 4, 5)
    consumed = [T(f'connhealth_slo:burn_rate{{{s},window="{w}"}} * {seconds(w) / period:.10g}', w, chr(65 + i),
                  instant=True) for i, w in enumerate(("1h", "6h", "1d", "3d"))]
    grid.add(BarGauge(title="Budget consumed in 1h / 6h / 1d / 3d", unitId="percentunit", fmin=0.0, fmax=0.1,
                      orientation="horizontal",
                      description=f"Share of the {o.period} error budget spent in each window (burn rate x window / "
                                  "period). The Workbook pages at 2 % in 1h and 5 % in 6h.",
                      steps=[("green", None), ("orange", 0.02), ("red", 0.05)], targets=consumed), 12, 5)
    grid.add(TimeSeries(title="SLI (1h) vs objective", unitId="percentunit", fmax=1.0, panelLinks=links,
                        description=f"Share of {what} over the last hour against the {objective * 100:g}% objective.",
                        targets=[T(f'connhealth_slo:sli{{{s},window="1h"}}', "SLI 1h"),
                                 T(f"connhealth_slo:objective{{{s}}}", "objective", "B")]), 8, 8)
    grid.add(TimeSeries(title=f"Budget burndown over the {o.period}", unitId="percentunit", timeFrom=o.period,
                        description=f"Error budget left over the whole {o.period} period (this panel always shows "
                                    "the period, whatever the time picker says).",
                        steps=[("red", None), ("green", 0.0)],
                        targets=[T(f"connhealth_slo:error_budget_remaining{{{s}}}", "budget left")]), 8, 8)
    burn = [T(f'connhealth_slo:burn_rate{{{s},window=~"{"|".join(sorted({b.long for b in windows}, key=seconds))}"}}',
              "burn {{window}}"),
            T(f"connhealth_slo:burn_rate_threshold{{{s}}}", "threshold {{severity}} {{long_window}}/{{short_window}}",
              "B")]
    grid.add(TimeSeries(title="Burn rate per alert window vs thresholds", unitId="none", fmin=0.0, panelLinks=links,
                        description="Error ratio / error budget over each alert's long window (1 = spending the budget "
                                    "exactly over the period). The thresholds come from connhealth_slo:burn_rate_threshold "
                                    f"({', '.join(f'{b.factor:g}x over {b.long}/{b.short}' for b in windows)}); an alert "
                                    "fires when both of its windows are above its line.",
                        targets=burn), 8, 8)
    grid.add(sli_by(m.PROBER_LABEL, o, slo, objective), 4, 7)
    grid.add(sli_by("region", o, slo, objective), 4, 7)
    grid.add(sli_by("cluster", o, slo, objective), 4, 7)
    grid.add(failing_targets(f"{o.matchers()},{JI}", "Failing targets and their dominant reason",
                             f"Targets of {o.service} by failed probes over the time on screen, with the reason each "
                             "failed with most. Click a target for its detail or for its failing probes' traces.",
                             traces), 12, 7)
    if slo == "latency" and o.latency is not None:
        lat = o.latency
        bucket = f"rate({m.PHASE_DURATION}_bucket{{{o.matchers(phase=lat.phase)},{JI}}}[{RI}])"
        grid.add(TimeSeries(title=f"P{lat.objective * 100:g} {lat.phase} latency vs threshold", unitId="s", fmin=0.0,
                            description=f"The {lat.objective * 100:g}th percentile of the {lat.phase} phase of "
                                        f"{o.service} against the {lat.threshold * 1000:g} ms threshold of the SLO. "
                                        "Exemplars link slow samples to their probe's trace.",
                            targets=[T(f"histogram_quantile({lat.objective:g}, sum by (le) ({bucket}))",
                                       f"P{lat.objective * 100:g} {lat.phase}", exemplar=True),
                                     T(f"connhealth_slo:latency_threshold_seconds{{{s}}}", "threshold", "B")]), 12, 8)
    if heat:
        phase = o.latency.phase if o.latency else "connect"
        grid.add(heatmap(title=f"{phase} latency heatmap",
                         description=f"Distribution of the {phase} phase of {o.service} per interval (histogram "
                                     "buckets); exemplars (dots) open the probe's trace.",
                         targets=[T(f"sum by (le) (rate({m.PHASE_DURATION}_bucket{{{o.matchers(phase=phase)},{JI}}}"
                                    f"[{RI}]))", "{{le}}", exemplar=True, fmt="heatmap")]), 12, 8)


def slo_overview(spec: SLOSpec, traces: str = "jaeger") -> g.Dashboard:
    grid = Grid()
    for o in spec.objectives:
        kinds = [(slo, obj) for slo, obj in (("availability", o.availability and o.availability.objective),
                                              ("latency", o.latency and o.latency.objective)) if obj]
        for slo, objective in kinds:
            # one heatmap per service: in its latency row, else in its availability row
            _slo_row(grid, o, slo, objective, heat=(slo == "latency" or o.latency is None), traces=traces)
    variables = [
        *_job_instance_vars(m.PROBE_ATTEMPTS),
        query_variable("service", "Service", "label_values(connhealth_slo:objective, service)"),
        query_variable("slo", "SLO", "label_values(connhealth_slo:objective, slo)"),
    ]
    return _dashboard("slo", "connhealth / SLOs",
                      "One row per SLO of the spec: SLI vs objective, error budget and its burndown, burn rates against "
                      "the alert thresholds, SLI by region and cluster, failing targets; links to Failure attribution.",
                      grid, variables, 'service=~"$service"')


# --- Failure attribution ------------------------------------------------------------

F = 'job=~"$job",instance=~"$instance",service=~"$service",region=~"$region",cluster=~"$cluster"'


def _common_vars(*extra: g.Template) -> list[g.Template]:
    return [
        *_job_instance_vars(m.PROBE_ATTEMPTS),
        query_variable("service", "Service", f'label_values({m.PROBE_ATTEMPTS}{{job=~"$job"}}, service)'),
        query_variable("region", "Region", f'label_values({m.PROBE_ATTEMPTS}{{job=~"$job",service=~"$service"}}, region)'),
        query_variable("cluster", "Cluster", f'label_values({m.PROBE_ATTEMPTS}{{job=~"$job",service=~"$service"}}, cluster)'),
        *extra,
    ]


def _prober_row(grid: Grid) -> None:
    """Several probers (serve --prober REGION) on the same targets: where only one of them sees a failure."""
    p = m.PROBER_LABEL
    # The recorded ratio keeps the target's labels but not job and instance (it sums the probers' exporters).
    sel = 'service=~"$service",region=~"$region",cluster=~"$cluster"'
    ratio = f"{REGION_RATIO}{{{sel}}}"
    grid.row("Probers (regions)")
    grid.add(Table(title="Failing from one region only", unitId="percentunit",
                   description=f"Targets up less than {REGION_FAILING * 100:g}% of the last 5 minutes from exactly one "
                               f"prober while another saw them up at least {REGION_OK * 100:g}%: the network path from "
                               "that region fails, not the service (alert ConnhealthTargetFailingFromOneRegion).",
                   targets=[T(f"{ratio} < {REGION_FAILING:g}\nand on (target, module) (count without ({p}) "
                              f"({ratio} < {REGION_FAILING:g}) == 1)\nand on (target, module) (count without ({p}) "
                              f"({ratio} >= {REGION_OK:g}) >= 1)", instant=True)],
                   dataLinks=[_target_link()]), 12, 8)
    grid.add(TimeSeries(title="Availability by prober", unitId="percentunit", fmin=0.0, fmax=1.0,
                        description="Share of the observed time the targets were up (5m windows), as each prober saw "
                                    "it: one prober's line dropping alone points at its network path.",
                        targets=[T(f"avg by ({p}) ({ratio})", f"{{{{{p}}}}}")]), 12, 8)


def failure_attribution(traces: str = "jaeger") -> g.Dashboard:
    fail = f"rate({m.PROBE_FAILURES}{{{F}}}[{RI}])"
    grid = Grid()
    grid.row("Where and why probes fail")
    grid.add(TimeSeries(title="Failures by reason", unitId="ops", stacking={"mode": "normal"}, fillOpacity=30, fmin=0.0,
                        description="Failed probes per second, by failure reason (see the README's failure reason table). "
                                    "Exemplars link a failure to its probe's trace.",
                        targets=[T(f"sum by (reason) ({fail})", "{{reason}}", exemplar=True)]), 12, 8)
    grid.add(TimeSeries(title="Failures by phase", unitId="ops", stacking={"mode": "normal"}, fillOpacity=30, fmin=0.0,
                        description="Failed probes per second, by the connection phase the failure happened in. "
                                    "Exemplars link a failure to its probe's trace.",
                        targets=[T(f"sum by (phase) ({fail})", "{{phase}}", exemplar=True)]), 12, 8)
    over = f"increase({m.PROBE_FAILURES}{{{F}}}[{RANGE}])"
    grid.add(Table(title="Reason × region", unitId="none",
                   description="Failed probes over the time on screen by reason and region: one region failing "
                               "points at the network path.",
                   targets=[T(f"sum by (reason, region) ({over})", instant=True)]), 8, 8)
    grid.add(Table(title="Reason × service", unitId="none",
                   description="Failed probes over the time on screen by reason and service: one service failing "
                               "points at the service itself.",
                   targets=[T(f"sum by (reason, service) ({over})", instant=True)]), 8, 8)
    grid.add(failing_targets(F, "Top failing targets and their dominant reason",
                             "The 10 targets with the most failed probes over the time on screen, each with the "
                             "reason it failed with most. Click a target for its detail dashboard or for its failing "
                             "probes' traces in the trace store.", traces), 8, 8)
    grid.row("Latency by phase")
    bucket = f"rate({m.PHASE_DURATION}_bucket{{{F}}}[{RI}])"
    grid.add(TimeSeries(title="Phase latency P50 / P95", unitId="s", fmin=0.0,
                        description="Median and 95th percentile of each phase (dns, connect, tls, request, first_byte, "
                                    "transfer). Exemplars (dots) link a sample to the probe's trace.",
                        targets=[T(f"histogram_quantile(0.5, sum by (le, phase) ({bucket}))", "P50 {{phase}}", exemplar=True),
                                 T(f"histogram_quantile(0.95, sum by (le, phase) ({bucket}))", "P95 {{phase}}", "B",
                                   exemplar=True)]), 12, 9)
    grid.add(TimeSeries(title="Waterfall: mean time per phase (stacked)", unitId="s", stacking={"mode": "normal"},
                        drawStyle="bars", fillOpacity=80, fmin=0.0,
                        description="Average duration of each phase, stacked in connection order: the height is the mean "
                                    "probe time, each band one phase.",
                        targets=[T(f"sum by (phase) (rate({m.PHASE_DURATION}_sum{{{F}}}[{RI}])) / "
                                   f"clamp_min(sum by (phase) (rate({m.PHASE_DURATION}_count{{{F}}}[{RI}])), 1e-12)",
                                   "{{phase}}")]), 12, 9)
    grid.row("TLS")
    grid.add(Table(title="Certificate expiry", unitId="s",
                   description="Time left until the earliest notAfter of each target's presented chain (last handshake "
                               "that received the server's certificates, including one that failed verification), "
                               "soonest first. Alerts: < 14 d warning, < 3 d critical, expired critical.",
                   targets=[T(f"sort({m.CERT_EXPIRY}{{{F}}} - time())", instant=True)],
                   dataLinks=[_target_link()]), 12, 8)
    grid.add(BarGauge(title="TLS versions", unitId="none", format="none", fmin=0.0, orientation="horizontal",
                      description="Targets by the TLS version of their last completed handshake.",
                      targets=[T(f"count by (version) ({m.TLS_VERSION}{{{F}}})", "{{version}}", instant=True)]), 12, 8)
    _prober_row(grid)
    lifecycle_row(grid, F, "region")
    return _dashboard("failures", "connhealth / Failure attribution",
                      "Failures by reason, phase, region and service; phase latency with trace exemplars; TLS.",
                      grid, _common_vars())


def lifecycle_row(grid: Grid, sel: str, by: str) -> None:
    """Issue 9's connection-lifecycle panels: stream heartbeats, keep-alive idle, TLS resumption, SYN retransmits."""
    grid.row("Connection lifecycle")
    gaps = f"rate({m.SSE_HEARTBEAT_GAP}_bucket{{{sel}}}[{RI}])"
    grid.add(TimeSeries(title="Stream heartbeat gap P99 and max", unitId="s", fmin=0.0,
                        description="Gaps between SSE events and `:` comments (sse prober): the 99th percentile over the "
                                    "rate interval and the longest gap of the last probe. Above the server's promised "
                                    "heartbeat interval × (missed_heartbeats + 1) a probe fails with sse_heartbeat_missed.",
                        targets=[T(f"histogram_quantile(0.99, sum by (le, target) ({gaps}))", "P99 {{target}}"),
                                 T(f"max by (target) ({m.SSE_MAX_GAP}{{{sel}}})", "max {{target}}", "B")]), 12, 8)
    grid.add(TimeSeries(title="Keep-alive: server idle vs client idle", unitId="s", fmin=0.0,
                        description="When the server closed an idle kept-alive connection (http keepalive check) against "
                                    "the configured client idle. A server idle below the client's is seed 002's trap: "
                                    "clients reuse connections the server has closed and get 'connection reset'.",
                        targets=[T(f"max by (target) ({m.KEEPALIVE_SERVER_IDLE}{{{sel}}})", "server {{target}}"),
                                 T(f"max by (target) ({m.KEEPALIVE_CLIENT_IDLE}{{{sel}}})", "client {{target}}", "B")]), 12, 8)
    grid.add(TimeSeries(title="TLS resumption ratio", unitId="percentunit", fmin=0.0, fmax=1.0,
                        description="Share of tls_resumption checks whose second handshake resumed the session, per "
                                    f"{by}. A drop to 0 means every connection pays a full handshake.",
                        targets=[T(f"avg by ({by}) (avg_over_time({m.TLS_SESSION_RESUMED}{{{sel}}}[{RI}]))", f"{{{{{by}}}}}")]),
             12, 8)
    grid.add(TimeSeries(title=f"SYN retransmits by {by}", unitId="ops", fmin=0.0,
                        description="SYNs the kernel had to resend per second (TCP_INFO right after connect): lost SYNs "
                                    "make a connect take 1 s or 3 s and never show in application logs.",
                        targets=[T(f"sum by ({by}) (rate({m.TCP_SYN_RETRANSMITS}{{{sel}}}[{RI}]))", f"{{{{{by}}}}}")]), 12, 8)


# --- Target detail ------------------------------------------------------------------------


def target_detail() -> g.Dashboard:
    t = 'job=~"$job",instance=~"$instance",target="$target"'
    grid = Grid()
    grid.add(Stat(title="Last probe succeeded", unitId="bool_yes_no", reduceCalc="lastNotNull", graphMode="none",
                  description="connhealth_probe_success of the target's last probe.",
                  targets=[T(f"{m.PROBE_SUCCESS}{{{t}}}", "{{module}}")]), 6, 5)
    grid.add(Stat(title="Success ratio", unitId="percentunit", reduceCalc="lastNotNull", decimals=2,
                  description="Share of the observed time the target was up, over the rate interval (time-weighted: "
                              "re-checks of a failing target do not weigh it down, docs/metrics.md).",
                  targets=[T(f"sum(rate({m.UP_SECONDS}{{{t}}}[{RI}])) / "
                             f"clamp_min(sum(rate({m.OBSERVED_SECONDS}{{{t}}}[{RI}])), 1e-12)", "success")]), 6, 5)
    grid.add(Stat(title="Time since last probe", unitId="s", reduceCalc="lastNotNull", graphMode="none",
                  description="Seconds since the last probe of the target finished; growing means the target is stale.",
                  targets=[T(f"time() - {m.LAST_PROBE}{{{t}}}", "{{module}}")]), 6, 5)
    grid.add(Stat(title="TCP RTT (kernel)", unitId="s", reduceCalc="lastNotNull",
                  description="Kernel smoothed RTT (TCP_INFO) right after connect, last probe.",
                  targets=[T(f"{m.TCP_RTT}{{{t}}}", "{{module}}")]), 6, 5)
    grid.add(TimeSeries(title="Phases (mean, stacked)", unitId="s", stacking={"mode": "normal"}, drawStyle="bars",
                        fillOpacity=80, fmin=0.0,
                        description="Mean duration of each phase of this target's probes, stacked in connection order.",
                        targets=[T(f"sum by (phase) (rate({m.PHASE_DURATION}_sum{{{t}}}[{RI}])) / "
                                   f"clamp_min(sum by (phase) (rate({m.PHASE_DURATION}_count{{{t}}}[{RI}])), 1e-12)",
                                   "{{phase}}")]), 12, 8)
    grid.add(TimeSeries(title="Phase P95", unitId="s", fmin=0.0,
                        description="95th percentile per phase; exemplars link to the probe's trace.",
                        targets=[T(f"histogram_quantile(0.95, sum by (le, phase) (rate({m.PHASE_DURATION}_bucket{{{t}}}[{RI}])))",
                                   "P95 {{phase}}", exemplar=True)]), 12, 8)
    grid.add(TimeSeries(title="Success over time", unitId="percentunit", fmin=0.0, fmax=1.0,
                        description="Share of the observed time the target was up, per rate interval (time-weighted).",
                        targets=[T(f"sum(rate({m.UP_SECONDS}{{{t}}}[{RI}])) / "
                                   f"clamp_min(sum(rate({m.OBSERVED_SECONDS}{{{t}}}[{RI}])), 1e-12)", "success ratio")]), 12, 8)
    grid.add(TimeSeries(title="Failures by phase and reason (last reason over time)", unitId="ops", drawStyle="bars",
                        stacking={"mode": "normal"}, fillOpacity=80, fmin=0.0,
                        description="Failed probes per second by (phase, reason): the band present at any time is the "
                                    "reason the target was failing with then. Exemplars link to the failed probe's trace.",
                        targets=[T(f"sum by (phase, reason) (rate({m.PROBE_FAILURES}{{{t}}}[{RI}]))", "{{phase}} / {{reason}}",
                                   exemplar=True)]),
             12, 8)
    grid.add(TimeSeries(title="Availability by prober", unitId="percentunit", fmin=0.0, fmax=1.0,
                        description="Share of the observed time the target was up, as each prober (region) saw it: "
                                    "one prober failing alone points at its network path, not the target.",
                        targets=[T(f"sum by ({m.PROBER_LABEL}) (rate({m.UP_SECONDS}{{{t}}}[{RI}])) / clamp_min(sum by "
                                   f"({m.PROBER_LABEL}) (rate({m.OBSERVED_SECONDS}{{{t}}}[{RI}])), 1e-12)",
                                   f"{{{{{m.PROBER_LABEL}}}}}")]), 24, 8)
    grid.add(heatmap(title="Phase latency heatmap", description="Distribution of every phase of this target per "
                                                                "interval; exemplars (dots) open the probe's trace.",
                     targets=[T(f"sum by (le) (rate({m.PHASE_DURATION}_bucket{{{t}}}[{RI}]))", "{{le}}", exemplar=True,
                                fmt="heatmap")]), 24, 8)
    lifecycle_row(grid, t, "module")
    variables = [
        *_job_instance_vars(m.PROBE_ATTEMPTS),
        query_variable("target", "Target", f'label_values({m.PROBE_ATTEMPTS}{{job=~"$job"}}, target)',
                       multi=False, include_all=False),
    ]
    return _dashboard("target", "connhealth / Target detail", "One target: phases, success, failures and reasons; "
                      "exemplars on the latency panels open the probe's trace.", grid, variables, 'target="$target"')


# --- Exporter ---------------------------------------------------------------------------------


def exporter_health() -> g.Dashboard:
    e = 'job=~"$job",instance=~"$instance"'
    grid = Grid()
    grid.add(TimeSeries(title="Scheduler lag P50 / P99", unitId="s", fmin=0.0,
                        description="Actual minus planned start of scheduled probes. Growing lag: too little concurrency "
                                    "or a blocked event loop.",
                        targets=[T(f"histogram_quantile(0.5, sum by (instance, le) (rate({m.SCHEDULER_LAG}_bucket{{{e}}}[{RI}])))",
                                   "P50 {{instance}}"),
                                 T(f"histogram_quantile(0.99, sum by (instance, le) (rate({m.SCHEDULER_LAG}_bucket{{{e}}}[{RI}])))",
                                   "P99 {{instance}}", "B")]), 12, 8)
    grid.add(TimeSeries(title="Event-loop lag P99", unitId="s", fmin=0.0,
                        description="How late a 0.25 s timer fires: the asyncio loop is blocked by that much.",
                        targets=[T(f"histogram_quantile(0.99, sum by (instance, le) (rate({m.LOOP_LAG}_bucket{{{e}}}[{RI}])))",
                                   "P99 {{instance}}")]), 12, 8)
    grid.add(TimeSeries(title="Exporter's own delay per probe P50 / P99", unitId="s", fmin=0.0,
                        description="The event loop's clock minus the kernel's receive timestamps over a probe's "
                                    "kernel-timed phases: how late connhealth saw what had arrived. The phases exclude "
                                    "it; a growing delay means the exporter is overloaded, not the targets slower.",
                        targets=[T(f"histogram_quantile(0.5, sum by (instance, mode, le) (rate({m.SELF_DELAY}_bucket{{{e}}}[{RI}])))",
                                   "P50 {{instance}} {{mode}}"),
                                 T(f"histogram_quantile(0.99, sum by (instance, mode, le) (rate({m.SELF_DELAY}_bucket{{{e}}}[{RI}])))",
                                   "P99 {{instance}} {{mode}}", "B")]), 12, 8)
    grid.add(TimeSeries(title="Probes in flight", unitId="none", fmin=0.0,
                        description="Probes running now, scheduled vs /probe endpoint.",
                        targets=[T(f"sum by (instance, mode) ({m.IN_FLIGHT}{{{e}}})", "{{instance}} {{mode}}")]), 8, 8)
    grid.add(TimeSeries(title="Probes dropped (skipped)", unitId="ops", fmin=0.0,
                        description="Scheduled probes not run, by reason (still_running: the previous probe of the target "
                                    "had not finished).",
                        targets=[T(f"sum by (instance, reason) (rate({m.SKIPPED}{{{e}}}[{RI}]))", "{{instance}} {{reason}}")]),
             8, 8)
    grid.add(TimeSeries(title="Trace spans dropped", unitId="ops", fmin=0.0,
                        description="Spans the exporter dropped before export (collector down, queue full).",
                        targets=[T(f"sum by (instance, reason) (rate({m.TRACE_EXPORT_DROPS}{{{e}}}[{RI}]))",
                                   "{{instance}} {{reason}}")]), 8, 8)
    grid.add(Stat(title="Last reload successful", unitId="bool_yes_no", reduceCalc="lastNotNull", graphMode="none",
                  description="1 if the last configuration reload succeeded (a failed reload keeps the old config).",
                  targets=[T(f"{m.RELOAD_SUCCESS}{{{e}}}", "{{instance}}")]), 6, 6)
    grid.add(TimeSeries(title="Config reloads", unitId="ops", fmin=0.0,
                        description="Configuration reloads per second by result (success, failure).",
                        targets=[T(f"sum by (instance, result) (rate({m.RELOADS}{{{e}}}[{RI}]))", "{{instance}} {{result}}")]),
             6, 6)
    grid.add(TimeSeries(title="Scheduled targets", unitId="none", fmin=0.0,
                        description="Targets the scheduler runs.",
                        targets=[T(f"sum by (instance) ({m.SCHEDULED_TARGETS}{{{e}}})", "{{instance}}")]), 6, 6)
    grid.add(TimeSeries(title="Probe duration P99 (all targets)", unitId="s", fmin=0.0,
                        description="99th percentile of whole-probe duration over every scheduled target; exemplars "
                                    "link the slowest probes to their traces.",
                        targets=[T(f"histogram_quantile(0.99, sum by (instance, le) (rate({m.PROBE_DURATION}_bucket{{{e}}}[{RI}])))",
                                   "P99 {{instance}}", exemplar=True)]), 6, 6)
    grid.add(TimeSeries(title="Probe rate", unitId="ops", fmin=0.0,
                        description="Probes finished per second (all targets).",
                        targets=[T(f"sum by (instance) (rate({m.PROBE_ATTEMPTS}{{{e}}}[{RI}]))", "{{instance}}")]), 6, 6)
    return _dashboard("exporter", "connhealth / Exporter", "The exporter's own health: lag, in-flight, drops, reloads.",
                      grid, _job_instance_vars(m.BUILD_INFO), 'instance=~"$instance"')


def dashboards(spec: SLOSpec, traces: str = "jaeger") -> dict[str, g.Dashboard]:
    """``traces``: the trace store (jaeger | tempo) the failing-targets tables' trace-search links are shaped for."""
    return {"slo-overview": slo_overview(spec, traces), "failure-attribution": failure_attribution(traces),
            "target-detail": target_detail(), "exporter": exporter_health()}
