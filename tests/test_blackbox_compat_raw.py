"""Raw HTTP/1.1 responses and a real HTTP/2 server, probed side by side by blackbox_exporter and connhealth.

Issue 8 ("Prober layer v2", Done when): raw-server cases give the same
success, status, redirect count and body length in both. Each case is a small
asyncio server in the test's loop that writes exact bytes, so the framing under
test is on the wire as written here and not as some server library would
normalise it. Both exporters probe the same server with the same module of
one blackbox.yml; what each *sent* is recorded and asserted too (method,
request target, body, Authorization), because the issue's request-side cases
(POST -> 303, percent-encoding, userinfo) only show there.

The scenario checks run on blackbox's own values first: they prove a case is
what its name says (a 303 is followed, a bad Content-Length is refused), so a
match between the two cannot come from both failing the same wrong way.

A deliberate difference, asserted as such: ``valid_http_versions: [HTTP/2]``.
blackbox 0.23 accepts any string there and compares it with Go's
``resp.Proto``, which is always "HTTP/2.0", so that spelling can never match
(its config check passes even "HTTP/9"). Issue 8 asks connhealth to accept
both spellings; with "HTTP/2" connhealth succeeds where blackbox fails.
"""
from __future__ import annotations

import asyncio
import base64
import re
import contextlib
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import pytest
import pytest_asyncio
import yarl
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from exporter.certs import CertFactory

try:  # works whether or not tests/ becomes a package later
    from tests import procs
    from tests.h2peer import H2Server
    from tests.peers import StreamPeer
except ImportError:  # pragma: no cover
    import procs  # type: ignore[no-redef]
    from h2peer import H2Server  # type: ignore[no-redef]
    from peers import StreamPeer  # type: ignore[no-redef]

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(60)]

LOCALHOST = "127.0.0.1"
POST_BODY = b"probe=1&from=compat"
# Compared exactly between the two exporters in every case.
COMPARED = (
    "probe_success", "probe_http_status_code", "probe_http_redirects", "probe_http_uncompressed_body_length",
    "probe_http_content_length", "probe_http_version",
)
# A request head larger than this is not what either exporter sends.
_MAX_REQUEST_HEAD = 64 << 10
# Each server read waits at most this long: a client that neither sends nor closes ends the handler.
_READ_TIMEOUT = 10.0


# ---------------------------------------------------------------------------
# The scripted server
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """Exact response bytes; ``close``: hang up (FIN) right after them instead of waiting for another request."""

    wire: bytes
    close: bool = False


@dataclass(frozen=True, slots=True)
class Received:
    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        assert len(values) <= 1, f"{name} sent {len(values)} times: {values}"
        return values[0] if values else None


