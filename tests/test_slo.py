"""The `slos:` section: parsing, defaults, strict errors."""
from __future__ import annotations

import pytest

from exporter import metrics as m
from exporter.config import ConfigError, load_config, parse_config
from exporter.slo import SLIFloor, le_string

BASE = """
slos:
  objectives:
    - service: api
      availability: {objective: 99.9}
      latency: {objective: 95, threshold: 300ms}
"""


def test_example_config_parses() -> None:
    cfg = load_config("examples/connhealth.yml")
    spec = cfg.slos
    assert [o.service for o in spec.objectives] == ["api", "checkout", "login", "batch"]
    api = spec.objectives[0]
    assert api.period == "30d" and api.min_probes == 20
    assert api.availability.objective == pytest.approx(0.999)
    assert api.latency.threshold == 0.3 and api.latency.le == "0.3" and api.latency.phase == "connect"
    assert spec.objectives[2].period == "7d"
    # seeds 002/003: "alert when the SLI stays below 99.5 % for 2 h"; off for the others.
    assert api.availability.sli_floor == SLIFloor(objective=0.995, for_seconds=7200.0)
    assert api.availability.sli_floor.for_ == "2h"
    assert api.latency.sli_floor is None and spec.objectives[1].availability.sli_floor is None


@pytest.mark.parametrize(("seconds", "text"), [(7200, "2h"), (5400, "90m"), (86400, "1d"), (90061, "90061s")])
def test_sli_floor_duration_in_prometheus_notation(seconds: float, text: str) -> None:
    assert SLIFloor(0.99, seconds).for_ == text


def test_defaults() -> None:
    o = parse_config(BASE).slos.objectives[0]
    assert o.selector == (("service", "api"),) and o.period == "30d" and o.min_probes == 0
    assert o.matchers(phase="connect") == 'service="api",phase="connect"'
    assert parse_config("modules: {}").slos is None


def test_threshold_must_be_a_bucket_boundary() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(BASE.replace("300ms", "250ms"))
    msg = str(exc.value)
    assert "slos.objectives[0].latency.threshold" in msg and "0.25s is not a histogram bucket boundary" in msg
    assert "0.2, 0.3, 0.5" in msg  # names the buckets


def test_threshold_checked_against_configured_buckets() -> None:
    text = "scheduler: {buckets: [0.1, 0.25, 1]}\n" + BASE.replace("300ms", "250ms")
    assert parse_config(text).slos.objectives[0].latency.threshold == 0.25
    with pytest.raises(ConfigError, match="Buckets \\(seconds\\): 0.1, 0.25, 1"):
        parse_config("scheduler: {buckets: [0.1, 0.25, 1]}\n" + BASE)


@pytest.mark.parametrize("bad, where", [
    ("availability: {objective: 99.9, foo: 1}", "slos.objectives[0].availability.foo: unknown field"),
    ("availability: {objective: 100}", "strictly between 0 and 100"),
    ("availability: {}", "slos.objectives[0].availability.objective: required"),
    ("period: 14d\n      availability: {objective: 99}", "unsupported period '14d'"),
    ("min_probes: -1\n      availability: {objective: 99}", "min_probes: must not be negative"),
    ("latency: {objective: 95, threshold: 300ms, phase: tcp}", "unknown phase 'tcp'"),
    ("latency: {objective: 95}", "latency.threshold: required"),
    ("selector: {le: x}\n      availability: {objective: 99}", "selector.le: invalid or reserved"),
    ("period: 30d", "needs an availability and/or a latency objective"),
    ("availability: {objective: 99, sli_floor: {objective: 99.5, for: 2h}}",
     "availability.sli_floor.objective: 99.5 is above the SLO's own objective (99)"),
    ("availability: {objective: 99.9, sli_floor: {objective: 99.5}}", "availability.sli_floor.for: required"),
    ("availability: {objective: 99.9, sli_floor: {objective: 99.5, for: 10s}}", "must be whole seconds between 1m and 7d"),
    ("availability: {objective: 99.9, sli_floor: {objective: 99.5, for: 2h, window: 1h}}", "window"),
    ("latency: {objective: 95, threshold: 300ms, sli_floor: {for: 2h}}", "latency.sli_floor.objective: required"),
    ("availability: {objective: 99}\n      windows: [{long: 1h, short: 5m}]", "windows: needs exactly 4 {long, short} pairs"),
    ("availability: {objective: 99}\n      windows: [{long: 1d, short: 2d}, {long: 2d, short: 12h}, {long: 3d, short: 1d}, {long: 7d, short: 2d}]", "slos.objectives[0].windows[0]: short (172800s) must be shorter than long (86400s)"),
    ("availability: {objective: 99}\n      windows: [{long: 61m, short: 6h}, {long: 2d, short: 12h}, {long: 3d, short: 1d}, {long: 7d, short: 2d}]", "windows[0].long: must be a multiple of 5m"),
    ("period: 7d\n      availability: {objective: 99}\n      windows: [{long: 1d, short: 6h}, {long: 2d, short: 12h}, {long: 3d, short: 1d}, {long: 8d, short: 2d}]", "windows[3].long: must not exceed the SLO period"),
    ("availability: {objective: 99}\n      windows: [{long: 1d}, 1, 2, 3]", "windows[0].short: required"),
])
def test_invalid(bad: str, where: str) -> None:
    text = f"slos:\n  objectives:\n    - service: api\n      {bad}\n"
    with pytest.raises(ConfigError, match=None) as exc:
        parse_config(text)
    assert where in str(exc.value)


def test_spec_wide_alert_settings() -> None:
    spec = parse_config("slos: {stale_intervals: 5, stale_after: 2m, exporter_job: probes}").slos
    assert (spec.stale_intervals, spec.stale_after, spec.exporter_job) == (5.0, 120.0, "probes")
    defaults = parse_config("slos: {}").slos
    assert (defaults.stale_intervals, defaults.stale_after, defaults.exporter_job) == (3.0, 60.0, "connhealth")
    with pytest.raises(ConfigError, match="slos.stale_intervals: must be a number from 1 to 1000, got 0"):
        parse_config("slos: {stale_intervals: 0}")


def test_unknown_top_level_key_in_slos() -> None:
    with pytest.raises(ConfigError, match="slos.bogus: unknown field"):
        parse_config("slos: {bogus: 1}")


def test_duplicate_service() -> None:
    text = BASE + "    - service: api\n      availability: {objective: 99}\n"
    with pytest.raises(ConfigError, match="duplicate service 'api'"):
        parse_config(text)


def test_le_string_matches_exporter_rendering() -> None:
    # The store renders bucket bounds this way; the latency rule selects le="<this>".
    assert [le_string(b) for b in m.DEFAULT_BUCKETS][:7] == ["0.005", "0.01", "0.025", "0.05", "0.1", "0.2", "0.3"]
    assert le_string(1.0) == "1.0" and le_string(10) == "10.0"
