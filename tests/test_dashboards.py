"""Checks modelled on Grafana's dashboard-linter, on every generated dashboard.

The grafana/dashboard-linter rules are re-implemented in ``lint()`` (same rule
names); justified exceptions live in dashboards/.lint. PromQL validity is
decided by Prometheus' own parser (promtool check rules on a rule file holding
every panel expression), not by regular expressions. Grafana 11 shape
(schemaVersion, threshold arrays, no legacy keys) is checked here too.
"""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from alerts.rules import DASHBOARD_UIDS
from exporter import metrics as m

try:
    from tests import procs
except ImportError:  # pragma: no cover
    import procs  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parent.parent
GENERATED = REPO / "dashboards" / "generated"
DASHBOARDS = sorted(GENERATED.glob("*.json"))
IMPORTABLE = sorted((GENERATED / "importable").glob("*.json"))

# Grafana unit ids the dashboards may use (subset of Grafana's unit catalogue).
VALID_UNITS = {"none", "short", "percent", "percentunit", "s", "ms", "µs", "ns", "ops", "reqps", "rps", "bool_yes_no",
               "bool", "dateTimeAsIso", "dateTimeFromNow", "dtdurations", "dtdurationms", "bytes", "decbytes", "d", "h", "m"}
# Counters (and histogram series, which are counters) may only appear inside rate()/irate()/increase().
COUNTERS = tuple(s.name for s in (*m.CONTINUOUS, *m.SELF) if s.type == "counter") + tuple(
    f"{s.name}_{suffix}" for s in (*m.CONTINUOUS, *m.SELF) if s.type == "histogram" for suffix in ("bucket", "count", "sum"))
RATE_FUNCS = ("rate", "irate", "increase")
# Substitutions used to make a panel query concrete (here and in the live test).
VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$datasource": "prometheus"}
LINT = REPO / "dashboards" / ".lint"


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in dash["panels"]:
        if p.get("type") == "row":
            yield from p.get("panels", [])
        else:
            yield p


