"""Two probers in two "regions" (``serve --prober eu`` and ``--prober us``) into one real Prometheus with the
generated rules: the SLO over all regions, its per-region breakdown, and ConnhealthTargetFailingFromOneRegion.

The regions differ the way real ones do: by their network path. Each prober resolves names with its own DNS
server (a real one on loopback, tests/peers.py). Both resolve ok.test to the HTTP peer; path.test resolves
to the peer from eu but to 127.0.0.3 from us, where nothing listens (connection refused). So https://path.test
is up from eu and down from us, and ok.test is up from both.
"""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest
import yaml

from alerts.rules import ONE_REGION_ALERT, rule_files
from exporter.config import load_config
from exporter.generate import dump_yaml

try:
    from tests import procs
    from tests.peers import DNSServer, HTTPServer
    from tests.test_prometheus_integration import poll, query
except ImportError:  # pragma: no cover
    import procs  # type: ignore[no-redef]
    from peers import DNSServer, HTTPServer  # type: ignore[no-redef]
    from test_prometheus_integration import poll, query  # type: ignore[no-redef]

pytestmark = pytest.mark.timeout(180)

RUN = 25.0  # seconds of probing before the figures are read


def _config(path: Path, dns_port: int, http_port: int) -> Path:
    path.write_text(yaml.safe_dump({
        "modules": {"web": {"prober": "http", "timeout": "2s", "resolver": {"nameservers": [f"127.0.0.1:{dns_port}"]},
                            "http": {"preferred_ip_protocol": "ip4"}}},
        "targets": [{"target": f"http://{host}:{http_port}/ok", "module": "web", "interval": "500ms",
                     "labels": {"service": "api"}} for host in ("ok.test", "path.test")],
        "slos": {"objectives": [{"service": "api", "period": "7d", "availability": {"objective": 99}}]},
    }))
    return path


async def test_two_regions_into_one_prometheus(tmp_path: Path) -> None:
    peer = await HTTPServer().start()
    eu_dns = await DNSServer({"ok.test": "A:127.0.0.1", "path.test": "A:127.0.0.1"}).start()
    us_dns = await DNSServer({"ok.test": "A:127.0.0.1", "path.test": "A:127.0.0.3"}).start()
    eu_cfg = _config(tmp_path / "eu.yml", eu_dns.port, peer.port)
    us_cfg = _config(tmp_path / "us.yml", us_dns.port, peer.port)
    # The generated rules, with every alert's `for` cut to 0s: the run lasts seconds, not the 5m of the real one.
    rules = []
    for name, content in rule_files(load_config(eu_cfg).slos).items():
        for group in content["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    rule["for"] = "0s"
        path = tmp_path / name
        path.write_text(dump_yaml(content))
        rules.append(str(path))
    eu = procs.ExporterProcess(eu_cfg, tmp_path, "--prober", "eu", name="eu")
    us = procs.ExporterProcess(us_cfg, tmp_path, "--prober", "us", name="us")
    prom = None
    try:
        await eu.start()
        await us.start()
        prom_config = tmp_path / "prometheus.yml"
        prom_config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": rules,
            "scrape_configs": [{"job_name": "connhealth", "static_configs": [{"targets": [eu.address, us.address]}]}],
        }))
        prom = await procs.start_prometheus(prom_config, tmp_path)
        started = time.monotonic()
        ok, path = f"http://ok.test:{peer.port}/ok", f"http://path.test:{peer.port}/ok"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            # The alert: path.test from us only (not from eu, and ok.test from nowhere).
            firing = await poll(session, prom.base_url, f'ALERTS{{alertname="{ONE_REGION_ALERT}",alertstate="firing"}}',
                                lambda r: len(r) >= 1, started + 60)
            assert [(r["metric"]["target"], r["metric"]["prober"], r["metric"]["service"]) for r in firing] == [
                (path, "us", "api")]
            await poll(session, prom.base_url, "connhealth_slo:sli:by_prober", lambda r: len(r) == 2, started + 30)
            while time.monotonic() < started + RUN:
                await asyncio.sleep(0.5)
            # Per region: eu saw both targets up all the time; us saw one of two up (time-weighted: re-checks of
            # the failing target do not weigh it more, so about half of the observed time).
            by_prober = {r["metric"]["prober"]: float(r["value"][1])
                         for r in await query(session, prom.base_url, 'connhealth_slo:sli:by_prober{service="api"}')}
            # Over all regions: up 3 of the 4 (target, region) pairs.
            overall = float((await query(session, prom.base_url,
                                         'connhealth_slo:sli{service="api",slo="availability",window="5m"}'))[0]["value"][1])
            per_target = {(r["metric"]["target"], r["metric"]["prober"]): float(r["value"][1])
                          for r in await query(session, prom.base_url, "connhealth_prober:availability:ratio_5m")}
            firing = await query(session, prom.base_url, f'ALERTS{{alertname="{ONE_REGION_ALERT}",alertstate="firing"}}')
        figures = {"by_prober": by_prober, "overall": overall, "per_target": {str(k): v for k, v in per_target.items()}}
        assert by_prober["eu"] == 1.0, figures
        assert abs(by_prober["us"] - 0.5) <= 0.1, figures
        assert abs(overall - 0.75) <= 0.05, figures
        assert per_target[(ok, "eu")] == per_target[(ok, "us")] == per_target[(path, "eu")] == 1.0, figures
        assert per_target[(path, "us")] == 0.0, figures
        assert [(r["metric"]["target"], r["metric"]["prober"]) for r in firing] == [(path, "us")]
    finally:
        if prom is not None:
            await prom.astop()
        await eu.astop()
        await us.astop()
        await eu_dns.stop()
        await us_dns.stop()
        await peer.stop()

