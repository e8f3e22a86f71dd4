"""connhealth's /probe against the real blackbox_exporter, same blackbox.yml, same targets.

(HTTP framing edge cases from raw servers — 1xx, POST→303, bad and conflicting
Content-Length, obs-fold, chunked, percent-encoding, userinfo — and HTTP/2 are
compared side by side in tests/test_blackbox_compat_raw.py.)

blackbox_exporter is the reference for its own metric names: for every metric
of the list below that blackbox emits for a target, connhealth must emit it
too, with the same TYPE and HELP, the same label names and values, and the
same value (exact for everything but timings; timings within a tolerance).

Differences that were found and resolved in connhealth (see exporter/exposition.py):
* probe_ip_addr_hash: blackbox hashes the address *bytes* (FNV-1a 32 of the 4
  or 16 byte address), connhealth hashed its text form.
* probe_ip_protocol / probe_ip_addr_hash were missing when the connect failed
  (closed port); blackbox sets them as soon as the address is resolved.
* probe_ssl_last_chain_info{subjectalternative}: blackbox lists the leaf's DNS
  SANs only; connhealth listed the IP SANs too.
* probe_http_duration_seconds{phase="processing"}: blackbox measures from
  getting the connection to the first response byte, i.e. including writing
  the request; connhealth counted only the wait for the first byte.
* probe_ssl_last_chain_expiry_timestamp_seconds: blackbox takes the earliest
  notAfter of the *verified* chain, which includes the trust anchor the server
  never sends (so a CA expiring before its leaf shows up here, not in
  probe_ssl_earliest_cert_expiry); without verification it is Go's zero time.
  connhealth reported the presented chain's earliest expiry for both.

Legitimate differences, tolerated below:
* Timings (probe_duration_seconds, probe_dns_lookup_time_seconds,
  probe_http_duration_seconds) are two different clients' measurements of two
  different connections: compared within TIMING_TOLERANCE. Two systematic
  ones hide inside that tolerance: for an IP-literal target blackbox still
  "resolves" (some µs) where connhealth reports 0 (no DNS phase), and when TLS
  fails blackbox reports connect=0 (Go's trace only counts a connection handed
  to the HTTP client) where connhealth reports the TCP connect it measured.
* probe_timeout_seconds and probe_tls_cipher_info are not emitted by the
  installed blackbox_exporter 0.23 (newer releases have them); connhealth
  emits them, so for these two "connhealth only" is allowed.

A deliberate difference (blackbox #1119, fixed in connhealth): when certificate
verification fails, blackbox exports nothing about the certificate, so an
expired certificate has no expiry series and an expiry alert cannot fire.
connhealth exports probe_ssl_earliest_cert_expiry of the chain the server
presented; the failed-verification cases allow exactly that one extra family
and check its value.
"""
from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from exporter.certs import CertFactory, server_context
try:  # works whether or not tests/ becomes a package later
    from tests import procs
    from tests.peers import HTTPServer
except ImportError:  # pragma: no cover
    import procs  # type: ignore[no-redef]
    from peers import HTTPServer  # type: ignore[no-redef]

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90)]

COMPARED = (
    "probe_success", "probe_duration_seconds", "probe_timeout_seconds", "probe_dns_lookup_time_seconds",
    "probe_ip_protocol", "probe_ip_addr_hash", "probe_http_duration_seconds", "probe_http_status_code",
    "probe_http_version", "probe_http_ssl", "probe_http_redirects", "probe_http_content_length",
    "probe_http_uncompressed_body_length", "probe_failed_due_to_regex", "probe_ssl_earliest_cert_expiry",
    "probe_ssl_last_chain_expiry_timestamp_seconds", "probe_ssl_last_chain_info", "probe_tls_version_info",
    "probe_tls_cipher_info",
)
TIMINGS = {"probe_duration_seconds", "probe_dns_lookup_time_seconds", "probe_http_duration_seconds"}
# Both clients on loopback against the same local server: a few ms each. A busy CI box adds jitter
# to either side (blackbox once took 64 ms of "processing" where connhealth took 1 ms), so the bound
# only catches wrong units or a phase mapped to the wrong metric, not scheduling noise.
TIMING_TOLERANCE = 0.25
# Emitted by newer blackbox releases only; the installed 0.23 does not, connhealth does.
NEWER_BLACKBOX_ONLY = {"probe_timeout_seconds", "probe_tls_cipher_info"}
GO_ZERO_TIME_UNIX = -62135596800.0


