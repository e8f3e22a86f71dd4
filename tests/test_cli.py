"""`connhealth probe` as a user runs it: a subprocess, real peers, exit codes, output.

The peers run in the test's event loop while the CLI runs as a child process,
so everything crosses a real socket. Each command form is tested both as the
installed script and as ``python -m exporter``.
"""
from __future__ import annotations

import hashlib
import json
import re
import os
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from exporter.certs import server_context

try:  # works whether or not tests/ becomes a package later
    from tests.peers import DNSServer, HTTPServer
    from tests.procs import run_command
    from tests.probekit import PER_TEST_TIMEOUT, ca, certs, closed_port, leaf  # noqa: F401
except ImportError:  # pragma: no cover
    from peers import DNSServer, HTTPServer
    from procs import run_command  # type: ignore[no-redef]
    from probekit import PER_TEST_TIMEOUT, ca, certs, closed_port, leaf  # noqa: F401

pytestmark = pytest.mark.timeout(PER_TEST_TIMEOUT)

SCRIPT = Path(sys.executable).parent / "connhealth"
COMMANDS = {
    "script": [str(SCRIPT)],
    "module": [sys.executable, "-m", "exporter"],
}
FIXTURES = Path(__file__).parent / "fixtures"
LABELS = ["DNS lookup", "TCP connect", "TLS handshake", "Request sent", "Server processing", "Content transfer"]


@pytest.fixture(params=sorted(COMMANDS))
def cmd(request) -> list[str]:
    if request.param == "script" and not SCRIPT.exists():
        pytest.fail(f"{SCRIPT} not installed (make test installs the project into .venv)")
    return COMMANDS[request.param]


async def run(cmd: list[str], *args: str, timeout: float = 20) -> tuple[int, str, str]:
    return await run_command([*cmd, *args], env={**os.environ, "NO_COLOR": "1"}, timeout=timeout)


@pytest.fixture
def config_file(tmp_path: Path, ca) -> Path:
    """Overrides the built-in http_2xx so that it trusts the test CA."""
    path = tmp_path / "connhealth.yml"
    path.write_text(f"modules:\n  http_2xx:\n    prober: http\n    http:\n      tls_config:\n        ca_file: {ca.cert_file}\n")
    return path


@pytest.fixture
async def secure(leaf):
    async with HTTPServer(server_context(leaf)) as srv:
        yield srv


async def test_probe_json_success(cmd, secure, config_file, leaf):
    code, out, err = await run(cmd, "probe", secure.url("/ok"), "--json", "--config", str(config_file))
    assert code == 0, err
    d = json.loads(out)
    assert d["success"] is True and d["failure"] is None
    assert d["module"] == "http_2xx" and d["prober"] == "http"
    assert 0 < d["duration_seconds"] < 5
    assert d["timeout_seconds"] == 10  # the default deadline
    assert set(d["phases"]) == {"connect", "tls", "request", "first_byte", "transfer"}  # no dns: IP literal
    assert d["peer"] == {"ip": "127.0.0.1", "family": "ipv4", "port": secure.port}
    assert d["tcp"]["rtt_seconds"] > 0
    assert d["tls"]["version"] == "TLS 1.3" and d["tls"]["verification"] == "verified"
    der = x509.load_pem_x509_certificate(leaf.cert_pem).public_bytes(serialization.Encoding.DER)
    assert d["tls"]["chain"][0]["fingerprint_sha256"] == hashlib.sha256(der).hexdigest()
    assert d["tls"]["earliest_expiry"] == leaf.not_valid_after.timestamp()
    assert d["details"]["status"] == 200 and d["details"]["version"] == "HTTP/1.1"
    assert d["details"]["body_length"] == len("hello connhealth")
    assert "phases_total" not in d


async def test_probe_json_connect_refused(cmd, closed_port):
    code, out, err = await run(cmd, "probe", f"http://127.0.0.1:{closed_port}/", "--json")
    assert code == 1, err
    d = json.loads(out)
    assert d["success"] is False
    assert d["failure"]["phase"] == "connect" and d["failure"]["reason"] == "connect_refused"
    assert d["failure"]["message"]
    assert d["phases"] == {}


