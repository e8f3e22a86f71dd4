"""The http options of issue 10 side by side with the real blackbox_exporter: same config, same targets.

basic_auth / bearer_token, proxy_url (a real tinyproxy, plain and CONNECT), compression (gzip, deflate,
br, a gzip bomb under body_size_limit) and follow_redirects: false on a 302. For each case both
exporters must agree on probe_success, on the set of probe_* families they expose (blackbox's
own; connhealth adds its own four and the two a newer blackbox has and 0.23 lacks), and on the values that are not timings;
the local servers record what each one sent (the credentials, the Accept-Encoding, the proxy's Via).
"""
from __future__ import annotations

import gzip
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import brotli
import pytest
import pytest_asyncio
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from exporter.certs import CertFactory, server_context

try:  # works whether or not tests/ becomes a package later
    from tests import procs
    from tests.peers import HTTPServer, start_app
    from tests.proxypeer import TinyProxy
except ImportError:  # pragma: no cover
    import procs  # type: ignore[no-redef]
    from peers import HTTPServer, start_app  # type: ignore[no-redef]
    from proxypeer import TinyProxy  # type: ignore[no-redef]

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90)]

USER, PASSWORD, TOKEN = "prober", "pa55-word", "t0ken-value"
PAYLOAD = b"compressed hello from the compat server " * 100
TIMINGS = {"probe_duration_seconds", "probe_dns_lookup_time_seconds", "probe_http_duration_seconds"}
# Emitted by newer blackbox releases and by connhealth; the installed 0.23 lacks them.
NEWER_BLACKBOX_ONLY = {"probe_timeout_seconds", "probe_tls_cipher_info"}
# connhealth's own families (docs/metrics.md), next to blackbox's.
CONNHEALTH_OWN = {"probe_phase_duration_seconds", "probe_failure_info", "probe_tcp_rtt_seconds", "probe_tcp_retransmits"}


def _encode(coding: str, data: bytes) -> bytes:
    if coding == "gzip":
        return gzip.compress(data)
    if coding == "deflate":
        c = zlib.compressobj(wbits=-15)
        return c.compress(data) + c.flush()
    return brotli.compress(data)


def _bomb() -> bytes:
    c = zlib.compressobj(9, wbits=31)
    zeros = bytes(1 << 20)
    return b"".join(c.compress(zeros) for _ in range(16)) + c.flush()  # 16 MiB of zeros


class CompatServer:
    """aiohttp on 127.0.0.1: /auth (Basic or Bearer required), /enc/{coding}, /bomb, /redirect; records requests."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._bomb = _bomb()

    async def start(self) -> "CompatServer":
        app = web.Application(middlewares=[self._record])
        app.router.add_get("/auth", self._auth)
        app.router.add_get("/enc/{coding}", self._enc)
        app.router.add_get("/bomb", self._bomb_handler)
        app.router.add_get("/redirect", self._redirect)
        app.router.add_get("/host", self._host)
        self._runner, self.port = await start_app(app)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @web.middleware
    async def _record(self, request: web.Request, handler):  # type: ignore[no-untyped-def]
        self.seen.append((request.path, dict(request.headers)))
        return await handler(request)

    async def _auth(self, request: web.Request) -> web.StreamResponse:
        want = {aiohttp.encode_basic_auth(USER, PASSWORD), f"Bearer {TOKEN}"}
        if request.headers.get("Authorization") not in want:
            return web.Response(status=401, text="who are you")
        return web.Response(text="welcome")

    async def _bomb_handler(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=self._bomb, headers={"Content-Encoding": "gzip"})

    async def _host(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text=f"host {request.headers.get('Host')}")

    async def _redirect(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=302, text="moved along", headers={"Location": "/enc/gzip"})

    async def _enc(self, request: web.Request) -> web.StreamResponse:
        coding = request.match_info["coding"]
        return web.Response(body=_encode(coding, PAYLOAD), headers={"Content-Encoding": coding})


class Env:
    def __init__(self, **kw: object) -> None:
        self.__dict__.update(kw)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    work: Path = tmp_path_factory.mktemp("bbcompat-options")
    certs = CertFactory(work / "certs")
    ca = certs.ca("connhealth options compat CA")
    leaf = certs.leaf(ca)
    server = CompatServer()
    https = HTTPServer(server_context(leaf))
    proxy = TinyProxy(work)
    bb = ch = None
    started: list[object] = []
    try:
        for peer in (server, https, proxy):
            await peer.start()
            started.append(peer)
        config = work / "blackbox.yml"
        config.write_text(f"""
