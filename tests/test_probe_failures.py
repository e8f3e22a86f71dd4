"""Every failure reason, produced by a real fault, attributed to its exact (phase, reason).

No mocks: each test builds the fault out of a real peer (tests/peers.py), a
real certificate (exporter.certs) or a real route (BlackholeNet), runs
``run_probe`` and pins the (phase, reason) it reports. Where a phase was not
reached it must be absent from ``result.phases``.
"""
from __future__ import annotations

import asyncio
import dataclasses
import ssl
import time
from datetime import datetime, timedelta, timezone

import pytest

from exporter.certs import server_context
from exporter.engine import run_probe
from exporter.result import Peer, ProbeResult

try:  # works whether or not tests/ becomes a package later
    from tests.peers import DNSServer, HTTPServer, RawTCPServer
    from tests.probekit import PER_TEST_TIMEOUT, blackhole, ca, certs, closed_port, https_mod, leaf, mod, needs_netns, resolver_for  # noqa: F401
except ImportError:  # pragma: no cover
    from peers import DNSServer, HTTPServer, RawTCPServer
    from probekit import PER_TEST_TIMEOUT, blackhole, ca, certs, closed_port, https_mod, leaf, mod, needs_netns, resolver_for  # noqa: F401

pytestmark = pytest.mark.timeout(PER_TEST_TIMEOUT)

NOW = datetime.now(timezone.utc)


def pin(result: ProbeResult, phase: str, reason: str) -> None:
    """Assert the exact failure, with the whole result in the message when it is wrong."""
    assert result.failure is not None, f"expected {phase}/{reason}, probe succeeded: {result.phases}"
    got = (result.failure.phase, result.failure.reason)
    assert got == (phase, reason), f"expected {(phase, reason)}, got {got}: {result.failure.message}\n" + "\n".join(result.logs)
    assert not result.success
    assert result.failure.message  # always says something


# Timeouts are pinned by what the result says (which timer fired, how long the
# engine's own clock ran) rather than by a tight bound on the test's clock, which
# a loaded machine stretches. The lower bounds are timing truth and stay exact:
# asyncio may fire a timer up to its clock resolution (1 ns) early and offsets
# are floats, so GRAIN is granularity, not slack. The upper bounds only say
# "this timer, not the next thing that could have ended the probe" and leave
# seconds of room for a loaded machine.
GRAIN = 1e-6


def assert_deadline(result: ProbeResult, elapsed: float, timeout: float, *, before: float) -> None:
    """The overall deadline of ``timeout`` s ended the probe, after really waiting it, well before ``before``."""
    assert result.failure is not None
    assert "(overall probe deadline)" in result.failure.message, result.failure.message
    assert result.timeout_seconds == timeout
    assert result.duration_seconds >= timeout - GRAIN, result.duration_seconds
    assert elapsed >= result.duration_seconds - GRAIN, (elapsed, result.duration_seconds)  # the test saw it wait
    assert result.duration_seconds < before, f"{result.duration_seconds:.3f}s: not just the {timeout:g}s deadline"


def assert_phase_limit(result: ProbeResult, elapsed: float, phase: str, limit: float, *, timeout: float, before: float) -> None:
    """``phase``'s own limit of ``limit`` s ended it (not the overall ``timeout``): the phase really lasted ``limit``."""
    assert result.failure is not None
    assert f"({phase} phase limit): phase limit {limit:g}s exceeded" in result.failure.message, result.failure.message
    assert result.timeout_seconds == timeout
    assert result.failed_phase_start is not None
    in_phase = result.duration_seconds - result.failed_phase_start
    assert in_phase >= limit - GRAIN, in_phase
    assert elapsed >= result.duration_seconds - GRAIN, (elapsed, result.duration_seconds)
    assert result.duration_seconds < before, f"{result.duration_seconds:.3f}s: not just the {limit:g}s phase limit"


# ---------------------------------------------------------------------------
# dns
# ---------------------------------------------------------------------------