async def test_probe_json_tcp_target(cmd, secure):
    code, out, err = await run(cmd, "probe", f"127.0.0.1:{secure.port}", "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["module"] == "tcp_connect" and set(d["phases"]) == {"connect"}


async def test_probe_timeout_flag(cmd):
    async with HTTPServer() as srv:
        code, out, err = await run(cmd, "probe", srv.url("/slow?delay=3"), "--json", "--timeout", "0.5")
    assert code == 1, err
    d = json.loads(out)
    assert (d["failure"]["phase"], d["failure"]["reason"]) == ("first_byte", "http_timeout_first_byte")
    assert d["timeout_seconds"] == 0.5


async def test_probe_nameserver_flag(cmd):
    async with HTTPServer() as srv, DNSServer({"www.example.test": "A:127.0.0.1"}) as dns:
        code, out, err = await run(
            cmd, "probe", f"http://www.example.test:{srv.port}/ok", "--json", "--nameserver", f"127.0.0.1:{dns.port}"
        )
    assert code == 0, err
    d = json.loads(out)
    assert "dns" in d["phases"]
    assert ("www.example.test", "A") in dns.queries


async def test_probe_waterfall_success(cmd, secure, config_file):
    code, out, err = await run(cmd, "probe", secure.url("/ok"), "--config", str(config_file))
    assert code == 0, err
    assert f"{secure.url('/ok')}  (module http_2xx, prober http)  OK in " in out
    for label in LABELS:
        assert label in out
    assert "(skipped: IP address)" in out
    assert re.search(r"^  Other +[\d.]+ ms   \(time outside the phases above\)$", out, re.M), out
    assert "TLS TLS 1.3" in out and "verification verified" in out
    assert "HTTP HTTP/1.1 200" in out
    assert "Failed in phase" not in out
    assert "\033[" not in out  # not a terminal: no colour codes


async def test_probe_waterfall_failure_in_words(cmd, closed_port):
    code, out, err = await run(cmd, "probe", f"http://127.0.0.1:{closed_port}/")
    assert code == 1, err
    assert "FAILED in" in out
    for label in LABELS:
        assert label in out
    assert "✗ failed here" in out
    assert re.search(r"^  Failed in TCP connect after [\d.]+ ms: the host answered the SYN with a reset \(connect_refused\)\.$",
                     out, re.M), out
    assert "Typical cause: nothing listening on the port, service down." in out


async def test_probe_waterfall_tls_failure_in_words(cmd, secure):
    # without the config, the private CA is not trusted
    code, out, err = await run(cmd, "probe", secure.url("/ok"))
    assert code == 1, err
    assert re.search(r"^  Failed in TLS handshake after [\d.]+ ms: .* \(tls_cert_untrusted\)\.$", out, re.M), out
    assert "Detail: certificate verification failed: unable to get local issuer certificate (code 20)." in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["probe", "http://127.0.0.1:1/", "--module", "nope"], "unknown module 'nope'"),
        (["probe", "https://:8443/"], "invalid target for prober http"),
        (["probe", "http://127.0.0.1:99999/"], "invalid target for prober http"),
        (["probe", "not a url"], "invalid target for prober tcp"),  # not a URL: tcp_connect's host:port
        (["probe", "127.0.0.1", "--module", "tcp_connect"], "invalid target for prober tcp"),
        (["probe", "http://127.0.0.1:1/", "--config", str(FIXTURES / "bad_configs" / "unknown_field_http.yml")],
         "modules.web.http.foo: unknown field"),
        (["probe", "http://127.0.0.1:1/", "--config", str(FIXTURES / "does-not-exist.yml")], "cannot read config"),
        (["probe", "http://127.0.0.1:1/", "--timeout", "0"], "--timeout must be positive"),
        (["probe"], "the following arguments are required: target"),
        (["frobnicate"], "invalid choice"),
        (["check-config", str(FIXTURES / "bad_configs" / "bad_regexp_lookahead.yml")], "invalid perl operator: (?!"),
    ],
    ids=["bad_module", "url_no_host", "url_bad_port", "not_a_url", "bad_hostport", "bad_config", "missing_config", "bad_timeout", "no_target",
         "bad_command", "check_config_bad"],
)
async def test_usage_errors_exit_2(cmd, args, message):
    code, out, err = await run(cmd, *args)
    assert code == 2, (out, err)
    assert message in err
    assert out == ""


async def test_check_config_lists_every_error_with_its_path(cmd):
    code, out, err = await run(cmd, "check-config", str(FIXTURES / "check_config_many_errors.yml"))
    assert (code, out) == (2, ""), (out, err)
    assert err.splitlines() == [
        "connhealth: modules.web.http.valid_status_codes[0]: 999 is not an HTTP status code",
        "connhealth: modules.pop3.tcp.query_response[0].expect: invalid regexp '^220(': missing ): ^220(",
        "connhealth: modules.mail.tcp.tls_config.min_version: invalid TLS version 'TLS99' (one of TLS10, TLS11, TLS12, TLS13)",
        "connhealth: scheduler.concurrency: must be between 1 and 100000, got 0",
        # the target naming the broken module "web" is not an error of its own; one naming no module is
        f"connhealth: targets[1].module: unknown module 'nowhere' (known: {_KNOWN_AFTER_ERRORS})",
        "connhealth: unknown_top: unknown field",
        f"connhealth: {FIXTURES / 'check_config_many_errors.yml'}: 6 errors",
    ], err


_KNOWN_AFTER_ERRORS = "'fine, http_2xx, http_post_2xx, mail, pop3, tcp_connect, tls_connect, web'"


async def test_check_config_warns_about_missing_files_and_config_check_is_an_alias(cmd, tmp_path):
    config = tmp_path / "c.yml"
    config.write_text("modules:\n  web:\n    prober: http\n    http:\n      tls_config:\n"
                      "        ca_file: /nonexistent/connhealth-test/ca.pem\n")
    expected = (f"{config}: OK (1 module defined, 4 built-in; 0 targets, 0 target file globs)\n"
                f"{config}: warning: modules.web.http.tls_config.ca_file /nonexistent/connhealth-test/ca.pem: "
                "No such file or directory (probes using it will fail with config_file_missing)\n")
    for args in (["check-config", str(config)], ["serve", "--config.file", str(config), "--config.check"]):
        code, out, err = await run(cmd, *args)
        assert (code, out, err) == (0, expected, ""), args
    code, out, err = await run(cmd, "serve", "--config.file", str(FIXTURES / "check_config_many_errors.yml"), "--config.check")
    assert code == 2 and out == "" and err.endswith(": 6 errors\n"), err


async def test_check_config_ok(cmd):
    code, out, err = await run(cmd, "check-config", str(FIXTURES / "blackbox.yml"))
    assert code == 0, err
    assert "OK" in out
