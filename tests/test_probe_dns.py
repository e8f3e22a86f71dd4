"""The dns prober against a real DNS server on loopback (tests/peers.py DNSServer, UDP and TCP on one port)."""
from __future__ import annotations

import pytest

from exporter.certs import Issued, server_context
from exporter.config import ConfigError
from exporter.engine import run_probe
from exporter.sinks.exposition import probe_text

try:  # works whether or not tests/ becomes a package later
    from tests import procs
    from tests.peers import DNSServer, TLSTerminator
    from tests.probekit import PER_TEST_TIMEOUT, ca, certs, leaf, mod, resolver_for  # noqa: F401
except ImportError:  # pragma: no cover
    import procs  # type: ignore[no-redef]
    from peers import DNSServer, TLSTerminator  # type: ignore[no-redef]
    from probekit import PER_TEST_TIMEOUT, ca, certs, leaf, mod, resolver_for  # type: ignore[no-redef]  # noqa: F401

pytestmark = pytest.mark.timeout(PER_TEST_TIMEOUT)

ZONE = {
    "www.example.test": "A:192.0.2.10,A:192.0.2.11",
    "alias.example.test": "CNAME:www.example.test",
    "txt.example.test": "TXT:v=spf1 -all",
    "example.test": "SOA:ns1.example.test. hostmaster.example.test. 2026113001 3600 600 86400 60,NS:ns1.example.test",
    "gone.example.test": "NXDOMAIN",
    "broken.example.test": "SERVFAIL",
    "silent.example.test": "DROP",
    "ns.example.test": "A:127.0.0.1",
}


def dns_mod(**dns: object) -> object:
    return mod("dns", timeout="2s", dns={"preferred_ip_protocol": "ip4", **dns})


def values(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(labels.items())): value for labels, value in procs.samples(text, name)}


@pytest.fixture
async def server():
    async with DNSServer(ZONE) as s:
        yield s


async def test_udp_query_counts_records_and_reports_blackbox_series(server: DNSServer) -> None:
    result = await run_probe(f"127.0.0.1:{server.port}", dns_mod(query_name="www.example.test", query_type="A"), 5)
    assert result.success, result.failure
    assert server.queries == [("www.example.test", "A")] and server.transports == ["udp"]
    assert [p.name for p in result.timeline] == ["query"]  # IP literal: no dns phase; udp: no connect
    d = result.details
    assert (d.rcode, d.answer_rrs, d.authority_rrs, d.additional_rrs) == ("NOERROR", 2, 0, 0)
    text = probe_text(result)
    assert values(text, "probe_dns_answer_rrs") == {(): 2.0}
    assert values(text, "probe_dns_query_succeeded") == {(): 1.0}
    durations = values(text, "probe_dns_duration_seconds")
    assert set(durations) == {(("phase", "resolve"),), (("phase", "connect"),), (("phase", "request"),)}
    assert durations[(("phase", "request"),)] > 0 and durations[(("phase", "connect"),)] == 0
    assert "probe_dns_serial" not in text


async def test_tcp_transport_times_connect_and_query(server: DNSServer) -> None:
    result = await run_probe(f"127.0.0.1:{server.port}",
                             dns_mod(query_name="www.example.test", query_type="A", transport_protocol="tcp"), 5)
    assert result.success, result.failure
    assert server.transports == ["tcp"]
    assert [p.name for p in result.timeline] == ["connect", "query"]
    assert result.details.answer_rrs == 2