ZONE = {
    "www.example.test": "A:127.0.0.1",
    "gone.example.test": "NXDOMAIN",
    "broken.example.test": "SERVFAIL",
    "refusing.example.test": "REFUSED",
    "silent.example.test": "DROP",
    "nodata.example.test": "NODATA",
    "v6only.example.test": "AAAA:::1",
}


async def test_dns_nxdomain():
    async with DNSServer(ZONE) as dns:
        result = await run_probe("http://gone.example.test/", mod("http", resolver=resolver_for(dns)), 5)
    pin(result, "dns", "dns_nxdomain")
    assert result.phases == {}
    assert ("gone.example.test", "AAAA") in dns.queries  # it really asked our server


@pytest.mark.parametrize("name", ["broken.example.test", "refusing.example.test"])
async def test_dns_servfail(name):
    async with DNSServer(ZONE) as dns:
        result = await run_probe(f"http://{name}/", mod("http", resolver=resolver_for(dns)), 5)
    pin(result, "dns", "dns_servfail")
    assert result.phases == {}


async def test_dns_timeout_on_overall_deadline():
    async with DNSServer(ZONE) as dns:
        t0 = time.monotonic()
        result = await run_probe("http://silent.example.test/", mod("http", resolver=resolver_for(dns)), 0.5)
        elapsed = time.monotonic() - t0
    pin(result, "dns", "dns_timeout")
    assert result.phases == {}
    # The resolver's lifetime is what is left of the deadline: the engine's timer is named, not dnspython's.
    assert_deadline(result, elapsed, 0.5, before=3.0)
    assert dns.queries  # the query was sent and dropped, not never sent


async def test_dns_timeout_on_resolver_timeout():
    async with DNSServer(ZONE) as dns:
        m = mod("http", resolver={**resolver_for(dns), "timeout": "300ms"})
        t0 = time.monotonic()
        result = await run_probe("http://silent.example.test/", m, 5)
        elapsed = time.monotonic() - t0
    pin(result, "dns", "dns_timeout")
    # The resolver's 300 ms (plus dnspython's 100 ms retry backoff): neither the 5 s deadline nor a phase
    # limit, and well before dnspython's own 2 s per-query default.
    assert "deadline" not in result.failure.message and "phase limit" not in result.failure.message, result.failure.message
    assert result.duration_seconds < 1.5, result.duration_seconds
    assert elapsed >= result.duration_seconds - GRAIN


async def test_dns_timeout_on_phase_limit():
    async with DNSServer(ZONE) as dns:
        m = mod("http", phase_timeouts={"dns": "300ms"}, resolver=resolver_for(dns))
        t0 = time.monotonic()
        result = await run_probe("http://silent.example.test/", m, 5)
        elapsed = time.monotonic() - t0
    pin(result, "dns", "dns_timeout")
    assert_phase_limit(result, elapsed, "dns", 0.3, timeout=5, before=3.0)


async def test_dns_no_address_nodata():
    async with DNSServer(ZONE) as dns:
        result = await run_probe("http://nodata.example.test/", mod("http", resolver=resolver_for(dns)), 5)
    pin(result, "dns", "dns_no_address")
    assert result.phases == {}
    # both families were tried (ip6 preferred, fallback to ip4), as blackbox does
    assert set(dns.queries) == {("nodata.example.test", "AAAA"), ("nodata.example.test", "A")}


async def test_dns_no_address_ip4_only_without_fallback():
    async with DNSServer(ZONE) as dns:
        m = mod("http", http={"preferred_ip_protocol": "ip4", "ip_protocol_fallback": False}, resolver=resolver_for(dns))
        result = await run_probe("http://v6only.example.test/", m, 5)
    pin(result, "dns", "dns_no_address")
    assert dns.queries == [("v6only.example.test", "A")]  # no AAAA: fallback is off


async def test_dns_no_address_tcp_prober_ip4_only():
    async with DNSServer(ZONE) as dns:
        m = mod("tcp", tcp={"preferred_ip_protocol": "ip4", "ip_protocol_fallback": False}, resolver=resolver_for(dns))
        result = await run_probe("v6only.example.test:22", m, 5)
    pin(result, "dns", "dns_no_address")


