"""The icmp prober against hosts in network namespaces the test creates (198.18.0.0/15), and loopback.

BlackholeNet's namespace answers echo requests on 198.18.X.2 (a veth away,
MTU 1500), silently drops everything to 198.19.X.10 and answers 198.19.X.200
with host-unreachable. The unprivileged ping-socket path runs in a namespace
of its own whose net.ipv4.ping_group_range admits root (the root namespace
here denies everyone, so the prober falls back to a raw socket there).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.config import ConfigError
from exporter.engine import run_probe
from exporter.sinks.exposition import probe_text

try:  # works whether or not tests/ becomes a package later
    from tests import procs
    from tests.peers import BlackholeNet, Namespace
    from tests.probekit import PER_TEST_TIMEOUT, blackhole, mod, needs_netns  # noqa: F401
except ImportError:  # pragma: no cover
    import procs  # type: ignore[no-redef]
    from peers import BlackholeNet, Namespace  # type: ignore[no-redef]
    from probekit import PER_TEST_TIMEOUT, blackhole, mod, needs_netns  # type: ignore[no-redef]  # noqa: F401

pytestmark = [pytest.mark.timeout(PER_TEST_TIMEOUT), needs_netns]


def icmp_mod(timeout: str = "2s", **icmp: object) -> object:
    return mod("icmp", timeout=timeout, icmp={"preferred_ip_protocol": "ip4", **icmp})


def values(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(labels.items())): value for labels, value in procs.samples(text, name)}


async def test_echo_to_a_namespace_host(blackhole: BlackholeNet) -> None:
    result = await run_probe(blackhole.ns_ip, icmp_mod(), 5)
    assert result.success, result.failure
    assert [p.name for p in result.timeline] == ["setup", "rtt"]
    assert result.details.socket == "raw" and result.details.payload_size == 28
    text = probe_text(result)
    assert values(text, "probe_icmp_reply_hop_limit") == {(): 64.0}  # the namespace's kernel, no router between
    assert set(values(text, "probe_icmp_duration_seconds")) == {(("phase", p),) for p in ("resolve", "setup", "rtt")}
    assert values(text, "probe_icmp_duration_seconds")[(("phase", "rtt"),)] > 0
    assert values(text, "probe_ip_protocol") == {(): 4.0}


async def test_blackholed_host_times_out_in_rtt(blackhole: BlackholeNet) -> None:
    result = await run_probe(blackhole.blackhole_ip, icmp_mod("0.5s"), 0.5)
    assert (result.failure.phase, result.failure.reason) == ("rtt", "icmp_timeout")
    assert "probe_icmp_reply_hop_limit" not in probe_text(result)


async def test_host_unreachable_fails_at_once(blackhole: BlackholeNet) -> None:
    result = await run_probe(blackhole.unreachable_ip, icmp_mod("3s"), 3)
    assert (result.failure.phase, result.failure.reason) == ("rtt", "connect_unreachable")


async def test_dont_fragment_over_the_link_mtu(blackhole: BlackholeNet) -> None:
    result = await run_probe(blackhole.ns_ip, icmp_mod(payload_size=2000), 5)
    assert result.success, result.failure  # fragmented on the 1500-byte veth, reassembled, answered
    assert result.details.payload_size == 2000
    result = await run_probe(blackhole.ns_ip, icmp_mod(payload_size=2000, dont_fragment=True), 5)
    assert (result.failure.phase, result.failure.reason) == ("rtt", "icmp_message_too_big")
    result = await run_probe(blackhole.ns_ip, icmp_mod(payload_size=1400, dont_fragment=True, ttl=3), 5)
    assert result.success, result.failure


async def test_source_address(blackhole: BlackholeNet) -> None:
    result = await run_probe(blackhole.ns_ip, icmp_mod(source_ip_address=blackhole.root_ip), 5)
    assert result.success, result.failure
    result = await run_probe(blackhole.ns_ip, icmp_mod(source_ip_address="::1"), 5)
    assert result.failure.reason == "invalid_target"


async def test_ipv6_loopback() -> None:
    result = await run_probe("::1", mod("icmp", timeout="2s"), 5)
    assert result.success, result.failure
    assert result.peer.family == "ipv6" and result.details.reply_hop_limit == 64


_UNPRIVILEGED = """
import asyncio, json, sys
sys.path.insert(0, {root!r})
from exporter.config import parse_config
from exporter.engine import run_probe
modules = parse_config('modules: {{p: {{prober: icmp, icmp: {{preferred_ip_protocol: ip4}}}}}}', 'test').modules
r = asyncio.run(run_probe('127.0.0.1', modules['p'], 3))
print(json.dumps({{'success': r.success, 'socket': r.details.socket, 'hops': r.details.reply_hop_limit}}))
"""


def test_unprivileged_ping_socket_where_ping_group_range_allows() -> None:
    ok, why = BlackholeNet.available()
    if not ok:
        pytest.fail(f"network namespaces unavailable: {why}")
    root = str(Path(__file__).resolve().parent.parent)
    with Namespace() as ns:
        subprocess.run([*ns.exec_argv(), "sh", "-c", "echo 0 0 > /proc/sys/net/ipv4/ping_group_range"], check=True, timeout=10)
        proc = subprocess.run([*ns.exec_argv(), sys.executable, "-c", _UNPRIVILEGED.format(root=root)],
                              capture_output=True, text=True, timeout=20)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"success": True, "socket": "unprivileged", "hops": 64}


@pytest.mark.parametrize("fields,message", [
    ({"ttl": 256}, "icmp.ttl: must be between 0 and 255"),
    ({"ttl": -1}, "icmp.ttl: must be between 0 and 255"),
    ({"payload_size": 70000}, "icmp.payload_size: must be between 0 and 65507"),
    ({"source_ip_address": "eth0"}, "is not an IP address"),
    ({"dont_fragmnt": True}, "unknown field"),
])
def test_bad_icmp_sections_are_named(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        mod("icmp", icmp=fields)
    assert message in str(info.value)
