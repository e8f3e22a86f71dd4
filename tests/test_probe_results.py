"""Successful probes report exactly what happened: phases, peer, TLS, HTTP, hops.

Every expected value is computed by the test from what it set up itself (the
certificate it issued, the body the server sends, the port it listens on),
never copied from the prober's own output.
"""
from __future__ import annotations

import hashlib
import json
import socket
from datetime import datetime, timedelta, timezone

import pytest

import exporter
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from exporter.certs import Issued, server_context
from exporter.engine import run_probe
from exporter.result import Certificate, Peer

PHASES = ("dns", "connect", "tls", "request", "first_byte", "transfer")

try:  # works whether or not tests/ becomes a package later
    from tests.peers import DNSServer, HTTPServer, RawTCPServer
    from tests.probekit import PER_TEST_TIMEOUT, ca, certs, https_mod, leaf, mod, resolver_for  # noqa: F401
except ImportError:  # pragma: no cover
    from peers import DNSServer, HTTPServer, RawTCPServer
    from probekit import PER_TEST_TIMEOUT, ca, certs, https_mod, leaf, mod, resolver_for  # noqa: F401

pytestmark = pytest.mark.timeout(PER_TEST_TIMEOUT)

OK_BODY = b"hello connhealth"  # what HTTPServer's /ok serves
HTTP_PHASES = {"connect", "request", "first_byte", "transfer"}
HTTPS_PHASES = HTTP_PHASES | {"tls"}
TLS13_SUITES = {"TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256"}


def expected_cert(issued: Issued) -> Certificate:
    """What the chain entry for ``issued`` must say, computed independently."""
    cert = x509.load_pem_x509_certificate(issued.cert_pem)
    der = cert.public_bytes(serialization.Encoding.DER)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = tuple(san.get_values_for_type(x509.DNSName)) + tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        sans = ()
    return Certificate(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        sans=sans,
        not_before=cert.not_valid_before_utc.timestamp(),
        not_after=cert.not_valid_after_utc.timestamp(),
        serial=format(cert.serial_number, "x"),
        fingerprint_sha256=hashlib.sha256(der).hexdigest(),
    )


@pytest.fixture
async def web():
    async with HTTPServer() as srv:
        yield srv


@pytest.fixture
async def secure(leaf):
    async with HTTPServer(server_context(leaf)) as srv:
        yield srv


# ---------------------------------------------------------------------------
# phases present / absent
# ---------------------------------------------------------------------------


async def test_http_ip_literal_phases(web):
    result = await run_probe(web.url("/ok"), mod("http"), 5)
    assert result.success, result.failure
    assert set(result.phases) == HTTP_PHASES  # no "dns" key for an IP, no "tls" for http://
    # transfer runs from the first byte's arrival to the body end's (kernel timestamps): 0 when both came in
    # one read, which a loaded machine makes likely.
    assert all(v > 0 for k, v in result.phases.items() if k != "transfer") and result.phases["transfer"] >= 0
    assert result.tls is None
    assert result.peer == Peer(ip="127.0.0.1", family="ipv4", port=web.port)
    assert result.tcp is not None and result.tcp.rtt_seconds > 0 and result.tcp.retransmits == 0
    assert sum(result.phases.values()) <= result.duration_seconds
    assert result.timeout_seconds == 5
    assert list(result.phases) == [p for p in PHASES if p in result.phases]  # in connection order
    # each phase starts where the previous one ended (no gaps on one connection), inside the probe
    for before, after in zip(result.timeline, result.timeline[1:]):
        assert before.end <= after.start + 1e-6, result.timeline
    assert result.timeline[0].start >= 0 and result.timeline[-1].end <= result.duration_seconds


async def test_hostname_via_loopback_dns_has_dns_phase(web):
    zone = {"www.example.test": "A:127.0.0.1"}
    async with DNSServer(zone) as dns:
        m = mod("http", http={"preferred_ip_protocol": "ip4"}, resolver=resolver_for(dns))
        result = await run_probe(f"http://www.example.test:{web.port}/ok", m, 5)
    assert result.success, result.failure
    assert set(result.phases) == HTTP_PHASES | {"dns"}
    assert result.phases["dns"] > 0
    assert dns.queries == [("www.example.test", "A")]
    assert result.peer == Peer(ip="127.0.0.1", family="ipv4", port=web.port)
    assert web.requests[-1][1]["Host"] == f"www.example.test:{web.port}"


