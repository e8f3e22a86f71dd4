"""blackbox_exporter's self-metric names next to ours, read by a real Prometheus evaluating the alert
blackbox users already run: awesome-prometheus-alerts' BlackboxConfigurationReloadFailure.

The rule is that collection's, unchanged (expression, ``for``), except the summary/description
templates. A good config: the alert stays inactive; a reload of a broken file: it fires, and
the timestamp of the last successful reload stays where it was. An unknown ``/probe?module=``
counts in ``blackbox_module_unknown_total`` (400, as blackbox answers it).
"""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

try:  # works whether or not tests/ becomes a package later
    from tests import procs
    from tests.test_prometheus_integration import poll, query
except ImportError:  # pragma: no cover
    import procs  # type: ignore[no-redef]
    from test_prometheus_integration import poll, query  # type: ignore[no-redef]

pytestmark = pytest.mark.timeout(90)

# https://samber.github.io/awesome-prometheus-alerts/rules#blackbox (1.3.x), the expression verbatim.
AWESOME_RULES = """
groups:
  - name: BlackboxExporter
    rules:
      - alert: BlackboxConfigurationReloadFailure
        expr: blackbox_exporter_config_last_reload_successful != 1
        for: 0m
        labels:
          severity: warning
"""
FIRING = 'ALERTS{alertname="BlackboxConfigurationReloadFailure",alertstate="firing"}'


async def evaluated_after_scrape(session: aiohttp.ClientSession, base: str, deadline: float) -> None:
    """Wait until the rule group has been evaluated with data in place (its health "ok", evaluated twice)."""
    seen: set[str] = set()
    while True:
        async with session.get(base + "/api/v1/rules") as resp:
            rule = (await resp.json())["data"]["groups"][0]["rules"][0]
        if rule["health"] == "ok" and not rule["lastEvaluation"].startswith("0001"):
            seen.add(rule["lastEvaluation"])
            if len(seen) >= 2:
                return
        assert time.monotonic() < deadline, f"the rule was not evaluated in time: {rule}"
        await asyncio.sleep(0.3)


async def test_blackbox_reload_failure_alert_fires_on_a_failed_reload_only(tmp_path: Path) -> None:
    config = tmp_path / "connhealth.yml"
    config.write_text("modules:\n  tcp_plain:\n    prober: tcp\n")
    rules = tmp_path / "blackbox.rules.yml"
    rules.write_text(AWESOME_RULES)
    ch = await procs.start_connhealth(config, tmp_path)
    prom = None
    try:
        text = await ch.metrics()
        assert procs.value(text, "blackbox_exporter_config_last_reload_successful") == 1.0
        loaded_at = procs.value(text, "blackbox_exporter_config_last_reload_success_timestamp_seconds")
        assert loaded_at == procs.value(text, "connhealth_config_last_reload_success_timestamp_seconds")
        assert loaded_at is not None and abs(loaded_at - time.time()) < 60
        assert procs.value(text, "blackbox_module_unknown_total") == 0.0

        status, body = await ch.get("/probe", {"target": "127.0.0.1:1", "module": "nope"})
        assert status == 400 and "Unknown module" in body
        assert procs.value(await ch.metrics(), "blackbox_module_unknown_total") == 1.0

        prom_config = tmp_path / "prometheus.yml"
        prom_config.write_text(f"""
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - {rules}
scrape_configs:
  - job_name: blackbox
    static_configs:
      - targets: ["{ch.address}"]
""")
        prom = await procs.start_prometheus(prom_config, tmp_path)
        base = prom.base_url
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            deadline = time.monotonic() + 30
            # Scraped and evaluated with the good config: the expression is empty, the alert inactive.
            await poll(session, base, "blackbox_exporter_config_last_reload_successful", lambda r: len(r) == 1, deadline)
            await evaluated_after_scrape(session, base, deadline)
            assert await query(session, base, "blackbox_exporter_config_last_reload_successful != 1") == []
            assert await query(session, base, FIRING) == []

            config.write_text("modules:\n  tcp_plain:\n    prober: tcp\n    tcp:\n      nonsense: 1\n")
            status, body = await ch.post("/-/reload")
            assert status == 500 and "nonsense" in body, body
            text = await ch.metrics()
            assert procs.value(text, "blackbox_exporter_config_last_reload_successful") == 0.0
            assert procs.value(text, "connhealth_config_last_reload_successful") == 0.0
            assert procs.value(text, "blackbox_exporter_config_last_reload_success_timestamp_seconds") == loaded_at

            fired = await poll(session, base, FIRING, lambda r: len(r) == 1, time.monotonic() + 30)
            assert fired[0]["metric"]["severity"] == "warning"

            # Fixed: the alert resolves.
            config.write_text("modules:\n  tcp_plain:\n    prober: tcp\n")
            status, body = await ch.post("/-/reload")
            assert status == 200, body
            await poll(session, base, FIRING, lambda r: r == [], time.monotonic() + 30)
    finally:
        if prom is not None:
            await prom.astop()
        await ch.astop()
