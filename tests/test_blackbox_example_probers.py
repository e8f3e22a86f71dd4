"""tests/fixtures/blackbox_example/probers.yml loads unchanged, and each module probes a local peer of its kind.

Peers: the DNS server on loopback, a unix socket server, grpcio's health
server (cleartext and TLS), loopback and a host in a network namespace the
test creates (198.18.0.0/15) for ICMP.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from exporter.certs import Issued
from exporter.config import parse_config
from exporter.engine import run_probe
from exporter.probers import PROBERS

try:  # works whether or not tests/ becomes a package later
    from tests.grpcpeer import HealthServer
    from tests.peers import BlackholeNet, DNSServer
    from tests.probekit import PER_TEST_TIMEOUT, blackhole, ca, certs, leaf, needs_netns  # noqa: F401
except ImportError:  # pragma: no cover
    from grpcpeer import HealthServer  # type: ignore[no-redef]
    from peers import BlackholeNet, DNSServer  # type: ignore[no-redef]
    from probekit import PER_TEST_TIMEOUT, blackhole, ca, certs, leaf, needs_netns  # type: ignore[no-redef]  # noqa: F401

pytestmark = [pytest.mark.timeout(PER_TEST_TIMEOUT), needs_netns]

FIXTURE = Path(__file__).parent / "fixtures" / "blackbox_example" / "probers.yml"
ZONE = {
    "app.example.test": "A:192.0.2.1",
    "example.test": "SOA:ns1.example.test. hostmaster.example.test. 7 3600 600 86400 60",
}


async def _ping_pong(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while line := await reader.readline():
            if line.strip() == b"PING":
                writer.write(b"PONG\n")
                await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def test_every_module_probes_its_peer(tmp_path: Path, blackhole: BlackholeNet, leaf: Issued) -> None:
    modules = parse_config(FIXTURE.read_text(), str(FIXTURE), with_builtins=False).modules
    unix_path = str(tmp_path / "ping.sock")
    with HealthServer() as plain, HealthServer(leaf) as secure:
        async with DNSServer(ZONE) as dns:
            server = await asyncio.start_unix_server(_ping_pong, unix_path)
            async with server:
                targets = {
                    "icmp_loopback_source": "127.0.0.1",
                    "icmp_no_fragment": blackhole.ns_ip,
                    "dns_udp_validated": f"127.0.0.1:{dns.port}",
                    "dns_zone_soa": f"127.0.0.1:{dns.port}",
                    "dns_over_tcp": f"127.0.0.1:{dns.port}",
                    "unix_ping_pong": unix_path,
                    "grpc_overall_health": f"127.0.0.1:{plain.port}",
                    "grpc_service_tls": f"127.0.0.1:{secure.port}",
                }
                assert set(targets) == set(modules)
                results = {name: await run_probe(target, modules[name], 5) for name, target in targets.items()}
            assert dns.transports == ["udp", "udp", "tcp"]
    failed = {name: r.failure for name, r in results.items() if not r.success}
    assert not failed
    # What continuous mode creates series for up front is exactly what a successful probe went through.
    for name, r in results.items():
        expected = PROBERS[modules[name].prober].expected_phases(targets[name], modules[name].settings)
        assert expected == tuple(dict.fromkeys(p.name for p in r.timeline)), name
    assert results["dns_zone_soa"].details.serial == 7
    assert results["icmp_no_fragment"].details.payload_size == 1200
    assert plain.metadata[-1]["x-probe-source"] == "connhealth"
    assert results["grpc_service_tls"].tls is not None and results["grpc_service_tls"].tls.verification == "skipped"
    assert [p.name for p in results["unix_ping_pong"].timeline] == ["connect", "request", "first_byte"]
