"""Secrets are a type: one canary secret through every secret field, grepped for on every output surface.

The canary goes into a secret_headers header, the credential headers
(Authorization, Cookie), a secret_body, a tcp send step marked secret, URL
userinfo, query parameters (a default one and one from secret_query_params) and
a redirect's signed URL. The peers prove it really went out on the wire; then
/probe (plain and debug), /logs, /config, the status page, /metrics (both
formats), the spans a real OTLP receiver got, the exporter's own log at debug
level, a failed reload's answer and the CLI (waterfall, JSON, check-config)
are searched for it.
"""
from __future__ import annotations

import asyncio
import base64
import json
import re
import sys
import uuid
from pathlib import Path
from urllib.parse import parse_qs

import pytest
from aiohttp import web

from exporter.config import parse_config
from exporter.schema import SECRET_MASK, Secret, plain, reveal

try:  # works whether or not tests/ becomes a package later
    from tests.otlp_receiver import OTLPReceiver
    from tests.peers import start_app
    from tests.procs import REPO, ExporterProcess, refused_port
    from tests.test_traces import clean_env
except ImportError:  # pragma: no cover
    from otlp_receiver import OTLPReceiver
    from peers import start_app  # type: ignore[no-redef]
    from procs import REPO, ExporterProcess, refused_port
    from test_traces import clean_env

pytestmark = pytest.mark.timeout(90)

CANARY = f"cnry{uuid.uuid4().hex}"


def test_secret_renders_masked_everywhere_but_reveal() -> None:
    secret = Secret(CANARY)
    for shown in (str(secret), repr(secret), f"{secret}", f"{secret!r}", f"{secret:>40}", "%s" % secret,
                  str([secret]), str({"k": secret}), json.dumps(plain({"k": secret, "l": (secret,)}))):
        assert CANARY not in shown and SECRET_MASK in shown, shown
    assert secret.reveal() == reveal(secret) == CANARY and reveal("plain") == "plain"
    assert secret == Secret(CANARY) and secret != CANARY and len({secret, Secret(CANARY)}) == 1


def test_secrets_are_typed_by_the_parser_not_guessed_from_names() -> None:
    config = parse_config("""
modules:
  m:
    prober: http
    http:
      headers: {X-Auth-Key: a, Authorization: b, Cookie: c, Proxy-Authorization: d, X-Token: e}
      secret_headers: [x-auth-key]
      body: f
      secret_body: true
  plain_body:
    prober: http
    http: {body: g}
  t:
    prober: tcp
    tcp: {query_response: [{send: h, secret: true}, {send: i}]}
""")
    http = config.modules["m"].settings
    headers = dict(http.headers)
    # Listed and credential headers are Secret; X-Token is not listed, so it is plain (no guessing from its name).
    assert [k for k, v in headers.items() if isinstance(v, Secret)] == ["X-Auth-Key", "Authorization", "Cookie", "Proxy-Authorization"]
    assert headers["X-Token"] == "e"
    assert isinstance(http.body, Secret) and config.modules["plain_body"].settings.body == "g"
    steps = config.modules["t"].settings.query_response
    assert isinstance(steps[0].send, Secret) and steps[1].send == b"i"  # a send is bytes on the wire (YAML !!binary too)


class Peers:
    """An HTTP peer and a tcp peer that record what they received: proof the secrets went out."""

    def __init__(self) -> None:
        self.http: list[tuple[str, dict[str, list[str]], dict[str, str], bytes]] = []
        self.tcp: list[bytes] = []
        self.runner: web.AppRunner | None = None
        self.tcp_server: asyncio.Server | None = None
        self.http_port = self.tcp_port = 0

    async def start(self) -> None:
        async def handle(request: web.Request) -> web.StreamResponse:
            self.http.append((request.path, parse_qs(request.query_string), dict(request.headers), await request.read()))
            if request.path == "/redirect":
                raise web.HTTPFound(f"/landing?sig={CANARY}&X-Amz-Signature={CANARY}")
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        self.runner, self.http_port = await start_app(app)

        async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.tcp.append(await reader.readline())
            writer.write(b"OK\n")
            await writer.drain()
            writer.close()

        self.tcp_server = await asyncio.start_server(tcp, "127.0.0.1", 0)
        self.tcp_port = self.tcp_server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.tcp_server is not None:
            self.tcp_server.close()
        if self.runner is not None:
            await self.runner.cleanup()