# ---------------------------------------------------------------------------
# connect
# ---------------------------------------------------------------------------


async def test_connect_refused(closed_port):
    result = await run_probe(f"http://127.0.0.1:{closed_port}/", mod("http"), 5)
    pin(result, "connect", "connect_refused")
    assert result.phases == {}  # IP literal: no dns; connect not completed: absent
    assert result.peer == Peer(ip="127.0.0.1", family="ipv4", port=closed_port)  # the address that refused
    assert result.tcp is None


async def test_connect_refused_tcp(closed_port):
    result = await run_probe(f"127.0.0.1:{closed_port}", mod("tcp"), 5)
    pin(result, "connect", "connect_refused")
    assert result.phases == {}


@needs_netns
async def test_connect_timeout(blackhole):
    t0 = time.monotonic()
    result = await run_probe(f"http://{blackhole.blackhole_ip}:80/", mod("http"), 0.5)
    elapsed = time.monotonic() - t0
    pin(result, "connect", "connect_timeout")
    assert result.phases == {}
    assert_deadline(result, elapsed, 0.5, before=3.0)  # not the kernel's SYN retries either (ETIMEDOUT after minutes)


@needs_netns
async def test_connect_timeout_by_phase_limit(blackhole):
    m = mod("tcp", phase_timeouts={"connect": "300ms"})
    t0 = time.monotonic()
    result = await run_probe(f"{blackhole.blackhole_ip}:80", m, 5)
    elapsed = time.monotonic() - t0
    pin(result, "connect", "connect_timeout")
    assert_phase_limit(result, elapsed, "connect", 0.3, timeout=5, before=3.0)


@needs_netns
async def test_connect_unreachable(blackhole):
    result = await run_probe(f"http://{blackhole.unreachable_ip}:80/", mod("http"), 5)
    pin(result, "connect", "connect_unreachable")
    assert result.phases == {}
    assert result.duration_seconds < 2.5  # an ICMP answer (~25 ms), nowhere near the 5 s deadline


async def test_connect_reset_https():
    # The server accepts, then resets before reading anything: the RST lands
    # while the client is in the TLS handshake.
    async with RawTCPServer("reset") as srv:
        result = await run_probe(f"https://127.0.0.1:{srv.port}/", mod("http"), 5)
    pin(result, "tls", "connect_reset")
    assert set(result.phases) == {"connect"}


async def test_connect_reset_tcp_tls():
    async with RawTCPServer("reset") as srv:
        result = await run_probe(f"127.0.0.1:{srv.port}", mod("tcp", tcp={"tls": True}), 5)
    pin(result, "tls", "connect_reset")
    assert set(result.phases) == {"connect"}


# ---------------------------------------------------------------------------
# tls
# ---------------------------------------------------------------------------


async def test_tls_handshake_timeout():
    async with RawTCPServer("stall") as srv:
        t0 = time.monotonic()
        result = await run_probe(f"https://127.0.0.1:{srv.port}/", mod("http"), 0.5)
        elapsed = time.monotonic() - t0
    pin(result, "tls", "tls_handshake_timeout")
    assert set(result.phases) == {"connect"}
    assert_deadline(result, elapsed, 0.5, before=3.0)


async def test_tls_handshake_timeout_by_phase_limit():
    """A per-phase limit names its phase long before the overall deadline."""
    async with RawTCPServer("stall") as srv:
        m = mod("http", phase_timeouts={"tls": "300ms"})
        t0 = time.monotonic()
        result = await run_probe(f"https://127.0.0.1:{srv.port}/", m, 5)
        elapsed = time.monotonic() - t0
    pin(result, "tls", "tls_handshake_timeout")
    assert_phase_limit(result, elapsed, "tls", 0.3, timeout=5, before=3.0)


