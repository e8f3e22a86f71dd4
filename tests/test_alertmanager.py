"""Alertmanager: the example config is valid, and a generated alert reaches a real Alertmanager.

End to end: exporter probing a refused port -> Prometheus evaluating SLO rules
generated with test-sized burn windows (30s/10s instead of 1h/5m) -> real
Alertmanager with the example routing -> the page receiver's webhook (an
aiohttp server in this test).
"""
from __future__ import annotations

import asyncio
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from alerts.rules import BurnPolicy, slo_groups
from exporter.config import parse_config
from exporter.generate import dump_yaml

try:
    from tests import procs
except ImportError:  # pragma: no cover
    import procs  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "alerts" / "alertmanager.example.yml"
# Test-sized windows; the factor is given, not derived (30s of a 30d period would need 28800x).
TEST_POLICY = (BurnPolicy("page", "30s", "10s", 0.02, "0s", factor=1.0),
               BurnPolicy("ticket", "1m", "20s", 0.10, "0s", factor=1.0))


def amtool() -> str:
    return procs.require_binary("amtool", "prometheus-alertmanager")


def test_amtool_check_config() -> None:
    r = subprocess.run([amtool(), "check-config", str(EXAMPLE)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_example_routes_page_and_ticket_and_inhibits() -> None:
    def route(*labels: str) -> str:
        r = subprocess.run([amtool(), "config", "routes", "test", "--config.file", str(EXAMPLE), *labels],
                           capture_output=True, text=True, timeout=30)
        return r.stdout.strip()

    assert route("alertname=ConnhealthErrorBudgetBurn", "severity=page") == "page"
    assert route("alertname=ConnhealthErrorBudgetBurn", "severity=ticket") == "ticket"
    assert route("alertname=ConnhealthCertificateExpired", "severity=critical") == "page"
    assert route("alertname=ConnhealthCertificateExpiringSoon", "severity=warning") == "ticket"
    inhibit = yaml.safe_load(EXAMPLE.read_text())["inhibit_rules"][0]
    assert inhibit["equal"] == ["service", "slo"]


@pytest.mark.timeout(90)
async def test_generated_alert_reaches_alertmanager_webhook(tmp_path: Path) -> None:
    amtool()
    binary = procs.require_binary("prometheus-alertmanager")
    received: list[tuple[str, dict]] = []
    got = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        received.append((request.path, await request.json()))
        got.set()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/{receiver}", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    hook_port = runner.addresses[0][1]

    am_cfg = yaml.safe_load(EXAMPLE.read_text())
    for r in am_cfg["receivers"]:
        r["webhook_configs"][0]["url"] = f"http://127.0.0.1:{hook_port}/{r['name']}"
    am_cfg["route"]["group_wait"] = "1s"
    for sub in am_cfg["route"]["routes"]:
        sub["group_wait"] = "1s"
    (tmp_path / "am.yml").write_text(yaml.safe_dump(am_cfg))

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    config = {
        "modules": {"tcp": {"prober": "tcp", "timeout": "2s", "tcp": {"preferred_ip_protocol": "ip4"}}},
        "targets": [{"target": f"127.0.0.1:{sock.getsockname()[1]}", "module": "tcp", "interval": "1s",
                     "labels": {"service": "db"}}],
        "slos": {"objectives": [{"service": "db", "min_probes": 1, "availability": {"objective": 99}}]},
    }
    cfg_path = tmp_path / "connhealth.yml"
    cfg_path.write_text(yaml.safe_dump(config))
    rules = tmp_path / "slo.rules.yml"
    rules.write_text(dump_yaml({"groups": slo_groups(parse_config(cfg_path.read_text()).slos, TEST_POLICY)}))
    am = exporter = prom = None
    try:
        am = await procs.start_process(
            "alertmanager",
            lambda port: [binary, f"--config.file={tmp_path / 'am.yml'}", f"--web.listen-address=127.0.0.1:{port}",
                          f"--storage.path={tempfile.mkdtemp(dir=tmp_path)}", "--cluster.listen-address=",
                          "--log.level=warn"],
            "/-/ready", tmp_path, timeout=30.0)
        exporter = await procs.start_connhealth(cfg_path, tmp_path)
        prom_cfg = tmp_path / "prometheus.yml"
        prom_cfg.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [am.address]}]}]},
            "scrape_configs": [{"job_name": "connhealth", "static_configs": [{"targets": [exporter.address]}]}],
        }))
        prom = await procs.start_prometheus(prom_cfg, tmp_path)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if any(path == "/page" for path, _ in received):
                break
            got.clear()
            try:
                await asyncio.wait_for(got.wait(), timeout=max(0.1, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                break
        pages = [body for path, body in received if path == "/page"]
        assert pages, f"no page reached the webhook; received {received}\nprometheus log:\n{prom.log_tail()}"
        alert = pages[0]["alerts"][0]
        assert pages[0]["receiver"] == "page"
        assert alert["labels"]["alertname"] == "ConnhealthErrorBudgetBurn"
        assert alert["labels"]["severity"] == "page" and alert["labels"]["service"] == "db"
        assert alert["labels"]["slo"] == "availability" and alert["labels"]["long_window"] == "30s"
        assert {"summary", "description", "runbook_url", "dashboard"} <= set(alert["annotations"])
        # The ticket for the same SLO fires too, but is inhibited by the page: it never reaches /ticket.
        await asyncio.sleep(3)
        tickets = [a for path, body in received if path == "/ticket" for a in body["alerts"]
                   if a["labels"].get("alertname") == "ConnhealthErrorBudgetBurn"]
        assert not tickets, tickets
    finally:
        for p in (prom, exporter, am):
            if p is not None:
                p.stop()
        await runner.cleanup()
        sock.close()