def exprs(dash: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for p in panels(dash):
        for t in p.get("targets", []):
            yield p["title"], t["expr"]


def substitute(expr: str, values: dict[str, str] | None = None) -> str:
    values = {**VARIABLES, **(values or {})}
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace(name, values[name])
    return re.sub(r"\$[a-z_]+", ".*", expr)  # remaining multi-value variables: All


def test_all_dashboards_generated() -> None:
    assert {p.stem for p in DASHBOARDS} == {"slo-overview", "failure-attribution", "target-detail", "exporter"}
    assert {p.stem for p in IMPORTABLE} == {p.stem for p in DASHBOARDS}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_stable_uid_and_datasource_variable(path: Path) -> None:
    dash = load(path)
    assert dash["uid"] in DASHBOARD_UIDS.values()
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus" and ds["label"] == "Data source"
    for v in variables.values():
        if v["type"] == "query":
            assert v["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, v["name"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_panels_use_datasource_variable_and_have_title_description_unit(path: Path) -> None:
    for p in panels(load(path)):
        where = f"{path.stem}: panel {p.get('title')!r}"
        assert p["title"], where
        assert p.get("description"), f"{where}: no description"
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
        for t in p["targets"]:
            assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
        unit = p["fieldConfig"]["defaults"].get("unit")
        assert unit in VALID_UNITS, f"{where}: unit {unit!r}"
        assert p["targets"], f"{where}: no query"


def _raw_selectors(expr: str) -> list[str]:
    """The label matchers of every raw connhealth metric selector in ``expr`` (recorded series have a colon)."""
    return re.findall(r"\b(?:connhealth|probe)_[a-z_]+(?:_bucket|_count|_sum)?\{([^}]*)\}", expr)


def lint(dash: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(rule, dashboard, panel, target refId) for every violation of the dashboard-linter rules we re-implement."""
    out: list[tuple[str, str, str, str]] = []
    title = dash["title"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    if dash.get("editable") is not False:
        out.append(("uneditable-dashboard", title, "", ""))
    ds = variables.get("datasource")
    if not ds or ds["type"] != "datasource" or ds["query"] != "prometheus":
        out.append(("template-datasource-rule", title, "", ""))
    for name in ("job", "instance"):
        v = variables.get(name)
        if (not v or v["type"] != "query" or v["datasource"] != {"type": "prometheus", "uid": "${datasource}"}
                or not v["multi"] or not v["includeAll"] or v.get("allValue") != ".+"):
            out.append((f"template-{name}-rule", title, "", ""))
    for v in variables.values():
        if v["type"] == "query":
            if v.get("refresh") != 2:
                out.append(("template-on-time-change-reload-rule", title, v["name"], ""))
            if v.get("includeAll") and v.get("allValue") != ".+":
                out.append(("template-label-promql-rule", title, v["name"], ""))
    for p in panels(dash):
        pt = p["title"]
        if p.get("datasource") != {"type": "prometheus", "uid": "${datasource}"}:
            out.append(("panel-datasource-rule", title, pt, ""))
        if not pt or not p.get("description"):
            out.append(("panel-title-description-rule", title, pt, ""))
        if p["fieldConfig"]["defaults"].get("unit") not in VALID_UNITS:
            out.append(("panel-units-rule", title, pt, ""))
        if not p.get("targets"):
            out.append(("panel-no-targets-rule", title, pt, ""))
        for t in p.get("targets", []):
            expr, ref = t["expr"], t["refId"]
            for fn, rng in re.findall(r"\b(rate|irate|increase)\([^\[]*\[([^\]]*)\]", expr):
                if rng != "$__rate_interval":
                    out.append(("target-rate-interval-rule", title, pt, ref))
            for name, matcher in (("job", 'job=~"$job"'), ("instance", 'instance=~"$instance"')):
                selectors = _raw_selectors(expr)
                if not selectors or any(matcher not in sel for sel in selectors):
                    out.append((f"target-{name}-rule", title, pt, ref))
    return sorted(set(out))


def _excluded(rule: str, dash: str, panel: str, ref: str) -> bool:
    entries = yaml.safe_load(LINT.read_text())["exclusions"].get(rule, {}).get("entries", [])
    return any(e["dashboard"] == dash and e.get("panel", panel) == panel and str(e.get("target", ref)) == ref
               for e in entries)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_linter(path: Path) -> None:
    problems = [v for v in lint(load(path)) if not _excluded(*v)]
    assert not problems, "\n".join(" | ".join(v) for v in problems)


def test_linter_exclusions_are_justified_and_used() -> None:
    """Every .lint entry has a reason and still matches a violation (stale exceptions are removed)."""
    exclusions = yaml.safe_load(LINT.read_text())["exclusions"]
    found = {v for path in DASHBOARDS for v in lint(load(path))}
    for rule, body in exclusions.items():
        assert len(body["reason"]) > 40, rule
        for e in body["entries"]:
            assert any(v[0] == rule and v[1] == e["dashboard"] and v[2] == e["panel"]
                       and ("target" not in e or v[3] == e["target"]) for v in found), (rule, e)


def test_linter_catches_violations() -> None:
    """The re-implemented rules fire on a dashboard built to break them."""
    bad = {"title": "bad", "editable": True, "templating": {"list": [
        {"name": "job", "type": "query", "datasource": {"type": "prometheus", "uid": "${datasource}"}, "multi": True,
         "includeAll": True, "allValue": ".*", "refresh": 1}]},
        "panels": [{"type": "timeseries", "title": "p", "description": "", "datasource": None,
                    "fieldConfig": {"defaults": {}}, "targets": [
                        {"refId": "A", "expr": 'rate(connhealth_probe_attempts_total{job=~"$job"}[5m])'}]}]}
    assert {v[0] for v in lint(bad)} == {
        "uneditable-dashboard", "template-datasource-rule", "template-job-rule", "template-instance-rule",
        "template-on-time-change-reload-rule", "template-label-promql-rule", "panel-datasource-rule",
        "panel-title-description-rule", "panel-units-rule", "target-rate-interval-rule", "target-instance-rule"}


@pytest.mark.parametrize("path", DASHBOARDS + IMPORTABLE, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_grafana11_native_json(path: Path) -> None:
    """schemaVersion >= 39, thresholds as arrays, current options: nothing for Grafana's migrations to reinterpret."""
    dash = load(path)
    assert dash["schemaVersion"] >= 39
    assert not {"rows", "style", "hideControls", "sharedCrosshair"} & set(dash)
    assert "time_options" not in dash["timepicker"]
    with_thresholds = 0
    for p in panels(dash):
        where = f"{path.stem}: {p['title']}"
        assert p["pluginVersion"].startswith("11."), where
        assert "maxDataPoints" not in p and "fieldOptions" not in p.get("options", {}), where
        steps = p["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert isinstance(steps, list) and steps and steps[0]["value"] is None, where
        assert all(isinstance(s["value"], float) for s in steps[1:]), where
        with_thresholds += len(steps) > 1
        if p["type"] == "bargauge":
            assert p["options"]["reduceOptions"]["calcs"] == ["lastNotNull"], where
    for p in dash["panels"]:
        if p["type"] == "row":
            assert set(p) <= {"type", "title", "gridPos", "id", "collapsed", "panels"}, p
    if path.stem == "slo-overview":
        assert with_thresholds >= 30  # every SLO row colours its stats and gauges


def _tokens(expr: str) -> list[str]:
    return re.findall(r'"(?:[^"\\]|\\.)*"|[A-Za-z_:][A-Za-z0-9_:]*|\[[^\]]*\]|\S', expr)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_counters_only_inside_rate(path: Path) -> None:
    for title, expr in exprs(load(path)):
        toks = _tokens(expr)
        for i, tok in enumerate(toks):
            if tok not in COUNTERS:
                continue
            j = i + 1
            if j < len(toks) and toks[j] == "{":
                j = toks.index("}", j) + 1
            assert j < len(toks) and toks[j].startswith("["), f"{title}: counter {tok} without a range: {expr}"
            assert i >= 2 and toks[i - 1] == "(" and toks[i - 2] in RATE_FUNCS, f"{title}: {tok} not in rate(): {expr}"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_exemplars_on_latency_panels(path: Path) -> None:
    for p in panels(load(path)):
        for t in p["targets"]:
            if "histogram_quantile" in t["expr"] and m.PHASE_DURATION in t["expr"]:
                assert t["exemplar"] is True, p["title"]


def test_every_expression_parses(tmp_path: Path) -> None:
    promtool = procs.require_binary("promtool", "prometheus")
    rules, where = [], []
    for path in DASHBOARDS:
        dash = load(path)
        for title, expr in exprs(dash):
            rules.append({"record": f"panel_{len(rules)}", "expr": substitute(expr)})
            where.append(f"{path.stem}: {title}")
        for v in dash["templating"]["list"]:
            if v["type"] == "query":
                inner = re.fullmatch(r"label_values\((.*), *[a-z_]+\)", v["query"])
                assert inner, v["query"]
                rules.append({"record": f"panel_{len(rules)}", "expr": substitute(inner.group(1))})
                where.append(f"{path.stem}: variable {v['name']}")
    f = tmp_path / "exprs.yml"
    f.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    r = subprocess.run([promtool, "check", "rules", str(f)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr + "\n" + "\n".join(f"panel_{i}: {w}" for i, w in enumerate(where))
    assert f"SUCCESS: {len(rules)} rules found" in r.stdout


def test_importable_json_has_inputs() -> None:
    for path in IMPORTABLE:
        dash = load(path)
        assert [i["name"] for i in dash["__inputs"]] == ["DS_PROMETHEUS"]
        ds = next(v for v in dash["templating"]["list"] if v["name"] == "datasource")
        assert ds["current"]["value"] == "${DS_PROMETHEUS}"


def test_provisioning_files() -> None:
    ds = yaml.safe_load((GENERATED / "provisioning" / "datasources" / "connhealth.yml").read_text())
    prom = next(d for d in ds["datasources"] if d["type"] == "prometheus")
    assert prom["jsonData"]["exemplarTraceIdDestinations"] == [{"name": "trace_id", "datasourceUid": "traces"}]
    # Copied into a user's Grafana: no compose host names (Grafana expands the variables), never the default.
    assert {d["name"]: d["url"] for d in ds["datasources"]} == {
        "Prometheus": "${CONNHEALTH_PROMETHEUS_URL}", "Traces": "${CONNHEALTH_TRACES_URL}"}
    assert [d["isDefault"] for d in ds["datasources"]] == [False, False]
    prov = yaml.safe_load((GENERATED / "provisioning" / "dashboards" / "connhealth.yml").read_text())
    assert prov["providers"][0]["type"] == "file"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_exemplars_on_every_timeseries_over_a_histogram_or_the_failure_counter(path: Path) -> None:
    traced = [f"{m.PHASE_DURATION}_bucket", f"{m.PROBE_DURATION}_bucket", m.PROBE_FAILURES]
    for p in panels(load(path)):
        if p["type"] != "timeseries":
            continue
        for t in p["targets"]:
            if any(name in t["expr"] for name in traced):
                assert t["exemplar"] is True, (p["title"], t["expr"])


def test_exporter_dashboard_has_a_panel_with_exemplars() -> None:
    dash = load(GENERATED / "exporter.json")
    assert [p["title"] for p in panels(dash) if any(t["exemplar"] for t in p["targets"])] == [
        "Probe duration P99 (all targets)"]


@pytest.mark.parametrize(("store", "query"), [
    ("jaeger", {"queryType": "search", "service": "connhealth", "tags": 'probe.target="https://a/?x=1&y=2" error=true'}),
    ("tempo", {"queryType": "traceql",
               "query": '{ resource.service.name="connhealth" && span.probe.target="https://a/?x=1&y=2" && status=error }'}),
])
def test_top_failing_targets_link_to_target_detail_and_to_the_trace_search(store: str, query: dict[str, str]) -> None:
    from urllib.parse import parse_qs, quote, urlsplit

    from dashboards.build import failure_attribution
    from exporter.generate import dashboard_json

    dash = dashboard_json(failure_attribution(store))
    table = next(p for p in panels(dash) if p["title"] == "Top failing targets and their dominant reason")
    detail, traces = table["fieldConfig"]["defaults"]["links"]
    assert detail["url"].startswith(f"/d/{DASHBOARD_UIDS['target']}/") and "var-target=${__data.fields.target}" in detail["url"]
    # What Grafana does with the link: fill in the row's target (percent-encoded) and the time range ...
    target = "https://a/?x=1&y=2"
    url = (traces["url"].replace("${__data.fields.target:percentencode}", quote(target, safe=""))
           .replace("${__from}", "1700000000000").replace("${__to}", "1700003600000"))
    split = urlsplit(url)
    assert split.path == "/explore"
    # ... and what Explore reads back: the trace store's own search for the target's failing probes.
    panes = json.loads(parse_qs(split.query)["panes"][0])
    assert panes == {"traces": {"datasource": "traces", "range": {"from": "1700000000000", "to": "1700003600000"},
                                "queries": [{"refId": "A", "datasource": {"type": store, "uid": "traces"}, **query}]}}


def test_every_failing_targets_table_links_to_target_detail_and_to_the_trace_search() -> None:
    """The SLO rows' failing-targets tables drill down as Failure attribution's does (issue 16 x main's trace links)."""
    tables = [(path.stem, p) for path in DASHBOARDS for p in panels(load(path)) if "failing targets" in p["title"].lower()]
    assert sorted({stem for stem, _ in tables}) == ["failure-attribution", "slo-overview"]
    for stem, p in tables:
        detail, traces = p["fieldConfig"]["defaults"]["links"]
        assert detail["url"].startswith(f"/d/{DASHBOARD_UIDS['target']}/"), (stem, p["title"])
        assert traces["title"] == "Failing probes of ${__data.fields.target} in Jaeger", (stem, p["title"])
        assert traces["url"].startswith("/explore?") and "${__data.fields.target:percentencode}" in traces["url"]


def test_slo_dashboard_has_one_row_per_slo_of_the_spec() -> None:
    from exporter.config import load_config

    spec = load_config(REPO / "examples" / "connhealth.yml").slos
    dash = load(GENERATED / "slo-overview.json")
    rows = [p["title"] for p in dash["panels"] if p["type"] == "row"]
    want = [f"{o.service} · {slo} · {obj * 100:g}% over {o.period}" for o in spec.objectives
            for slo, obj in (("availability", o.availability and o.availability.objective),
                             ("latency", o.latency and o.latency.objective)) if obj]
    assert rows == want
    checkout_latency = [p for p in dash["panels"] if p["title"] == "P99 connect latency vs threshold"]
    assert len(checkout_latency) == 1  # checkout's 99 % / 1s latency SLO: its own quantile, phase and selector
    assert 'histogram_quantile(0.99, sum by (le) (rate(connhealth_probe_phase_duration_seconds_bucket{service="checkout",phase="connect",' \
        in checkout_latency[0]["targets"][0]["expr"]
    burn = [p for p in dash["panels"] if p["title"] == "Burn rate per alert window vs thresholds"]
    assert all('connhealth_slo:burn_rate_threshold{' in p["targets"][1]["expr"] for p in burn) and len(burn) == len(rows)


def test_drill_down_chain_carries_datasource_service_and_time() -> None:
    """SLO row -> Failure attribution (same service, same time) -> Target detail -> the probe's trace (exemplars)."""
    slo = load(GENERATED / "slo-overview.json")
    failures_uid, target_uid = DASHBOARD_UIDS["failures"], DASHBOARD_UIDS["target"]
    for p in panels(slo):
        if p["title"] == "SLI over the period":
            url = p["links"][0]["url"]
            assert url.startswith(f"/d/{failures_uid}/") and "var-datasource=${datasource}" in url
            assert "${__url_time_range}" in url and "var-service=" in url
    fa = load(GENERATED / "failure-attribution.json")
    top = next(p for p in panels(fa) if p["title"] == "Top failing targets and their dominant reason")
    url = top["fieldConfig"]["defaults"]["links"][0]["url"]
    assert url.startswith(f"/d/{target_uid}/") and "var-target=${__data.fields.target}" in url
    assert "var-datasource=${datasource}" in url and "${__url_time_range}" in url
    target = load(GENERATED / "target-detail.json")
    assert {p["title"] for p in panels(target) if any(t["exemplar"] for t in p["targets"])} == {
        "Phase P95", "Phase latency heatmap", "Failures by phase and reason (last reason over time)"}
    for path in DASHBOARDS:
        ann = load(path)["annotations"]["list"]
        assert any(a.get("expr", "").startswith('ALERTS{alertname=~"Connhealth.*",alertstate="firing"') for a in ann), path


def test_grafana11_rewrites_what_grafanalib_writes() -> None:
    """The post-processing step on grafanalib's own output: string thresholds, legacy bar gauge options, rows."""
    from grafanalib import core as g
    from grafanalib._gen import DashboardEncoder

    from dashboards.lib import grafana11
    from exporter.generate import dashboard_json

    raw = g.Dashboard(title="t", sharedCrosshair=True, panels=[
        g.RowPanel(title="r", gridPos=g.GridPos(h=1, w=24, x=0, y=0)),
        g.Stat(title="s", gridPos=g.GridPos(h=4, w=6, x=0, y=1)),
        g.BarGauge(title="b", gridPos=g.GridPos(h=4, w=6, x=6, y=1),
                   thresholds=[g.Threshold("green", 0, 0.0), g.Threshold("red", 1, 14.4)]),
    ]).auto_panel_ids()
    legacy = json.loads(json.dumps(raw.to_json_data(), cls=DashboardEncoder))
    assert legacy["schemaVersion"] < 39 and legacy["panels"][1]["fieldConfig"]["defaults"]["thresholds"]["steps"] == ""
    assert "fieldOptions" in legacy["panels"][2]["options"] and legacy["panels"][2]["maxDataPoints"] == 100
    out = grafana11(legacy)
    row, stat, bar = out["panels"]
    assert out["schemaVersion"] == 39 and out["editable"] is False and out["graphTooltip"] == 1
    assert not {"rows", "style", "hideControls", "sharedCrosshair"} & set(out)
    assert row == {"type": "row", "title": "r", "gridPos": {"h": 1, "w": 24, "x": 0, "y": 0}, "id": 1,
                   "collapsed": False, "panels": []}
    assert stat["fieldConfig"]["defaults"]["thresholds"] == {"mode": "absolute", "steps": [{"color": "green", "value": None}]}
    assert bar["fieldConfig"]["defaults"]["thresholds"]["steps"] == [{"color": "green", "value": None},
                                                                     {"color": "red", "value": 14.4}]
    assert "fieldOptions" not in bar["options"] and bar["options"]["reduceOptions"]["calcs"] == ["lastNotNull"]
    assert "maxDataPoints" not in bar and bar["pluginVersion"] == stat["pluginVersion"] == "11.0.0"
    assert dashboard_json(raw) == out  # generate uses exactly this step