modules:
  basic_auth:
    prober: http
    timeout: 5s
    http: {{preferred_ip_protocol: ip4, basic_auth: {{username: {USER}, password: {PASSWORD}}}}}
  basic_auth_wrong:
    prober: http
    timeout: 5s
    http: {{preferred_ip_protocol: ip4, basic_auth: {{username: {USER}, password: nope}}}}
  bearer:
    prober: http
    timeout: 5s
    http: {{preferred_ip_protocol: ip4, bearer_token: {TOKEN}}}
  proxy:
    prober: http
    timeout: 5s
    http:
      preferred_ip_protocol: ip4
      proxy_url: {proxy.url}
      tls_config: {{ca_file: {ca.cert_file}}}
  gzip: {{prober: http, timeout: 5s, http: {{preferred_ip_protocol: ip4, compression: gzip}}}}
  gzip_accept:
    prober: http
    timeout: 5s
    http: {{preferred_ip_protocol: ip4, compression: gzip, headers: {{Accept-Encoding: "br;q=1.0, gzip;q=0.9"}}}}
  deflate: {{prober: http, timeout: 5s, http: {{preferred_ip_protocol: ip4, compression: deflate}}}}
  br: {{prober: http, timeout: 5s, http: {{preferred_ip_protocol: ip4, compression: br}}}}
  bomb_limited: {{prober: http, timeout: 5s, http: {{preferred_ip_protocol: ip4, compression: gzip, body_size_limit: 1MB}}}}
  plain: {{prober: http, timeout: 5s, http: {{preferred_ip_protocol: ip4}}}}
  own_host: {{prober: http, timeout: 5s, http: {{preferred_ip_protocol: ip4, headers: {{Host: configured.test}}}}}}
  no_follow:
    prober: http
    timeout: 5s
    http: {{preferred_ip_protocol: ip4, follow_redirects: false, valid_status_codes: [302]}}