async def test_hostname_ip6_preferred_falls_back_to_ip4(web):
    zone = {"www.example.test": "A:127.0.0.1"}
    async with DNSServer(zone) as dns:
        result = await run_probe(f"http://www.example.test:{web.port}/ok", mod("http", resolver=resolver_for(dns)), 5)
    assert result.success, result.failure
    assert dns.queries == [("www.example.test", "AAAA"), ("www.example.test", "A")]
    assert result.peer.family == "ipv4"


async def test_localhost_system_resolver(web):
    m = mod("http", http={"preferred_ip_protocol": "ip4", "ip_protocol_fallback": False})
    result = await run_probe(f"http://localhost:{web.port}/ok", m, 5)
    assert result.success, result.failure
    assert "dns" in result.phases
    assert result.peer.ip == "127.0.0.1"


async def test_tcp_connect_phases_only():
    async with RawTCPServer("banner") as srv:
        result = await run_probe(f"127.0.0.1:{srv.port}", mod("tcp"), 5)
    assert result.success, result.failure
    assert set(result.phases) == {"connect"}
    assert result.details is None and result.tls is None
    assert result.peer == Peer(ip="127.0.0.1", family="ipv4", port=srv.port)
    assert result.tcp.rtt_seconds > 0


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no ::1 on this host")
async def test_tcp_ipv6_literal():
    async with RawTCPServer("banner", host="::1") as srv:
        result = await run_probe(f"[::1]:{srv.port}", mod("tcp"), 5)
    assert result.success, result.failure
    assert result.peer == Peer(ip="::1", family="ipv6", port=srv.port)
    assert "dns" not in result.phases


async def test_tls_connect_module(secure, ca):
    m = mod("tcp", tcp={"tls": True, "tls_config": {"ca_file": ca.cert_file}})
    result = await run_probe(f"127.0.0.1:{secure.port}", m, 5)
    assert result.success, result.failure
    assert set(result.phases) == {"connect", "tls"}
    assert result.tls.version == "TLS 1.3"
    assert result.tls.verification == "verified"


# ---------------------------------------------------------------------------
# TLS info
# ---------------------------------------------------------------------------


async def test_tls_info_matches_the_certificate(secure, ca, leaf):
    result = await run_probe(secure.url("/ok"), https_mod(ca), 5)
    assert result.success, result.failure
    assert set(result.phases) == HTTPS_PHASES
    tls = result.tls
    assert tls.version == "TLS 1.3"
    assert tls.cipher in TLS13_SUITES
    assert tls.verification == "verified"
    assert tls.server_name is None  # an IP literal is not sent as SNI
    assert tls.alpn is None  # offered http/1.1, the server selected none
    assert tls.chain == (expected_cert(leaf),)  # root is never sent
    assert tls.chain[0].sans == ("localhost", "127.0.0.1", "::1")
    assert tls.chain[0].issuer == x509.load_pem_x509_certificate(ca.cert_pem).subject.rfc4514_string()
    assert tls.earliest_expiry == leaf.not_valid_after.timestamp()
    d = result.to_dict()
    assert d["tls"]["earliest_expiry"] == leaf.not_valid_after.timestamp()
    assert d["tls"]["chain"][0]["fingerprint_sha256"] == expected_cert(leaf).fingerprint_sha256


async def test_tls_chain_with_intermediate_and_earliest_expiry(certs, ca):
    soon = datetime.now(timezone.utc) + timedelta(days=10)
    inter = certs.ca("short-lived intermediate", issuer=ca, not_after=soon)
    leaf = certs.leaf(inter, name="localhost")  # 30 days: outlives its issuer
    async with HTTPServer(server_context(leaf)) as srv:
        result = await run_probe(srv.url("/ok", host="localhost"), https_mod(ca, preferred_ip_protocol="ip4"), 5)
    assert result.success, result.failure
    tls = result.tls
    assert tls.chain == (expected_cert(leaf), expected_cert(inter))
    assert tls.earliest_expiry == inter.not_valid_after.timestamp() < leaf.not_valid_after.timestamp()
    assert tls.chain[0].not_after == leaf.not_valid_after.timestamp()
    assert tls.server_name == "localhost"


