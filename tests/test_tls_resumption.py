"""tls_resumption against a real nginx: tickets on → resumed; tickets off and no cache → not resumed (require fails)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from exporter.certs import Issued
from exporter.config import parse_config
from exporter.engine import run_probe
from exporter.net.guard import ProbeGuard, TargetForbidden, parse_rules
from exporter.schema import ConfigError
from exporter.sinks.exposition import probe_text

try:
    from tests.nginx import Nginx
    from tests.probekit import PER_TEST_TIMEOUT, ca, certs, leaf, mod  # noqa: F401  (fixtures)
except ImportError:  # pragma: no cover
    from nginx import Nginx
    from probekit import PER_TEST_TIMEOUT, ca, certs, leaf, mod  # noqa: F401

pytestmark = pytest.mark.timeout(PER_TEST_TIMEOUT)

TICKETS_OFF = "ssl_session_tickets off;\n        ssl_session_cache off;"


def tcp_tls(ca: Issued, **resumption: object):  # type: ignore[no-untyped-def]
    return mod("tcp", tcp={"tls": True, "tls_config": {"ca_file": ca.cert_file}}, tls_resumption=resumption)


@pytest.mark.parametrize("version", ["TLS12", "TLS13"])
async def test_nginx_with_session_tickets_resumes(tmp_path: Path, ca: Issued, leaf: Issued, version: str) -> None:
    module = mod("tcp", tcp={"tls": True, "tls_config": {"ca_file": ca.cert_file, "min_version": version, "max_version": version}},
                 tls_resumption={"check": True, "require": True})
    with Nginx(tmp_path, cert=leaf.cert_file, key=leaf.key_file) as nginx:
        result = await run_probe(f"127.0.0.1:{nginx.port}", module)
    assert result.success, result.failure
    r = result.resumption
    assert r is not None and r.resumed and r.offered
    assert r.version == {"TLS12": "TLS 1.2", "TLS13": "TLS 1.3"}[version]
    # Both handshake durations are reported, and are the two phases of the check.
    assert r.resumed_seconds is not None and r.full_seconds > 0 and r.resumed_seconds > 0
    assert result.phases["tls_full"] == r.full_seconds
    assert result.phases["tls_resumed"] == r.resumed_seconds
    text = probe_text(result)
    assert "probe_tls_session_resumed 1" in text and 'probe_tls_handshake_seconds{kind="resumed"}' in text


@pytest.mark.parametrize(("version", "offered"), [("TLS12", True), ("TLS13", True)])
async def test_nginx_without_tickets_or_cache_is_not_resumed(tmp_path: Path, ca: Issued, leaf: Issued, version: str,
                                                             offered: bool) -> None:
    module = mod("tcp", tcp={"tls": True, "tls_config": {"ca_file": ca.cert_file, "min_version": version, "max_version": version}},
                 tls_resumption={"check": True})
    with Nginx(tmp_path, cert=leaf.cert_file, key=leaf.key_file, server_extra=TICKETS_OFF) as nginx:
        result = await run_probe(f"127.0.0.1:{nginx.port}", module)
    assert result.success, result.failure  # check only: reported, not a failure
    r = result.resumption
    assert r is not None and not r.resumed and r.full_seconds > 0
    # OpenSSL still hands out a session id (1.2) or a stateful ticket (1.3) that nginx, without a cache, cannot know.
    assert r.offered is offered and (r.resumed_seconds is not None) is offered
    assert "probe_tls_session_resumed 0" in probe_text(result)


async def test_require_fails_when_nginx_does_not_resume(tmp_path: Path, ca: Issued, leaf: Issued) -> None:
    module = mod("tcp", tcp={"tls": True, "tls_config": {"ca_file": ca.cert_file, "max_version": "TLS12"}},
                 tls_resumption={"require": True})
    with Nginx(tmp_path, cert=leaf.cert_file, key=leaf.key_file, server_extra=TICKETS_OFF) as nginx:
        result = await run_probe(f"127.0.0.1:{nginx.port}", module)
    assert result.failure is not None
    assert (result.failure.phase, result.failure.reason) == ("tls_resumed", "tls_resumption_failed"), result.failure
    r = result.resumption
    assert r is not None and r.offered and not r.resumed and r.resumed_seconds is not None and r.full_seconds > 0


async def test_the_http_prober_checks_resumption_too_after_a_redirect(tmp_path: Path, ca: Issued, leaf: Issued) -> None:
    module = mod("http", http={"tls_config": {"ca_file": ca.cert_file}}, tls_resumption={"require": True})
    redirect = "location = /old { return 302 /; }"
    with Nginx(tmp_path, cert=leaf.cert_file, key=leaf.key_file, server_extra=redirect) as nginx:
        result = await run_probe(nginx.url + "old", module)
    assert result.success, result.failure
    assert result.resumption is not None and result.resumption.resumed
    assert result.to_dict()["tls_resumption"]["resumed"] is True
    # The check ran after both hops: its phases are the last hop's, as /probe reports them.
    assert len(result.hops) == 2 and {"tls_full", "tls_resumed"} <= result.phases.keys()


async def test_the_http_keepalive_check_is_followed_by_the_resumption_check(tmp_path: Path, ca: Issued, leaf: Issued) -> None:
    from exporter.engine import expected_phases

    module = mod("http", timeout="5s", http={"tls_config": {"ca_file": ca.cert_file}, "keepalive": {"idle": "100ms"}},
                 tls_resumption={"require": True})
    with Nginx(tmp_path, cert=leaf.cert_file, key=leaf.key_file) as nginx:
        result = await run_probe(nginx.url, module)
    assert result.success, result.failure
    assert result.keepalive is not None and result.keepalive.reused
    assert result.resumption is not None and result.resumption.resumed
    # Every phase the series were created for at schedule time was reached, and no other.
    assert set(expected_phases(nginx.url, module)) == set(result.total_phases())


def test_tls_resumption_is_refused_for_a_prober_without_tls() -> None:
    with pytest.raises(ConfigError, match=r"modules\.m\.tls_resumption: prober sse has no TLS handshake to resume"):
        mod("sse", tls_resumption={"check": True})
    with pytest.raises(ConfigError, match=r"modules\.m\.tls_resumption\.requir: unknown field"):
        mod("tcp", tls_resumption={"requir": True})
    assert parse_config("modules: {m: {prober: tcp, tls_resumption: {require: true}}}").modules["m"].tls_resumption.check


@dataclass(frozen=True, slots=True)
class _RecordingGuard(ProbeGuard):
    """The real guard (its rules apply), recording every address it is asked about; from check number
    ``allowed + 1`` on it forbids (as a reload that narrowed probe_guard.allow would)."""

    seen: list[tuple[str, str, int]] = field(default_factory=list)
    allowed: int = 1000

    def check_address(self, host: str, ip: str, port: int) -> None:
        self.seen.append((host, ip, port))
        if len(self.seen) > self.allowed:
            raise TargetForbidden(f"{ip}:{port} forbidden from check {self.allowed + 1} on")
        ProbeGuard.check_address(self, host, ip, port)


async def test_every_connection_of_the_check_passes_the_guard(tmp_path: Path, ca: Issued, leaf: Issued) -> None:
    with Nginx(tmp_path, cert=leaf.cert_file, key=leaf.key_file) as nginx:
        guard = _RecordingGuard(allow=parse_rules(["127.0.0.0/8"]))
        result = await run_probe(f"127.0.0.1:{nginx.port}", tcp_tls(ca, check=True), guard=guard)
        assert result.success, result.failure
        # The probe's connection, the full handshake's and the resumed one's.
        assert guard.seen == [("127.0.0.1", "127.0.0.1", nginx.port)] * 3
        only_first = _RecordingGuard(allow=parse_rules(["127.0.0.0/8"]), allowed=1)
        result = await run_probe(f"127.0.0.1:{nginx.port}", tcp_tls(ca, check=True), guard=only_first)
    assert result.failure is not None and result.failure.reason == "target_forbidden"
    assert "forbidden from check 2 on" in result.failure.message and len(only_first.seen) == 2
    assert result.resumption is None and "tls_full" not in result.phases