async def test_dns_over_tls(server: DNSServer, ca: Issued, leaf: Issued) -> None:
    async with TLSTerminator(server_context(leaf), server.address) as dot:
        m = dns_mod(query_name="www.example.test", query_type="A", transport_protocol="tcp", dns_over_tls=True,
                    tls_config={"ca_file": ca.cert_file, "server_name": "localhost"})
        result = await run_probe(f"127.0.0.1:{dot.port}", m, 5)
        assert result.success, result.failure
        assert [p.name for p in result.timeline] == ["connect", "tls", "query"]
        assert server.transports == ["tcp"] and result.tls.version is not None
        result = await run_probe(f"127.0.0.1:{dot.port}", dns_mod(query_name="www.example.test", transport_protocol="tcp",
                                                                  dns_over_tls=True), 5)
        assert (result.failure.phase, result.failure.reason) == ("tls", "tls_cert_untrusted")


async def test_server_name_is_resolved_in_the_dns_phase(server: DNSServer) -> None:
    m = mod("dns", timeout="2s", resolver=resolver_for(server),
            dns={"preferred_ip_protocol": "ip4", "ip_protocol_fallback": False, "query_name": "txt.example.test",
                 "query_type": "TXT"})
    result = await run_probe(f"ns.example.test:{server.port}", m, 5)
    assert result.success, result.failure
    assert [p.name for p in result.timeline] == ["dns", "query"]
    assert server.queries == [("ns.example.test", "A"), ("txt.example.test", "TXT")]
    assert values(probe_text(result), "probe_dns_lookup_time_seconds")[()] > 0


async def test_soa_query_reports_the_serial(server: DNSServer) -> None:
    result = await run_probe(f"127.0.0.1:{server.port}", dns_mod(query_name="example.test", query_type="SOA"), 5)
    assert result.success, result.failure
    assert values(probe_text(result), "probe_dns_serial") == {(): 2026113001.0}


@pytest.mark.parametrize("name,valid,reason", [
    ("gone.example.test", None, "dns_rcode"),
    ("broken.example.test", None, "dns_rcode"),
    ("gone.example.test", ["NXDOMAIN"], None),
    ("www.example.test", ["NXDOMAIN"], "dns_rcode"),
])
async def test_valid_rcodes(server: DNSServer, name: str, valid: list[str] | None, reason: str | None) -> None:
    fields = {"query_name": name, "query_type": "A", **({"valid_rcodes": valid} if valid else {})}
    result = await run_probe(f"127.0.0.1:{server.port}", dns_mod(**fields), 5)
    assert (result.failure.reason if result.failure else None) == reason
    assert values(probe_text(result), "probe_dns_query_succeeded") == {(): 1.0}  # an answer came, whatever its rcode
    if reason:
        assert result.failure.phase == "query"


# Records are matched in miekg/dns's text form: name, ttl, class, type, rdata separated by tabs.
@pytest.mark.parametrize("check,reason", [
    ({"fail_if_matches_regexp": [r"192\.0\.2\.11$"]}, "dns_rr_mismatch"),
    ({"fail_if_matches_regexp": [r"198\.51\.100\."]}, None),
    ({"fail_if_all_match_regexp": [r"^www\.example\.test\.\t60\tIN\tA\t192\.0\.2\."]}, "dns_rr_mismatch"),
    ({"fail_if_all_match_regexp": [r"192\.0\.2\.10$"]}, None),
    ({"fail_if_not_matches_regexp": [r"192\.0\.2\.10$"]}, "dns_rr_mismatch"),
    ({"fail_if_not_matches_regexp": [r"\tIN\tA\t"]}, None),
    ({"fail_if_none_matches_regexp": [r"192\.0\.2\.99"]}, "dns_rr_mismatch"),
    ({"fail_if_none_matches_regexp": [r"192\.0\.2\.99", r"192\.0\.2\.11"]}, None),
])
async def test_validate_answer_rrs(server: DNSServer, check: dict[str, list[str]], reason: str | None) -> None:
    result = await run_probe(f"127.0.0.1:{server.port}",
                             dns_mod(query_name="www.example.test", query_type="A", validate_answer_rrs=check), 5)
    assert (result.failure.reason if result.failure else None) == reason, result.failure
    assert result.failed_due_to_regex == (reason is not None)