async def test_tls_insecure_skip_verify(certs):
    selfsigned = certs.leaf(None)
    async with HTTPServer(server_context(selfsigned)) as srv:
        result = await run_probe(srv.url("/ok"), mod("http", http={"tls_config": {"insecure_skip_verify": True}}), 5)
    assert result.success, result.failure
    assert result.tls.verification == "skipped"
    assert result.tls.chain == (expected_cert(selfsigned),)


# ---------------------------------------------------------------------------
# HTTP info
# ---------------------------------------------------------------------------


async def test_http_info(secure, ca):
    url = secure.url("/ok")
    result = await run_probe(url, https_mod(ca), 5)
    assert result.success, result.failure
    h = result.details
    assert (h.status, h.version, h.redirects) == (200, "HTTP/1.1", 0)
    assert h.content_length == len(OK_BODY)
    assert h.body_length == len(OK_BODY)
    assert h.final_url == url
    assert len(result.hops) == 1 and result.hops[0].url == url and result.hops[0].status == 200
    assert result.hops[0].method == "GET"
    assert result.hop_phases(0) == dict(result.phases)
    assert result.hops[0].peer == result.peer


async def test_http_chunked_body_length():
    async def chunked(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n")
        await writer.drain()
        writer.close()

    async with RawTCPServer(chunked) as srv:
        result = await run_probe(f"http://127.0.0.1:{srv.port}/", mod("http"), 5)
    assert result.success, result.failure
    assert result.details.content_length is None
    assert result.details.body_length == len(b"hello, world")


async def test_redirect_hops_each_with_their_own_phases(web):
    # HTTPServer's /redirect/n makes n+1 redirects: /redirect/2 -> /redirect/1 -> /redirect/0 -> /ok
    result = await run_probe(web.url("/redirect/2"), mod("http"), 5)
    assert result.success, result.failure
    h = result.details
    paths = ["/redirect/2", "/redirect/1", "/redirect/0", "/ok"]
    assert [hop.url for hop in result.hops] == [web.url(p) for p in paths]
    assert [hop.status for hop in result.hops] == [302, 302, 302, 200]
    assert h.redirects == 3 and h.final_url == web.url("/ok")
    for i in range(len(result.hops)):
        # one connection per hop: every hop's connect is measured
        assert set(result.hop_phases(i)) == HTTP_PHASES
    assert dict(result.phases) == result.hop_phases(3)
    total = result.total_phases()
    for name in HTTP_PHASES:
        assert total[name] == pytest.approx(sum(result.hop_phases(i)[name] for i in range(len(result.hops))))
    assert total["connect"] > result.phases["connect"]
    assert result.to_dict()["phases_total"] == total
    assert [p for p, _ in web.requests] == paths


async def test_redirect_across_schemes_has_tls_only_on_https_hops(web, secure, ca):
    result = await run_probe(secure.url("/to-http?url=" + web.url("/ok")), https_mod(ca), 5)
    assert result.success, result.failure
    first, second = result.hops
    assert set(result.hop_phases(0)) == HTTPS_PHASES and first.status == 302
    assert set(result.hop_phases(1)) == HTTP_PHASES and second.status == 200
    assert result.tls is not None  # learned on the first hop


async def test_no_phases_total_without_redirects(web):
    result = await run_probe(web.url("/ok"), mod("http"), 5)
    assert "phases_total" not in result.to_dict()
    assert result.total_phases() == dict(result.phases)


async def test_headers_and_body_sent(web):
    m = mod("http", http={"method": "POST", "headers": {"X-Probe": "connhealth", "Accept": "application/json"}, "body": "ping"})
    result = await run_probe(web.url("/echo-headers"), m, 5)
    assert result.success, result.failure
    path, headers = web.requests[-1]
    assert path == "/echo-headers"
    assert headers["X-Probe"] == "connhealth"
    assert headers["Accept"] == "application/json"  # the module's, not the default */*
    assert headers["User-Agent"] == f"connhealth/{exporter.__version__}"
    assert headers["Host"] == f"127.0.0.1:{web.port}"
    assert headers["Content-Length"] == "4"
    assert headers["Connection"] == "close"


async def test_body_reaches_the_server(web):
    m = mod(
        "http",
        http={"method": "PUT", "body": "ping", "fail_if_body_not_matches_regexp": ['"method": "PUT"', '"body": "ping"']},
    )
    result = await run_probe(web.url("/echo-body"), m, 5)
    assert result.success, result.failure
    assert not result.failed_due_to_regex


async def test_post_module_sends_empty_body_with_length(web):
    result = await run_probe(web.url("/echo-headers"), mod("http", http={"method": "POST"}), 5)
    assert result.success, result.failure
    assert web.requests[-1][1]["Content-Length"] == "0"


async def test_result_is_json_serialisable(secure, ca):
    result = await run_probe(secure.url("/redirect/0"), https_mod(ca), 5)
    d = json.loads(json.dumps(result.to_dict()))
    assert d["success"] is True and d["failure"] is None
    assert set(d["phases"]) == HTTPS_PHASES
    assert d["peer"] == {"ip": "127.0.0.1", "family": "ipv4", "port": secure.port}
    assert d["details"]["status"] == 200 and d["details"]["redirects"] == 1 and len(d["hops"]) == 2
    assert [h["status"] for h in d["hops"]] == [302, 200] and [h["method"] for h in d["hops"]] == ["GET", "GET"]
    # the timeline: every phase of both hops, each with its offset from the probe's start, in order
    assert [(p["hop"], p["name"]) for p in d["timeline"]] == [(h, n) for h in (0, 1) for n in ("connect", "tls", "request", "first_byte", "transfer")]
    assert all(a["start"] + a["duration"] <= b["start"] + 1e-6 for a, b in zip(d["timeline"], d["timeline"][1:]))
    assert d["tcp"]["rtt_seconds"] > 0


@pytest.mark.parametrize(
    ("module_timeout", "given", "effective"),
    [(None, None, 10.0), ("2s", None, 2.0), ("2s", 5, 2.0), ("2s", 1, 1.0), (None, 3, 3.0)],
)
async def test_effective_timeout_is_the_smallest(web, module_timeout, given, effective):
    fields = {"timeout": module_timeout} if module_timeout else {}
    result = await run_probe(web.url("/ok"), mod("http", **fields), given)
    assert result.success, result.failure
    assert result.timeout_seconds == effective


# --- the result types' own __init__ (result.fast_init) -------------------------------------

def test_fast_init_keeps_the_dataclass_contract() -> None:
    """Same signature and defaults as the generated __init__, frozen, replace() and equality work."""
    import dataclasses
    import inspect

    from exporter.result import Hop, ProbeResult, TCPInfo
    from exporter.sinks.history import HistoryEntry

    for cls in (Peer, TCPInfo, Hop, ProbeResult, HistoryEntry):
        params = inspect.signature(cls).parameters
        fields = [f for f in dataclasses.fields(cls) if f.init]
        assert list(params) == [f.name for f in fields], cls
        assert [p.default for p in params.values()] == [
            inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default for f in fields], cls
    result = ProbeResult("t", "m", "tcp", 1.0, 2.0, 3.0, peer=Peer("127.0.0.1", "ipv4", 80))
    assert (result.target, result.peer.port, result.hops, result.sampled, result.total_phases()) == ("t", 80, (), False, {})
    assert result == ProbeResult(target="t", module="m", prober="tcp", started_at=1.0, duration_seconds=2.0,
                                 timeout_seconds=3.0, peer=Peer("127.0.0.1", "ipv4", 80))
    assert dataclasses.replace(result, target="u").target == "u"
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.target = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        ProbeResult("t", "m")  # type: ignore[call-arg]