class Env:
    def __init__(self, **kw: object) -> None:
        self.__dict__.update(kw)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory):
    work: Path = tmp_path_factory.mktemp("bbcompat")
    certs = CertFactory(work / "certs")
    ca = certs.ca("connhealth compat CA")
    good = certs.leaf(ca)
    expired = certs.leaf(ca, not_after=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=2))
    # A CA that expires before its leaf: presented chain (leaf only) and verified
    # chain (leaf + this root) have different earliest expiries.
    short_ca = certs.ca("connhealth short-lived CA", not_after=dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=10))
    short_leaf = certs.leaf(short_ca)
    ca_bundle = work / "ca-bundle.pem"
    ca_bundle.write_bytes(ca.cert_pem + short_ca.cert_pem)

    config = work / "blackbox.yml"
    config.write_text(f"""
modules:
  http_ca:
    prober: http
    timeout: 5s
    http:
      preferred_ip_protocol: ip4
      tls_config:
        ca_file: {ca_bundle}
  http_insecure:
    prober: http
    timeout: 5s
    http:
      preferred_ip_protocol: ip4
      tls_config:
        insecure_skip_verify: true
  tcp_plain:
    prober: tcp
    timeout: 5s
    tcp:
      preferred_ip_protocol: ip4
  tcp_tls:
    prober: tcp
    timeout: 5s
    tcp:
      preferred_ip_protocol: ip4
      tls: true
      tls_config:
        ca_file: {ca_bundle}
""")
    servers = [HTTPServer(server_context(good)), HTTPServer(), HTTPServer(server_context(expired)),
               HTTPServer(server_context(short_leaf))]
    started: list[object] = []
    bb = ch = None
    try:
        for s in servers:
            await s.start()
            started.append(s)
        https, http, exp, short = servers
        bb = await procs.start_blackbox(config, work)
        ch = await procs.start_connhealth(config, work)
        # Warm-up, one untimed probe per module: connhealth builds a module's
        # TLS context (trust store included; the system store for
        # insecure_skip_verify, ~0.1 s) on first use, Go loads its roots lazily
        # too. Timings are compared in the steady state, not the first probe.
        for proc in (bb, ch):
            for module, target in (("http_ca", https.url("/ok")), ("http_insecure", https.url("/ok")),
                                   ("tcp_tls", f"127.0.0.1:{https.port}"), ("tcp_plain", f"127.0.0.1:{http.port}")):
                await procs.get_text(proc.base_url + "/probe", params={"target": target, "module": module})
        yield Env(https=https, http=http, expired=exp, short=short, closed=procs.free_port(), bb=bb, ch=ch,
                  good=good, short_ca=short_ca, expired_leaf=expired)
    finally:
        for p in (ch, bb):
            if p is not None:
                await p.astop()
        for s in reversed(started):
            await s.stop()


# (id, module, target builder, expectations on blackbox's own output: proves the scenario is what we think)
CASES = [
    ("https_ok", "http_ca", lambda e: e.https.url("/ok"),
     {"probe_success": 1, "probe_http_status_code": 200, "probe_http_ssl": 1}),
    ("http_ok", "http_ca", lambda e: e.http.url("/ok"),
     {"probe_success": 1, "probe_http_status_code": 200, "probe_http_ssl": 0}),
    ("http_503", "http_ca", lambda e: e.http.url("/status/503"),
     {"probe_success": 0, "probe_http_status_code": 503}),
    ("http_redirects", "http_ca", lambda e: e.http.url("/redirect/2"),
     {"probe_success": 1, "probe_http_status_code": 200, "probe_http_redirects": 3}),
    ("https_redirects", "http_ca", lambda e: e.https.url("/redirect/1"),
     {"probe_success": 1, "probe_http_redirects": 2, "probe_http_ssl": 1}),
    ("http_closed_port", "http_ca", lambda e: f"http://127.0.0.1:{e.closed}/",
     {"probe_success": 0, "probe_http_status_code": 0}),
    ("https_expired_cert", "http_ca", lambda e: e.expired.url("/ok"),
     {"probe_success": 0, "probe_http_ssl": 0, "probe_http_status_code": 0}),
    ("https_short_lived_ca", "http_ca", lambda e: e.short.url("/ok"),
     {"probe_success": 1, "probe_http_ssl": 1}),
    ("https_insecure_skip_verify", "http_insecure", lambda e: e.https.url("/ok"),
     {"probe_success": 1, "probe_ssl_last_chain_expiry_timestamp_seconds": GO_ZERO_TIME_UNIX}),
    ("tcp_plain", "tcp_plain", lambda e: f"127.0.0.1:{e.http.port}", {"probe_success": 1}),
    ("tcp_tls", "tcp_tls", lambda e: f"127.0.0.1:{e.https.port}", {"probe_success": 1}),
    ("tcp_closed_port", "tcp_plain", lambda e: f"127.0.0.1:{e.closed}", {"probe_success": 0}),
]


