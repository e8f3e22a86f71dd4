"""Every query of every dashboard generated from this test's SLO spec, run against a real Prometheus.

Two real exporters (probers in two regions, eu-west and us-east) probe local
targets with injected failures (a refused port, an HTTP 503, a slow endpoint
that makes the scheduler skip); a real Prometheus scrapes both every second and
evaluates the rules generated from the same spec (at a 10s resolution instead
of 5m, so the tiled windows fill within the test); then each panel's PromQL
(variables substituted) goes through /api/v1/query and must return data —
heatmaps and SLI by region included — and the failure-attribution panels must
show the injected reasons. The exporters run with `--prober eu-west` / `--prober us-east`, and each resolves
path.test with its own DNS server: to the HTTP peer from eu-west, to a refused address from us-east, so
"Failing from one region only" has its target.
"""
from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

import aiohttp
import pytest
import yaml

from alerts.rules import burn_windows, rule_files
from exporter.certs import CertFactory, server_context
from exporter.config import load_config
from exporter.generate import dump_yaml, outputs

try:
    from tests import procs
    from tests.peers import DNSServer, HTTPServer
    from tests.streampeers import SSEServer
    from tests.test_dashboards import exprs, substitute
except ImportError:  # pragma: no cover
    import procs  # type: ignore[no-redef]
    from peers import DNSServer, HTTPServer  # type: ignore[no-redef]
    from streampeers import SSEServer  # type: ignore[no-redef]
    from test_dashboards import exprs, substitute  # type: ignore[no-redef]

pytestmark = pytest.mark.timeout(120)

# The trace-export drop counter only has samples once a span was dropped; no
# collector is configured here, so its panel legitimately has no data.
NO_DATA_OK = {("exporter", "Trace spans dropped")}
# The target detail shows $target = the HTTP 503 target: no stream, no keep-alive or resumption check there.
NO_DATA_OK |= {("target-detail", title) for title in ("Stream heartbeat gap P99 and max",
                                                       "Keep-alive: server idle vs client idle", "TLS resumption ratio")}


def closed_port() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))  # bound, never listening: SYN gets RST
    return s


SLOS = {"objectives": [
    {"service": "web", "period": "30d", "min_probes": 1, "availability": {"objective": 99},
     "latency": {"objective": 95, "threshold": "300ms"}},
    {"service": "db", "period": "7d", "min_probes": 1, "availability": {"objective": 99.9}},
]}


def path_check(dns: DNSServer) -> dict:
    """The module of the target both probers probe, resolving names with this prober's own DNS server."""
    return {"prober": "http", "timeout": "2s", "resolver": {"nameservers": [f"127.0.0.1:{dns.port}"]},
            "http": {"preferred_ip_protocol": "ip4"}}


def path_target(http: HTTPServer, region: str, cluster: str) -> dict:
    return {"target": f"http://path.test:{http.port}/ok", "module": "path", "interval": "1s",
            "labels": {"service": "web", "region": region, "cluster": cluster}}


def us_east_yaml(http: HTTPServer, dns: DNSServer) -> dict:
    """The second prober: its own targets, labelled with its region."""
    return {
        "modules": {"web": {"prober": "http", "timeout": "5s", "http": {"preferred_ip_protocol": "ip4"}},
                    "tcp": {"prober": "tcp", "timeout": "2s", "tcp": {"preferred_ip_protocol": "ip4"}},
                    "path": path_check(dns)},
        "scheduler": {"min_interval": "1s"},
        "targets": [
            # db also has a reachable endpoint here, so its connect heatmap has observations
            {"target": http.url("/").split("//")[1].rstrip("/"), "module": "tcp", "interval": "1s",
             "labels": {"service": "db", "region": "us-east", "cluster": "c2"}},
            {"target": http.url("/status/503"), "module": "web", "interval": "1s",
             "labels": {"service": "web", "region": "us-east", "cluster": "c2"}},
            {"target": http.url("/ok?from=us"), "module": "web", "interval": "1s",
             "labels": {"service": "web", "region": "us-east", "cluster": "c2"}},
            path_target(http, "us-east", "c2"),
        ],
        "slos": SLOS,
    }


