"""`connhealth diagnose`: the decision tree against real servers (nginx, an SSE server, a DNS server, a TLS nginx)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from exporter import cli
from exporter.certs import Issued
from exporter.diagnose import Options, diagnose

try:
    from tests.nginx import Nginx
    from tests.peers import DNSServer
    from tests.probekit import ca, certs, leaf  # noqa: F401  (fixtures)
    from tests.streampeers import SSEServer
except ImportError:  # pragma: no cover
    from nginx import Nginx
    from peers import DNSServer
    from probekit import ca, certs, leaf  # noqa: F401
    from streampeers import SSEServer

pytestmark = pytest.mark.timeout(60)  # a walk is several probes, each with its own deadline


async def test_keepalive_1s_nginx_is_diagnosed_as_an_idle_timeout_mismatch(tmp_path: Path) -> None:
    with Nginx(tmp_path, keepalive_timeout="1s") as nginx:
        d = await diagnose(Options(nginx.url, idle=3.0))
    assert [(s.name, s.status) for s in d.steps] == [
        ("DNS", "skipped"), ("connect", "ok"), ("TLS", "skipped"), ("keep-alive", "problem"), ("stream", "skipped")]
    verdict = d.verdict
    assert verdict is not None and verdict.name == "keep-alive"
    assert verdict.summary.startswith("idle-timeout mismatch: the server closes idle connections after 1.")
    assert "shorter than the client's 3s idle" in verdict.summary
    assert verdict.evidence["server ended it"] == "fin" and verdict.evidence["client idle"] == "3s"
    text = d.render()
    assert "4. keep-alive  PROBLEM" in text and "Verdict: idle-timeout mismatch" in text


async def test_a_healthy_nginx_walks_the_whole_path(tmp_path: Path) -> None:
    with Nginx(tmp_path, keepalive_timeout="75s") as nginx:
        d = await diagnose(Options(nginx.url, idle=1.0))
    assert d.verdict is None and [s.status for s in d.steps] == ["skipped", "ok", "skipped", "ok", "skipped"]
    assert d.to_dict()["verdict"] == {"healthy": True, "step": None, "summary": "no problem found on the path"}


async def test_tls_without_resumption_is_a_problem_and_the_walk_goes_on(tmp_path: Path, ca: Issued, leaf: Issued) -> None:
    off = "ssl_session_tickets off;\n        ssl_session_cache off;"
    with Nginx(tmp_path, keepalive_timeout="75s", cert=leaf.cert_file, key=leaf.key_file, server_extra=off) as nginx:
        d = await diagnose(Options(nginx.url.replace("127.0.0.1", "localhost"), idle=0.5, ca_file=ca.cert_file))
    steps = {s.name: s for s in d.steps}
    assert steps["TLS"].status == "problem" and "session resumption does not work" in steps["TLS"].summary
    assert steps["keep-alive"].status == "ok" and steps["DNS"].status == "ok"
    assert d.verdict is steps["TLS"]


async def test_dns_through_the_system_and_a_named_resolver(tmp_path: Path) -> None:
    async with DNSServer({"localhost": "A:127.0.0.1"}) as dns:
        with Nginx(tmp_path) as nginx:
            d = await diagnose(Options(f"http://localhost:{nginx.port}/", nameservers=((dns.host, dns.port),), idle=0.2))
    dns_step = d.steps[0]
    assert dns_step.status == "ok" and dns_step.summary == "localhost resolves to 127.0.0.1"
    assert set(dns_step.evidence) == {"system resolver", f"nameserver {dns.host}:{dns.port}"}


async def test_an_unknown_name_stops_the_walk_at_dns() -> None:
    async with DNSServer({}) as dns:
        d = await diagnose(Options("http://nowhere.test/", nameservers=((dns.host, dns.port),)))
    assert [(s.name, s.status) for s in d.steps] == [("DNS", "failed")]
    assert d.verdict is d.steps[0] and "does not resolve" in d.steps[0].summary


async def test_an_event_stream_with_missed_heartbeats_fails_the_stream_step() -> None:
    async with SSEServer(interval=0.2, stop_after=0.5) as server:
        d = await diagnose(Options(server.url, idle=0.2, stream=True, hold=3.0, heartbeat_interval=0.3))
    stream = d.steps[-1]
    assert stream.name == "stream" and stream.status == "failed"
    assert stream.summary.startswith("sse_heartbeat_missed in phase stream: no event or comment for")


def test_cli_diagnose_prints_json_and_exits_1_on_a_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with Nginx(tmp_path, keepalive_timeout="1s") as nginx:
        code = cli.main(["diagnose", nginx.url, "--idle", "2", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1 and out["verdict"]["step"] == "keep-alive" and out["verdict"]["healthy"] is False
    assert [s["name"] for s in out["path"]] == ["DNS", "connect", "TLS", "keep-alive", "stream"]
    assert "idle-timeout mismatch" in out["verdict"]["summary"]


def test_cli_diagnose_rejects_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["diagnose", "ftp://x/"]) == 2
    assert "is not an http:// or https:// URL" in capsys.readouterr().err
    assert cli.main(["diagnose", "http://x/", "--idle", "2h"]) == 2
    assert "--idle must be between 0 and 3600 seconds, got 7200" in capsys.readouterr().err
    # A URL's credentials are never echoed, not even in an error.
    assert cli.main(["diagnose", "ftp://u:pw@x/?token=t0k"]) == 2
    err = capsys.readouterr().err
    assert "'ftp://REDACTED:REDACTED@x/?token=REDACTED' is not an http:// or https:// URL" in err and "pw" not in err
