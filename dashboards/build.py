"""The four connhealth dashboards, as grafanalib objects.

Every panel uses the ``datasource`` variable, has a title, a description and a
unit. Rates of raw counters use ``$__rate_interval``; the SLO panels read the
recorded ``connhealth_slo:*`` series, whose windows (5m … 30d) are part of the
SLO definition and deliberately not the dashboard's interval.
"""
from __future__ import annotations

from typing import Any

from grafanalib import core as g

from alerts.rules import DASHBOARD_UIDS
WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
from exporter import metrics as m
from exporter.slo import PERIODS

from .lib import BarGauge, PromTarget, Stat, Table, TimeSeries, datasource_variable, link, query_variable

RI = "$__rate_interval"
TAGS = ["connhealth"]
PERIOD_RE = "|".join(PERIODS)
WINDOW_RE = "|".join(WINDOWS)


def T(expr: str, legend: str = "", ref: str = "A", *, instant: bool = False, exemplar: bool = False) -> PromTarget:
    # grafanalib ships no type information: mypy's attrs plugin sees only our own field.
    return PromTarget(expr=expr, legendFormat=legend, refId=ref, instant=instant, exemplar=exemplar)  # type: ignore[call-arg]


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


def _dashboard(key: str, title: str, description: str, grid: Grid, variables: list[g.Template]) -> g.Dashboard:
    links = [g.DashboardLink(asDropdown=False, includeVars=True, keepTime=True, tags=TAGS, title="connhealth",
                             type="dashboards")] if hasattr(g, "DashboardLink") else []
    return g.Dashboard(
        title=title, uid=DASHBOARD_UIDS[key], description=description, tags=TAGS, timezone="utc",
        refresh="30s", panels=grid.panels, templating=g.Templating(list=[datasource_variable(), *variables]),
        time=g.Time("now-6h", "now"), links=links, sharedCrosshair=True,
    ).auto_panel_ids()


def _target_link(key: str = "target") -> dict[str, Any]:
    return link("Target detail for ${__data.fields.target}",
                f"/d/{DASHBOARD_UIDS[key]}/{DASHBOARD_UIDS[key]}?var-datasource=${{datasource}}&var-target=${{__data.fields.target}}")


# --- SLO overview -----------------------------------------------------------------