async def test_tls_cert_expired(certs, ca):
    expired = certs.leaf(ca, not_after=NOW - timedelta(days=1))
    async with HTTPServer(server_context(expired)) as srv:
        result = await run_probe(srv.url("/"), https_mod(ca), 5)
    pin(result, "tls", "tls_cert_expired")
    assert set(result.phases) == {"connect"}


async def test_tls_cert_not_yet_valid(certs, ca):
    future = certs.leaf(ca, not_before=NOW + timedelta(days=1))
    async with HTTPServer(server_context(future)) as srv:
        result = await run_probe(srv.url("/"), https_mod(ca), 5)
    pin(result, "tls", "tls_cert_not_yet_valid")


@pytest.mark.parametrize("kind", ["self_signed", "unknown_ca", "incomplete_chain", "system_store"])
async def test_tls_cert_untrusted(certs, ca, kind):
    if kind == "self_signed":
        cert, trust = certs.leaf(None), ca
    elif kind == "unknown_ca":
        cert, trust = certs.leaf(certs.ca("some other CA")), ca
    elif kind == "incomplete_chain":
        inter = certs.ca("intermediate", issuer=ca)
        cert, trust = certs.leaf(inter, include_chain=False), ca
    else:  # our private CA is, rightly, not in the system trust store
        cert, trust = certs.leaf(ca), None
    async with HTTPServer(server_context(cert)) as srv:
        m = https_mod(trust) if trust is not None else mod("http")
        result = await run_probe(srv.url("/"), m, 5)
    pin(result, "tls", "tls_cert_untrusted")


async def test_tls_hostname_mismatch_ip(certs, ca):
    other = certs.leaf(ca, name="other.example", sans=("other.example",))
    async with HTTPServer(server_context(other)) as srv:
        result = await run_probe(srv.url("/"), https_mod(ca), 5)  # asks for 127.0.0.1
    pin(result, "tls", "tls_hostname_mismatch")


async def test_tls_hostname_mismatch_server_name(certs, ca, leaf):
    async with HTTPServer(server_context(leaf)) as srv:  # covers localhost, 127.0.0.1, ::1
        result = await run_probe(srv.url("/"), https_mod(ca, tls_config={"server_name": "other.example"}), 5)
    pin(result, "tls", "tls_hostname_mismatch")


async def test_tls_server_name_makes_the_right_cert_verify(certs, ca):
    """The counterpart: server_name is the name verified, so a matching one passes."""
    other = certs.leaf(ca, name="other.example", sans=("other.example",))
    async with HTTPServer(server_context(other)) as srv:
        result = await run_probe(srv.url("/"), https_mod(ca, tls_config={"server_name": "other.example"}), 5)
    assert result.success, result.failure


async def test_tls_protocol_version_old_server(leaf, ca):
    async with HTTPServer(server_context(leaf, max_version=ssl.TLSVersion.TLSv1)) as srv:
        result = await run_probe(srv.url("/"), https_mod(ca), 5)
    pin(result, "tls", "tls_protocol_version")
    assert set(result.phases) == {"connect"}


async def test_tls_protocol_version_client_min_too_high(leaf, ca):
    async with HTTPServer(server_context(leaf, max_version=ssl.TLSVersion.TLSv1_2)) as srv:
        result = await run_probe(srv.url("/"), https_mod(ca, tls_config={"min_version": "TLS13"}), 5)
    pin(result, "tls", "tls_protocol_version")


async def test_tls_handshake_error_no_shared_cipher(leaf, ca):
    # TLS 1.2 only, with a SHA-1 CBC suite: Python's client cipher list
    # excludes SHA-1 suites, so there is no cipher in common.
    ctx = server_context(leaf, max_version=ssl.TLSVersion.TLSv1_2, ciphers="ECDHE-ECDSA-AES128-SHA")
    async with HTTPServer(ctx) as srv:
        result = await run_probe(srv.url("/"), https_mod(ca), 5)
    pin(result, "tls", "tls_handshake_error")
    assert srv.tls.handshake_errors  # the server really refused the handshake


