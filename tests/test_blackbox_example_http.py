"""tests/fixtures/blackbox_example/http.yml: our own http modules shaped as blackbox's latest example.yml.

The file loads unchanged (check-config, as a user would run it); then its addresses are pointed at
local peers (two real tinyproxies, an OAuth2 token endpoint, an HTTP(S) server) and every module
probes the peer of its kind, with the result and what the peer received checked exactly.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web

from exporter.certs import CertFactory, server_context
from exporter.config import parse_config
from exporter.engine import run_probe

try:  # works whether or not tests/ becomes a package later
    from tests import procs
    from tests.peers import HTTPServer, start_app
    from tests.proxypeer import TinyProxy
except ImportError:  # pragma: no cover
    import procs  # type: ignore[no-redef]
    from peers import HTTPServer, start_app  # type: ignore[no-redef]
    from proxypeer import TinyProxy  # type: ignore[no-redef]

pytestmark = pytest.mark.timeout(60)

FIXTURE = Path(__file__).parent / "fixtures" / "blackbox_example" / "http.yml"
BODY = b'{"probe": "from a file"}'
TOKEN = "example-access-token"


class ExampleApp:
    """Every route the example's modules probe, plus the token endpoint; records what arrived."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []  # (method, path, headers, body)
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> "ExampleApp":
        app = web.Application(middlewares=[self._record])
        r = app.router
        r.add_get("/everything", self._everything)
        r.add_post("/post", self._ok)
        r.add_post("/login", self._login)
        r.add_get("/health", self._health)
        r.add_get("/api", self._api)
        r.add_get("/gzip", self._gzip)
        r.add_post("/oauth/token", self._token)
        self._runner, self.port = await start_app(app)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def requests_to(self, path: str) -> list[tuple[str, dict[str, str], bytes]]:
        return [(m, h, b) for m, p, h, b in self.seen if p == path]

    @web.middleware
    async def _record(self, request: web.Request, handler):  # type: ignore[no-untyped-def]
        self.seen.append((request.method, request.path, dict(request.headers), await request.read()))
        return await handler(request)

    async def _everything(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="<p>service ready</p>", headers={"Access-Control-Allow-Origin": "probe.example.test"})

    async def _ok(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="accepted")

    async def _login(self, request: web.Request) -> web.StreamResponse:
        ok = request.headers.get("Authorization") == aiohttp.encode_basic_auth("synthetic", "not-a-real-password")
        return web.Response(status=200 if ok else 401, text="login")

    async def _health(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "up", "version": "2.4.1"})

    async def _api(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=201 if request.headers.get("Authorization") == f"Bearer {TOKEN}" else 401, text="api")

    async def _gzip(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=gzip.compress(b"zipped page " * 50), headers={"Content-Encoding": "gzip"})

    async def _token(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        client_ok = request.headers.get("Authorization") == aiohttp.encode_basic_auth("synthetic-prober", "not-a-real-secret")
        if not client_ok or form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "invalid_client"}, status=401)
        return web.json_response({"access_token": TOKEN, "token_type": "Bearer", "expires_in": 600})


async def test_fixture_loads_unchanged_with_check_config() -> None:
    code, out, err = await procs.run_command([str(Path(procs.REPO) / ".venv/bin/python"), "-m", "exporter", "check-config",
                                              "--config.file", str(FIXTURE)])
    assert code == 0, out + err
    assert "10 modules defined" in out + err


async def test_every_example_shaped_module_probes_its_peer(tmp_path: Path) -> None:
    certs = CertFactory(tmp_path / "certs")
    leaf = certs.leaf(certs.ca("example CA"))
    body_file = tmp_path / "probe-request.json"
    body_file.write_bytes(BODY)
    app = await ExampleApp().start()
    https = await HTTPServer(server_context(leaf)).start()
    (tmp_path / "open").mkdir()
    (tmp_path / "auth").mkdir()
    open_proxy = await TinyProxy(tmp_path / "open").start()
    auth_proxy = await TinyProxy(tmp_path / "auth", basic_auth=("probe", "tunnel")).start()
    try:
        text = (FIXTURE.read_text()
                .replace("127.0.0.1:3128", f"127.0.0.1:{open_proxy.port}")
                .replace("127.0.0.1:3129", f"127.0.0.1:{auth_proxy.port}")
                .replace("127.0.0.1:4444", f"127.0.0.1:{app.port}")
                .replace("/files/probe-request.json", str(body_file)))
        modules = parse_config(text, str(FIXTURE)).modules
        targets = {
            "web_2xx_everything": app.url("/everything"),
            "through_proxy_by_name": app.url("/gzip", host="localhost"),  # the proxy resolves the name
            "through_proxy_with_connect_header": https.url("/ok"),
            "post_json_2xx": app.url("/post"),
            "post_from_body_file": app.url("/post"),
            "login_basic_auth": app.url("/login"),
            "health_json_cel": app.url("/health"),
            "api_oauth2_client_credentials": app.url("/api"),
            "page_gzip": app.url("/gzip"),
            "page_gzip_accept_encoding": app.url("/gzip"),
        }
        assert set(targets) == set(yaml.safe_load(text)["modules"])  # every module of the file is probed
        results = {name: await run_probe(target, modules[name], 10) for name, target in targets.items()}
        connects = auth_proxy.connects()
    finally:
        for proxy in (auth_proxy, open_proxy):
            await proxy.astop()
        await https.stop()
        await app.stop()

    assert {name: r.failure for name, r in results.items() if not r.success} == {}
    everything = app.requests_to("/everything")[0][1]
    assert (everything["Origin"], everything["Accept-Language"]) == ("probe.example.test", "de-CH")
    assert "tinyproxy" in app.requests_to("/gzip")[0][1].get("Via", "")  # through_proxy_by_name: via the proxy
    assert [h.get("Via") for _, h, _ in app.requests_to("/gzip")[1:]] == [None, None]  # the page_gzip modules: direct
    assert connects == [f"127.0.0.1:{https.port}"]  # CONNECT accepted with the proxy_connect_header credentials
    posts = [(h.get("Content-Type"), b) for _, h, b in app.requests_to("/post")]
    assert posts == [("application/json", b'{"check": true}'), (None, BODY)]
    assert app.requests_to("/login")[0][1]["Host"] == "login.example.test"
    assert results["api_oauth2_client_credentials"].details.status == 201
    assert [p.name for p in results["api_oauth2_client_credentials"].timeline][0] == "oauth2"
    assert results["health_json_cel"].details.failed_due_to_cel is False
    gzipped = [h.get("Accept-Encoding") for _, h, _ in app.requests_to("/gzip")[1:]]
    assert gzipped == [None, "gzip"]
    assert all(r.details.body_length == len(b"zipped page " * 50) for n, r in results.items() if "gzip" in n)