def slo_overview() -> g.Dashboard:
    s = 'service=~"$service",slo=~"$slo"'
    grid = Grid()
    grid.row("Objectives and error budget")
    grid.add(Stat(title="SLI over the SLO period", unitId="percentunit", reduceCalc="lastNotNull", decimals=3,
                  description="Share of good events (successful probes, or connects under the latency threshold) over "
                              "the SLO's whole period (7d, 28d or 30d), from connhealth_slo:sli.",
                  targets=[T(f'connhealth_slo:sli{{{s},window=~"{PERIOD_RE}"}}', "{{service}} {{slo}} ({{window}})")]), 8, 5)
    grid.add(Stat(title="Objective", unitId="percentunit", reduceCalc="lastNotNull", decimals=3, graphMode="none",
                  description="The target share of good events, from the SLO spec (connhealth_slo:objective).",
                  targets=[T(f"connhealth_slo:objective{{{s}}}", "{{service}} {{slo}}")]), 8, 5)
    grid.add(Stat(title="Error budget remaining", unitId="percentunit", reduceCalc="lastNotNull", decimals=1, fmax=1.0,
                  description="1 - (error ratio over the period / error budget). Below 0 the SLO is breached for the period.",
                  targets=[T(f"connhealth_slo:error_budget_remaining{{{s}}}", "{{service}} {{slo}}")]), 8, 5)
    grid.add(TimeSeries(title="SLI (1h) vs objective", unitId="percentunit", fmax=1.0,
                        description="SLI over the last hour against the objective line. Probes that fail (availability) "
                                    "or connects slower than the threshold (latency) pull it down.",
                        targets=[T(f'connhealth_slo:sli{{{s},window="1h"}}', "SLI {{service}} {{slo}}"),
                                 T(f"connhealth_slo:objective{{{s}}}", "objective {{service}} {{slo}}", "B")]), 12, 8)
    grid.add(TimeSeries(title="Error budget remaining over the period", unitId="percentunit", fmax=1.0,
                        description="How much of the period's error budget is left, over time.",
                        targets=[T(f"connhealth_slo:error_budget_remaining{{{s}}}", "{{service}} {{slo}}")]), 12, 8)
    grid.row("Burn rates")
    grid.add(TimeSeries(title="Burn rate per window vs alert thresholds", unitId="none", scaleDistributionType="log",
                        scaleDistributionLog=10,
                        description="Error ratio / error budget per window (1 = spending the budget exactly over the "
                                    "period). Dashed: the multi-window alert thresholds (page 1h/5m and 6h/30m, ticket "
                                    "1d/2h and 3d/6h); an alert fires when both its windows are above its line.",
                        targets=[T(f'connhealth_slo:burn_rate{{{s},window=~"{WINDOW_RE}"}}', "{{service}} {{slo}} {{window}}"),
                                 T(f"connhealth_slo:burn_rate_threshold{{{s}}}",
                                   "threshold {{service}} {{slo}} {{severity}} {{long_window}}/{{short_window}}", "B")]), 16, 9)
    grid.add(BarGauge(title="Burn rate now", unitId="none", fmin=0.0, orientation="horizontal", format="none",
                      description="Current burn rate per window; the thresholds are 1 (budget spent exactly over the "
                                  "period) and 14.4 (the 30d page threshold).",
                      thresholds=[g.Threshold("green", 0, 0.0), g.Threshold("orange", 1, 1.0), g.Threshold("red", 2, 14.4)],
                      targets=[T(f'connhealth_slo:burn_rate{{{s},window=~"{WINDOW_RE}"}}', "{{service}} {{slo}} {{window}}",
                                 instant=True)]), 8, 9)
    grid.row("Latency")
    grid.add(TimeSeries(title="P95 connect latency vs threshold", unitId="s", fmin=0.0,
                        description="95th percentile TCP connect time per service (from the phase histogram) against "
                                    "the latency SLO threshold. Exemplars link slow samples to their probe's trace.",
                        targets=[T(f'histogram_quantile(0.95, sum by (le, service) (rate({m.PHASE_DURATION}_bucket'
                                   f'{{phase="connect",service=~"$service"}}[{RI}])))', "P95 connect {{service}}",
                                   exemplar=True),
                                 T('connhealth_slo:latency_threshold_seconds{service=~"$service"}', "threshold {{service}}",
                                   "B")]), 16, 8)
    grid.add(Table(title="Firing and pending alerts", unitId="none",
                   description="connhealth alerts Prometheus currently evaluates as pending or firing for the selected "
                               "services (ALERTS), with severity and windows.",
                   targets=[T('sum by (alertname, alertstate, severity, service, slo, long_window, short_window) '
                              '(ALERTS{alertname=~"Connhealth.*",service=~"$service"})', instant=True)]), 8, 8)
    variables = [
        query_variable("service", "Service", "label_values(connhealth_slo:objective, service)"),
        query_variable("slo", "SLO", "label_values(connhealth_slo:objective, slo)"),
    ]
    return _dashboard("slo", "connhealth / SLO overview",
                      "Availability and latency SLOs: SLI vs objective, error budget, burn rates and alerts.", grid, variables)


# --- Failure attribution ------------------------------------------------------------

F = 'job=~"$job",service=~"$service",region=~"$region",cluster=~"$cluster"'


def _common_vars(*extra: g.Template) -> list[g.Template]:
    return [
        query_variable("job", "Job", f"label_values({m.PROBE_ATTEMPTS}, job)"),
        query_variable("service", "Service", f'label_values({m.PROBE_ATTEMPTS}{{job=~"$job"}}, service)'),
        query_variable("region", "Region", f'label_values({m.PROBE_ATTEMPTS}{{job=~"$job",service=~"$service"}}, region)'),
        query_variable("cluster", "Cluster", f'label_values({m.PROBE_ATTEMPTS}{{job=~"$job",service=~"$service"}}, cluster)'),
        *extra,
    ]


