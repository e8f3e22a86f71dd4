"""Generated rule files: fresh, valid for promtool, and the committed unit tests pass."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

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
        "`connhealth generate --config examples/connhealth.yml --out .`")


def test_promtool_check_rules() -> None:
    assert len(RULES) == 3
    for path in RULES:
        r = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "SUCCESS" in r.stdout


def test_promtool_unit_tests() -> None:
    tests = sorted((REPO / "tests" / "rules").glob("*.yml"))
    assert tests
    r = subprocess.run([promtool(), "test", "rules", *map(str, tests)], capture_output=True, text=True, timeout=120,
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
    for group in groups:
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


def test_cli_generate(tmp_path: Path) -> None:
    from exporter.cli import main

    assert main(["generate", "--config", str(EXAMPLE), "--out", str(tmp_path)]) == 0
    for rel, text in outputs(load_config(EXAMPLE)).items():
        assert (tmp_path / rel).read_text() == text
    assert main(["generate", "--config", str(tmp_path / "missing.yml"), "--out", str(tmp_path)]) == 2


LEGACY = REPO / "tests" / "fixtures" / "legacy-rules"


def test_policy_tests_fail_on_the_legacy_rules(tmp_path: Path) -> None:
    """Every test in tests/rules/policy_test.yml fails against the rules generated before issue 16.

    tests/fixtures/legacy-rules/ holds what the previous generator (commit b35812d) made from this
    example config (without the keys it did not know: windows, stale_intervals, exporter_job).
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