async def test_tls_handshake_error_client_cert_required(leaf, ca):
    # TLS 1.2: the server's verdict on the (missing) client certificate comes
    # before the client's handshake completes (in 1.3 it would come after).
    ctx = server_context(leaf, max_version=ssl.TLSVersion.TLSv1_2)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(ca.cert_file)
    async with HTTPServer(ctx) as srv:
        result = await run_probe(srv.url("/"), https_mod(ca), 5)
    pin(result, "tls", "tls_handshake_error")


async def test_tls_handshake_error_server_hangs_up():
    async with RawTCPServer("close") as srv:
        result = await run_probe(f"https://127.0.0.1:{srv.port}/", mod("http"), 5)
    pin(result, "tls", "tls_handshake_error")


# ---------------------------------------------------------------------------
# http
# ---------------------------------------------------------------------------


@pytest.fixture
async def web():
    async with HTTPServer() as srv:
        yield srv


async def test_http_timeout_first_byte(web):
    t0 = time.monotonic()
    result = await run_probe(web.url("/slow?delay=10"), mod("http"), 1)  # the answer comes long after the deadline
    elapsed = time.monotonic() - t0
    pin(result, "first_byte", "http_timeout_first_byte")
    assert set(result.phases) == {"connect", "request"}
    assert_deadline(result, elapsed, 1, before=3.0)


async def test_http_timeout_first_byte_by_phase_limit(web):
    m = mod("http", phase_timeouts={"first_byte": "300ms"})
    t0 = time.monotonic()
    result = await run_probe(web.url("/slow?delay=10"), m, 5)  # the answer comes after the 5 s deadline
    elapsed = time.monotonic() - t0
    pin(result, "first_byte", "http_timeout_first_byte")
    assert_phase_limit(result, elapsed, "first_byte", 0.3, timeout=5, before=3.0)


async def test_http_status_5xx(web):
    result = await run_probe(web.url("/status/503"), mod("http"), 5)
    pin(result, "first_byte", "http_status_5xx")
    assert result.details is not None and result.details.status == 503
    # the response was read completely: every phase up to transfer is present
    assert set(result.phases) == {"connect", "request", "first_byte", "transfer"}


async def test_http_status_4xx(web):
    result = await run_probe(web.url("/status/404"), mod("http"), 5)
    pin(result, "first_byte", "http_status_4xx")
    assert result.details.status == 404


async def test_http_status_valid_status_codes_accepts_listed_error(web):
    result = await run_probe(web.url("/status/404"), mod("http", http={"valid_status_codes": [404]}), 5)
    assert result.success, result.failure


async def test_http_status_unexpected_redirect_not_followed(web):
    result = await run_probe(web.url("/redirect/1"), mod("http", http={"follow_redirects": False}), 5)
    pin(result, "first_byte", "http_status_unexpected")
    assert result.details.status == 302
    # As blackbox (Go's CheckRedirect): the refused redirect counts as one; one hop was made.
    assert result.details.redirects == 1 and len(result.hops) == 1


async def test_http_status_unexpected_2xx_not_listed(web):
    result = await run_probe(web.url("/status/204"), mod("http", http={"valid_status_codes": [200]}), 5)
    pin(result, "first_byte", "http_status_unexpected")


async def test_http_status_unexpected_http_version(web):
    result = await run_probe(web.url("/ok"), mod("http", http={"valid_http_versions": ["HTTP/1.0"]}), 5)
    pin(result, "first_byte", "http_status_unexpected")
    assert result.details.version == "HTTP/1.1"


async def test_http_too_many_redirects(web):
    result = await run_probe(web.url("/loop"), mod("http"), 5)
    pin(result, "first_byte", "http_too_many_redirects")
    # 10 redirects followed (11 exchanges), the 11th redirect is the failure
    assert len(result.hops) == 11
    assert result.details.redirects == 10
    assert all(h.status == 302 for h in result.hops)


