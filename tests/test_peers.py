"""The test peers and the certificate factory behave as advertised.

These check the fixtures themselves with plain sockets, ssl, dnspython and
aiohttp's client - never with connhealth's probers - so that a prober test
failing later can be blamed on the prober, not on a peer that quietly did
something else than its name says.
"""
from __future__ import annotations

import asyncio
import errno
import json
import select
import socket
import ssl
import time
import warnings
from datetime import datetime, timedelta, timezone

import aiohttp
import dns.asyncquery
import dns.asyncresolver
import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype
import dns.resolver
import pytest
from cryptography import x509

from exporter.certs import CertFactory, Issued, server_context

try:  # works whether or not tests/ becomes a package later
    from tests.peers import BlackholeNet, DNSServer, HTTPServer, RawTCPServer, errno_name
except ImportError:  # pragma: no cover - depends on how pytest put us on sys.path
    from peers import BlackholeNet, DNSServer, HTTPServer, RawTCPServer, errno_name

# Every test talks to something that may deliberately never answer; a hung
# test must fail, not stall the suite.
pytestmark = pytest.mark.timeout(30)

T = 3.0  # generous per-operation bound for things that should be instant


# ---------------------------------------------------------------------------
# DNS
# ---------------------------------------------------------------------------

ZONE = {
    "www.example.test": "A:127.0.0.1,AAAA:::1",
    "multi.example.test": "A:192.0.2.1,A:192.0.2.2",
    "gone.example.test": "NXDOMAIN",
    "broken.example.test": "SERVFAIL",
    "silent.example.test": "DROP",
    "txtonly.example.test": "NODATA",
    "alias.example.test": "CNAME:www.example.test",
    "slow.example.test": "DELAY:0.3,A:127.0.0.2",
}


async def _udp(server: DNSServer, name: str, rdtype: str = "A", timeout: float = T) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype)
    return await dns.asyncquery.udp(q, server.host, port=server.port, timeout=timeout)


def _addresses(resp: dns.message.Message) -> set[str]:
    return {rd.to_text() for rrset in resp.answer for rd in rrset if rrset.rdtype in (1, 28)}


async def test_dns_answers_records_and_logs_queries():
    async with DNSServer(ZONE) as srv:
        a = await _udp(srv, "WWW.Example.Test.")  # case-insensitive, like real DNS
        aaaa = await _udp(srv, "www.example.test", "AAAA")
        multi = await _udp(srv, "multi.example.test")
    assert a.rcode() == dns.rcode.NOERROR and _addresses(a) == {"127.0.0.1"}
    assert _addresses(aaaa) == {"::1"}
    assert _addresses(multi) == {"192.0.2.1", "192.0.2.2"}
    assert srv.queries == [("www.example.test", "A"), ("www.example.test", "AAAA"), ("multi.example.test", "A")]
    assert srv.transports == ["udp", "udp", "udp"]


async def test_dns_negative_answers():
    async with DNSServer(ZONE) as srv:
        nx = await _udp(srv, "gone.example.test")
        unknown = await _udp(srv, "not-in-zone.example.test")
        servfail = await _udp(srv, "broken.example.test")
        nodata = await _udp(srv, "txtonly.example.test")
        aaaa_missing = await _udp(srv, "multi.example.test", "AAAA")  # name exists, type doesn't
    assert nx.rcode() == dns.rcode.NXDOMAIN
    assert unknown.rcode() == dns.rcode.NXDOMAIN
    assert servfail.rcode() == dns.rcode.SERVFAIL
    assert nodata.rcode() == dns.rcode.NOERROR and nodata.answer == []
    assert aaaa_missing.rcode() == dns.rcode.NOERROR and aaaa_missing.answer == []


async def test_dns_drop_never_answers():
    async with DNSServer(ZONE) as srv:
        t0 = time.monotonic()
        with pytest.raises(dns.exception.Timeout):
            await _udp(srv, "silent.example.test", timeout=0.5)
        assert time.monotonic() - t0 >= 0.45
        assert ("silent.example.test", "A") in srv.queries  # seen, just ignored


async def test_dns_tcp_cname_and_delay():
    async with DNSServer(ZONE) as srv:
        q = dns.message.make_query("alias.example.test", "A")
        resp = await dns.asyncquery.tcp(q, srv.host, port=srv.port, timeout=T)
        t0 = time.monotonic()
        slow = await _udp(srv, "slow.example.test")
        elapsed = time.monotonic() - t0
    assert [r.rdtype for r in resp.answer] == [dns.rdatatype.CNAME, dns.rdatatype.A]
    assert _addresses(resp) == {"127.0.0.1"}
    assert srv.transports[0] == "tcp"
    assert _addresses(slow) == {"127.0.0.2"} and elapsed >= 0.25