_NOT_FOUND = Reply(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found")


class ScriptedServer(StreamPeer):
    """HTTP/1.1 on 127.0.0.1 answering each request target with its scripted Reply (404 otherwise).

    A connection serves requests until the client closes it or a Reply says
    ``close``, so a client that reuses its connection for a redirect (Go does)
    finds the server still there. ``received`` records every request.
    """

    def __init__(self, routes: Mapping[str, Reply]) -> None:
        super().__init__(LOCALHOST, limit=_MAX_REQUEST_HEAD)
        self.routes = dict(routes)
        self.received: list[Received] = []

    def url(self, path: str, userinfo: str = "") -> str:
        return f"http://{userinfo + '@' if userinfo else ''}{LOCALHOST}:{self.port}{path}"

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._track(writer)
        try:
            while (request := await asyncio.wait_for(_read_request(reader), _READ_TIMEOUT)) is not None:
                self.received.append(request)
                reply = self.routes.get(request.target, _NOT_FOUND)
                writer.write(reply.wire)
                await writer.drain()
                if reply.close:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass  # a client giving up on a broken response is part of the script
        finally:
            self._writers.discard(writer)
            writer.close()


async def _read_request(reader: asyncio.StreamReader) -> Received | None:
    """One request (None at a clean EOF between requests); the body by Content-Length or chunked."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise
        return None
    request_line, *lines = head[:-4].decode("latin-1").split("\r\n")
    method, target, version = request_line.split(" ")
    assert version == "HTTP/1.1", request_line
    headers = tuple((name.strip(), value.strip()) for name, _, value in (line.partition(":") for line in lines))
    request = Received(method, target, headers, b"")
    if (request.header("transfer-encoding") or "").lower() == "chunked":
        body = b""
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            body += (await reader.readexactly(size + 2))[:-2]
        while await reader.readuntil(b"\r\n") != b"\r\n":  # trailer fields, up to the blank line
            pass
    else:
        body = await reader.readexactly(int(request.header("content-length") or 0))
    return Received(method, target, headers, body)


# ---------------------------------------------------------------------------
# Both exporters, once per module
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Env:
    bb: procs.ManagedProcess
    ch: procs.ManagedProcess
    h2: H2Server


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    work: Path = tmp_path_factory.mktemp("bbcompat-raw")
    certs = CertFactory(work / "certs")
    ca = certs.ca("connhealth raw compat CA")
    leaf = certs.leaf(ca)

    config = work / "blackbox.yml"
    config.write_text(f"""
modules:
  get:
    prober: http
    timeout: 5s
    http:
      preferred_ip_protocol: ip4
  post:
    prober: http
    timeout: 5s
    http:
      method: POST
      body: "{POST_BODY.decode()}"
      preferred_ip_protocol: ip4
  folded:
    prober: http
    timeout: 5s
    http:
      preferred_ip_protocol: ip4
      fail_if_header_not_matches:
        - header: X-Folded
          regexp: '^first second$'
  h2_only:
    prober: http
    timeout: 5s
    http:
      preferred_ip_protocol: ip4
      valid_http_versions: ["HTTP/2.0"]
      tls_config:
        ca_file: {ca.cert_file}
  h2_short_spelling:
    prober: http
    timeout: 5s
    http:
      preferred_ip_protocol: ip4
      valid_http_versions: ["HTTP/2"]
      tls_config:
        ca_file: {ca.cert_file}
  h1_only:
    prober: http
    timeout: 5s
    http:
      preferred_ip_protocol: ip4
      valid_http_versions: ["HTTP/1.1"]
      tls_config:
        ca_file: {ca.cert_file}
""")
    h2 = H2Server(leaf)
    bb: procs.ManagedProcess | None = None
    ch: procs.ManagedProcess | None = None
    try:
        await h2.start()
        # One after the other: a gather would leave the first one running if the second failed to start.
        bb = started_bb = await procs.start_blackbox(config, work)
        ch = started_ch = await procs.start_connhealth(config, work)
        yield Env(bb=started_bb, ch=started_ch, h2=h2)
    finally:
        for p in (ch, bb):
            if p is not None:
                await p.astop()
        await h2.stop()


@dataclass(frozen=True, slots=True)
class Scrape:
    text: str
    families: dict[str, Metric]

    def value(self, name: str) -> float:
        assert name in self.families, f"{name} missing"
        samples = self.families[name].samples
        assert len(samples) == 1, samples
        return float(samples[0].value)


async def scrape(proc: procs.ManagedProcess, target: str, module: str) -> Scrape:
    # The query is encoded here, not by aiohttp: a %40 in the target's userinfo must reach the exporter as %40.
    url = yarl.URL(f"{proc.base_url}/probe?{urlencode({'target': target, 'module': module})}", encoded=True)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        async with session.get(url) as resp:
            text = await resp.text()
    assert resp.status == 200, f"{proc.name} /probe answered {resp.status}: {text}"
    return Scrape(text, {f.name: f for f in text_string_to_metric_families(text)})


def mismatches(bb: Scrape, ch: Scrape) -> list[str]:
    return [f"{name}: blackbox {bb.value(name)!r} != connhealth {ch.value(name)!r}"
            for name in COMPARED if bb.value(name) != ch.value(name)]


# ---------------------------------------------------------------------------
# HTTP/1.1 cases
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RawCase:
    id: str
    module: str
    path: str  # as written in the probed URL
    routes: Mapping[str, Reply]  # by request target as it arrives on the wire
    expect: Mapping[str, float]  # blackbox's own values: the scenario is what its id says
    sent: tuple[tuple[str, str, bytes], ...]  # (method, request target, body) each exporter must send, in order
    userinfo: str = ""


def _ok(body: bytes) -> Reply:
    return Reply(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


def _redirect(code: int, reason: str) -> Reply:
    return Reply(b"HTTP/1.1 %d %s\r\nLocation: /landing\r\nContent-Length: 0\r\n\r\n" % (code, reason.encode()))


_LANDING = _ok(b"landed")
_OK_GET = {"probe_success": 1, "probe_http_status_code": 200, "probe_http_redirects": 0}
_REFUSED = {"probe_success": 0, "probe_http_status_code": 0, "probe_http_uncompressed_body_length": 0}


def _get(path: str, target: str | None = None) -> tuple[tuple[str, str, bytes], ...]:
    return (("GET", target or path, b""),)


def _post_redirect(code: int, reason: str, then: str) -> RawCase:
    path = f"/post-{code}"
    return RawCase(
        f"post_{code}_{'get' if then == 'GET' else 'keeps_post'}", "post", path,
        {path: _redirect(code, reason), "/landing": _LANDING},
        {"probe_success": 1, "probe_http_status_code": 200, "probe_http_redirects": 1,
         "probe_http_uncompressed_body_length": len(b"landed")},
        (("POST", path, POST_BODY), (then, "/landing", POST_BODY if then == "POST" else b"")),
    )


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"

RAW_CASES = [
    RawCase("1xx_100_continue_then_200", "get", "/",
            {"/": Reply(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")},
            {**_OK_GET, "probe_http_uncompressed_body_length": 5, "probe_http_content_length": 5}, _get("/")),
    RawCase("1xx_103_early_hints_then_200", "get", "/",
            {"/": Reply(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n\r\n"
                        b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhinted")},
            {**_OK_GET, "probe_http_uncompressed_body_length": 6, "probe_http_content_length": 6}, _get("/")),
    _post_redirect(303, "See Other", "GET"),
    _post_redirect(301, "Moved Permanently", "GET"),
    _post_redirect(302, "Found", "GET"),
    _post_redirect(307, "Temporary Redirect", "POST"),
    _post_redirect(308, "Permanent Redirect", "POST"),
    RawCase("content_length_negative", "get", "/",
            {"/": Reply(b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\nhello")}, _REFUSED, _get("/")),
    RawCase("content_length_underscore", "get", "/",
            {"/": Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 1_0\r\n\r\n0123456789")}, _REFUSED, _get("/")),
    RawCase("content_length_conflicting", "get", "/",
            {"/": Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!")}, _REFUSED, _get("/")),
    RawCase("content_length_duplicate_equal", "get", "/",
            {"/": Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello")},
            {**_OK_GET, "probe_http_uncompressed_body_length": 5, "probe_http_content_length": 5}, _get("/")),
    # The module requires X-Folded to read "first second": both must unfold, not just tolerate, the line.
    RawCase("obs_fold_header", "folded", "/",
            {"/": Reply(b"HTTP/1.1 200 OK\r\nX-Folded: first\r\n   second\r\nContent-Length: 5\r\n\r\nhello")},
            {**_OK_GET, "probe_http_uncompressed_body_length": 5, "probe_failed_due_to_regex": 0}, _get("/")),
    RawCase("chunked_extensions_and_trailers", "get", "/",
            {"/": Reply(CHUNKED_HEAD + b"Trailer: X-Checksum\r\n\r\n"
                        b'5;name=value;quoted="a b"\r\nhello\r\n6;flag\r\n world\r\n0;last=1\r\nX-Checksum: 42\r\n\r\n')},
            {**_OK_GET, "probe_http_uncompressed_body_length": 11, "probe_http_content_length": -1}, _get("/")),
    RawCase("chunked_uppercase_hex", "get", "/",
            {"/": Reply(CHUNKED_HEAD + b"\r\nA\r\n0123456789\r\n1F\r\n" + b"x" * 31 + b"\r\n0\r\n\r\n")},
            {**_OK_GET, "probe_http_uncompressed_body_length": 41, "probe_http_content_length": -1}, _get("/")),
    RawCase("chunked_truncated_mid_chunk", "get", "/",
            {"/": Reply(CHUNKED_HEAD + b"\r\n10\r\n0123456", close=True)},
            {"probe_success": 0, "probe_http_status_code": 200, "probe_http_content_length": -1}, _get("/")),
    RawCase("content_length_longer_than_body_then_close", "get", "/",
            {"/": Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello", close=True)},
            {"probe_success": 0, "probe_http_status_code": 200, "probe_http_content_length": 100}, _get("/")),
    RawCase("path_space", "get", "/a b", {"/a%20b": _ok(b"space")},
            {**_OK_GET, "probe_http_uncompressed_body_length": 5}, _get("/a b", "/a%20b")),
    RawCase("path_unicode", "get", "/ü", {"/%C3%BC": _ok(b"unicode")},
            {**_OK_GET, "probe_http_uncompressed_body_length": 7}, _get("/ü", "/%C3%BC")),
    RawCase("userinfo_basic_auth", "get", "/private", {"/private": _ok(b"secret")},
            {**_OK_GET, "probe_http_uncompressed_body_length": 6}, _get("/private"), userinfo="user:p%40ss"),
]

USERINFO_CREDENTIALS = "user:p@ss"


async def probe_raw(proc: procs.ManagedProcess, case: RawCase) -> tuple[Scrape, list[Received]]:
    """One /probe of the case's own fresh server: what the exporter reported and what it sent."""
    async with ScriptedServer(case.routes) as server:
        result = await scrape(proc, server.url(case.path, case.userinfo), case.module)
        return result, server.received


@pytest.mark.parametrize("case", RAW_CASES, ids=[c.id for c in RAW_CASES])
async def test_raw_response_matches_blackbox(env: Env, case: RawCase) -> None:
    bb, bb_sent = await probe_raw(env.bb, case)
    ch, ch_sent = await probe_raw(env.ch, case)

    for name, want in case.expect.items():
        assert bb.value(name) == want, f"scenario check on blackbox: {name}"
    problems = mismatches(bb, ch)
    assert not problems, f"{case.id}:\n  " + "\n  ".join(problems)

    for who, sent in (("blackbox", bb_sent), ("connhealth", ch_sent)):
        assert [(r.method, r.target, r.body) for r in sent] == list(case.sent), who
        for request in sent:
            # A redirect turned into GET carries no body and no framing for one.
            if request.method == "GET":
                assert request.header("content-length") is None, (who, request)
                assert request.header("transfer-encoding") is None, (who, request)
            else:
                assert request.header("content-length") == str(len(request.body)), (who, request)

    # Go sends the previous URL as Referer on a redirect (userinfo stripped); connhealth does the same.
    referers = {who: [re.sub(r"^http://127\.0\.0\.1:\d+", "", r.header("referer") or "-") for r in sent]
                for who, sent in (("blackbox", bb_sent), ("connhealth", ch_sent))}
    assert referers["blackbox"] == referers["connhealth"], referers

    if case.userinfo:
        auth = {who: [r.header("authorization") for r in sent] for who, sent in (("blackbox", bb_sent), ("connhealth", ch_sent))}
        assert auth["blackbox"] == auth["connhealth"], auth
        (value,) = auth["connhealth"]
        assert value is not None and value.startswith("Basic "), value
        assert base64.b64decode(value.removeprefix("Basic ")).decode() == USERINFO_CREDENTIALS
        for who, result in (("blackbox", bb), ("connhealth", ch)):
            for secret in ("p@ss", "p%40ss", value.removeprefix("Basic ")):
                assert secret not in result.text, f"{who} /probe output shows {secret!r}"
    else:
        assert all(r.header("authorization") is None for r in bb_sent + ch_sent)


# ---------------------------------------------------------------------------
# HTTP/2 against hypercorn
# ---------------------------------------------------------------------------

# (id, module, blackbox's own values, connhealth's where they deliberately differ)
H2_CASES: list[tuple[str, str, dict[str, float], dict[str, float]]] = [
    ("h2_valid_http_versions_http2_0", "h2_only",
     {"probe_success": 1, "probe_http_version": 2, "probe_http_status_code": 200, "probe_http_content_length": 16,
      "probe_http_uncompressed_body_length": 16}, {}),
    ("h2_valid_http_versions_http1_1_fails", "h1_only",
     {"probe_success": 0, "probe_http_version": 2, "probe_http_status_code": 200}, {}),
    # Go's resp.Proto is "HTTP/2.0"; blackbox compares strings, so "HTTP/2" never matches there.
    ("h2_valid_http_versions_http2_short_spelling", "h2_short_spelling",
     {"probe_success": 0, "probe_http_version": 2, "probe_http_status_code": 200}, {"probe_success": 1}),
]


@pytest.mark.parametrize("case", H2_CASES, ids=[c[0] for c in H2_CASES])
async def test_http2_matches_blackbox(env: Env, case: tuple[str, str, dict[str, float], dict[str, float]]) -> None:
    _, module, expect, connhealth_differs = case
    target = env.h2.url("/ok")
    results: dict[str, Scrape] = {}
    for who, proc in (("blackbox", env.bb), ("connhealth", env.ch)):
        before = len(env.h2.requests)
        results[who] = await scrape(proc, target, module)
        versions = [(method, path, version) for method, path, version, _ in env.h2.requests[before:]]
        assert versions == [("GET", "/ok", "2")], (who, versions)
    bb, ch = results["blackbox"], results["connhealth"]

    for name, want in expect.items():
        assert bb.value(name) == want, f"scenario check on blackbox: {name}"
    assert bb.value("probe_http_ssl") == ch.value("probe_http_ssl") == 1
    for name, want in connhealth_differs.items():
        assert bb.value(name) != want and ch.value(name) == want, f"{name}: the documented difference is gone"
    problems = [p for p in mismatches(bb, ch) if p.split(":")[0] not in connhealth_differs]
    assert not problems, f"{module}:\n  " + "\n  ".join(problems)


async def test_connhealth_check_config_accepts_both_http2_spellings(tmp_path: Path) -> None:
    """What blackbox cannot show (it takes any string): connhealth validates the version names."""
    async def check(versions: str) -> tuple[int, str]:
        config = tmp_path / "versions.yml"
        config.write_text(f"modules:\n  m:\n    prober: http\n    http:\n      valid_http_versions: {versions}\n")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "exporter", "check-config", str(config), cwd=procs.REPO,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), 30)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        assert proc.returncode is not None
        return proc.returncode, out.decode()

    assert (await check('["HTTP/2", "HTTP/2.0", "HTTP/1.1"]'))[0] == 0
    code, out = await check('["HTTP/9"]')
    assert code == 2 and "unknown version 'HTTP/9'" in out, out
