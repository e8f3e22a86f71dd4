"""Generated rule files: fresh, valid for promtool, and the committed unit tests pass."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from alerts.rules import BASE_WINDOWS, burn_windows, rule_files
from exporter.config import load_config, parse_config
from exporter.generate import outputs

try:
    from tests import procs
except ImportError:  # pragma: no cover
    import procs  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "connhealth.yml"
RULES = sorted((REPO / "alerts" / "generated").glob("*.rules.yml"))


def promtool() -> str:
    return procs.require_binary("promtool", "prometheus")


def test_committed_outputs_are_fresh() -> None:
    """dashboards/generated and alerts/generated are exactly what `generate` makes from the example."""
    want = outputs(load_config(EXAMPLE))
    stale = [rel for rel, text in want.items() if not (REPO / rel).is_file() or (REPO / rel).read_text() != text]
    committed = {str(p.relative_to(REPO)) for d in ("alerts/generated", "dashboards/generated")
                 for p in (REPO / d).rglob("*") if p.is_file()}
    extra = sorted(committed - set(want))
    assert not stale and not extra, (
        f"generated files are stale {stale} or orphaned {extra}: run "
        "`connhealth generate --config.file examples/connhealth.yml --out .`")


def test_promtool_check_rules() -> None:
    assert len(RULES) == 3
    for path in RULES:
        r = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "SUCCESS" in r.stdout


@pytest.mark.timeout(300)
def test_promtool_unit_tests() -> None:
    tests = sorted((REPO / "tests" / "rules").glob("*.yml"))
    assert tests
    # ~35 s of CPU (every test case evaluates every recording rule each simulated minute); the bound
    # leaves room for a machine shared with other builds.
    r = subprocess.run([promtool(), "test", "rules", *map(str, tests)], capture_output=True, text=True, timeout=300,
                       cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr


def _objective(period: str, extra: str = ""):
    spec = parse_config(f"slos:\n  objectives:\n    - {{service: s, period: {period}, availability: {{objective: 99}}{extra}}}\n").slos
    return spec.objectives[0]


def test_factors_stay_and_windows_scale_with_the_period() -> None:
    """pyrra's approach: 14.4 / 6 / 3 / 1 for every period; windows = 30d windows * period / 30d, in 5m steps."""
    table = {p: [(b.severity, b.long, b.short, b.factor, b.for_) for b in burn_windows(_objective(p))]
             for p in ("30d", "28d", "7d")}
    assert table["30d"] == [("page", "1h", "5m", 14.4, "2m"), ("page", "6h", "30m", 6, "15m"),
                            ("ticket", "1d", "2h", 3, "1h"), ("ticket", "3d", "6h", 1, "3h")]
    assert table["28d"] == [("page", "55m", "5m", 14.4, "2m"), ("page", "5h35m", "30m", 6, "14m"),
                            ("ticket", "22h25m", "1h50m", 3, "56m"), ("ticket", "2d19h10m", "5h35m", 1, "2h48m")]
    assert table["7d"] == [("page", "15m", "5m", 14.4, "1m"), ("page", "1h25m", "5m", 6, "4m"),
                           ("ticket", "5h35m", "30m", 3, "14m"), ("ticket", "16h50m", "1h25m", 1, "42m")]
    for period, rows in table.items():
        o = _objective(period)
        for b in burn_windows(o):
            assert b.factor >= 1  # below 1 the SLO is being met: never a ticket
            # the long window spends about the Workbook's share of the budget (2 / 5 / 10 / 10 %)
            base = {"1h": 0.02, "6h": 0.05, "1d": 0.10, "3d": 0.10}[BASE_WINDOWS[burn_windows(o).index(b)].long]
            assert abs(b.budget_share(o.period_seconds) - base) < 0.004, (period, b)


def test_spec_windows_replace_the_scaled_ones() -> None:
    o = _objective("7d", ", min_probes: 30, windows: [{long: 1d, short: 6h}, {long: 2d, short: 12h}, "
                         "{long: 3d, short: 1d}, {long: 7d, short: 2d}]")
    assert [(b.long, b.short, b.factor) for b in burn_windows(o)] == [
        ("1d", "6h", 14.4), ("2d", "12h", 6), ("3d", "1d", 3), ("7d", "2d", 1)]
    groups = rule_files(parse_config(
        "slos:\n  objectives:\n    - {service: s, period: 7d, min_probes: 30, availability: {objective: 99}, "
        "windows: [{long: 1d, short: 6h}, {long: 2d, short: 12h}, {long: 3d, short: 1d}, {long: 7d, short: 2d}]}\n"
    ).slos)["connhealth-slo.rules.yml"]["groups"]
    page = next(r for r in groups[0]["rules"] if r.get("alert") and r["labels"]["long_window"] == "1d")
    # the probe-count guard on both windows of the pair
    assert 'connhealth_slo:probes:increase{service="s",slo="availability",window="1d"}) >= 30' in page["expr"]
    assert 'connhealth_slo:probes:increase{service="s",slo="availability",window="6h"}) >= 30' in page["expr"]