""")
        bb = await procs.start_blackbox(config, work)
        ch = await procs.start_connhealth(config, work)
        yield Env(server=server, https=https, proxy=proxy, bb=bb, ch=ch)
    finally:
        for p in (ch, bb):
            if p is not None:
                await p.astop()
        for peer in reversed(started):
            await peer.astop() if isinstance(peer, TinyProxy) else await peer.stop()  # type: ignore[attr-defined]


CASES = [
    # (id, module, target, blackbox's own values: the scenario is what its id says)
    ("basic_auth", "basic_auth", lambda e: e.server.url("/auth"), {"probe_success": 1, "probe_http_status_code": 200}),
    ("basic_auth_wrong", "basic_auth_wrong", lambda e: e.server.url("/auth"), {"probe_success": 0, "probe_http_status_code": 401}),
    ("bearer", "bearer", lambda e: e.server.url("/auth"), {"probe_success": 1}),
    ("proxy_http", "proxy", lambda e: e.server.url("/enc/gzip"), {"probe_success": 1, "probe_http_status_code": 200}),
    ("proxy_https_connect", "proxy", lambda e: e.https.url("/ok"), {"probe_success": 1, "probe_http_ssl": 1}),
    ("gzip", "gzip", lambda e: e.server.url("/enc/gzip"), {"probe_success": 1, "probe_http_uncompressed_body_length": len(PAYLOAD)}),
    ("gzip_with_accept_encoding", "gzip_accept", lambda e: e.server.url("/enc/gzip"), {"probe_success": 1}),
    ("deflate", "deflate", lambda e: e.server.url("/enc/deflate"), {"probe_success": 1}),
    ("br", "br", lambda e: e.server.url("/enc/br"), {"probe_success": 1}),
    ("gzip_body_is_not_gzip", "gzip", lambda e: e.server.url("/auth"), {"probe_success": 0}),
    ("gzip_bomb_over_limit", "bomb_limited", lambda e: e.server.url("/bomb"),
     {"probe_success": 0, "probe_http_uncompressed_body_length": 1 << 20}),
    ("redirect_not_followed", "no_follow", lambda e: e.server.url("/redirect"),
     {"probe_success": 1, "probe_http_redirects": 1, "probe_http_uncompressed_body_length": 0}),
]


def _families(text: str) -> dict[str, dict[frozenset, float]]:
    out: dict[str, dict[frozenset, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name.startswith("probe_"):
            out[family.name] = {frozenset(s.labels.items()): s.value for s in family.samples}
    return out


async def _scrape(proc: procs.ManagedProcess, target: str, module: str) -> dict[str, dict[frozenset, float]]:
    status, text, _ = await procs.get_text(proc.base_url + "/probe", params={"target": target, "module": module})
    assert status == 200, f"{proc.name} /probe answered {status}: {text}"
    return _families(text)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
async def test_option_matches_blackbox(env: Env, case) -> None:  # type: ignore[no-untyped-def]
    _, module, make_target, expect = case
    target = make_target(env)
    start = len(env.server.seen)
    bb = await _scrape(env.bb, target, module)
    bb_sent = env.server.seen[start:]
    ch = await _scrape(env.ch, target, module)
    ch_sent = env.server.seen[start + len(bb_sent):]

    for name, want in expect.items():
        assert list(bb[name].values()) == [want], f"scenario check on blackbox: {name}"
    assert set(ch) - NEWER_BLACKBOX_ONLY - CONNHEALTH_OWN == set(bb), "probe_* families differ"
    problems = []
    for name, series in bb.items():
        if name in TIMINGS:
            if set(series) != set(ch[name]):
                problems.append(f"{name}: label sets differ")
        elif series != ch[name]:
            problems.append(f"{name}: blackbox {series} != connhealth {ch[name]}")
    assert problems == []
    # What reached the server: the same requests, the same credentials and Accept-Encoding, the same proxy hop.
    assert [p for p, _ in bb_sent] == [p for p, _ in ch_sent]
    for header in ("Authorization", "Accept-Encoding"):
        assert [h.get(header) for _, h in bb_sent] == [h.get(header) for _, h in ch_sent], header
    assert [("tinyproxy" in h.get("Via", "")) for _, h in bb_sent] == [("tinyproxy" in h.get("Via", "")) for _, h in ch_sent]


async def test_proxy_cases_went_through_the_proxy(env: Env) -> None:
    """The CONNECT cases above reached tinyproxy from both exporters, asked for the resolved address."""
    target = env.https.url("/ok")
    before = len(env.proxy.connects())
    for proc in (env.bb, env.ch):
        await _scrape(proc, target, "proxy")
    assert env.proxy.connects()[before:] == [f"127.0.0.1:{env.https.port}"] * 2


async def test_hostname_parameter_is_the_host_header_as_in_blackbox(env: Env) -> None:
    """/probe?hostname=: the Host header both exporters send; a module with its own Host: both answer 400."""
    target = env.server.url("/host")
    seen = []
    for proc in (env.bb, env.ch):
        start = len(env.server.seen)
        status, text, _ = await procs.get_text(proc.base_url + "/probe",
                                               params={"target": target, "module": "plain", "hostname": "vhost.test"})
        assert status == 200 and "probe_success 1" in text, (proc.name, text)
        seen.append([h.get("Host") for _, h in env.server.seen[start:]])
    assert seen == [["vhost.test"], ["vhost.test"]]
    answers = []
    for proc in (env.bb, env.ch):
        status, text, _ = await procs.get_text(proc.base_url + "/probe",
                                               params={"target": target, "module": "own_host", "hostname": "vhost.test"})
        answers.append((status, text))
    assert answers[0] == answers[1] == (400, "host header defined both in module configuration (configured.test) "
                                             "and with URL-parameter 'hostname' (vhost.test)\n")