async def test_dns_through_a_real_resolver():
    # The prober resolves through dnspython's resolver, so make sure its
    # interpretation of our answers is the intended exception per behaviour.
    async with DNSServer(ZONE) as srv:
        res = dns.asyncresolver.Resolver(configure=False)
        res.nameservers = [srv.host]
        res.port = srv.port
        res.lifetime = T
        ans = await res.resolve("www.example.test", "A")
        assert [r.to_text() for r in ans] == ["127.0.0.1"]
        with pytest.raises(dns.resolver.NXDOMAIN):
            await res.resolve("gone.example.test", "A")
        with pytest.raises(dns.resolver.NoAnswer):
            await res.resolve("txtonly.example.test", "A")
        with pytest.raises(dns.resolver.NoNameservers):  # SERVFAIL from the only server
            await res.resolve("broken.example.test", "A")
        res.lifetime = 0.5
        with pytest.raises(dns.resolver.LifetimeTimeout):
            await res.resolve("silent.example.test", "A")


def test_dns_zone_typos_fail_early():
    with pytest.raises(ValueError):
        DNSServer({"x.test": "A 1.2.3.4"})
    with pytest.raises(ValueError):
        DNSServer({"x.test": "MX:mail.test"})


# ---------------------------------------------------------------------------
# Raw TCP
# ---------------------------------------------------------------------------

REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


async def _connect(srv: RawTCPServer):
    return await asyncio.wait_for(asyncio.open_connection(srv.host, srv.port), T)


async def test_raw_reset_before_reading():
    async with RawTCPServer("reset") as srv:
        reader, writer = await _connect(srv)  # the kernel completed the handshake
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(100), T)
        writer.close()
        assert srv.connections == 1


async def test_raw_reset_after_request():
    async with RawTCPServer("reset_after_request") as srv:
        reader, writer = await _connect(srv)
        writer.write(REQUEST)
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(100), T)
        writer.close()
        assert srv.requests == [REQUEST]


async def test_raw_garbage_then_close():
    async with RawTCPServer("garbage") as srv:
        reader, writer = await _connect(srv)
        writer.write(REQUEST)
        data = await asyncio.wait_for(reader.read(), T)  # read() to EOF: it closed
        writer.close()
    assert data == b"HELLO THIS IS NOT HTTP\r\n\r\n"


async def test_raw_stall_blocks_tls_handshake_and_stop_releases_it():
    ctx = ssl.create_default_context()
    async with RawTCPServer("stall") as srv:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(
                asyncio.open_connection(srv.host, srv.port, ssl=ctx, server_hostname="localhost"), 0.5
            )
        # A plain connection left open is cut when the server stops, so a
        # test never waits on its client's own timeout.
        reader, writer = await _connect(srv)
        writer.write(b"anything")
        await asyncio.sleep(0.05)
    t0 = time.monotonic()
    try:
        assert await asyncio.wait_for(reader.read(100), T) == b""
    except ConnectionResetError:
        pass
    assert time.monotonic() - t0 < 1
    writer.close()


async def test_raw_stall_body():
    async with RawTCPServer("stall_body") as srv:
        reader, writer = await _connect(srv)
        writer.write(REQUEST)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), T)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"Content-Length: 100" in head
        assert await asyncio.wait_for(reader.readexactly(3), T) == b"abc"
        with pytest.raises(TimeoutError):  # the other 97 bytes never come
            await asyncio.wait_for(reader.read(1), 0.3)
        writer.close()


async def test_raw_banner_then_echo():
    async with RawTCPServer("banner") as srv:
        reader, writer = await _connect(srv)
        assert await asyncio.wait_for(reader.readline(), T) == b"SSH-2.0-test\r\n"
        writer.write(b"ping\n")
        assert await asyncio.wait_for(reader.readline(), T) == b"ping\n"
        writer.close()


def test_raw_unknown_behaviour_rejected():
    with pytest.raises(ValueError):
        RawTCPServer("explode")


# ---------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------