def parse(text: str) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def series(family) -> dict[frozenset, float]:
    out = {}
    for s in family.samples:
        key = frozenset(s.labels.items())
        assert key not in out, f"{family.name}: duplicate series {dict(s.labels)}"
        out[key] = s.value
    return out


async def scrape(proc: procs.ManagedProcess, target: str, module: str) -> dict[str, object]:
    status, text, content_type = await procs.get_text(proc.base_url + "/probe", params={"target": target, "module": module})
    assert status == 200, f"{proc.name} /probe answered {status}: {text}"
    assert content_type.startswith("text/plain"), content_type
    return parse(text)


def single(families: dict[str, object], name: str) -> float:
    samples = families[name].samples
    assert len(samples) == 1, samples
    return samples[0].value


# Cases whose handshake fails verification: connhealth reports the presented chain's expiry (blackbox #1119).
FAILED_VERIFICATION = {"https_expired_cert"}


def differences(bb: dict[str, object], ch: dict[str, object], connhealth_extra: frozenset[str] = frozenset()) -> list[str]:
    """What keeps connhealth's families from matching blackbox's, for the COMPARED names."""
    problems: list[str] = []
    for name in COMPARED:
        if name not in bb:
            if name in ch and name not in NEWER_BLACKBOX_ONLY | connhealth_extra:
                problems.append(f"{name}: emitted by connhealth only")
            continue
        if name not in ch:
            problems.append(f"{name}: emitted by blackbox only")
            continue
        b, c = bb[name], ch[name]
        if b.type != c.type:
            problems.append(f"{name}: TYPE {b.type} (blackbox) != {c.type} (connhealth)")
        if b.documentation != c.documentation:
            problems.append(f"{name}: HELP {b.documentation!r} (blackbox) != {c.documentation!r} (connhealth)")
        bs, cs = series(b), series(c)
        if set(bs) != set(cs):
            problems.append(f"{name}: label sets differ: blackbox {[dict(k) for k in bs]} connhealth {[dict(k) for k in cs]}")
            continue
        for key, bv in bs.items():
            cv = cs[key]
            if name in TIMINGS:
                ok = math.isfinite(cv) and cv >= 0 and abs(bv - cv) < TIMING_TOLERANCE
            else:
                ok = bv == cv
            if not ok:
                problems.append(f"{name}{dict(key)}: blackbox {bv!r} != connhealth {cv!r}")
    return problems


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
async def test_probe_matches_blackbox(env, case) -> None:
    case_id, module, make_target, expect = case
    target = make_target(env)
    bb = await scrape(env.bb, target, module)
    ch = await scrape(env.ch, target, module)

    for name, want in expect.items():
        assert single(bb, name) == want, f"scenario check on blackbox: {name}"

    extra = frozenset()
    if case_id in FAILED_VERIFICATION:
        extra = frozenset({"probe_ssl_earliest_cert_expiry"})
        assert "probe_ssl_earliest_cert_expiry" not in bb  # blackbox #1119: nothing about the certificate
        assert single(ch, "probe_ssl_earliest_cert_expiry") == int(env.expired_leaf.not_valid_after.timestamp())
    problems = differences(bb, ch, extra)
    assert not problems, f"{module} {target}:\n  " + "\n  ".join(problems)

    # connhealth's own view rides along; the deadline it reports is the module's.
    assert single(ch, "probe_timeout_seconds") == 5
    if single(bb, "probe_success") == 0:
        assert "probe_failure_info" in ch
    else:
        assert "probe_failure_info" not in ch