@pytest.mark.parametrize(
    "http",
    [
        {"fail_if_body_matches_regexp": ["hello"]},
        {"fail_if_body_not_matches_regexp": ["goodbye"]},
    ],
    ids=["matches", "not_matches"],
)
async def test_http_body_mismatch(web, http):
    result = await run_probe(web.url("/ok"), mod("http", http=http), 5)
    pin(result, "transfer", "http_body_mismatch")
    assert result.failed_due_to_regex


async def test_http_body_regexps_pass_when_satisfied(web):
    m = mod("http", http={"fail_if_body_matches_regexp": ["maintenance"], "fail_if_body_not_matches_regexp": ["^hello"]})
    result = await run_probe(web.url("/ok"), m, 5)
    assert result.success, result.failure
    assert not result.failed_due_to_regex


@pytest.mark.parametrize(
    "http",
    [
        {"fail_if_header_matches": [{"header": "X-Service", "regexp": "^demo$"}]},
        {"fail_if_header_not_matches": [{"header": "X-Service", "regexp": "^prod$"}]},
        {"fail_if_header_not_matches": [{"header": "X-Missing", "regexp": "."}]},
        {"fail_if_header_matches": [{"header": "X-Missing", "regexp": "."}]},
    ],
    ids=["matches", "not_matches", "missing_required", "missing_no_allow"],
)
async def test_http_header_mismatch(web, http):
    result = await run_probe(web.url("/ok"), mod("http", http=http), 5)
    pin(result, "first_byte", "http_header_mismatch")
    assert result.failed_due_to_regex


async def test_http_header_allow_missing(web):
    m = mod(
        "http",
        http={
            "fail_if_header_not_matches": [{"header": "X-Missing", "regexp": ".", "allow_missing": True}],
            "fail_if_header_matches": [{"header": "X-Also-Missing", "regexp": ".", "allow_missing": True}],
        },
    )
    result = await run_probe(web.url("/ok"), m, 5)
    assert result.success, result.failure


async def test_http_header_match_on_repeated_header(web):
    # /headers?X-A=1 sets the header; a matching value passes the not_matches check
    m = mod("http", http={"fail_if_header_not_matches": [{"header": "x-a", "regexp": "^1$"}]})
    result = await run_probe(web.url("/headers?X-A=1"), m, 5)
    assert result.success, result.failure


async def test_http_ssl_expectation_fail_if_not_ssl(web):
    result = await run_probe(web.url("/ok"), mod("http", http={"fail_if_not_ssl": True}), 5)
    pin(result, "first_byte", "http_ssl_expectation")


async def test_http_ssl_expectation_fail_if_ssl(leaf, ca):
    async with HTTPServer(server_context(leaf)) as srv:
        result = await run_probe(srv.url("/ok"), https_mod(ca, fail_if_ssl=True), 5)
    pin(result, "first_byte", "http_ssl_expectation")
    assert "tls" in result.phases


async def test_http_ssl_expectation_after_redirect_to_http(leaf, ca, web):
    # https -> http redirect: the *final* response is what fail_if_not_ssl checks
    async with HTTPServer(server_context(leaf)) as tls_srv:
        url = tls_srv.url("/to-http?url=" + web.url("/ok"))
        result = await run_probe(url, https_mod(ca, fail_if_not_ssl=True), 5)
    pin(result, "first_byte", "http_ssl_expectation")
    assert len(result.hops) == 2


async def test_connection_reset_after_request():
    async with RawTCPServer("reset_after_request") as srv:
        result = await run_probe(f"http://127.0.0.1:{srv.port}/", mod("http"), 5)
        assert len(srv.requests) == 1  # the request arrived before the reset
    pin(result, "first_byte", "connection_reset")
    assert set(result.phases) == {"connect", "request"}


async def test_protocol_error_garbage_status_line():
    # first_byte ends with the first byte of the answer (Go's GotFirstResponseByte); reading what
    # those bytes say is transfer, so garbage instead of a status line fails there.
    async with RawTCPServer("garbage") as srv:
        result = await run_probe(f"http://127.0.0.1:{srv.port}/", mod("http"), 5)
    pin(result, "transfer", "protocol_error")
    assert "first_byte" in result.phases and "transfer" not in result.phases