def _config(peers: Peers, refused: int) -> str:
    return f"""
modules:
  canary_http:
    prober: http
    timeout: 5s
    http:
      method: POST
      headers: {{X-Auth-Key: "{CANARY}", Authorization: "Bearer {CANARY}", Cookie: "s={CANARY}", X-Plain: visible}}
      secret_headers: [X-Auth-Key]
      body: "password={CANARY}"
      secret_body: true
      secret_query_params: [session]
      preferred_ip_protocol: ip4
  canary_userinfo:
    prober: http
    timeout: 5s
    http: {{preferred_ip_protocol: ip4}}
  canary_tcp:
    prober: tcp
    timeout: 5s
    tcp:
      preferred_ip_protocol: ip4
      query_response:
        - send: "AUTH PLAIN {CANARY}"
          secret: true
        - expect: "^OK"
targets:
  - {{target: "http://127.0.0.1:{peers.http_port}/redirect?token={CANARY}&session={CANARY}&page=1", module: canary_http, interval: 500ms}}
  - {{target: "http://{CANARY}:{CANARY}@127.0.0.1:{peers.http_port}/userinfo?key={CANARY}", module: canary_userinfo, interval: 500ms}}
  - {{target: "127.0.0.1:{peers.tcp_port}", module: canary_tcp, interval: 500ms}}
  - {{target: "http://u:{CANARY}@127.0.0.1:{refused}/?password={CANARY}", module: canary_http, interval: 500ms}}
"""


