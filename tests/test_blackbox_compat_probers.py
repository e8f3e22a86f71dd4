"""The dns, icmp and grpc probers side by side with the real blackbox_exporter: same config, same targets.

For every case both exporters must agree on probe_success, and every probe_*
family blackbox emits must come from connhealth too, with the same TYPE, HELP
and label sets; values are compared exactly except for timings and for the
TLS certificate families (two clients, the same certificate: compared on
labels only). Peers: the DNS server on loopback, grpcio's health server
(cleartext and TLS), and hosts in a network namespace the test creates
(198.18.0.0/15) for ICMP.

What connhealth emits beyond blackbox for these probers, on purpose:
probe_failed_due_to_regex (every prober reports it; 1 after a dns
validate_*_rrs check failed), connhealth's /probe extras (probe_failure_info,
phase gauges, probe_timeout_seconds) and, for TLS, the families every TLS
prober of connhealth reports (probe_ssl_last_chain_expiry_timestamp_seconds,
probe_tls_cipher_info).

What the installed blackbox 0.23 emits and the latest release does not: for a
cleartext grpc probe, probe_ssl_earliest_cert_expiry 0 (the latest registers
it only after a TLS handshake, as connhealth does).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from exporter.certs import CertFactory
from exporter.metrics import PROBE_ENDPOINT_EXTRA

try:  # works whether or not tests/ becomes a package later
    from tests import procs
    from tests.grpcpeer import HealthServer
    from tests.peers import BlackholeNet, DNSServer
    from tests.probekit import needs_netns
except ImportError:  # pragma: no cover
    import procs  # type: ignore[no-redef]
    from grpcpeer import HealthServer  # type: ignore[no-redef]
    from peers import BlackholeNet, DNSServer  # type: ignore[no-redef]
    from probekit import needs_netns  # type: ignore[no-redef]

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90), needs_netns]

ZONE = {
    "www.example.test": "A:192.0.2.10,A:192.0.2.11",
    "example.test": "SOA:ns1.example.test. hostmaster.example.test. 2026113001 3600 600 86400 60",
    "gone.example.test": "NXDOMAIN",
}
TIMINGS = {"probe_duration_seconds", "probe_dns_lookup_time_seconds", "probe_dns_duration_seconds",
           "probe_icmp_duration_seconds", "probe_grpc_duration_seconds"}
LABELS_ONLY = {"probe_ssl_earliest_cert_expiry", "probe_ssl_last_chain_info"} | TIMINGS
CONNHEALTH_EXTRA = ({spec.name for spec in PROBE_ENDPOINT_EXTRA}
                    | {"probe_failed_due_to_regex", "probe_timeout_seconds", "probe_ssl_last_chain_expiry_timestamp_seconds",
                       "probe_tls_cipher_info"})


class Env:
    def __init__(self, **kw: object) -> None:
        self.__dict__.update(kw)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory):
    ok, why = BlackholeNet.available()
    if not ok:
        pytest.fail(f"network namespaces unavailable: {why}")
    work: Path = tmp_path_factory.mktemp("bbprobers")
    certs = CertFactory(work / "certs")
    ca = certs.ca("connhealth grpc compat CA")
    leaf = certs.leaf(ca)
    config = work / "blackbox.yml"
    config.write_text(f"""
modules:
  dns_udp:
    prober: dns
    timeout: 3s
    dns:
      preferred_ip_protocol: ip4
      query_name: www.example.test
      query_type: A
  dns_tcp:
    prober: dns
    timeout: 3s
    dns:
      transport_protocol: tcp
      preferred_ip_protocol: ip4
      query_name: www.example.test
      query_type: A
  dns_soa:
    prober: dns
    timeout: 3s
    dns:
      preferred_ip_protocol: ip4
      query_name: example.test
      query_type: SOA
  dns_nxdomain_ok:
    prober: dns
    timeout: 3s
    dns:
      preferred_ip_protocol: ip4
      query_name: gone.example.test
      query_type: A
      valid_rcodes: [NXDOMAIN]
  dns_nxdomain_bad:
    prober: dns
    timeout: 3s
    dns:
      preferred_ip_protocol: ip4
      query_name: gone.example.test
      query_type: A
  dns_rr_check:
    prober: dns
    timeout: 3s
    dns:
      preferred_ip_protocol: ip4
      query_name: www.example.test
      query_type: A
      validate_answer_rrs:
        fail_if_matches_regexp: ["192\\\\.0\\\\.2\\\\.11$"]
  icmp:
    prober: icmp
    timeout: 1s
    icmp:
      preferred_ip_protocol: ip4
  grpc_plain:
    prober: grpc
    timeout: 3s
    grpc:
      preferred_ip_protocol: ip4
  grpc_down:
    prober: grpc
    timeout: 3s
    grpc:
      preferred_ip_protocol: ip4
      service: down
  grpc_unknown:
    prober: grpc
    timeout: 3s
    grpc:
      preferred_ip_protocol: ip4
      service: nosuch
  grpc_tls:
    prober: grpc
    timeout: 3s
    grpc:
      preferred_ip_protocol: ip4
      tls: true
      tls_config:
        ca_file: {ca.cert_file}
