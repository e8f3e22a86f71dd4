"""The SSRF guard (probe_guard): rules, every hop and address, and the "no packet sent" proof.

Its config errors are fixtures: tests/fixtures/bad_configs/probe_guard_*.yml.
"""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.config import parse_config
from exporter.engine import run_probe
from exporter.net.guard import DEFAULT_GUARD, ProbeGuard, TargetForbidden, parse_rules
from exporter.server import Exporter, ServeOptions

try:  # works whether or not tests/ becomes a package later
    from tests.peers import DNSServer, HTTPServer, Namespace
    from tests.probekit import PER_TEST_TIMEOUT, mod, needs_netns, resolver_for
except ImportError:  # pragma: no cover
    from peers import DNSServer, HTTPServer, Namespace
    from probekit import PER_TEST_TIMEOUT, mod, needs_netns, resolver_for

pytestmark = pytest.mark.timeout(PER_TEST_TIMEOUT)

METADATA_FORMS = [
    "169.254.169.254", "::ffff:169.254.169.254", "::ffff:a9fe:a9fe", "64:ff9b::a9fe:a9fe", "::a9fe:a9fe",
    "2002:a9fe:a9fe::1", "fe80::1", "fe80::1%lo", "fd00:ec2::254", "100.100.100.200",
]


@pytest.mark.parametrize("ip", METADATA_FORMS)
def test_default_guard_denies_metadata_and_link_local_in_every_ip_form(ip: str) -> None:
    with pytest.raises(TargetForbidden, match="is denied by probe_guard rule"):
        DEFAULT_GUARD.check("target.example", ip, 80)


@pytest.mark.parametrize("ip", ["127.0.0.1", "::1", "198.18.0.1", "10.0.0.1", "169.253.255.255", "169.255.0.0"])
def test_default_guard_allows_everything_else(ip: str) -> None:
    DEFAULT_GUARD.check(ip, ip, 80)


@pytest.mark.parametrize("name", ["metadata.google.internal", "METADATA.Google.Internal.", "[metadata.google.internal]"])
def test_default_guard_denies_the_metadata_name_before_resolution(name: str) -> None:
    with pytest.raises(TargetForbidden, match="'metadata.google.internal'"):
        DEFAULT_GUARD.check_name(name, 80)


def test_allow_rules_of_each_kind_must_all_be_met_and_deny_wins() -> None:
    guard = ProbeGuard(allow=parse_rules(["198.18.0.0/15", "*.corp.example", ":443", ":8000-8099"]),
                       deny=parse_rules(["198.18.9.0/24", ":8080"]))
    guard.check("198.18.1.1", "198.18.1.1", 443)
    guard.check("api.corp.example", "10.1.2.3", 8000)  # allowed by name, whatever its address
    guard.check("a.b.corp.example", "10.1.2.3", 8099)
    for host, ip, port, why in [
        ("10.1.2.3", "10.1.2.3", 443, "matches no probe_guard allow rule"),
        ("corp.example", "10.1.2.3", 443, "matches no probe_guard allow rule"),  # *.x is below x only
        ("198.18.1.1", "198.18.1.1", 80, "port 80 matches no probe_guard allow rule"),
        ("198.18.9.9", "198.18.9.9", 443, "denied by probe_guard rule '198.18.9.0/24'"),
        ("198.18.1.1", "198.18.1.1", 8080, "denied by probe_guard rule ':8080'"),
    ]:
        with pytest.raises(TargetForbidden, match=why):
            guard.check(host, ip, port)


def test_config_defaults_to_metadata_deny_for_probe_only_and_deny_list_replaces_it() -> None:
    default = parse_config("").probe_guard
    assert default == DEFAULT_GUARD and not default.apply_to_targets
    off = parse_config("probe_guard: {deny: [], apply_to_targets: true}").probe_guard
    assert not off.deny and off.apply_to_targets
    off.check("169.254.169.254", "169.254.169.254", 80)


async def test_forbidden_target_fails_as_target_forbidden_without_connecting() -> None:
    guard = ProbeGuard(allow=parse_rules(["198.18.0.0/15"]))
    async with HTTPServer() as server:
        result = await run_probe(server.url("/ok"), mod("http"), 5, guard=guard)
        assert (result.failure.phase, result.failure.reason) == ("connect", "target_forbidden"), result.failure
        assert "127.0.0.1" in result.failure.message and "matches no probe_guard allow rule" in result.failure.message
        assert [p.name for p in result.timeline] == []  # not even a connect was started
        assert server.requests == []
        # The same probe without a guard (the CLI's case) reaches it.
        assert (await run_probe(server.url("/ok"), mod("http"), 5)).success


