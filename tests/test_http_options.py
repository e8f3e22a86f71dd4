"""The http prober's blackbox options (issue 10): credentials, redirect values, compression, proxy,
oauth2, body_file, http_headers and the CEL body checks — each against a real local peer.

Side-by-side comparisons with blackbox_exporter for basic_auth, proxy and compression are in
tests/test_blackbox_compat_options.py.
"""
from __future__ import annotations

import asyncio
import base64
import gzip
import re
import resource
import socket
import zlib
from pathlib import Path

import brotli
import zstandard

import pytest
from aiohttp import web

from exporter.certs import server_context
from exporter.engine import run_probe
from exporter.net.guard import ProbeGuard, parse_rules
from exporter.net.proxy import parse_no_proxy
from exporter.sinks.exposition import probe_text
from exporter.schema import ConfigError, Secret

try:  # works whether or not tests/ becomes a package later
    from tests.peers import HTTPServer, TLSTerminator
    from tests.probekit import PER_TEST_TIMEOUT, ca, certs, leaf, mod, surfaces_showing  # noqa: F401
    from tests.proxypeer import TinyProxy
except ImportError:  # pragma: no cover
    from peers import HTTPServer, TLSTerminator  # type: ignore[no-redef]
    from probekit import PER_TEST_TIMEOUT, ca, certs, leaf, mod, surfaces_showing  # type: ignore[no-redef]  # noqa: F401
    from proxypeer import TinyProxy  # type: ignore[no-redef]

pytestmark = pytest.mark.timeout(PER_TEST_TIMEOUT)

CANARY = "s3cr3t-Canary-7f1d"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def received_auth(server: HTTPServer) -> list[str | None]:
    return [headers.get("Authorization") for _, headers in server.requests]


# --- credentials ------------------------------------------------------------------------------

async def test_basic_auth_inline_and_from_file_is_sent_and_never_shown(tmp_path: Path) -> None:
    pw_file = tmp_path / "pw"
    pw_file.write_text(f"  {CANARY}-file\n")  # trimmed, as Go's strings.TrimSpace
    async with HTTPServer() as web_:
        inline = mod("http", http={"basic_auth": {"username": "alice", "password": CANARY}})
        from_file = mod("http", http={"basic_auth": {"username": "bob", "password_file": str(pw_file)}})
        r1 = await run_probe(web_.url("/ok"), inline, 5)
        r2 = await run_probe(web_.url("/ok"), from_file, 5)
    assert r1.success and r2.success
    assert received_auth(web_) == [basic("alice", CANARY), basic("bob", f"{CANARY}-file")]
    assert isinstance(inline.settings.auth.password.value, Secret)
    assert surfaces_showing(CANARY, r1, inline) == []
    assert surfaces_showing(CANARY, r2, from_file) == []


async def test_bearer_token_and_authorization_types(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(CANARY + "\n")
    cases = [
        ({"bearer_token": CANARY}, f"Bearer {CANARY}"),
        ({"bearer_token_file": str(token_file)}, f"Bearer {CANARY}"),
        ({"authorization": {"credentials": CANARY}}, f"Bearer {CANARY}"),
        ({"authorization": {"type": "Token", "credentials_file": str(token_file)}}, f"Token {CANARY}"),
    ]
    async with HTTPServer() as web_:
        for http, _ in cases:
            m = mod("http", http=http)
            result = await run_probe(web_.url("/ok"), m, 5)
            assert result.success, result.failure
            assert surfaces_showing(CANARY, result, m) == []
    assert received_auth(web_) == [want for _, want in cases]


async def test_configured_authorization_header_wins_over_basic_auth() -> None:
    async with HTTPServer() as web_:
        m = mod("http", http={"basic_auth": {"username": "u", "password": "p"}, "headers": {"Authorization": "Custom x"}})
        assert (await run_probe(web_.url("/ok"), m, 5)).success
    assert received_auth(web_) == ["Custom x"]


async def test_a_configured_trace_header_is_sent_instead_of_the_probes_own() -> None:
    """connhealth injects traceparent and baggage into each request, unless the module sets that header
    itself (any case): the configured one is then sent, once, and the other still injected."""
    configured = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with HTTPServer() as web_:
        for headers in ({}, {"TraceParent": configured}, {"baggage": "team=sre"}):
            assert (await run_probe(web_.url("/ok"), mod("http", http={"headers": headers}), 5)).success
    sent = [{name: [v for k, v in h.items() if k.lower() == name] for name in ("traceparent", "baggage")}
            for _, h in web_.requests]
    [own, theirs_tp, theirs_bag] = sent
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]", own["traceparent"][0]), own
    assert own["baggage"] == ["synthetic=true,probe.module=m"]
    assert theirs_tp == {"traceparent": [configured], "baggage": ["synthetic=true,probe.module=m"]}
    assert theirs_bag["baggage"] == ["team=sre"] and len(theirs_bag["traceparent"]) == 1