def test_every_window_is_recorded_with_consistent_labels() -> None:
    spec = load_config(EXAMPLE).slos
    groups = rule_files(spec)["connhealth-slo.rules.yml"]["groups"]
    assert [g["name"] for g in groups if g["name"].endswith("-floor")] == ["connhealth-slo-api-floor"]
    for group in groups:
        if group["name"].endswith("-floor"):
            continue  # sli_floor alerts only (tests/rules/sli_floor_test.yml)
        o = next(o for o in spec.objectives if group["name"].startswith(f"connhealth-slo-{o.service}-"))
        windows = burn_windows(o)
        records = [r for r in group["rules"] if "record" in r]
        recorded = {r["labels"]["window"] for r in records if r["record"] == "connhealth_slo:error_ratio"}
        assert recorded == {"5m", "1h", "6h", "1d", "3d", o.period} | {w for b in windows for w in (b.long, b.short)}
        for r in records:
            assert {"service", "slo"} <= set(r["labels"]), r
            # only the 5m window reads raw counters; everything longer tiles the recorded 5m increases
            if r["labels"].get("window") not in (None, "5m") and r["record"].endswith(":increase"):
                assert r["expr"].startswith("sum_over_time(connhealth_slo:") and r["expr"].endswith(":5m])"), r
        alerts = [r for r in group["rules"] if "alert" in r]
        assert [(a["labels"]["severity"], a["labels"]["long_window"], a["labels"]["short_window"]) for a in alerts] == [
            (b.severity, b.long, b.short) for b in windows]
        for a in alerts:
            assert set(a["annotations"]) == {"summary", "description", "runbook_url", "dashboard"}
            assert set(a["labels"]) == {"service", "slo", "severity", "long_window", "short_window"}  # no `window`
            assert "humanizePercentage" in a["annotations"]["description"]


def test_ratios_never_divide_by_zero() -> None:
    for group in rule_files(load_config(EXAMPLE).slos)["connhealth-slo.rules.yml"]["groups"]:
        for r in group["rules"]:
            if r.get("record") == "connhealth_slo:error_ratio":
                assert "/ clamp_min(" in r["expr"], r["expr"]


@pytest.mark.parametrize("store", ["jaeger", "tempo"])
def test_cli_generate_takes_the_datasource_urls_from_its_options(tmp_path: Path, store: str) -> None:
    import yaml

    from exporter.cli import main

    traces = "https://traces.internal.example:16686" if store == "jaeger" else "https://tempo.internal.example:3200"
    assert main(["generate", "--config", str(EXAMPLE), "--out", str(tmp_path), "--traces", store,
                 "--prometheus-url", "https://prom.internal.example:9090", "--traces-url", traces]) == 0
    text = (tmp_path / "dashboards/generated/provisioning/datasources/connhealth.yml").read_text()
    assert "prometheus:9090" not in text and "jaeger:" not in text and "${" not in text
    ds = {d["name"]: d for d in yaml.safe_load(text)["datasources"]}
    assert {n: (d["type"], d["url"], d["isDefault"]) for n, d in ds.items()} == {
        "Prometheus": ("prometheus", "https://prom.internal.example:9090", False),
        "Traces": (store, traces, False),
    }
    assert main(["generate", "--config", str(EXAMPLE), "--out", str(tmp_path), "--prometheus-url", "prometheus:9090"]) == 2


def test_cli_generate(tmp_path: Path) -> None:
    from exporter.cli import main

    assert main(["generate", "--config", str(EXAMPLE), "--out", str(tmp_path)]) == 0
    for rel, text in outputs(load_config(EXAMPLE)).items():
        assert (tmp_path / rel).read_text() == text
    assert main(["generate", "--config", str(tmp_path / "missing.yml"), "--out", str(tmp_path)]) == 2