async def test_every_redirect_hop_is_checked() -> None:
    guard = ProbeGuard(deny=parse_rules(["127.0.0.2"]))
    async with HTTPServer() as first:
        result = await run_probe(first.url(f"/to-http?url=http://127.0.0.2:{first.port}/ok"), mod("http"), 5, guard=guard)
    assert (result.failure.phase, result.failure.reason) == ("connect", "target_forbidden"), result.failure
    assert [h.status for h in result.hops] == [302, None]
    assert [path for path, _ in first.requests] == ["/to-http"]


async def test_a_name_is_checked_by_the_address_it_resolves_to() -> None:
    guard = ProbeGuard(deny=parse_rules(["127.0.0.0/8"]))
    async with DNSServer({"rebind.test": "A:127.0.0.1"}) as dns, HTTPServer() as server:
        module = mod("http", resolver=resolver_for(dns), http={"preferred_ip_protocol": "ip4"})
        result = await run_probe(f"http://rebind.test:{server.port}/ok", module, 5, guard=guard)
    assert (result.failure.phase, result.failure.reason) == ("connect", "target_forbidden"), result.failure
    assert "rebind.test (127.0.0.1:" in result.failure.message
    assert [p.name for p in result.timeline] == ["dns"]
    assert server.requests == []


async def test_a_denied_name_is_not_even_resolved() -> None:
    guard = ProbeGuard(deny=parse_rules(["*.internal"]))
    async with DNSServer({"metadata.internal": "A:127.0.0.1"}) as dns:
        result = await run_probe("metadata.internal:80", mod("tcp", resolver=resolver_for(dns)), 5, guard=guard)
    assert (result.failure.phase, result.failure.reason) == ("connect", "target_forbidden"), result.failure
    assert dns.queries == []


@needs_netns
def test_no_packet_reaches_metadata_in_any_encoding_or_through_a_redirect() -> None:
    """In a namespace where 169.254.169.254 really listens, /probe sends it nothing (sniffer on lo)."""
    script = Path(__file__).with_name("guard_netns_probe.py")
    with Namespace("169.254.169.254/32") as ns:
        proc = subprocess.run([*ns.exec_argv(), sys.executable, str(script)], capture_output=True, text=True, timeout=25)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    # The control shows the setup would see a leak: unguarded, the probe arrives and the sniffer counts it.
    assert out["control"]["success"] and out["control"]["requests"] == 1 and out["control"]["packets"] > 0, out["control"]
    assert set(out["cases"]) == {"dotted", "decimal", "octal", "hex", "hex_dotted", "short", "ipv4_mapped",
                                 "ipv4_mapped_hex", "tcp", "dns_name", "redirect"}
    for name, case in out["cases"].items():
        assert case["status"] == 200 and case["success_line"], (name, case)
        assert case["failure"] == ["connect", "target_forbidden"], (name, case)
        assert case["packets"] == 0, (name, case)  # cumulative since the control: nothing, ever
        assert "denied by probe_guard rule '169.254.0.0/16'" in case["message"], (name, case)
    assert out["redirect_requests"] == ["/to-http"]  # the first hop went out, the second did not
    assert out["dns_queries"] and set(out["dns_queries"]) == {"meta.test"}, out["dns_queries"]  # resolved, then refused
    assert out["packets"] == 0 and out["requests"] == 0, out


@pytest.mark.parametrize("apply_to_targets", [True, False])
async def test_configured_targets_are_guarded_only_when_asked(apply_to_targets: bool) -> None:
    async with HTTPServer() as server:
        config = parse_config(f"""
probe_guard: {{deny: [127.0.0.0/8], apply_to_targets: {str(apply_to_targets).lower()}}}
targets: [{{target: "{server.url('/ok')}", interval: 100ms}}]
""")
        exporter = Exporter(ServeOptions(), config)
        exporter.start()
        try:
            for _ in range(200):  # bounded: the first scheduled probe comes within one interval
                if exporter.history.recent():
                    break
                await asyncio.sleep(0.05)
            result = exporter.history.recent()[0].result
        finally:
            await exporter.stop()
        # /probe is always guarded.
        probe = await run_probe(server.url("/ok"), config.modules["http_2xx"], 5, guard=config.probe_guard)
    assert probe.failure is not None and probe.failure.reason == "target_forbidden"
    if apply_to_targets:
        assert result.failure is not None and result.failure.reason == "target_forbidden", result.failure
    else:
        assert result.success, result.failure