async def test_empty_section_fails_a_required_match(server: DNSServer) -> None:
    m = dns_mod(query_name="www.example.test", query_type="A",
                validate_authority_rrs={"fail_if_none_matches_regexp": ["ns1"]})
    result = await run_probe(f"127.0.0.1:{server.port}", m, 5)
    assert result.failure.reason == "dns_rr_mismatch"
    assert "validate_authority_rrs" in result.failure.message


async def test_cname_chain_is_in_the_answer(server: DNSServer) -> None:
    m = dns_mod(query_name="alias.example.test", query_type="A",
                validate_answer_rrs={"fail_if_none_matches_regexp": [r"\tCNAME\twww\.example\.test\.$"]})
    result = await run_probe(f"127.0.0.1:{server.port}", m, 5)
    assert result.success, result.failure
    assert result.details.answer_rrs == 3


async def test_recursion_desired_false_clears_rd() -> None:
    seen: list[bool] = []

    class Recording(DNSServer):
        def _answer(self, wire: bytes, transport: str):
            import dns.flags
            import dns.message
            seen.append(bool(dns.message.from_wire(wire).flags & dns.flags.RD))
            return super()._answer(wire, transport)

    async with Recording(ZONE) as s:
        for rd in (True, False):
            result = await run_probe(f"127.0.0.1:{s.port}",
                                     dns_mod(query_name="www.example.test", query_type="A", recursion_desired=rd), 5)
            assert result.success, result.failure
    assert seen == [True, False]


async def test_no_answer_is_a_query_timeout(server: DNSServer) -> None:
    result = await run_probe(f"127.0.0.1:{server.port}",
                             mod("dns", timeout="0.5s", dns={"query_name": "silent.example.test", "query_type": "A"}), 0.5)
    assert (result.failure.phase, result.failure.reason) == ("query", "dns_query_timeout")
    assert values(probe_text(result), "probe_dns_query_succeeded") == {(): 0.0}


async def test_source_ip_address_is_used(server: DNSServer) -> None:
    for transport in ("udp", "tcp"):
        result = await run_probe(f"127.0.0.1:{server.port}", dns_mod(query_name="www.example.test", query_type="A",
                                                                     transport_protocol=transport, source_ip_address="127.0.0.2"), 5)
        assert result.success, result.failure
    assert server.clients == ["127.0.0.2", "127.0.0.2"]
    for transport in ("udp", "tcp"):
        result = await run_probe(f"127.0.0.1:{server.port}", dns_mod(query_name="www.example.test", query_type="A",
                                                                     transport_protocol=transport, source_ip_address="::1"), 5)
        assert result.failure.reason == "invalid_target" and "source_ip_address" in result.failure.message


@pytest.mark.parametrize("fields,message", [
    ({"query_type": "A"}, "query_name: required"),
    ({"query_name": "x.test", "query_type": "BOGUS"}, "query_type"),
    ({"query_name": "x.test", "query_class": "XX"}, "query_class"),
    ({"query_name": "x.test", "transport_protocol": "sctp"}, "transport_protocol: must be udp or tcp"),
    ({"query_name": "x.test", "valid_rcodes": ["NOPE"]}, "valid_rcodes[0]: unknown rcode"),
    ({"query_name": "x.test", "dns_over_tls": True}, "needs transport_protocol: tcp"),
    ({"query_name": "x.test", "validate_answer_rrs": {"fail_if_matches_regexp": ["("]}}, "validate_answer_rrs.fail_if_matches_regexp[0]"),
    ({"query_name": "x.test", "validate_answer_rrs": {"fail_if_matchs_regexp": ["a"]}}, "unknown field"),
    ({"query_name": "x.test", "source_ip_address": "not-an-ip"}, "is not an IP address"),
])
def test_bad_dns_sections_are_named(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        mod("dns", dns=fields)
    assert message in str(info.value) and "dns" in str(info.value)