def spec_yaml(refused_port: int, http: HTTPServer, https: HTTPServer, ca_file: str, sse: SSEServer,
              dns: DNSServer) -> dict:
    return {
        "modules": {
            "path": path_check(dns),
            "web": {"prober": "http", "timeout": "5s", "http": {"preferred_ip_protocol": "ip4"}},
            "tls_web": {"prober": "http", "timeout": "5s", "tls_resumption": {"check": True},
                        "http": {"preferred_ip_protocol": "ip4", "tls_config": {"ca_file": ca_file}}},
            "events": {"prober": "sse", "timeout": "5s", "sse": {"hold": "500ms", "heartbeat_interval": "1s"}},
            "keepalive": {"prober": "http", "timeout": "5s", "http": {"keepalive": {"idle": "1s"}}},
            "tcp": {"prober": "tcp", "timeout": "2s", "tcp": {"preferred_ip_protocol": "ip4"}},
        },
        "scheduler": {"min_interval": "1s"},
        "targets": [
            {"target": http.url("/ok"), "module": "web", "interval": "1s",
             "labels": {"service": "web", "region": "eu-west", "cluster": "c1"}},
            {"target": https.url("/ok"), "module": "tls_web", "interval": "1s",
             "labels": {"service": "web", "region": "eu-west", "cluster": "c1"}},
            {"target": f"127.0.0.1:{refused_port}", "module": "tcp", "interval": "1s",
             "labels": {"service": "db", "region": "eu-west", "cluster": "c1"}},
            {"target": http.url("/slow?delay=2.5"), "module": "web", "interval": "1s",
             "labels": {"service": "slow", "region": "eu-west", "cluster": "c1"}},
            {"target": sse.url, "module": "events", "interval": "1s",
             "labels": {"service": "stream", "region": "eu-west", "cluster": "c1"}},
            # The server closes idle connections after 0.3 s, the module's client idle is 1 s.
            {"target": sse.url.replace("/events", "/ok"), "module": "keepalive", "interval": "2s",
             "labels": {"service": "keepalive", "region": "us-east", "cluster": "c2"}},
            path_target(http, "eu-west", "c1"),
        ],
        "slos": SLOS,
    }


async def instant(session: aiohttp.ClientSession, base: str, promql: str) -> list[dict]:
    async with session.get(base + "/api/v1/query", params={"query": promql}) as resp:
        body = await resp.json()
    assert resp.status == 200 and body["status"] == "success", (promql, body)
    return body["data"]["result"]


