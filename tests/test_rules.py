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


def _thresholds(period: str) -> list[float]:
    spec = parse_config(f"slos:\n  objectives:\n    - {{service: s, period: {period}, availability: {{objective: 99}}}}\n").slos
    return [p.factor_for(spec.objectives[0].period_seconds) for p in DEFAULT_POLICY]


def test_burn_factors_derive_from_the_period() -> None:
    assert _thresholds("30d") == [14.4, 6, 3, 1]  # the SRE Workbook's table
    assert _thresholds("28d") == [13.44, 5.6, 2.8, 0.933333]
    assert _thresholds("7d") == [3.36, 1.4, 0.7, 0.233333]


def test_every_window_is_recorded_with_consistent_labels() -> None:
    spec = load_config(EXAMPLE).slos
    groups = rule_files(spec)["connhealth-slo.rules.yml"]["groups"]
    for group in groups:
        records = [r for r in group["rules"] if "record" in r]
        windows = {r["labels"]["window"] for r in records if r["record"] == "connhealth_slo:error_ratio"}
        period = next(o.period for o in spec.objectives if group["name"].startswith(f"connhealth-slo-{o.service}-"))
        assert windows == {"5m", "30m", "1h", "2h", "6h", "1d", "3d", period}
        for r in records:
            assert {"service", "slo"} <= set(r["labels"]), r
        alerts = [r for r in group["rules"] if "alert" in r]
        assert {(a["labels"]["severity"], a["labels"]["long_window"], a["labels"]["short_window"]) for a in alerts} == {
            ("page", "1h", "5m"), ("page", "6h", "30m"), ("ticket", "1d", "2h"), ("ticket", "3d", "6h")}
        for a in alerts:
            assert set(a["annotations"]) == {"summary", "description", "runbook_url", "dashboard"}


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
