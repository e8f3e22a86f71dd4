"""Phase timings measure the right interval.

A delay the test puts in one place (the server before its first byte, the DNS
server before its answer) must show up in exactly that phase, and not leak
into the others.

Tolerances: a phase that contains a server-side delay D lies in
[D, D + SLACK). The lower bound is exact (asyncio.sleep never returns early
and the phase also holds the request's way to the server); the upper bound
and FAST only have to tell "holds the delay once" from "holds it twice" or
"the delay leaked here", so they are fractions of D, generous for a loaded
host where a loopback connect or TLS handshake can take tens of ms.
"""
from __future__ import annotations

import pytest

from exporter.certs import server_context
from exporter.engine import run_probe

try:  # works whether or not tests/ becomes a package later
    from tests.peers import DNSServer, HTTPServer
    from tests.probekit import PER_TEST_TIMEOUT, ca, certs, https_mod, leaf, mod, resolver_for  # noqa: F401
except ImportError:  # pragma: no cover
    from peers import DNSServer, HTTPServer
    from probekit import PER_TEST_TIMEOUT, ca, certs, https_mod, leaf, mod, resolver_for  # noqa: F401

pytestmark = pytest.mark.timeout(PER_TEST_TIMEOUT)

D = 0.5  # the server-side delay
SLACK = 0.4  # upper tolerance on a delayed phase: below D, so a delay counted twice still fails
FAST = 0.25  # upper bound for a loopback connect / an undelayed phase: half of D, so a leaked delay still fails


def assert_delay_in(phases: dict[str, float], phase: str, delay: float) -> None:
    assert delay <= phases[phase] < delay + SLACK, phases
    for other, seconds in phases.items():
        if other != phase:
            assert seconds < FAST, f"{other} took {seconds:.3f}s; the delay leaked out of {phase}: {phases}"


async def test_server_delay_is_first_byte_http():
    async with HTTPServer() as srv:
        result = await run_probe(srv.url(f"/slow?delay={D}"), mod("http"), 5)
    assert result.success, result.failure
    assert_delay_in(result.phases, "first_byte", D)
    assert result.phases["connect"] < FAST
    assert D <= result.duration_seconds < D + SLACK


async def test_server_delay_is_first_byte_https(leaf, ca):
    async with HTTPServer(server_context(leaf)) as srv:
        result = await run_probe(srv.url(f"/slow?delay={D}"), https_mod(ca), 5)
    assert result.success, result.failure
    assert_delay_in(result.phases, "first_byte", D)
    assert result.phases["tls"] < D  # the handshake is not the server's processing


async def test_dns_delay_is_dns_phase_not_connect():
    async with HTTPServer() as srv, DNSServer({"slow.example.test": f"DELAY:{D},A:127.0.0.1"}) as dns:
        m = mod("http", http={"preferred_ip_protocol": "ip4", "ip_protocol_fallback": False}, resolver=resolver_for(dns))
        result = await run_probe(f"http://slow.example.test:{srv.port}/ok", m, 5)
    assert result.success, result.failure
    assert_delay_in(result.phases, "dns", D)


async def test_phases_add_up_to_at_most_the_duration():
    async with HTTPServer() as srv:
        result = await run_probe(srv.url("/redirect/1"), mod("http"), 5)
    assert result.success, result.failure
    assert sum(result.total_phases().values()) <= result.duration_seconds
    assert result.duration_seconds < 1.0


async def test_delay_per_hop_stays_in_that_hop():
    async with HTTPServer() as srv:
        url = srv.url(f"/to-http?url={srv.url(f'/slow?delay={D}')}")
        result = await run_probe(url, mod("http"), 5)
    assert result.success, result.failure
    first, second = result.hop_phases(0), result.hop_phases(1)
    assert first["first_byte"] < FAST
    assert D <= second["first_byte"] < D + SLACK
    assert D <= result.total_phases()["first_byte"] < D + SLACK