async def test_protocol_error_malformed_header():
    async def bad_header(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nthis is not a header\r\n\r\n")
        await writer.drain()
        writer.close()

    async with RawTCPServer(bad_header) as srv:
        result = await run_probe(f"http://127.0.0.1:{srv.port}/", mod("http"), 5)
    pin(result, "transfer", "protocol_error")


async def test_connection_reset_mid_body():
    async def short_body(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
        await writer.drain()
        writer.close()  # FIN after 3 of 100 promised bytes

    async with RawTCPServer(short_body) as srv:
        result = await run_probe(f"http://127.0.0.1:{srv.port}/", mod("http"), 5)
    pin(result, "transfer", "connection_reset")


async def test_probe_timeout_stalled_body():
    async with RawTCPServer("stall_body") as srv:
        t0 = time.monotonic()
        result = await run_probe(f"http://127.0.0.1:{srv.port}/", mod("http"), 1)
        elapsed = time.monotonic() - t0
    pin(result, "transfer", "probe_timeout")
    assert set(result.phases) == {"connect", "request", "first_byte"}
    assert_deadline(result, elapsed, 1, before=3.0)


async def test_stalling_targets_leave_no_socket_watched_behind():
    """Hundreds of probes cut off by their deadline mid-response (a target that sends a head and then
    stalls, one that never answers): every socket is closed, and the poller that watched them
    (connection._Poller, one per loop) holds nothing afterwards, so a stalling target costs no memory
    once its probes are over."""
    from exporter.net import connection

    async with RawTCPServer("stall_body") as body, RawTCPServer("stall") as head:
        targets = [f"http://127.0.0.1:{srv.port}/" for srv in (body, head)] * 150
        results = await asyncio.gather(*(run_probe(t, mod("http"), 0.5) for t in targets))
    # Cut off by the deadline wherever it hit (a full listen backlog makes some connects wait too).
    reasons = {r.failure.reason if r.failure else "ok" for r in results}
    assert reasons <= {"connect_timeout", "http_timeout_first_byte", "probe_timeout"} and "probe_timeout" in reasons, reasons
    poller = connection._poller_of(asyncio.get_running_loop())
    assert (poller._readers, poller._writers, poller._masks) == ({}, {}, {})


async def test_probe_timeout_writing_the_request():
    # A server that never reads: once the kernel buffers on both ends are full
    # (a few MB on loopback), writing the 32 MB request body blocks.
    async def never_read(reader, writer):
        await asyncio.sleep(3600)

    base = mod("http", http={"method": "POST"})
    m = dataclasses.replace(base, settings=dataclasses.replace(base.settings, body="x" * (32 << 20)))
    async with RawTCPServer(never_read) as srv:
        result = await run_probe(f"http://127.0.0.1:{srv.port}/", m, 1)
    pin(result, "request", "probe_timeout")
    assert set(result.phases) == {"connect"}


# ---------------------------------------------------------------------------
# tcp query_response
# ---------------------------------------------------------------------------


async def test_tcp_query_response_success():
    m = mod("tcp", tcp={"query_response": [{"expect": "^SSH-2\\.0-"}, {"send": "PING"}, {"expect": "^PING"}]})
    async with RawTCPServer("banner") as srv:
        result = await run_probe(f"127.0.0.1:{srv.port}", m, 5)
    assert result.success, result.failure
    assert set(result.phases) == {"connect", "first_byte", "request"}


async def test_tcp_query_response_starttls(leaf, ca):
    tls_ctx = server_context(leaf)

    async def smtp(reader, writer):
        writer.write(b"220 mail.test ESMTP\r\n")
        await writer.drain()
        assert (await reader.readline()).startswith(b"EHLO")
        writer.write(b"250-mail.test\r\n250-STARTTLS\r\n250 OK\r\n")
        await writer.drain()
        assert (await reader.readline()).startswith(b"STARTTLS")
        writer.write(b"220 go ahead\r\n")
        await writer.drain()
        await writer.start_tls(tls_ctx)
        await reader.read()  # until the prober closes

    m = mod(
        "tcp",
        tcp={
            "query_response": [
                {"expect": "^220 "},
                {"send": "EHLO prober"},
                {"expect": "^250-STARTTLS"},
                {"send": "STARTTLS"},
                {"expect": "^220 "},
                {"starttls": True},
            ],
            "tls_config": {"ca_file": ca.cert_file},
        },
    )
    async with RawTCPServer(smtp) as srv:
        result = await run_probe(f"127.0.0.1:{srv.port}", m, 5)
    assert result.success, result.failure
    assert set(result.phases) == {"connect", "first_byte", "request", "tls"}
    assert result.tls.version == "TLS 1.3" and result.tls.verification == "verified"


async def test_tcp_query_response_starttls_untrusted(leaf):
    tls_ctx = server_context(leaf)

    async def upgrade_at_once(reader, writer):
        writer.write(b"220 ready\r\n")
        await writer.drain()
        await writer.start_tls(tls_ctx)

    m = mod("tcp", tcp={"query_response": [{"expect": "^220 "}, {"starttls": True}]})
    async with RawTCPServer(upgrade_at_once) as srv:
        result = await run_probe(f"127.0.0.1:{srv.port}", m, 5)
    pin(result, "tls", "tls_cert_untrusted")  # the private CA is not in the system store


async def test_tcp_query_response_closed_before_match():
    m = mod("tcp", tcp={"query_response": [{"expect": "^220 "}]})
    async with RawTCPServer("close") as srv:
        result = await run_probe(f"127.0.0.1:{srv.port}", m, 5)
    pin(result, "first_byte", "protocol_error")
    assert set(result.phases) == {"connect"}


async def test_tcp_query_response_wrong_banner_then_close():
    async def smtp_like(reader, writer):
        writer.write(b"554 go away\r\n")
        await writer.drain()
        writer.close()

    m = mod("tcp", tcp={"query_response": [{"expect": "^220 "}]})
    async with RawTCPServer(smtp_like) as srv:
        result = await run_probe(f"127.0.0.1:{srv.port}", m, 5)
    pin(result, "first_byte", "protocol_error")


async def test_tcp_query_response_timeout():
    m = mod("tcp", tcp={"query_response": [{"expect": "^NEVER"}]})
    async with RawTCPServer("banner") as srv:
        result = await run_probe(f"127.0.0.1:{srv.port}", m, 0.5)
    pin(result, "first_byte", "probe_timeout")


# ---------------------------------------------------------------------------
# probe-wide
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prober", "target"),
    [
        ("http", "not a url"),
        ("http", "ftp://127.0.0.1/"),
        ("http", "http://127.0.0.1:99999/"),
        ("tcp", "127.0.0.1"),
        ("tcp", "127.0.0.1:http"),
        ("tcp", "127.0.0.1:0"),
    ],
)
async def test_invalid_target(prober, target):
    result = await run_probe(target, mod(prober), 5)
    pin(result, "probe", "invalid_target")  # phase "probe": rejected before the first phase began
    assert result.phases == {} and result.failed_phase_start is None
    assert result.peer is None  # no address was chosen, so nothing was sent
    assert result.duration_seconds < 2.5  # and nothing waited on the 5 s deadline


async def test_cancelled_probe_raises_cancelled_error():
    client_hello = asyncio.Event()

    async def stall_after_client_hello(reader, writer):
        if await reader.read(65536):
            client_hello.set()
        while await reader.read(65536):  # keep reading, so the client waits on us and not on flow control
            pass

    async with RawTCPServer(stall_after_client_hello) as srv:
        task = asyncio.create_task(run_probe(f"https://127.0.0.1:{srv.port}/", mod("http"), 10))
        # The ClientHello has arrived: the probe is inside the TLS handshake, waiting for the answer.
        await asyncio.wait_for(client_hello.wait(), 5)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 2)
        assert task.cancelled()