""")
    dns = DNSServer(ZONE)
    await dns.start()
    plain, secure = HealthServer(), HealthServer(leaf)
    net = BlackholeNet().start()
    bb = ch = None
    try:
        bb = await procs.start_blackbox(config, work)
        ch = await procs.start_connhealth(config, work)
        yield Env(dns=dns, plain=plain, secure=secure, net=net, bb=bb, ch=ch)
    finally:
        for p in (ch, bb):
            if p is not None:
                await p.astop()
        net.stop()
        plain.stop()
        secure.stop()
        await dns.stop()


# (id, module, target builder, blackbox's probe_success: proves the scenario is what we think)
CASES = [
    ("dns_udp", "dns_udp", lambda e: f"127.0.0.1:{e.dns.port}", 1),
    ("dns_tcp", "dns_tcp", lambda e: f"127.0.0.1:{e.dns.port}", 1),
    ("dns_soa", "dns_soa", lambda e: f"127.0.0.1:{e.dns.port}", 1),
    ("dns_nxdomain_valid", "dns_nxdomain_ok", lambda e: f"127.0.0.1:{e.dns.port}", 1),
    ("dns_nxdomain_invalid", "dns_nxdomain_bad", lambda e: f"127.0.0.1:{e.dns.port}", 0),
    ("dns_rr_regexp", "dns_rr_check", lambda e: f"127.0.0.1:{e.dns.port}", 0),
    ("icmp_namespace_host", "icmp", lambda e: e.net.ns_ip, 1),
    ("icmp_loopback", "icmp", lambda e: "127.0.0.1", 1),
    ("icmp_blackholed", "icmp", lambda e: e.net.blackhole_ip, 0),
    ("grpc_serving", "grpc_plain", lambda e: f"127.0.0.1:{e.plain.port}", 1),
    ("grpc_not_serving", "grpc_down", lambda e: f"127.0.0.1:{e.plain.port}", 0),
    ("grpc_unknown_service", "grpc_unknown", lambda e: f"127.0.0.1:{e.plain.port}", 0),
    ("grpc_tls", "grpc_tls", lambda e: f"localhost:{e.secure.port}", 1),
]


async def scrape(proc: procs.ManagedProcess, target: str, module: str) -> dict[str, object]:
    status, text, _ = await procs.get_text(proc.base_url + "/probe", params={"target": target, "module": module})
    assert status == 200, f"{proc.name} /probe answered {status}: {text}"
    return {f.name: f for f in text_string_to_metric_families(text) if f.name.startswith("probe_")}


def series(family) -> dict[frozenset, float]:
    return {frozenset(s.labels.items()): s.value for s in family.samples}


def differences(bb: dict[str, object], ch: dict[str, object]) -> list[str]:
    if "probe_grpc_ssl" in bb and series(bb["probe_grpc_ssl"]) == {frozenset(): 0.0}:
        # blackbox 0.23 only (see the module docstring): no certificate, no expiry.
        assert series(bb.pop("probe_ssl_earliest_cert_expiry")) == {frozenset(): 0.0}
    problems = [f"{name}: emitted by blackbox only" for name in sorted(set(bb) - set(ch))]
    problems += [f"{name}: emitted by connhealth only" for name in sorted(set(ch) - set(bb) - CONNHEALTH_EXTRA)]
    for name in sorted(set(bb) & set(ch)):
        b, c = bb[name], ch[name]
        if (b.type, b.documentation) != (c.type, c.documentation):
            problems.append(f"{name}: TYPE/HELP {b.type} {b.documentation!r} (blackbox) != {c.type} {c.documentation!r}")
        bs, cs = series(b), series(c)
        if name in LABELS_ONLY:
            bk, ck = ({frozenset(k for k, _ in key) for key in s} for s in (bs, cs))
            if name in TIMINGS:  # the phase label's values must be the same too
                bk, ck = set(bs), set(cs)
            if bk != ck:
                problems.append(f"{name}: labels differ: blackbox {bk} connhealth {ck}")
        elif bs != cs:
            problems.append(f"{name}: blackbox {bs} != connhealth {cs}")
    return problems


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
async def test_prober_matches_blackbox(env, case) -> None:
    case_id, module, make_target, success = case
    target = make_target(env)
    bb = await scrape(env.bb, target, module)
    ch = await scrape(env.ch, target, module)
    assert series(bb["probe_success"]) == {frozenset(): float(success)}, "scenario check on blackbox"
    problems = differences(bb, ch)
    assert not problems, f"{module} {target}:\n  " + "\n  ".join(problems)
