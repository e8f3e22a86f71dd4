"""A real Prometheus scraping connhealth in both modes, queried through its HTTP API.

* blackbox-style: metrics_path /probe, params module, the usual relabelling of
  __address__ into __param_target and the exporter's address into __address__;
* continuous mode: /metrics of a connhealth whose config has ``targets:``
  (one healthy HTTPS target, one refused TCP port, one HTTPS target whose
  certificate was expired from the start, with service/region labels);
* the generated probe rules (alerts/generated/connhealth-probes.rules.yml)
  loaded into Prometheus: ConnhealthCertificateExpired fires for the expired
  certificate although no handshake with it ever completed (blackbox #1119),
  and fires again on the data of a restarted exporter.

Everything runs on 127.0.0.1; every wait is a bounded poll.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import time
from pathlib import Path

import aiohttp
import pytest

from exporter.certs import CertFactory, server_context
try:  # works whether or not tests/ becomes a package later
    from tests import procs
    from tests.peers import HTTPServer
except ImportError:  # pragma: no cover
    import procs  # type: ignore[no-redef]
    from peers import HTTPServer  # type: ignore[no-redef]

pytestmark = pytest.mark.timeout(90)

PROBE_RULES = procs.REPO / "alerts" / "generated" / "connhealth-probes.rules.yml"
EXPIRED_ALERT = 'ALERTS{alertname="ConnhealthCertificateExpired",alertstate="firing"}'

QUANTILE_QUERY = (
    'histogram_quantile(0.95, sum by (le) '
    '(rate(connhealth_probe_phase_duration_seconds_bucket{phase="connect"}[1m])))'
)


async def query(session: aiohttp.ClientSession, base: str, promql: str) -> list[dict]:
    async with session.get(base + "/api/v1/query", params={"query": promql}) as resp:
        body = await resp.json()
    assert resp.status == 200 and body.get("status") == "success", body
    assert body["data"]["resultType"] == "vector", body
    return body["data"]["result"]


async def poll(session: aiohttp.ClientSession, base: str, promql: str, done, deadline: float) -> list[dict]:
    """Re-run ``promql`` until ``done(result)``; fail with the last result when ``deadline`` passes."""
    result: list[dict] = []
    while True:
        result = await query(session, base, promql)
        if done(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{promql}: condition not met in time; last result {json.dumps(result)}")
        await asyncio.sleep(0.5)


def by(result: list[dict], label: str) -> dict[str, float]:
    return {r["metric"].get(label, ""): float(r["value"][1]) for r in result}


async def test_prometheus_scrapes_both_modes(tmp_path: Path) -> None:
    started = time.monotonic()
    certs = CertFactory(tmp_path / "certs")
    ca = certs.ca()
    refused = procs.free_port()
    expired = certs.leaf(ca, name="expired.test", not_after=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=2))
    expired_at = expired.not_valid_after.timestamp()

    async with HTTPServer(server_context(certs.leaf(ca))) as https, HTTPServer(server_context(expired)) as stale:
        healthy_url = https.url("/ok")
        expired_url = stale.url("/ok")
        connhealth_config = tmp_path / "connhealth.yml"
        connhealth_config.write_text(f"""
modules:
  http_ca:
    prober: http
    timeout: 5s
    http:
      preferred_ip_protocol: ip4
      tls_config:
        ca_file: {ca.cert_file}
  tcp_plain:
    prober: tcp
    timeout: 5s
    tcp:
      preferred_ip_protocol: ip4
scheduler:
  default_interval: 1s
  min_interval: 1s
targets:
  - target: {healthy_url}
    module: http_ca
    interval: 500ms
    labels: {{service: api, region: eu-west}}
  - target: 127.0.0.1:{refused}
    module: tcp_plain
    interval: 500ms
    labels: {{service: db, region: us-east}}
  - target: {expired_url}
    module: http_ca
    interval: 500ms
    labels: {{service: shop, region: eu-west}}
""")
        ch = await procs.start_connhealth(connhealth_config, tmp_path)
        prom = None
        try:
            prom_config = tmp_path / "prometheus.yml"
            prom_config.write_text(f"""
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - {PROBE_RULES}
scrape_configs:
  - job_name: connhealth-probe
    metrics_path: /probe
    params: {{module: [http_ca]}}
    static_configs:
      - targets: ["{healthy_url}", "http://127.0.0.1:{refused}/", "{expired_url}"]
    relabel_configs:
      - source_labels: [__address__]
        target_label: __param_target
      - source_labels: [__param_target]
        target_label: instance
      - target_label: __address__
        replacement: {ch.address}
  - job_name: connhealth
    static_configs:
      - targets: ["{ch.address}"]
