"""Checks modelled on Grafana's dashboard-linter, on every generated dashboard.

PromQL validity is decided by Prometheus' own parser (promtool check rules on
a rule file holding every panel expression), not by regular expressions.
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
VARIABLES = {"$__rate_interval": "1m", "$datasource": "prometheus"}


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


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_rates_use_rate_interval(path: Path) -> None:
    for title, expr in exprs(load(path)):
        for rng in re.findall(r"\[([^\]]*)\]", expr):
            # SLO windows live in the recorded connhealth_slo:* series, never as ranges here.
            assert rng == "$__rate_interval", f"{title}: range [{rng}] in {expr}"


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
    table = next(p for p in panels(dash) if p["title"] == "Top failing targets and their last reason")
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