async def test_http_routes():
    timeout = aiohttp.ClientTimeout(total=T)
    async with HTTPServer() as srv, aiohttp.ClientSession(timeout=timeout) as s:
        async with s.get(srv.url("/")) as r:
            assert (r.status, await r.text()) == (200, "hello connhealth")
            assert r.headers["X-Service"] == "demo" and r.content_type == "text/plain"
        async with s.get(srv.url("/status/503")) as r:
            assert (r.status, await r.text()) == (503, "status 503")
        async with s.get(srv.url("/redirect/2")) as r:
            assert r.status == 200 and [str(h.url.path) for h in r.history] == ["/redirect/2", "/redirect/1", "/redirect/0"]
        async with s.get(srv.url("/loop"), allow_redirects=False) as r:
            assert (r.status, r.headers["Location"]) == (302, "/loop")
        with pytest.raises(aiohttp.TooManyRedirects):
            async with s.get(srv.url("/loop"), max_redirects=3):
                pass
        async with s.get(srv.url("/headers?X-Frame-Options=DENY&X-Frame-Options=SAMEORIGIN")) as r:
            assert r.headers.getall("X-Frame-Options") == ["DENY", "SAMEORIGIN"]
        async with s.get(srv.url("/echo-headers"), headers={"X-Probe": "1"}) as r:
            assert json.loads(await r.text())["X-Probe"] == "1"
        async with s.get(srv.url("/to-http"), params={"url": "http://127.0.0.1:9/x"}, allow_redirects=False) as r:
            assert (r.status, r.headers["Location"]) == (302, "http://127.0.0.1:9/x")
        with pytest.raises(asyncio.TimeoutError):
            async with s.get(srv.url("/slow?delay=5"), timeout=aiohttp.ClientTimeout(total=0.3)):
                pass
    assert ("/echo-headers", "X-Probe") in {(p, k) for p, h in srv.requests for k in h}
    assert srv.url("/x").startswith("http://127.0.0.1:")


async def test_https_server_with_factory_ca(tmp_path):
    f = CertFactory(tmp_path)
    root = f.ca()
    ctx = ssl.create_default_context(cafile=root.cert_file)
    async with HTTPServer(server_context(f.leaf(root))) as srv, aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=T)
    ) as s:
        assert srv.url("/ok").startswith("https://")
        for host in ("127.0.0.1", "localhost"):  # IP SAN and DNS SAN
            async with s.get(srv.url("/ok", host=host), ssl=ctx) as r:
                assert await r.text() == "hello connhealth"


# ---------------------------------------------------------------------------
# Certificates: checked through a real OpenSSL handshake
# ---------------------------------------------------------------------------


async def _handshake(
    issued: Issued,
    trust: Issued | None,
    *,
    server_hostname: str = "localhost",
    server_ctx: ssl.SSLContext | None = None,
    client_ctx: ssl.SSLContext | None = None,
) -> str:
    """Handshake against a server presenting ``issued``; returns the TLS version."""
    if client_ctx is None:
        client_ctx = ssl.create_default_context(cafile=trust.cert_file if trust else None)
    async with HTTPServer(server_ctx or server_context(issued)) as srv:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(srv.host, srv.port, ssl=client_ctx, server_hostname=server_hostname), T
        )
        version = writer.get_extra_info("ssl_object").version()
        writer.close()
        return version


def _verify_code(excinfo) -> int:
    assert isinstance(excinfo.value, ssl.SSLCertVerificationError), repr(excinfo.value)
    return excinfo.value.verify_code


async def test_cert_valid_chain_via_intermediate(tmp_path):
    f = CertFactory(tmp_path)
    root = f.ca()
    inter = f.ca("connhealth test intermediate", issuer=root)
    leaf = f.leaf(inter)
    with open(leaf.cert_file, "rb") as fh:
        presented = x509.load_pem_x509_certificates(fh.read())
    assert [c.subject for c in presented] == [leaf.certificate.subject, inter.certificate.subject]
    assert await _handshake(leaf, root) in ("TLSv1.2", "TLSv1.3")


async def test_cert_defects_give_the_matching_verify_code(tmp_path):
    f = CertFactory(tmp_path)
    root = f.ca()
    now = datetime.now(timezone.utc)

    expired = f.leaf(root, not_after=now - timedelta(days=1))
    assert expired.certificate.not_valid_after_utc < now  # really expired, not just labelled
    with pytest.raises(ssl.SSLError) as e:
        await _handshake(expired, root)
    assert _verify_code(e) == 10  # X509_V_ERR_CERT_HAS_EXPIRED

    future = f.leaf(root, not_before=now + timedelta(days=2))
    assert future.certificate.not_valid_before_utc > now
    with pytest.raises(ssl.SSLError) as e:
        await _handshake(future, root)
    assert _verify_code(e) == 9  # X509_V_ERR_CERT_NOT_YET_VALID

    self_signed = f.leaf(None)
    with pytest.raises(ssl.SSLError) as e:
        await _handshake(self_signed, root)
    assert _verify_code(e) == 18  # DEPTH_ZERO_SELF_SIGNED_CERT
    assert await _handshake(self_signed, self_signed)  # trusted explicitly: fine

    wrong_name = f.leaf(root, sans=("other.test",))
    with pytest.raises(ssl.SSLError) as e:
        await _handshake(wrong_name, root)
    assert _verify_code(e) == 62  # X509_V_ERR_HOSTNAME_MISMATCH

    inter = f.ca("connhealth test intermediate", issuer=root)
    no_chain = f.leaf(inter, include_chain=False)
    with pytest.raises(ssl.SSLError) as e:
        await _handshake(no_chain, root)
    assert _verify_code(e) == 20  # UNABLE_TO_GET_ISSUER_CERT_LOCALLY