def failure_attribution() -> g.Dashboard:
    fail = f"rate({m.PROBE_FAILURES}{{{F}}}[{RI}])"
    grid = Grid()
    grid.row("Where and why probes fail")
    grid.add(TimeSeries(title="Failures by reason", unitId="ops", stacking={"mode": "normal"}, fillOpacity=30, fmin=0.0,
                        description="Failed probes per second, by failure reason (see the README's failure reason table).",
                        targets=[T(f"sum by (reason) ({fail})", "{{reason}}")]), 12, 8)
    grid.add(TimeSeries(title="Failures by phase", unitId="ops", stacking={"mode": "normal"}, fillOpacity=30, fmin=0.0,
                        description="Failed probes per second, by the connection phase the failure happened in.",
                        targets=[T(f"sum by (phase) ({fail})", "{{phase}}")]), 12, 8)
    grid.add(Table(title="Reason × region", unitId="ops",
                   description="Failure rate by reason and region: one region failing points at the network path.",
                   targets=[T(f"sum by (reason, region) ({fail})", instant=True)]), 8, 8)
    grid.add(Table(title="Reason × service", unitId="ops",
                   description="Failure rate by reason and service: one service failing points at the service itself.",
                   targets=[T(f"sum by (reason, service) ({fail})", instant=True)]), 8, 8)
    grid.add(Table(title="Top failing targets and their last reason", unitId="ops", dataLinks=[_target_link()],
                   description="The 10 targets failing most, each with the reason it failed with most in the last "
                               "rate interval (its recent reason). Click a target for its detail dashboard.",
                   targets=[T(f"topk(10, sum by (target, phase, reason) ({fail}))", instant=True)]), 8, 8)
    grid.row("Latency by phase")
    bucket = f"rate({m.PHASE_DURATION}_bucket{{{F}}}[{RI}])"
    grid.add(TimeSeries(title="Phase latency P50 / P95", unitId="s", fmin=0.0, scaleDistributionType="log",
                        scaleDistributionLog=10,
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
    return _dashboard("failures", "connhealth / Failure attribution",
                      "Failures by reason, phase, region and service; phase latency with trace exemplars; TLS.",
                      grid, _common_vars())


# --- Target detail ------------------------------------------------------------------------


def target_detail() -> g.Dashboard:
    t = 'job=~"$job",target="$target"'
    grid = Grid()
    grid.add(Stat(title="Last probe succeeded", unitId="bool_yes_no", reduceCalc="lastNotNull", graphMode="none",
                  description="connhealth_probe_success of the target's last probe.",
                  targets=[T(f"{m.PROBE_SUCCESS}{{{t}}}", "{{module}}")]), 6, 5)
    grid.add(Stat(title="Success ratio", unitId="percentunit", reduceCalc="lastNotNull", decimals=2,
                  description="Successful / all probes over the rate interval.",
                  targets=[T(f"sum(rate({m.PROBE_SUCCESSES}{{{t}}}[{RI}])) / "
                             f"clamp_min(sum(rate({m.PROBE_ATTEMPTS}{{{t}}}[{RI}])), 1e-12)", "success")]), 6, 5)
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
                        description="Share of successful probes per rate interval.",
                        targets=[T(f"sum(rate({m.PROBE_SUCCESSES}{{{t}}}[{RI}])) / "
                                   f"clamp_min(sum(rate({m.PROBE_ATTEMPTS}{{{t}}}[{RI}])), 1e-12)", "success ratio")]), 12, 8)
    grid.add(TimeSeries(title="Failures by phase and reason (last reason over time)", unitId="ops", drawStyle="bars",
                        stacking={"mode": "normal"}, fillOpacity=80, fmin=0.0,
                        description="Failed probes per second by (phase, reason): the band present at any time is the "
                                    "reason the target was failing with then.",
                        targets=[T(f"sum by (phase, reason) (rate({m.PROBE_FAILURES}{{{t}}}[{RI}]))", "{{phase}} / {{reason}}")]),
             12, 8)
    variables = [
        query_variable("job", "Job", f"label_values({m.PROBE_ATTEMPTS}, job)"),
        query_variable("target", "Target", f'label_values({m.PROBE_ATTEMPTS}{{job=~"$job"}}, target)',
                       multi=False, include_all=False),
    ]
    return _dashboard("target", "connhealth / Target detail", "One target: phases, success, failures and reasons.",
                      grid, variables)


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
    grid.add(TimeSeries(title="Probe rate", unitId="ops", fmin=0.0,
                        description="Probes finished per second (all targets).",
                        targets=[T(f"sum by (instance) (rate({m.PROBE_ATTEMPTS}{{{e}}}[{RI}]))", "{{instance}}")]), 6, 6)
    variables = [
        query_variable("job", "Job", f"label_values({m.BUILD_INFO}, job)"),
        query_variable("instance", "Instance", f'label_values({m.BUILD_INFO}{{job=~"$job"}}, instance)'),
    ]
    return _dashboard("exporter", "connhealth / Exporter", "The exporter's own health: lag, in-flight, drops, reloads.",
                      grid, variables)


def dashboards() -> dict[str, g.Dashboard]:
    return {"slo-overview": slo_overview(), "failure-attribution": failure_attribution(),
            "target-detail": target_detail(), "exporter": exporter_health()}