""")
            prom = await procs.start_prometheus(prom_config, tmp_path)
            deadline = time.monotonic() + 40
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
                base = prom.base_url

                # blackbox-style: one series per relabelled target, instance = the probed URL.
                want = {healthy_url: 1.0, f"http://127.0.0.1:{refused}/": 0.0, expired_url: 0.0}
                result = await poll(session, base, 'probe_success{job="connhealth-probe"}',
                                    lambda r: by(r, "instance") == want, deadline)
                assert by(result, "instance") == want

                # continuous mode: the refused port is counted under its reason, with the target labels.
                result = await poll(session, base, "sum by (reason) (connhealth_probe_failures_total)",
                                    lambda r: by(r, "reason").get("connect_refused", 0) > 0, deadline)
                assert by(result, "reason")["connect_refused"] > 0
                result = await query(session, base, 'connhealth_probe_failures_total{reason="connect_refused"}')
                assert {(r["metric"]["service"], r["metric"]["region"], r["metric"]["phase"]) for r in result} == {
                    ("db", "us-east", "connect")
                }, result

                # P95 connect latency from the histogram: needs two scrapes with new observations.
                def finite(r: list[dict]) -> bool:
                    return len(r) == 1 and math.isfinite(float(r[0]["value"][1]))

                result = await poll(session, base, QUANTILE_QUERY, finite, deadline)
                p95 = float(result[0]["value"][1])
                assert 0 <= p95 < 0.3, p95

                # Both connhealth targets were scraped with their labels (attempts > 0 each).
                result = await query(session, base, "sum by (service, region) (connhealth_probe_attempts_total)")
                attempts = {(r["metric"]["service"], r["metric"]["region"]): float(r["value"][1]) for r in result}
                assert set(attempts) == {("api", "eu-west"), ("db", "us-east"), ("shop", "eu-west")}, attempts
                assert all(v > 0 for v in attempts.values()), attempts

                # The expired certificate: /probe reports its expiry although verification failed ...
                result = await poll(session, base, f'probe_ssl_earliest_cert_expiry{{instance="{expired_url}"}}',
                                    lambda r: len(r) == 1, deadline)
                assert float(result[0]["value"][1]) == expired_at, result
                # ... every continuous probe of it fails with tls_cert_expired, none succeeds ...
                result = await query(session, base, f'connhealth_probe_failures_total{{target="{expired_url}"}} > 0')
                assert {(r["metric"]["phase"], r["metric"]["reason"]) for r in result} == {("tls", "tls_cert_expired")}, result
                result = await query(session, base, f'connhealth_probe_successes_total{{target="{expired_url}"}} > 0')
                assert result == [], result
                # ... and the generated rule (for: 0m) fires on the expiry the failed handshakes exported.
                result = await poll(session, base, EXPIRED_ALERT, lambda r: len(r) > 0, deadline)
                assert [r["metric"] for r in result] == [{
                    "__name__": "ALERTS", "alertname": "ConnhealthCertificateExpired", "alertstate": "firing",
                    "severity": "critical", "target": expired_url, "module": "http_ca",
                    "service": "shop", "region": "eu-west", "job": "connhealth", "instance": ch.address,
                }], result
                result = await query(session, base, "connhealth_tls_cert_earliest_expiry_timestamp_seconds")
                assert {r["metric"]["target"]: float(r["value"][1]) for r in result}[expired_url] == expired_at, result
                # No other certificate alert: the healthy certificate has 30 days left.
                result = await query(session, base, 'ALERTS{alertname=~"ConnhealthCertificate.*"}')
                assert [(r["metric"]["alertname"], r["metric"]["target"]) for r in result] == [
                    ("ConnhealthCertificateExpired", expired_url)], result

                # Every scrape job is up.
                result = await query(session, base, "up")
                assert result and all(r["value"][1] == "1" for r in result), result

                # An exporter restart (same address): the new process knows nothing of the old one's
                # handshakes, yet its first failed handshake exports the expiry again and the alert fires on it.
                await ch.astop()
                restarted_at = time.time()
                ch.spawn(ch.port)
                await ch.wait_ready(15)
                fresh = f'timestamp(connhealth_tls_cert_earliest_expiry_timestamp_seconds{{target="{expired_url}"}}) > {restarted_at}'
                result = await poll(session, base, fresh, lambda r: len(r) == 1, time.monotonic() + 20)
                result = await poll(session, base, f"{EXPIRED_ALERT} and on (target) ({fresh})",
                                    lambda r: len(r) == 1, time.monotonic() + 20)
                assert result[0]["metric"]["target"] == expired_url, result
                result = await query(session, base, "process_start_time_seconds{job=\"connhealth\"}")
                assert float(result[0]["value"][1]) >= restarted_at - 1, result
        finally:
            if prom is not None:
                await prom.astop()
            await ch.astop()
    assert time.monotonic() - started < 90