async def test_chain_expiry_semantics(env) -> None:
    """The two expiry metrics mean different things; make sure the short-lived-CA case shows it on both."""
    target = env.short.url("/ok")
    for proc in (env.bb, env.ch):
        fams = await scrape(proc, target, "http_ca")
        leaf_expiry = single(fams, "probe_ssl_earliest_cert_expiry")
        chain_expiry = single(fams, "probe_ssl_last_chain_expiry_timestamp_seconds")
        assert chain_expiry == int(env.short_ca.not_valid_after.timestamp()), proc.name
        assert leaf_expiry > chain_expiry, proc.name


async def test_scrape_timeout_header(env) -> None:
    """Prometheus' scrape timeout minus the 0.5 s offset caps the module timeout in both."""
    target = env.http.url("/slow?delay=3")
    headers = {"X-Prometheus-Scrape-Timeout-Seconds": "1.5"}
    durations = {}
    for proc in (env.bb, env.ch):
        status, text, _ = await procs.get_text(proc.base_url + "/probe", params={"target": target, "module": "http_ca"},
                                               headers=headers)
        assert status == 200, text
        fams = parse(text)
        assert single(fams, "probe_success") == 0, proc.name
        durations[proc.name] = single(fams, "probe_duration_seconds")
        if "probe_timeout_seconds" in fams:
            assert single(fams, "probe_timeout_seconds") == 1.0, proc.name
    for name, seconds in durations.items():
        assert 0.9 < seconds < 1.5, (name, seconds)


async def test_comparison_catches_the_differences_it_exists_for() -> None:
    """differences() itself, on hand-written exposition: no processes needed."""
    bb = parse(
        "# HELP probe_ip_addr_hash Specifies the hash of IP address. It's useful to detect if the IP address changes.\n"
        "# TYPE probe_ip_addr_hash gauge\nprobe_ip_addr_hash 3.668918509e+09\n"
        "# HELP probe_ip_protocol Specifies whether probe ip protocol is IP4 or IP6\n"
        "# TYPE probe_ip_protocol gauge\nprobe_ip_protocol 4\n"
        "# HELP probe_ssl_last_chain_info Contains SSL leaf certificate information\n# TYPE probe_ssl_last_chain_info gauge\n"
        'probe_ssl_last_chain_info{fingerprint_sha256="ab",issuer="CN=ca",subject="CN=x",subjectalternative="localhost"} 1\n'
        "# HELP probe_duration_seconds Returns how long the probe took to complete in seconds\n"
        "# TYPE probe_duration_seconds gauge\nprobe_duration_seconds 0.004\n"
    )
    assert differences(bb, bb) == []
    old_connhealth = parse(
        "# HELP probe_ip_addr_hash Specifies the hash of IP address. It's useful to detect if the IP address changes.\n"
        "# TYPE probe_ip_addr_hash gauge\nprobe_ip_addr_hash 144953630\n"
        "# HELP probe_ssl_last_chain_info Contains SSL leaf certificate information\n# TYPE probe_ssl_last_chain_info gauge\n"
        'probe_ssl_last_chain_info{fingerprint_sha256="ab",issuer="CN=ca",subject="CN=x",subjectalternative="localhost,127.0.0.1"} 1\n'
        "# HELP probe_duration_seconds Returns how long the probe took to complete in seconds\n"
        "# TYPE probe_duration_seconds gauge\nprobe_duration_seconds 0.9\n"
        "# HELP probe_http_ssl Indicates if SSL was used for the final redirect\n# TYPE probe_http_ssl gauge\nprobe_http_ssl 0\n"
    )
    found = "\n".join(differences(bb, old_connhealth))
    for needle in ("probe_ip_addr_hash{}: blackbox 3668918509",
                   "probe_ip_protocol: emitted by blackbox only", "probe_ssl_last_chain_info: label sets differ",
                   "probe_duration_seconds{}: blackbox 0.004 != connhealth 0.9", "probe_http_ssl: emitted by connhealth only"):
        assert needle in found, found
