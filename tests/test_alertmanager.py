"""Alertmanager: the example config is valid, and a generated alert reaches a real Alertmanager.

End to end: exporter probing a refused port -> Prometheus evaluating SLO rules
generated with test-sized burn windows (30s/10s instead of 1h/5m) -> real
Alertmanager with the example routing -> the page receiver's webhook (an
aiohttp server in this test).
"""
from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web

from alerts.rules import BurnWindow, rule_files, slo_groups
from exporter.config import parse_config
from exporter.generate import dump_yaml

try:
    from tests import procs
except ImportError:  # pragma: no cover
    import procs  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "alerts" / "alertmanager.example.yml"
# Test-sized windows built from 10s increases (instead of 5m), factor 1 (a refused port burns at 100x).
TEST_WINDOWS = (BurnWindow("page", "30s", "10s", 1.0, "0s"), BurnWindow("ticket", "1m", "20s", 1.0, "0s"))


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


class Webhook:
    """The receivers' webhook: an aiohttp server recording (path, body) of every notification."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict]] = []
        self._got = asyncio.Event()
        app = web.Application()
        app.router.add_post("/{receiver}", self._hook)
        self.runner = web.AppRunner(app, access_log=None)
        self.port = 0

    async def _hook(self, request: web.Request) -> web.Response:
        self.received.append((request.path, await request.json()))
        self._got.set()
        return web.Response(text="ok")

    async def __aenter__(self) -> "Webhook":
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = self.runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()

    def alerts(self, receiver: str, alertname: str) -> list[dict]:
        return [a for path, body in self.received if path == f"/{receiver}" for a in body["alerts"]
                if a["labels"].get("alertname") == alertname]

    async def wait_for(self, receiver: str, alertname: str, timeout: float) -> list[dict]:
        deadline = time.monotonic() + timeout
        while not self.alerts(receiver, alertname) and time.monotonic() < deadline:
            self._got.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._got.wait(), timeout=max(0.1, deadline - time.monotonic()))
        return self.alerts(receiver, alertname)


async def start_alertmanager(tmp_path: Path, hook: Webhook) -> procs.ManagedProcess:
    """The example config, its receivers pointed at ``hook``, group_wait 1s."""
    amtool()
    binary = procs.require_binary("prometheus-alertmanager")
    am_cfg = yaml.safe_load(EXAMPLE.read_text())
    for r in am_cfg["receivers"]:
        r["webhook_configs"][0]["url"] = f"http://127.0.0.1:{hook.port}/{r['name']}"
    am_cfg["route"]["group_wait"] = "1s"
    for sub in am_cfg["route"]["routes"]:
        sub["group_wait"] = "1s"
    (tmp_path / "am.yml").write_text(yaml.safe_dump(am_cfg))
    return await procs.start_process(
        "alertmanager",
        lambda port: [binary, f"--config.file={tmp_path / 'am.yml'}", f"--web.listen-address=127.0.0.1:{port}",
                      f"--storage.path={tempfile.mkdtemp(dir=tmp_path)}", "--cluster.listen-address=",
                      "--log.level=warn"],
        "/-/ready", tmp_path, timeout=30.0)


def write_prometheus_config(tmp_path: Path, rules: list[Path], am: procs.ManagedProcess, exporter_address: str) -> Path:
    prom_cfg = tmp_path / "prometheus.yml"
    prom_cfg.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(r) for r in rules],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [am.address]}]}]},
        "scrape_configs": [{"job_name": "connhealth", "static_configs": [{"targets": [exporter_address]}]}],
    }))
    return prom_cfg


def refused_target_config(tmp_path: Path, sock: socket.socket) -> Path:
    config = {
        "modules": {"tcp": {"prober": "tcp", "timeout": "2s", "tcp": {"preferred_ip_protocol": "ip4"}}},
        "targets": [{"target": f"127.0.0.1:{sock.getsockname()[1]}", "module": "tcp", "interval": "1s",
                     "labels": {"service": "db"}}],
        "slos": {"objectives": [{"service": "db", "min_probes": 1, "availability": {"objective": 99}}]},
    }
    cfg_path = tmp_path / "connhealth.yml"
    cfg_path.write_text(yaml.safe_dump(config))
    return cfg_path


@pytest.mark.timeout(90)
async def test_generated_alert_reaches_alertmanager_webhook(tmp_path: Path) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    cfg_path = refused_target_config(tmp_path, sock)
    rules = tmp_path / "slo.rules.yml"
    rules.write_text(dump_yaml({"groups": slo_groups(parse_config(cfg_path.read_text()).slos, lambda o: TEST_WINDOWS, "10s")}))
    am = exporter = prom = None
    async with Webhook() as hook:
        try:
            am = await start_alertmanager(tmp_path, hook)
            exporter = await procs.start_connhealth(cfg_path, tmp_path)
            prom = await procs.start_prometheus(write_prometheus_config(tmp_path, [rules], am, exporter.address), tmp_path)
            pages = await hook.wait_for("page", "ConnhealthErrorBudgetBurn", 60)
            assert pages, f"no page reached the webhook; received {hook.received}\nprometheus log:\n{prom.log_tail()}"
            alert = pages[0]
            assert alert["labels"]["severity"] == "page" and alert["labels"]["service"] == "db"
            assert alert["labels"]["slo"] == "availability" and alert["labels"]["long_window"] == "30s"
            assert "window" not in alert["labels"]
            assert {"summary", "description", "runbook_url", "dashboard"} <= set(alert["annotations"])
            # The ticket for the same SLO fires too, but is inhibited by the page: it never reaches /ticket.
            await asyncio.sleep(3)
            assert not hook.alerts("ticket", "ConnhealthErrorBudgetBurn")
        finally:
            for p in (prom, exporter, am):
                if p is not None:
                    await p.astop()
            sock.close()


async def am_alerts(session: aiohttp.ClientSession, am: procs.ManagedProcess, alertname: str) -> list[dict]:
    async with session.get(am.base_url + "/api/v2/alerts", params={"filter": f'alertname="{alertname}"'}) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


@pytest.mark.timeout(180)
async def test_exporter_down_pages_and_inhibits_targets_absent(tmp_path: Path) -> None:
    """The exporter dies: ConnhealthExporterDown pages; ConnhealthTargetsAbsent fires in Prometheus too, but
    the real Alertmanager (example config) inhibits it, so it never reaches the ticket receiver."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    cfg_path = refused_target_config(tmp_path, sock)
    files = rule_files(parse_config(cfg_path.read_text()).slos)
    rules = []
    for name in ("connhealth-probes.rules.yml", "connhealth-exporter.rules.yml"):
        content = files[name]
        for group in content["groups"]:
            for rule in group["rules"]:
                # Test-sized (the generated 2m / 10m would outlast the test); TargetsAbsent waits 5s so that it
                # cannot fire in the moment before Prometheus' first scrape. (Recording rules have no `for`.)
                if "alert" in rule:
                    rule["for"] = "5s" if rule["alert"] == "ConnhealthTargetsAbsent" else "0s"
        (tmp_path / name).write_text(dump_yaml(content))
        rules.append(tmp_path / name)
    am = exporter = prom = None
    async with Webhook() as hook, aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        try:
            am = await start_alertmanager(tmp_path, hook)
            exporter = await procs.start_connhealth(cfg_path, tmp_path)
            prom = await procs.start_prometheus(write_prometheus_config(tmp_path, rules, am, exporter.address), tmp_path)
            # Healthy first: the exporter is scraped and its db series exist, so nothing fires.
            deadline = time.monotonic() + 30
            healthy = False
            while not healthy and time.monotonic() < deadline:
                async with session.get(prom.base_url + "/api/v1/query",
                                       params={"query": 'connhealth_probe_attempts_total{service="db"}'}) as resp:
                    healthy = bool((await resp.json())["data"]["result"])
                if not healthy:
                    await asyncio.sleep(0.5)
            assert healthy, f"the exporter's db series never reached Prometheus\nprometheus log:\n{prom.log_tail()}"
            assert not hook.alerts("page", "ConnhealthExporterDown")
            # A TargetsAbsent that fired before Prometheus' first scrape (a loaded machine can take longer than
            # the test-sized 5s `for`) is not what this test is about: only alerts that start once the exporter
            # is gone must be inhibited.
            stopped_at = datetime.now(timezone.utc)
            await exporter.astop()
            down = await hook.wait_for("page", "ConnhealthExporterDown", 45)
            assert down, f"no ExporterDown page; received {hook.received}\nprometheus log:\n{prom.log_tail()}"
            assert down[0]["labels"]["instance"] == exporter.address and down[0]["labels"]["job"] == "connhealth"
            # TargetsAbsent fires in Prometheus too (its db series went stale with the failed scrapes) ...
            deadline = time.monotonic() + 45
            while time.monotonic() < deadline:
                async with session.get(prom.base_url + "/api/v1/query", params={
                        "query": 'ALERTS{alertname="ConnhealthTargetsAbsent",alertstate="firing"}'}) as resp:
                    if (await resp.json())["data"]["result"]:
                        break
                await asyncio.sleep(0.5)
            # ... and is in Alertmanager, suppressed by the ExporterDown alert.
            deadline = time.monotonic() + 45
            absent: list[dict] = []
            while time.monotonic() < deadline:
                absent = await am_alerts(session, am, "ConnhealthTargetsAbsent")
                if absent:
                    break
                await asyncio.sleep(0.5)
            if not absent:
                async with session.get(prom.base_url + "/api/v1/query", params={"query": "ALERTS"}) as resp:
                    prom_alerts = (await resp.json())["data"]["result"]
                async with session.get(am.base_url + "/api/v2/alerts") as resp:
                    am_all = await resp.json()
                pytest.fail(f"ConnhealthTargetsAbsent never reached Alertmanager\nPrometheus ALERTS: {prom_alerts}\n"
                            f"Alertmanager: {am_all}\nwebhook: {hook.received}\nprometheus log:\n{prom.log_tail()}")
            assert absent[0]["labels"]["service"] == "db"
            assert absent[0]["status"]["state"] == "suppressed" and absent[0]["status"]["inhibitedBy"], absent
            await asyncio.sleep(3)  # several group_waits: an uninhibited ticket would have been sent by now
            late = [a for a in hook.alerts("ticket", "ConnhealthTargetsAbsent")
                    if datetime.fromisoformat(a["startsAt"]) >= stopped_at]
            assert not late, hook.received
        finally:
            for p in (prom, exporter, am):
                if p is not None:
                    await p.astop()
            sock.close()
