"""The grpc prober against grpcio's own health server (grpcio-health-checking), cleartext and TLS."""
from __future__ import annotations

from collections.abc import Iterator
import pytest
from cryptography import x509

from exporter.certs import CertFactory, Issued
from exporter.config import ConfigError
from exporter.engine import run_probe
from exporter.sinks.exposition import probe_text

try:  # works whether or not tests/ becomes a package later
    from tests import procs
    from tests.grpcpeer import HealthServer
    from tests.peers import HTTPServer, RawTCPServer
    from tests.probekit import PER_TEST_TIMEOUT, ca, certs, leaf, mod, surfaces_showing  # noqa: F401
except ImportError:  # pragma: no cover
    import procs  # type: ignore[no-redef]
    from grpcpeer import HealthServer  # type: ignore[no-redef]
    from peers import HTTPServer, RawTCPServer  # type: ignore[no-redef]
    from probekit import PER_TEST_TIMEOUT, ca, certs, leaf, mod, surfaces_showing  # type: ignore[no-redef]  # noqa: F401

pytestmark = pytest.mark.timeout(PER_TEST_TIMEOUT)


@pytest.fixture(scope="module")
def plain() -> Iterator[HealthServer]:
    server = HealthServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def secure(leaf: Issued) -> Iterator[HealthServer]:
    server = HealthServer(leaf)
    yield server
    server.stop()


def values(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(labels.items())): value for labels, value in procs.samples(text, name)}


def grpc_mod(**grpc_fields: object) -> object:
    return mod("grpc", timeout="3s", grpc={"preferred_ip_protocol": "ip4", **grpc_fields})


@pytest.mark.parametrize("service,success,reason,code,serving", [
    ("", True, None, 0, "SERVING"),
    ("up", True, None, 0, "SERVING"),
    ("down", False, "grpc_not_serving", 0, "NOT_SERVING"),
    ("nosuch", False, "grpc_status", 5, None),  # NOT_FOUND: the reference server does not know the service
])
async def test_health_check_statuses(plain: HealthServer, service: str, success: bool, reason: str | None, code: int,
                                     serving: str | None) -> None:
    result = await run_probe(f"127.0.0.1:{plain.port}", grpc_mod(service=service), 5)
    assert result.success is success
    assert (result.failure.reason if result.failure else None) == reason
    assert [p.name for p in result.timeline] == ["connect", "request", "first_byte", "transfer"]
    text = probe_text(result)
    assert values(text, "probe_grpc_status_code") == {(): float(code)}
    assert values(text, "probe_grpc_healthcheck_response") == {
        (("serving_status", s),): 1.0 if s == serving else 0.0 for s in ("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")}
    assert values(text, "probe_grpc_ssl") == {(): 0.0}
    assert set(values(text, "probe_grpc_duration_seconds")) == {(("phase", "resolve"),), (("phase", "check"),)}


async def test_metadata_reaches_the_server(plain: HealthServer) -> None:
    result = await run_probe(f"http://127.0.0.1:{plain.port}", grpc_mod(metadata={"x-probe": ["one"], "X-Team": "sre"}), 5)
    assert result.success, result.failure
    seen = plain.metadata[-1]
    assert (seen.get("x-probe"), seen.get("x-team")) == ("one", "sre")
    assert seen["traceparent"].startswith("00-")


async def test_credential_metadata_is_a_secret(plain: HealthServer) -> None:
    m = grpc_mod(metadata={"authorization": "Bearer s3cr3t-token"})
    result = await run_probe(f"127.0.0.1:{plain.port}", m, 5)
    assert result.success, result.failure
    assert plain.metadata[-1]["authorization"] == "Bearer s3cr3t-token"  # revealed on the wire only
    assert surfaces_showing("s3cr3t-token", result, m) == []


async def test_tls_reports_the_certificate(secure: HealthServer, ca: Issued, leaf: Issued) -> None:
    result = await run_probe(f"localhost:{secure.port}",
                             grpc_mod(tls=True, tls_config={"ca_file": str(ca.cert_file)}), 5)
    assert result.success, result.failure
    assert [p.name for p in result.timeline] == ["dns", "connect", "tls", "request", "first_byte", "transfer"]
    text = probe_text(result)
    assert values(text, "probe_grpc_ssl") == {(): 1.0}
    expiry = x509.load_pem_x509_certificate(leaf.cert_pem).not_valid_after_utc.timestamp()
    assert values(text, "probe_ssl_earliest_cert_expiry") == {(): expiry}
    assert result.tls.alpn == "h2"


async def test_tls_untrusted_and_insecure_skip_verify(secure: HealthServer) -> None:
    result = await run_probe(f"127.0.0.1:{secure.port}", grpc_mod(tls=True), 5)
    assert (result.failure.phase, result.failure.reason) == ("tls", "tls_cert_untrusted")
    assert values(probe_text(result), "probe_grpc_status_code") == {(): 14.0}  # UNAVAILABLE, as grpc-go reports it
    result = await run_probe(f"127.0.0.1:{secure.port}", grpc_mod(tls=True, tls_config={"insecure_skip_verify": True}), 5)
    assert result.success, result.failure


async def test_plaintext_to_tls_port_and_closed_port_fail(secure: HealthServer, certs: CertFactory) -> None:
    result = await run_probe(f"127.0.0.1:{secure.port}", grpc_mod(), 5)
    assert (result.failure.phase, result.failure.reason) == ("first_byte", "connection_reset")  # the server hangs up
    result = await run_probe(f"127.0.0.1:{procs.free_port()}", grpc_mod(), 5)
    assert result.failure.reason == "connect_refused"


async def test_silent_server_is_a_first_byte_timeout() -> None:
    async with RawTCPServer("stall") as silent:
        result = await run_probe(f"127.0.0.1:{silent.port}", mod("grpc", timeout="0.5s", grpc={"preferred_ip_protocol": "ip4"}), 0.5)
    assert (result.failure.phase, result.failure.reason) == ("first_byte", "http_timeout_first_byte")
    assert values(probe_text(result), "probe_grpc_status_code") == {(): 4.0}  # DEADLINE_EXCEEDED, as grpc-go


async def test_http_server_is_not_grpc() -> None:
    async with HTTPServer() as web:
        result = await run_probe(f"127.0.0.1:{web.port}", grpc_mod(), 5)
    assert (result.failure.phase, result.failure.reason) == ("first_byte", "connection_reset")  # aiohttp hangs up on h2


@pytest.mark.parametrize("fields,message", [
    ({"metadata": {"grpc-timeout": "1S"}}, "reserved name"),
    ({"metadata": {"x": {"a": 1}}}, "expected a string or a list of strings"),
    ({"metadata": {"x": "a\nb"}}, "grpc.metadata.x"),
    ({"servce": "a"}, "unknown field"),
])
def test_bad_grpc_sections_are_named(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        mod("grpc", grpc=fields)
    assert message in str(info.value)
