"""Samples per rule evaluation at 1000 targets, measured by a real Prometheus (query stats).

The SLO rules read raw counters over 5 minutes only; every longer window, up to
the 30-day period, tiles the recorded 5m increases (one sample per 5m step). A
real Prometheus loads backfilled data — 1000 targets scraped every 15s for 20
minutes, and the recorded 5m series evaluated every minute for a day — and
reports ``totalQueryableSamples`` for each generated ``:increase`` rule of one
SLO (availability: probes from the attempts counter, events and errors from the
time-weighted observed and up seconds). The same measurement of the previous generator's rule (raw ``increase``
over the window) shows what a 30d window of raw counters costs.
"""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import aiohttp
import pytest
import yaml

from alerts.rules import burn_windows, seconds, slo_groups
from exporter.config import parse_config

try:
    from tests import procs
except ImportError:  # pragma: no cover
    import procs  # type: ignore[no-redef]

pytestmark = pytest.mark.timeout(240)

TARGETS = 1000
SCRAPE = 15  # seconds
RAW_SPAN = 20 * 60  # raw data: the last 20 minutes
RECORDED_SPAN = 86400  # recorded 5m increases: the last day, every minute
MAX_SAMPLES = 50_000_000  # Prometheus' default --query.max-samples
SEL = 'service="api",slo="availability"'


def openmetrics(end: int) -> str:
    lines: list[str] = []
    for name in ("connhealth_probe_attempts", "connhealth_probe_observed_seconds", "connhealth_probe_up_seconds"):
        lines.append(f"# TYPE {name} counter")
        for i in range(TARGETS):
            labels = f'service="api",target="https://t{i}.example/",module="web"'
            lines += [f"{name}_total{{{labels}}} {(t - end + RAW_SPAN) // SCRAPE} {t}"
                      for t in range(end - RAW_SPAN, end + 1, SCRAPE)]
    for q in ("probes", "events", "errors"):
        name = f"connhealth_slo:{q}:increase"
        lines.append(f"# TYPE {name} gauge")
        lines += [f'{name}{{{SEL},window="5m"}} 20 {t}' for t in range(end - RECORDED_SPAN, end + 1, 60)]
    return "\n".join(lines) + "\n# EOF\n"


async def stats(session: aiohttp.ClientSession, base: str, expr: str, at: int) -> int:
    async with session.get(base + "/api/v1/query", params={"query": expr, "time": str(at), "stats": "all"}) as resp:
        body = await resp.json()
    assert resp.status == 200 and body["status"] == "success", (expr, body)
    return int(body["data"]["stats"]["samples"]["totalQueryableSamples"])


async def test_samples_per_evaluation_at_1000_targets(tmp_path: Path) -> None:
    promtool = procs.require_binary("promtool", "prometheus")
    end = (int(time.time()) // 3600) * 3600 - 3 * 3600  # whole hours in the past: complete backfilled blocks
    (tmp_path / "data.om").write_text(openmetrics(end))
    tsdb = tmp_path / "tsdb"
    r = subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", "-q", str(tmp_path / "data.om"),
                        str(tsdb)], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    spec = parse_config("slos:\n  objectives:\n    - {service: api, period: 30d, availability: {objective: 99.9}}\n").slos
    group = next(g for g in slo_groups(spec) if g["name"] == "connhealth-slo-api-availability")
    increases = [(rule["labels"]["window"], rule["record"], rule["expr"]) for rule in group["rules"]
                 if rule.get("record", "").endswith(":increase")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({"global": {"scrape_interval": "15s"}}))
    binary = procs.require_binary(procs.PROMETHEUS_BIN)
    prom = await procs.start_process(
        "prometheus",
        lambda port: [binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tsdb}",
                      "--storage.tsdb.retention.time=90d", f"--web.listen-address=127.0.0.1:{port}",
                      "--log.level=warn"],
        "/-/ready", tmp_path, timeout=60.0)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            measured = {(w, rec): await stats(session, prom.base_url, expr, end) for w, rec, expr in increases}
            legacy_15m = await stats(session, prom.base_url,
                                     'sum(increase(connhealth_probe_observed_seconds_total{service="api"}[15m]))', end)
    finally:
        await prom.astop()

    per_window_raw = RAW_SPAN // 4 // SCRAPE + 1  # samples of one series in a 5m range (left-closed): 21
    # 5m: raw counters of every target (attempts; observed seconds; observed and up seconds for errors).
    assert measured[("5m", "connhealth_slo:probes:increase")] == TARGETS * per_window_raw
    assert measured[("5m", "connhealth_slo:events:increase")] == TARGETS * per_window_raw
    assert measured[("5m", "connhealth_slo:errors:increase")] == 2 * TARGETS * per_window_raw
    # Longer windows: one recorded sample per 5m step, whatever the number of targets.
    windows = [w for w, rec in measured if w != "5m" and rec.endswith("probes:increase")]
    for w in windows:
        # beyond the backfilled day, every recorded step counts (both ends of the day included)
        want = seconds(w) // 300 if seconds(w) <= RECORDED_SPAN else RECORDED_SPAN // 300 + 1
        for q in ("probes", "events", "errors"):
            assert measured[(w, f"connhealth_slo:{q}:increase")] == want, (w, q, measured)
    # Per evaluation of the whole group with a full 30d of recordings: the measured raw part plus W/5m per window.
    per_eval = sum(v for (w, _), v in measured.items() if w == "5m") + sum(
        3 * int(seconds(w) // 300) for w in windows)
    # The previous generator read raw counters over every window, the 30d one included: measured per 15m, scaled.
    legacy_30d = legacy_15m * (30 * 86400 // (15 * 60))
    report = (f"\nsamples per evaluation of api/availability at {TARGETS} targets (15s scrape): "
              f"{per_eval:,} (5m raw: {measured[('5m', 'connhealth_slo:errors:increase')]:,}; 30d window: "
              f"{int(seconds('30d') // 300):,}); previous rules, 30d window alone: {legacy_30d:,}")
    print(report)
    assert per_eval < 200_000, report
    assert legacy_30d > MAX_SAMPLES, report  # the old 30d rule alone failed with "query processing would load too many samples"
    assert {b.long for b in burn_windows(spec.objectives[0])} <= {w for w, _ in measured}