async def test_server_context_old_tls_versions(tmp_path):
    f = CertFactory(tmp_path)
    root = f.ca()
    leaf = f.leaf(root)
    old = server_context(leaf, max_version=ssl.TLSVersion.TLSv1)

    # A modern client refuses to go below 1.2, and is *told* so by an alert
    # (the TLSTerminator in front of HTTPServer flushes it; asyncio's own TLS
    # server would just hang up).
    with pytest.raises(ssl.SSLError) as e:
        await _handshake(leaf, root, server_ctx=old)
    assert e.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION", repr(e.value)

    # A client that allows 1.0 (at security level 0, as OpenSSL 3 requires)
    # really negotiates it, so the old server is genuinely old, not broken.
    client = ssl.create_default_context(cafile=root.cert_file)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSv1 is the point
        client.minimum_version = ssl.TLSVersion.TLSv1
    client.set_ciphers("DEFAULT:@SECLEVEL=0")
    assert await _handshake(leaf, root, server_ctx=old, client_ctx=client) == "TLSv1"

    tls13_only = server_context(leaf, min_version=ssl.TLSVersion.TLSv1_3)
    client12 = ssl.create_default_context(cafile=root.cert_file)
    client12.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        await _handshake(leaf, root, server_ctx=tls13_only, client_ctx=client12)


def test_cert_files_are_unique_and_keys_private(tmp_path):
    f = CertFactory(tmp_path)
    a, b = f.leaf(None), f.leaf(None)
    assert len({a.cert_file, b.cert_file, a.key_file, b.key_file}) == 4
    assert (tmp_path / a.key_file).stat().st_mode & 0o077 == 0
    san = a.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}


# ---------------------------------------------------------------------------
# Blackholed / unreachable routes
# ---------------------------------------------------------------------------

# `make test` installs every peer and runs as root: a missing one is a failure, never a skip.
needs_netns = pytest.mark.netns


def _nonblocking_connect(ip: str, timeout: float) -> tuple[int | None, float]:
    """(errno or None on timeout, seconds) for a TCP connect to ip:80."""
    s = socket.socket()
    s.setblocking(False)
    t0 = time.monotonic()
    try:
        rc = s.connect_ex((ip, 80))
        assert rc == errno.EINPROGRESS, errno_name(rc)
        _, writable, _ = select.select([], [s], [], timeout)
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) if writable else None
        return err, time.monotonic() - t0
    finally:
        s.close()


@needs_netns
def test_blackhole_times_out_and_unreachable_fails_fast():
    with BlackholeNet() as net:
        err, elapsed = _nonblocking_connect(net.blackhole_ip, 1.0)
        assert err is None and elapsed >= 0.95, f"expected a timeout, got {errno_name(err)}"
        # Repeatedly: the whole point of the no-ARP link is that this is not
        # rate limited the way the plain `unreachable` route is.
        for _ in range(10):
            err, elapsed = _nonblocking_connect(net.unreachable_ip, 2.0)
            assert err == errno.EHOSTUNREACH, errno_name(err)
            assert elapsed < 0.5


@needs_netns
async def test_unreachable_through_asyncio():
    # asyncio's connect surfaces the same errno the prober will classify.
    with BlackholeNet() as net:
        with pytest.raises(OSError) as e:
            await asyncio.wait_for(asyncio.open_connection(net.unreachable_ip, 443), T)
        assert e.value.errno == errno.EHOSTUNREACH
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.open_connection(net.blackhole_ip, 443), 0.5)


@needs_netns
def test_blackhole_cleans_up():
    import subprocess

    with BlackholeNet() as net:
        ns, dev = net.ns, net.veth_root
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, timeout=10).stdout
    assert ns not in netns and f" {dev}:" not in links and f" {dev}@" not in links