async def test_missing_credential_file_fails_the_probe_with_config_file_missing(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    async with HTTPServer() as web_:
        for http in ({"basic_auth": {"username": "u", "password_file": str(missing)}},
                     {"bearer_token_file": str(missing)},
                     {"authorization": {"credentials_file": str(missing)}}):
            result = await run_probe(web_.url("/ok"), mod("http", http=http), 5)
            assert not result.success
            assert result.failure.reason == "config_file_missing", result.failure
            assert str(missing) in result.failure.message
    assert web_.requests == []  # nothing was sent without the credentials


@pytest.mark.parametrize("http, message", [
    ({"basic_auth": {"username": "u"}, "bearer_token": "t"}, "at most one of basic_auth, bearer_token"),
    ({"bearer_token": "t", "bearer_token_file": "/f"}, "at most one of bearer_token and bearer_token_file"),
    ({"authorization": {"type": "Basic", "credentials": "x"}}, 'cannot be set to "basic"'),
    ({"basic_auth": {"username": "u", "password": "p", "password_file": "/f"}}, "at most one of password and password_file"),
    ({"authorization": {"credentials": "x", "colour": 1}}, "authorization.colour: unknown field"),
])
def test_credential_config_errors_name_the_field(http: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        mod("http", http=http)


async def test_credentials_stay_on_the_target_host_across_redirects() -> None:
    """Sent to the target's host and its subdomains only: a redirect to another host gets none."""
    async with HTTPServer() as a, HTTPServer() as b:
        m = mod("http", http={"bearer_token": CANARY})
        # 127.0.0.1 -> localhost: another host name.
        result = await run_probe(a.url(f"/to-http?url={b.url('/ok', host='localhost')}"), m, 5)
        assert result.success, result.failure
    assert received_auth(a) == [f"Bearer {CANARY}"]
    assert received_auth(b) == [None]


# --- redirect values --------------------------------------------------------------------------

@pytest.mark.parametrize("http", [{"follow_redirects": False}, {"no_follow_redirects": True}])
async def test_unfollowed_redirect_reports_one_redirect_and_no_body(http: dict) -> None:
    """blackbox: a 302 with follow_redirects false gives probe_http_redirects 1 and body length 0."""
    async with HTTPServer() as web_:
        result = await run_probe(web_.url("/redirect/0"), mod("http", http={**http, "valid_status_codes": [302]}), 5)
    assert result.success, result.failure
    assert (result.details.status, result.details.redirects, result.details.body_length) == (302, 1, 0)
    assert result.details.content_length == len("redirect")
    assert [path for path, _ in web_.requests] == ["/redirect/0"]


async def test_no_follow_redirects_false_follows_and_redirect_without_location_is_no_redirect() -> None:
    async with HTTPServer() as web_:
        followed = await run_probe(web_.url("/redirect/1"), mod("http", http={"no_follow_redirects": False}), 5)
        bare = await run_probe(web_.url("/status/302"), mod("http", http={"follow_redirects": False,
                                                                          "valid_status_codes": [302]}), 5)
    assert followed.success and followed.details.redirects == 2
    # No Location: Go returns the response as it is (no redirect), its body read.
    assert bare.success and (bare.details.redirects, bare.details.body_length) == (0, len("status 302"))


# --- compression ------------------------------------------------------------------------------

PAYLOAD = b"hello compressed connhealth " * 200


def encode(coding: str, data: bytes) -> bytes:
    if coding == "gzip":
        return gzip.compress(data)
    if coding == "deflate":
        c = zlib.compressobj(wbits=-15)  # raw DEFLATE, as Go's flate reader reads it
        return c.compress(data) + c.flush()
    if coding == "br":
        return brotli.compress(data, quality=5)
    return zstandard.ZstdCompressor().compress(data)


def encoded_app(raw: dict[str, bytes], seen: list[str | None]) -> web.Application:
    async def enc(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("Accept-Encoding"))
        coding = request.match_info["coding"]
        return web.Response(body=encode(coding, PAYLOAD), headers={"Content-Encoding": coding})

    async def raw_(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("Accept-Encoding"))
        return web.Response(body=raw[request.match_info["name"]], headers={"Content-Encoding": "gzip"})

    app = web.Application()
    app.router.add_get("/enc/{coding}", enc)
    app.router.add_get("/raw/{name}", raw_)
    return app


class AppServer:
    """A plain aiohttp app on 127.0.0.1, for the routes HTTPServer lacks."""

    def __init__(self, app: web.Application) -> None:
        self.app, self.port, self._runner = app, 0, None

    async def __aenter__(self) -> "AppServer":
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd"])
async def test_compression_decodes_the_body_and_counts_decoded_bytes(coding: str) -> None:
    seen: list[str | None] = []
    async with AppServer(encoded_app({}, seen)) as srv:
        m = mod("http", http={"compression": coding, "fail_if_body_not_matches_regexp": ["^hello compressed"]})
        result = await run_probe(srv.url(f"/enc/{coding}"), m, 5)
        with_header = mod("http", http={"compression": coding, "headers": {"Accept-Encoding": f"{coding}, identity;q=0.5"}})
        result2 = await run_probe(srv.url(f"/enc/{coding}"), with_header, 5)
    assert result.success, result.failure
    assert result.details.body_length == len(PAYLOAD)
    assert result.details.content_length == len(encode(coding, PAYLOAD))
    assert result2.success and result2.details.body_length == len(PAYLOAD)
    # As blackbox: compression alone sends no Accept-Encoding; the header is the user's to set.
    assert seen == [None, f"{coding}, identity;q=0.5"]


async def test_compression_failures_are_attributed() -> None:
    whole = gzip.compress(PAYLOAD)
    raw = {"plain": PAYLOAD, "truncated": whole[: len(whole) // 2], "empty": b"",
           "two-members": whole + whole, "trailing-garbage": whole + b"garbage"}
    async with AppServer(encoded_app(raw, [])) as srv:
        m = mod("http", http={"compression": "gzip"})
        results = {name: await run_probe(srv.url(f"/raw/{name}"), m, 5) for name in raw}
        zlib_deflate = await run_probe(srv.url("/enc/gzip"), mod("http", http={"compression": "deflate"}), 5)
    for name in ("plain", "truncated", "empty", "trailing-garbage"):
        assert not results[name].success, name
        assert (results[name].failure.phase, results[name].failure.reason) == ("transfer", "http_content_decoding"), name
    # Go's gzip reader reads concatenated members as one stream.
    assert results["two-members"].success and results["two-members"].details.body_length == 2 * len(PAYLOAD)
    assert zlib_deflate.failure.reason == "http_content_decoding"


def _max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@pytest.mark.timeout(60)
async def test_gzip_bomb_is_bounded_by_the_decoded_body_size_limit() -> None:
    """256 MiB of zeros in ~256 KiB of gzip: body_size_limit applies to the decoded size, and memory
    stays bounded with or without a limit (the decoded body is counted, never held)."""
    c = zlib.compressobj(9, wbits=31)
    zeros = bytes(1 << 20)
    bomb = b"".join(c.compress(zeros) for _ in range(256)) + c.flush()
    assert len(bomb) < 512 << 10
    async with AppServer(encoded_app({"bomb": bomb}, [])) as srv:
        rss_before = _max_rss_bytes()
        limited = await run_probe(srv.url("/raw/bomb"), mod("http", http={"compression": "gzip", "body_size_limit": "10MB"}), 20)
        unlimited = await run_probe(srv.url("/raw/bomb"), mod("http", http={"compression": "gzip"}), 20)
        grown = _max_rss_bytes() - rss_before
    assert not limited.success
    assert (limited.failure.phase, limited.failure.reason) == ("transfer", "http_body_too_large")
    assert "decoded response body larger than the limit of 10485760 bytes" in limited.failure.message
    assert limited.details.body_length == 10 << 20  # as blackbox's MaxBytesReader: the limit was handed out
    assert unlimited.success and unlimited.details.body_length == 256 << 20
    assert grown < 64 << 20, f"RSS grew by {grown >> 20} MiB decoding a bomb"


@pytest.mark.parametrize("coding", ["deflate", "br", "zstd"])
async def test_bombs_in_every_coding_stop_at_the_decoded_limit(coding: str) -> None:
    bomb = encode(coding, bytes(64 << 20))  # 64 MiB of zeros: a few KiB to a few dozen KiB
    assert len(bomb) < 128 << 10
    async with AppServer(encoded_app({"bomb": bomb}, [])) as srv:
        result = await run_probe(srv.url("/raw/bomb"), mod("http", http={"compression": coding, "body_size_limit": "1MB"}), 20)
    assert (result.failure.phase, result.failure.reason) == ("transfer", "http_body_too_large"), result.failure
    assert result.details.body_length == 1 << 20


@pytest.mark.parametrize("http, message", [
    ({"compression": "lzma"}, "compression: unsupported compression algorithm 'lzma'"),
    ({"compression": "gzip", "headers": {"Accept-Encoding": "br, identity"}}, "does not accept compression 'gzip'"),
    ({"compression": "gzip", "headers": {"Accept-Encoding": "br;q=1.0, gzip;q=0"}}, "does not accept compression 'gzip'"),
])
def test_compression_config_errors(http: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        mod("http", http=http)


def test_compression_accepts_blackbox_valid_accept_encodings() -> None:
    for value in ("gzip", "br, gzip", "br;q=1.0, gzip;q=0.9", "*", "identity, *;q=0.1"):
        assert mod("http", http={"compression": "gzip", "headers": {"Accept-Encoding": value}}).settings.compression == "gzip"


# --- proxy ------------------------------------------------------------------------------------

@pytest.fixture
async def tinyproxy(tmp_path: Path):
    proxy = await TinyProxy(tmp_path).start()
    try:
        yield proxy
    finally:
        await proxy.astop()


def via_headers(server: HTTPServer) -> list[str | None]:
    return [headers.get("Via") for _, headers in server.requests]


async def test_http_target_goes_through_the_proxy_in_absolute_form(tinyproxy: TinyProxy) -> None:
    async with HTTPServer() as web_:
        result = await run_probe(web_.url("/ok"), mod("http", http={"proxy_url": tinyproxy.url}), 10)
    assert result.success, result.failure
    assert result.details.status == 200 and result.details.body_length == len("hello connhealth")
    [via] = via_headers(web_)
    assert via is not None and "tinyproxy" in via
    # The peer is the target's address (resolved here, as blackbox), not the proxy's.
    assert (result.peer.ip, result.peer.port) == ("127.0.0.1", web_.port)


async def test_https_target_goes_through_connect_then_tls(tinyproxy: TinyProxy, ca, leaf) -> None:
    async with HTTPServer(server_context(leaf)) as web_:
        m = mod("http", http={"proxy_url": tinyproxy.url, "tls_config": {"ca_file": ca.cert_file}})
        result = await run_probe(web_.url("/ok", host="localhost"), m, 10)
    assert result.success, result.failure
    phases = [p.name for p in result.timeline]
    assert phases.index("connect") < phases.index("proxy") < phases.index("tls")
    assert result.tls is not None and result.tls.completed
    # Not skip_resolve_phase_with_proxy: resolved here, the proxy is asked for the address.
    assert tinyproxy.connects() == [f"127.0.0.1:{web_.port}"]


async def test_skip_resolve_phase_with_proxy_lets_the_proxy_resolve(tinyproxy: TinyProxy, ca, leaf) -> None:
    async with HTTPServer(server_context(leaf)) as web_:
        m = mod("http", http={"proxy_url": tinyproxy.url, "skip_resolve_phase_with_proxy": True,
                              "tls_config": {"ca_file": ca.cert_file}})
        result = await run_probe(web_.url("/ok", host="localhost"), m, 10)
    assert result.success, result.failure
    assert "dns" not in [p.name for p in result.timeline]  # the proxy is an IP, the target is not resolved here
    assert result.peer is None
    assert tinyproxy.connects() == [f"localhost:{web_.port}"]


async def test_proxy_refusing_connect_is_proxy_connect_failed(tmp_path: Path, ca, leaf) -> None:
    proxy = await TinyProxy(tmp_path, connect_ports=(443,)).start()
    try:
        async with HTTPServer(server_context(leaf)) as web_:
            m = mod("http", http={"proxy_url": proxy.url, "tls_config": {"ca_file": ca.cert_file}})
            result = await run_probe(web_.url("/ok", host="localhost"), m, 10)
    finally:
        await proxy.astop()
    assert not result.success
    assert (result.failure.phase, result.failure.reason) == ("proxy", "proxy_connect_failed")
    assert "proxy answered CONNECT with 403" in result.failure.message


async def test_proxy_credentials_from_the_url_and_connect_headers(tmp_path: Path, ca, leaf) -> None:
    proxy = await TinyProxy(tmp_path, basic_auth=("puser", CANARY)).start()
    try:
        async with HTTPServer() as plain, HTTPServer(server_context(leaf)) as tls:
            with_auth = f"http://puser:{CANARY}@127.0.0.1:{proxy.port}"
            ok_http = mod("http", http={"proxy_url": with_auth})
            ok_https = mod("http", http={"proxy_url": with_auth, "tls_config": {"ca_file": ca.cert_file}})
            # proxy_connect_header carries the credentials on the CONNECT only (blackbox's example shape).
            hdr_https = mod("http", http={"proxy_url": proxy.url, "tls_config": {"ca_file": ca.cert_file},
                                          "proxy_connect_header": {"Proxy-Authorization": [basic("puser", CANARY)]}})
            no_auth = mod("http", http={"proxy_url": proxy.url, "tls_config": {"ca_file": ca.cert_file}})
            results = [await run_probe(plain.url("/ok"), ok_http, 10),
                       await run_probe(tls.url("/ok", host="localhost"), ok_https, 10),
                       await run_probe(tls.url("/ok", host="localhost"), hdr_https, 10),
                       await run_probe(tls.url("/ok", host="localhost"), no_auth, 10)]
    finally:
        await proxy.astop()
    assert [r.success for r in results] == [True, True, True, False]
    assert "407" in results[3].failure.message
    assert isinstance(hdr_https.settings.proxy.connect_headers[0][1], Secret)
    for result, module in zip(results, (ok_http, ok_https, hdr_https, no_auth)):
        assert surfaces_showing(CANARY, result, module) == []
    assert plain.requests and all("Proxy-Authorization" not in h for _, h in plain.requests)


async def test_no_proxy_and_loopback_go_direct(tinyproxy: TinyProxy) -> None:
    async with HTTPServer() as web_:
        # With no_proxy set, httpproxy's rules apply: loopback never goes through a proxy.
        m = mod("http", http={"proxy_url": tinyproxy.url, "no_proxy": "example.internal"})
        result = await run_probe(web_.url("/ok"), m, 10)
    assert result.success and via_headers(web_) == [None]


def test_no_proxy_rules_as_go_httpproxy() -> None:
    rules = parse_no_proxy("10.0.0.0/8, 192.168.1.5:8080, [2001:db8::1], example.com, .sub.org, *.wild.net:443")
    direct = [("10.1.2.3", 80), ("192.168.1.5", 8080), ("2001:db8::1", 443), ("example.com", 80), ("a.example.com", 80),
              ("x.sub.org", 80), ("y.wild.net", 443), ("localhost", 80), ("127.0.0.2", 80), ("::1", 80)]
    proxied = [("11.0.0.1", 80), ("192.168.1.5", 80), ("notexample.com", 80), ("sub.org", 80), ("y.wild.net", 80)]
    assert [h for h, p in direct if not rules.bypass(h, p)] == []
    assert [h for h, p in proxied if rules.bypass(h, p)] == []
    assert parse_no_proxy("*").bypass("anything", 1)


@pytest.mark.parametrize("http, message", [
    ({"proxy_url": "http://p:3128", "proxy_from_environment": True}, "proxy_url must not be configured"),
    ({"no_proxy": "x"}, "proxy_url must also be configured"),
    ({"proxy_connect_header": {"X": ["y"]}}, "proxy_url or proxy_from_environment must also be configured"),
    ({"proxy_url": "socks5://p:1080"}, "proxy scheme 'socks5' is not supported"),
])
def test_proxy_config_errors(http: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        mod("http", http=http)


async def test_proxy_from_environment(tinyproxy: TinyProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", tinyproxy.url)
    monkeypatch.delenv("http_proxy", raising=False)
    monkeypatch.setenv("NO_PROXY", "")
    m = mod("http", http={"proxy_from_environment": True, "skip_resolve_phase_with_proxy": True})
    async with HTTPServer() as web_:
        direct = await run_probe(web_.url("/ok", host="localhost"), m, 10)
        # Go's rule is on the name as written: the host's own name is not "localhost", so it is
        # proxied (and, skip_resolve_phase_with_proxy, resolved by the proxy: /etc/hosts has it on loopback).
        proxied = await run_probe(web_.url("/ok", host=socket.gethostname()), m, 10)
    assert direct.success and proxied.success, (direct.failure, proxied.failure)
    assert [via is not None for via in via_headers(web_)] == [False, True]
    assert m.settings.proxy.http.port == tinyproxy.port and m.settings.proxy.https is None


async def test_guard_holds_through_a_proxy(tinyproxy: TinyProxy) -> None:
    """The guard checks the target (name, port and address), not only the proxy the socket goes to."""
    guard = ProbeGuard(deny=parse_rules(["127.0.0.0/8"]), allow=parse_rules([]))
    proxy_only = ProbeGuard(deny=parse_rules([f":{tinyproxy.port + 1}"]))
    async with HTTPServer() as web_:
        results = {}
        for skip in (False, True):
            m = mod("http", http={"proxy_url": tinyproxy.url, "skip_resolve_phase_with_proxy": skip})
            results[skip] = await run_probe(web_.url("/ok", host="localhost"), m, 10, guard=guard)
        denied_port = await run_probe(f"http://localhost:{tinyproxy.port + 1}/",
                                      mod("http", http={"proxy_url": tinyproxy.url}), 10, guard=proxy_only)
    for skip, result in results.items():
        assert (result.failure.phase, result.failure.reason) == ("connect", "target_forbidden"), skip
        assert f"localhost (127.0.0.1:{web_.port}) is denied by probe_guard rule '127.0.0.0/8'" in result.failure.message
    assert denied_port.failure.reason == "target_forbidden"
    assert web_.requests == []


# --- oauth2 -----------------------------------------------------------------------------------

class TokenEndpoint:
    """A real OAuth2 token endpoint (client credentials, RFC 6749 §4.4) on 127.0.0.1."""

    def __init__(self, *, client_id: str = "probe", secret: str = CANARY, token: str = "tok-" + CANARY,
                 expires_in: int | None = 3600, delay: float = 0.0, header_auth: bool = True) -> None:
        self.client_id, self.secret, self.token = client_id, secret, token
        self.expires_in, self.delay, self.header_auth = expires_in, delay, header_auth
        self.forms: list[dict[str, str]] = []
        self.auth_headers: list[str | None] = []
        self.server = AppServer(self._app())

    def _app(self) -> web.Application:
        async def token(request: web.Request) -> web.StreamResponse:
            form = dict(await request.post())
            self.forms.append(form)
            self.auth_headers.append(request.headers.get("Authorization"))
            await asyncio.sleep(self.delay)
            ok = request.headers.get("Authorization") == basic(self.client_id, self.secret) if self.header_auth else \
                (form.get("client_id"), form.get("client_secret")) == (self.client_id, self.secret)
            if not ok or form.get("grant_type") != "client_credentials":
                return web.json_response({"error": "invalid_client"}, status=401)
            body: dict[str, object] = {"access_token": self.token, "token_type": "bearer"}
            if self.expires_in is not None:
                body["expires_in"] = self.expires_in
            return web.json_response(body)

        app = web.Application()
        app.router.add_post("/token", token)
        return app

    async def __aenter__(self) -> "TokenEndpoint":
        await self.server.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.__aexit__(*exc)

    @property
    def url(self) -> str:
        return self.server.url("/token")


def oauth2_mod(endpoint: TokenEndpoint, **extra: object) -> object:
    return mod("http", http={"oauth2": {"client_id": endpoint.client_id, "client_secret": endpoint.secret,
                                        "token_url": endpoint.url, "scopes": ["read", "probe"],
                                        "endpoint_params": {"audience": "connhealth"}, **extra}})


async def test_oauth2_token_fetched_once_cached_and_sent() -> None:
    async with TokenEndpoint(expires_in=3600) as tokens, HTTPServer() as web_:
        m = oauth2_mod(tokens)
        first = await run_probe(web_.url("/ok"), m, 10)
        second = await run_probe(web_.url("/ok"), m, 10)
    assert first.success and second.success, (first.failure, second.failure)
    assert received_auth(web_) == [f"Bearer tok-{CANARY}"] * 2
    assert tokens.forms == [{"grant_type": "client_credentials", "scope": "read probe", "audience": "connhealth"}]
    assert tokens.auth_headers == [basic("probe", CANARY)]
    assert [p.name for p in first.timeline][:1] == ["oauth2"]
    assert "oauth2" not in [p.name for p in second.timeline]  # cached: no token request, no phase
    for result in (first, second):
        assert surfaces_showing(CANARY, result, m) == []


async def test_oauth2_token_time_is_its_own_phase_not_server_processing() -> None:
    """blackbox counts the token fetch as the target's processing; here it is the oauth2 phase."""
    async with TokenEndpoint(delay=1.0, client_id="slow") as tokens, HTTPServer() as web_:
        result = await run_probe(web_.url("/ok"), oauth2_mod(tokens), 10)
    assert result.success, result.failure
    phases = result.total_phases()
    assert phases["oauth2"] >= 1.0
    assert phases["request"] + phases["first_byte"] < 1.0
    processing = [line for line in probe_text(result).splitlines()
                  if line.startswith('probe_http_duration_seconds{phase="processing"}')]
    assert len(processing) == 1 and float(processing[0].split()[-1]) < 1.0


async def test_oauth2_expired_token_is_fetched_again_and_form_auth_fallback() -> None:
    # expires_in 5 is inside the 10 s renewal margin: every probe fetches; the endpoint only takes the
    # client in the form (x/oauth2's auto-detection falls back to it after a refused Basic header).
    async with TokenEndpoint(expires_in=5, header_auth=False, client_id="form") as tokens, HTTPServer() as web_:
        m = oauth2_mod(tokens)
        results = [await run_probe(web_.url("/ok"), m, 10) for _ in range(2)]
    assert all(r.success for r in results), [r.failure for r in results]
    assert len(tokens.forms) == 4 and tokens.auth_headers == [basic("form", CANARY), None] * 2
    assert tokens.forms[1]["client_secret"] == CANARY


async def test_oauth2_refused_client_is_oauth2_token_failed(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("wrong\n")
    async with TokenEndpoint(client_id="refused") as tokens, HTTPServer() as web_:
        m = mod("http", http={"oauth2": {"client_id": "refused", "client_secret_file": str(secret_file),
                                         "token_url": tokens.url}})
        result = await run_probe(web_.url("/ok"), m, 10)
        missing = await run_probe(web_.url("/ok"), mod("http", http={"oauth2": {
            "client_id": "refused", "client_secret_file": str(tmp_path / "nope"), "token_url": tokens.url}}), 10)
    assert (result.failure.phase, result.failure.reason) == ("oauth2", "oauth2_token_failed")
    assert "token endpoint answered 401" in result.failure.message
    assert missing.failure.reason == "config_file_missing"
    assert web_.requests == []


@pytest.mark.parametrize("http, message", [
    ({"oauth2": {"client_id": "a", "token_url": "http://t/"}, "bearer_token": "x"}, "at most one of basic_auth, authorization"),
    ({"oauth2": {"client_id": "a"}}, "oauth2.token_url: required"),
    ({"oauth2": {"client_id": "a", "token_url": "ftp://t/"}}, "is not an http:// or https:// URL"),
    ({"oauth2": {"client_id": "a", "token_url": "http://t/", "endpoint_params": {"scope": "x"}}}, "cannot overwrite"),
])
def test_oauth2_config_errors(http: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        mod("http", http=http)


# --- body_file, http_headers, CEL -------------------------------------------------------------

async def test_body_file_is_sent_and_read_at_probe_time(tmp_path: Path) -> None:
    body = tmp_path / "body.json"
    m = mod("http", http={"method": "POST", "body_file": str(body)})
    async with HTTPServer() as web_:
        missing = await run_probe(web_.url("/echo-body"), m, 5)  # loads without the file; the probe fails
        body.write_text('{"probe": 1}')
        sent = await run_probe(web_.url("/echo-body"), mod("http", http={
            "method": "POST", "body_file": str(body), "fail_if_body_not_matches_regexp": ['"body": "\\{\\\\"probe\\\\": 1\\}"']}), 5)
    assert missing.failure.reason == "config_file_missing" and str(body) in missing.failure.message
    assert sent.success, sent.failure
    with pytest.raises(ConfigError, match="setting body and body_file both are not allowed"):
        mod("http", http={"body": "x", "body_file": str(body)})


async def test_http_headers_values_secrets_and_files(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(f" {CANARY}-file \n")
    m = mod("http", http={"headers": {"X-Multi": "plain"}, "http_headers": {
        "X-Multi": {"values": ["v1", "v2"]},
        "X-Api-Key": {"secrets": [CANARY]},
        "X-From-File": {"files": [str(token)]},
        "Accept-Language": {"values": ["en-US"]},
    }})
    seen: list[dict[str, list[str]]] = []
    async with AppServer(echo_app(seen)) as srv:
        result = await run_probe(srv.url("/"), m, 5)
    assert result.success, result.failure
    [got] = seen
    assert got["X-Multi"] == ["plain", "v1", "v2"]  # Header.Add: every value, after `headers`
    assert got["X-Api-Key"] == [CANARY] and got["X-From-File"] == [f"{CANARY}-file"]
    assert got["Accept-Language"] == ["en-US"]
    assert surfaces_showing(CANARY, result, m) == []
    assert [type(v).__name__ for n, v, _ in m.settings.http_headers if n == "X-Api-Key"] == ["Secret"]


def echo_app(seen: list[dict[str, list[str]]]) -> web.Application:
    """Records every request's headers (repeated names kept) in ``seen``."""
    app = web.Application()

    async def echo(request: web.Request) -> web.StreamResponse:
        headers: dict[str, list[str]] = {}
        for k, v in request.headers.items():
            headers.setdefault(k, []).append(v)
        seen.append(headers)
        return web.Response(text="ok")

    app.router.add_get("/", echo)
    return app


@pytest.mark.parametrize("http, message", [
    ({"http_headers": {"Authorization": {"values": ["x"]}}}, "setting header 'Authorization' is not allowed"),
    ({"http_headers": {"X": {"value": ["x"]}}}, "http_headers.X.value: unknown field"),
    ({"http_headers": {"X": {"values": ["a\nb"]}}}, r"http_headers.X.values\[0\]"),
])
def test_http_headers_config_errors(http: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        mod("http", http=http)


def json_app(payloads: dict[str, bytes]) -> web.Application:
    async def serve(request: web.Request) -> web.StreamResponse:
        return web.Response(body=payloads[request.match_info["name"]], content_type="application/json")

    app = web.Application()
    app.router.add_get("/j/{name}", serve)
    return app


async def test_cel_body_checks_as_blackbox() -> None:
    payloads = {"good": b'{"foo": "bar", "baz": "qux"}', "bad": b'{"foo": "bar", "baz": "zap"}',
                "missing": b'{"foo": "bar"}', "notjson": b"<html>", "number": b'{"foo": 1}'}
    not_matches = mod("http", http={"fail_if_body_json_not_matches_cel": "body.foo == 'bar' && body.baz.startsWith('q')"})
    matches = mod("http", http={"fail_if_body_json_matches_cel": "body.foo == 'bar'"})
    not_bool = mod("http", http={"fail_if_body_json_matches_cel": "body.foo + 1"})
    async with AppServer(json_app(payloads)) as srv:
        r = {name: await run_probe(srv.url(f"/j/{name}"), not_matches, 5) for name in payloads}
        matched = await run_probe(srv.url("/j/good"), matches, 5)
        non_bool = await run_probe(srv.url("/j/number"), not_bool, 5)
        plain_module = await run_probe(srv.url("/j/good"), mod("http"), 5)
    assert r["good"].success, r["good"].failure
    for name in ("bad", "missing", "notjson"):
        assert (r[name].failure.phase, r[name].failure.reason) == ("transfer", "http_body_cel"), name
    assert "did not match fail_if_body_json_not_matches_cel" in r["bad"].failure.message
    assert "body is not JSON" in r["notjson"].failure.message
    assert "matched fail_if_body_json_matches_cel" in matched.failure.message
    assert "not a bool" in non_bool.failure.message
    assert "probe_failed_due_to_cel 0" in probe_text(r["good"])
    assert "probe_failed_due_to_cel 1" in probe_text(r["bad"])
    assert "probe_failed_due_to_cel" not in probe_text(plain_module)  # as blackbox: only with a CEL check


def test_cel_syntax_error_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="fail_if_body_json_matches_cel: invalid CEL expression"):
        mod("http", http={"fail_if_body_json_matches_cel": "body.foo =="})


async def test_oauth2_https_token_endpoint_through_a_proxy(tinyproxy: TinyProxy, ca, leaf) -> None:
    async with TokenEndpoint(client_id="tls-proxied") as tokens, HTTPServer() as web_:
        front = TLSTerminator(server_context(leaf), ("127.0.0.1", tokens.server.port), host="127.0.0.1")
        await front.start()
        try:
            m = mod("http", http={"oauth2": {
                "client_id": "tls-proxied", "client_secret": CANARY, "token_url": f"https://localhost:{front.port}/token",
                "tls_config": {"ca_file": ca.cert_file}, "proxy_url": tinyproxy.url}})
            result = await run_probe(web_.url("/ok"), m, 10)
        finally:
            await front.stop()
    assert result.success, result.failure
    assert received_auth(web_) == [f"Bearer tok-{CANARY}"]
    assert tinyproxy.connects() == [f"localhost:{front.port}"]  # the token request went through the proxy
    assert via_headers(web_) == [None]  # the target itself: no proxy configured for it


async def test_oauth2_token_endpoint_passes_the_guard() -> None:
    async with TokenEndpoint(client_id="guarded") as tokens, HTTPServer() as web_:
        guard = ProbeGuard(deny=parse_rules([f":{tokens.server.port}"]))
        result = await run_probe(web_.url("/ok"), oauth2_mod(tokens), 10, guard=guard)
    assert (result.failure.reason, tokens.forms, web_.requests) == ("target_forbidden", [], [])
    assert f":{tokens.server.port}" in result.failure.message