# --- links in alert annotations ------------------------------------------------------------------


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub makes from a Markdown file's headings: lower case, punctuation other than
    '-' and '_' dropped, spaces to '-', a repeated anchor suffixed -1, -2, ... (code blocks skipped)."""
    import re

    anchors: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        m = None if fenced else re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m is None:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def test_github_anchors_follow_githubs_rules() -> None:
    assert github_anchors("# A b\n## ConnhealthX / ConnhealthY\n```\n# not a heading\n```\n## A b\n") == {
        "a-b", "connhealthx--connhealthy", "a-b-1"}


def test_every_runbook_url_anchor_exists_in_the_runbooks() -> None:
    anchors = github_anchors((REPO / "alerts" / "RUNBOOKS.md").read_text())
    spec = load_config(EXAMPLE).slos
    alerts = [r for f in rule_files(spec).values() for g in f["groups"] for r in g["rules"] if "alert" in r]
    assert {r["alert"] for r in alerts} >= {"ConnhealthErrorBudgetBurn", "ConnhealthCertificateExpired",
                                             "ConnhealthExporterAbsent", "ConnhealthTargetsAbsent"}
    for rule in alerts:
        url = rule["annotations"]["runbook_url"]
        base, _, anchor = url.partition("#")
        assert base == spec.runbook_url, url
        assert anchor in anchors, f"{rule['alert']}: {url} has no heading in alerts/RUNBOOKS.md"


def test_without_runbook_url_alerts_carry_no_runbook_link_and_check_config_says_so(tmp_path: Path) -> None:
    from exporter.cli import main

    cfg = tmp_path / "c.yml"
    cfg.write_text("slos:\n  objectives:\n    - {service: api, availability: {objective: 99.9}}\n")
    spec = load_config(cfg).slos
    alerts = [r for f in rule_files(spec).values() for g in f["groups"] for r in g["rules"] if "alert" in r]
    assert alerts and all("runbook_url" not in r["annotations"] for r in alerts)
    # No grafana_url: dashboard links are relative.
    assert all(r["annotations"]["dashboard"].startswith("/d/") for r in alerts)
    assert spec.warnings() == [
        "slos.grafana_url is not set: the dashboard links in alert annotations are relative (/d/...) and work "
        "only where Grafana's own address is prefixed",
        "slos.runbook_url is not set: alerts carry no runbook_url annotation (point it at where "
        "alerts/RUNBOOKS.md is served)",
    ]
    assert load_config(EXAMPLE).slos.warnings() == []
    assert main(["check-config", str(cfg)]) == 0


def test_check_config_prints_the_link_warnings(tmp_path: Path, capsys) -> None:
    from exporter.cli import main

    cfg = tmp_path / "c.yml"
    cfg.write_text("slos:\n  grafana_url: https://grafana.example.com/\n"
                   "  objectives:\n    - {service: api, availability: {objective: 99.9}}\n")
    assert main(["check-config", str(cfg)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1:] == [f"{cfg}: warning: slos.runbook_url is not set: alerts carry no runbook_url annotation "
                       "(point it at where alerts/RUNBOOKS.md is served)"]
    spec = load_config(cfg).slos
    dashboards = {r["annotations"]["dashboard"] for f in rule_files(spec).values() for g in f["groups"]
                  for r in g["rules"] if "alert" in r}
    assert all(d.startswith("https://grafana.example.com/d/") for d in dashboards), dashboards


# --- the burn policy against the rules generated before issue 16 ----------------------------------


LEGACY = REPO / "tests" / "fixtures" / "legacy-rules"


def test_policy_tests_fail_on_the_legacy_rules(tmp_path: Path) -> None:
    """Every test in tests/rules/policy_test.yml fails against the rules generated before issue 16.

    tests/fixtures/legacy-rules/ holds what the generator on main before the merge of issue 16 (commit
    c4782ec: time-weighted availability, sli_floor, the period-derived factors) made from this example
    config (without the keys it did not know: windows, stale_intervals, exporter_job; stale_after 10m):
    the SLI is the same, so each test fails on the burn and staleness policy alone.
    """
    policy = REPO / "tests" / "rules" / "policy_test.yml"
    doc = yaml.safe_load(policy.read_text())
    names = [t["name"] for t in doc["tests"]]
    doc["rule_files"] = [str(LEGACY / Path(f).name) for f in doc["rule_files"]]
    legacy_test = tmp_path / "policy_legacy_test.yml"
    legacy_test.write_text(yaml.safe_dump(doc, sort_keys=False))
    r = subprocess.run([promtool(), "test", "rules", str(legacy_test)], capture_output=True, text=True, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    failed = set(re.findall(r"^\s+name: (.*),$", out, re.M))
    assert failed == set(names), f"passing on the legacy rules: {set(names) - failed}\n{out[-3000:]}"