async def test_every_panel_query_returns_data(tmp_path: Path) -> None:
    certs = CertFactory(tmp_path / "certs")
    ca = certs.ca("connhealth dashboards CA")
    sock = closed_port()
    async with HTTPServer() as http, HTTPServer(server_context(certs.leaf(ca))) as https, \
            SSEServer(interval=0.1, keepalive_timeout=0.3) as sse, \
            DNSServer({"path.test": "A:127.0.0.1"}) as eu_dns, DNSServer({"path.test": "A:127.0.0.3"}) as us_dns:
        cfg_path = tmp_path / "connhealth.yml"
        cfg_path.write_text(yaml.safe_dump(spec_yaml(sock.getsockname()[1], http, https, ca.cert_file, sse, eu_dns)))
        us_path = tmp_path / "us-east" / "connhealth.yml"
        us_path.parent.mkdir()
        us_path.write_text(yaml.safe_dump(us_east_yaml(http, us_dns)))
        config = load_config(cfg_path)
        rules = []
        for name, content in rule_files(config.slos, burn_windows, "10s").items():
            (tmp_path / name).write_text(dump_yaml(content))
            rules.append(str(tmp_path / name))
        dashboards = {Path(rel).stem: json.loads(text) for rel, text in outputs(config).items()
                      if rel.startswith("dashboards/generated/") and rel.count("/") == 2 and rel.endswith(".json")}
        assert set(dashboards) == {"slo-overview", "failure-attribution", "target-detail", "exporter"}
        exporter = await procs.start_connhealth(cfg_path, tmp_path, "--prober", "eu-west")
        us_east = prom = None
        try:
            us_east = await procs.start_connhealth(us_path, us_path.parent, "--prober", "us-east")
            prom_cfg = tmp_path / "prometheus.yml"
            prom_cfg.write_text(yaml.safe_dump({
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": rules,
                "scrape_configs": [{"job_name": "connhealth",
                                    "static_configs": [{"targets": [exporter.address, us_east.address]}]}],
            }))
            prom = await procs.start_prometheus(prom_cfg, tmp_path)
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
                async with session.post(exporter.base_url + "/-/reload") as resp:  # a reload, for the reload panels
                    assert resp.status == 200, await resp.text()
                target = http.url("/status/503")
                values = {"$target": target, "$__rate_interval": "15s"}
                queries = [(name, title, expr) for name, dash in dashboards.items() for title, expr in exprs(dash)]
                deadline = time.monotonic() + 60
                while True:
                    empty = []
                    for dash, title, expr in queries:
                        if (dash, title) in NO_DATA_OK:
                            continue
                        if not await instant(session, prom.base_url, substitute(expr, values)):
                            empty.append(f"{dash} / {title}: {substitute(expr, values)}")
                    if not empty or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(2)
                assert not empty, "panels without data:\n" + "\n".join(empty)

                # The failure-attribution panels show the injected reasons where they were injected.
                fa = dict(exprs(dashboards["failure-attribution"]))
                by_reason = {r["metric"]["reason"] for r in await instant(session, prom.base_url,
                                                                          substitute(fa["Failures by reason"], values))}
                assert {"connect_refused", "http_status_5xx"} <= by_reason
                by_phase = {r["metric"]["phase"] for r in await instant(session, prom.base_url,
                                                                        substitute(fa["Failures by phase"], values))}
                assert {"connect", "first_byte"} <= by_phase
                cells = {(r["metric"]["reason"], r["metric"]["region"]) for r in await instant(
                    session, prom.base_url, substitute(fa["Reason × region"], values))}
                assert {("connect_refused", "eu-west"), ("http_status_5xx", "us-east")} <= cells
                cells = {(r["metric"]["reason"], r["metric"]["service"]) for r in await instant(
                    session, prom.base_url, substitute(fa["Reason × service"], values))}
                assert {("connect_refused", "db"), ("http_status_5xx", "web")} <= cells
                # the dominant reason per failing target (the table's query B)
                fa_panels = dashboards["failure-attribution"]["panels"]
                top = next(d for d in fa_panels if d["title"] == "Top failing targets and their dominant reason")
                dominant = {(r["metric"]["target"], r["metric"]["reason"]) for r in await instant(
                    session, prom.base_url, substitute(top["targets"][1]["expr"], values))}
                assert (f"127.0.0.1:{sock.getsockname()[1]}", "connect_refused") in dominant
                assert (target, "http_status_5xx") in dominant
                # SLI by region: both probers' regions, the us-east one pulled down by its 503 target
                slo = dashboards["slo-overview"]
                by_region = next(d for d in slo["panels"] if d["title"] == "SLI by region")
                sli = {r["metric"]["region"]: float(r["value"][1]) for r in await instant(
                    session, prom.base_url, substitute(by_region["targets"][0]["expr"], values))}
                assert set(sli) == {"eu-west", "us-east"} and sli["us-east"] < 0.75 < sli["eu-west"], sli
                # path.test fails from us-east only: the one target of "Failing from one region only"
                one_region = next(d for d in fa_panels if d["title"] == "Failing from one region only")
                rows = {(r["metric"]["target"], r["metric"]["prober"]) for r in await instant(
                    session, prom.base_url, substitute(one_region["targets"][0]["expr"], values))}
                assert rows == {(f"http://path.test:{http.port}/ok", "us-east")}, rows
                # the heatmaps return buckets (one series per le)
                for dash in ("slo-overview", "target-detail"):
                    heat = next(d for d in dashboards[dash]["panels"] if d["type"] == "heatmap")
                    les = {r["metric"]["le"] for r in await instant(
                        session, prom.base_url, substitute(heat["targets"][0]["expr"], values))}
                    assert {"0.005", "+Inf"} <= les, (dash, les)
                versions = await instant(session, prom.base_url, substitute(fa["TLS versions"], values))
                assert {r["metric"]["version"] for r in versions} & {"TLS 1.3", "TLS 1.2", "TLSv1.3", "TLSv1.2"}, versions
                # each target's own interval is exported: ConnhealthTargetStale judges staleness against it
                intervals = await instant(session, prom.base_url, 'connhealth_probe_interval_seconds{service="db"}')
                assert [float(r["value"][1]) for r in intervals] == [1.0, 1.0], intervals
                # no NaN anywhere in the recorded SLO series
                for r in await instant(session, prom.base_url, '{__name__=~"connhealth_slo:.*"}'):
                    assert r["value"][1] not in ("NaN", "+Inf", "-Inf"), r
                # the refused db target burns its budget: the page alert is at least pending
                # (polled: the rule group needs a few evaluations once enough probes exist)
                deadline = time.monotonic() + 30
                while True:
                    alerts = await instant(session, prom.base_url, 'ALERTS{alertname="ConnhealthErrorBudgetBurn",service="db"}')
                    if any(a["metric"]["severity"] == "page" for a in alerts) or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(1)
                assert any(a["metric"]["severity"] == "page" for a in alerts), alerts
        finally:
            for p in (prom, us_east, exporter):
                if p is not None:
                    await p.astop()
            sock.close()