async def _cli(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "exporter", *args, cwd=REPO, env=clean_env(),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    return out.decode(errors="replace")


async def test_canary_secret_appears_on_no_output_surface(tmp_path: Path) -> None:
    peers = Peers()
    await peers.start()
    refused = refused_port()
    config_file = tmp_path / "canary.yml"
    config_file.write_text(_config(peers, refused))
    urls = {
        "canary_http": f"http://127.0.0.1:{peers.http_port}/redirect?token={CANARY}&session={CANARY}&page=1",
        "canary_userinfo": f"http://{CANARY}:{CANARY}@127.0.0.1:{peers.http_port}/userinfo?key={CANARY}",
        "canary_tcp": f"127.0.0.1:{peers.tcp_port}",
    }
    surfaces: dict[str, str] = {}
    async with OTLPReceiver(grpc_=False) as rx:
        exporter = await ExporterProcess(config_file, tmp_path, "--log.level", "debug", "--otlp.endpoint", rx.http_endpoint,
                                         env=clean_env(OTEL_BSP_SCHEDULE_DELAY="100")).start()
        try:
            for module, url in urls.items():
                status, surfaces[f"/probe?debug=true {module}"] = await exporter.get(
                    "/probe", params={"target": url, "module": module, "debug": "true"})
                assert status == 200 and "probe_success 1" in surfaces[f"/probe?debug=true {module}"], surfaces
                status, surfaces[f"/probe {module}"] = await exporter.get("/probe", params={"target": url, "module": module})
                assert status == 200
            # Every scheduled target has been probed, the failing one included.
            await exporter.wait_metrics(lambda text: text.count("connhealth_probe_attempts_total{") >= 4, 20,
                                        "attempts of all four scheduled targets")
            await rx.wait_for_spans(lambda s: s.name == "probe canary_tcp", 20, count=2, what="probe spans")
            await rx.wait_for_spans(lambda s: s.name == "probe canary_userinfo", 20, count=2, what="probe spans")
            surfaces["/"] = (await exporter.get("/"))[1]
            surfaces["/config"] = (await exporter.get("/config"))[1]
            surfaces["/metrics"] = await exporter.metrics()
            surfaces["/metrics openmetrics"] = (await exporter.get(
                "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}))[1]
            for log_id in sorted(set(re.findall(r"/logs\?id=(\d+)", surfaces["/"]))):
                surfaces[f"/logs?id={log_id}"] = (await exporter.get("/logs", params={"id": log_id}))[1]
            # A reload that fails on a header with the canary and a CR/LF: the error names the path, not the value.
            config_file.write_text(_config(peers, refused).replace('X-Plain: visible', f'X-Plain: "{CANARY}\\r\\nX: y"'))
            status, surfaces["failed reload"] = await exporter.post("/-/reload")
            assert status != 200 and "headers.X-Plain" in surfaces["failed reload"], surfaces["failed reload"]
            config_file.write_text(_config(peers, refused))
        finally:
            await exporter.astop()
        surfaces["exporter log"] = exporter.log()
        surfaces["spans"] = "\n".join(repr(span) for span in rx.spans)
    surfaces["cli waterfall"] = await _cli("probe", urls["canary_http"], "--config", str(config_file), "--module", "canary_http")
    surfaces["cli json"] = await _cli("probe", urls["canary_userinfo"], "--config", str(config_file), "--module",
                                      "canary_userinfo", "--json")
    surfaces["cli tcp"] = await _cli("probe", urls["canary_tcp"], "--config", str(config_file), "--module", "canary_tcp")
    surfaces["check-config"] = await _cli("check-config", str(config_file))
    await peers.stop()

    # The secrets really went out: nothing here passes by not sending them.
    sent = peers.http
    assert any(h.get("X-Auth-Key") == CANARY and h.get("Authorization") == f"Bearer {CANARY}"
               and h.get("Cookie") == f"s={CANARY}" and body == f"password={CANARY}".encode()
               and q.get("token") == [CANARY] and q.get("session") == [CANARY] for p, q, h, body in sent if p == "/redirect")
    assert any(q.get("sig") == [CANARY] for p, q, _, _ in sent if p == "/landing")
    userinfo = "Basic " + base64.b64encode(f"{CANARY}:{CANARY}".encode()).decode()
    assert any(h.get("Authorization") == userinfo and q.get("key") == [CANARY] for p, q, h, _ in sent if p == "/userinfo")
    assert f"AUTH PLAIN {CANARY}\n".encode() in peers.tcp

    encodings = {CANARY, base64.b64encode(f"{CANARY}:{CANARY}".encode()).decode()}
    for surface, text in surfaces.items():
        assert text, f"{surface} is empty: nothing was checked"
        for leaked in encodings:
            assert leaked not in text, f"the canary leaked into {surface}:\n{text}"
    # ...and each surface really showed the probes, masked.
    assert "X-Auth-Key: <secret>" in surfaces["/probe?debug=true canary_http"]
    assert "body: <secret>" in surfaces["/config"] and "send: <secret>" in surfaces["/config"]
    assert "X-Plain: visible" in surfaces["/config"]
    assert "token=REDACTED&session=REDACTED&page=1" in surfaces["/metrics"]
    assert "http://REDACTED:REDACTED@127.0.0.1" in surfaces["/"]
    assert "config reload failed" in surfaces["exporter log"] and "headers.X-Plain" in surfaces["exporter log"]
    spans = surfaces["spans"]
    assert "'url.full': 'http://127.0.0.1:%d/landing?sig=REDACTED&X-Amz-Signature=REDACTED'" % peers.http_port in spans, spans
    assert "'probe.target': 'http://REDACTED:REDACTED@127.0.0.1:%d/userinfo?key=REDACTED'" % peers.http_port in spans, spans
    assert json.loads(surfaces["cli json"])["target"].startswith("http://REDACTED:REDACTED@")
    assert len([s for s in surfaces if s.startswith("/logs?id=")]) >= 6
