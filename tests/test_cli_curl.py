"""`connhealth probe` as a curl -w / httpstat replacement: its per-call options, its errors and its waterfall.

Every option is exercised as a subprocess against a real local server (TLS
servers with certificates made at test time); errors are checked for being
one line with the documented exit code.
"""
from __future__ import annotations

import json
import os
import re
import ssl
import sys
import time
from pathlib import Path

import pytest

from exporter.certs import server_context

try:
    from tests.peers import HTTPServer, RawTCPServer
    from tests.procs import run_command
    from tests.probekit import PER_TEST_TIMEOUT, ca, certs, closed_port, leaf  # noqa: F401
except ImportError:  # pragma: no cover
    from peers import HTTPServer, RawTCPServer
    from procs import run_command  # type: ignore[no-redef]
    from probekit import PER_TEST_TIMEOUT, ca, certs, closed_port, leaf  # noqa: F401

pytestmark = pytest.mark.timeout(PER_TEST_TIMEOUT)

CLI = [sys.executable, "-m", "exporter"]
SCRIPT = str(Path(sys.executable).parent / "connhealth")


async def run(*args: str, env: dict[str, str] | None = None, timeout: float = 20, stdin: bytes | None = None,
              cmd: list[str] = CLI) -> tuple[int, str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    environ.update({"NO_COLOR": "1"} if env is None else env)
    return await run_command([*cmd, *args], env=environ, stdin=stdin, timeout=timeout)


@pytest.fixture
async def secure(leaf):
    async with HTTPServer(server_context(leaf)) as srv:
        yield srv


@pytest.fixture
async def plain():
    async with HTTPServer() as srv:
        yield srv


# --- one-line errors --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["probe", "http://127.0.0.1:1/", "--timeout", "inf"], "--timeout must be positive and finite, e.g. 5s or 0.5 (got 'inf')"),
        (["probe", "http://127.0.0.1:1/", "--timeout", "nan"], "--timeout must be positive and finite, e.g. 5s or 0.5 (got 'nan')"),
        (["probe", "http://127.0.0.1:1/", "-m", "5parsecs"], "--timeout: invalid duration '5parsecs'"),
        (["probe", "localhost"], "'localhost' has no port (expected host:port); did you mean http://localhost/ or localhost:PORT?"),
        (["probe", "ftp://127.0.0.1/"], "invalid target 'ftp://127.0.0.1/'; ftp:// is not supported: use an http:// or https:// URL"),
        (["probe", "http://::1:18081/"], "put an IPv6 address in brackets: http://[::1]:18081/"),
        (["probe", "::1:18081"], "put an IPv6 address in brackets: [::1]:18081"),
        (["probe", "127.0.0.1:1", "-k"], "-k/--insecure: module 'tcp_connect' does not use TLS (try --module tls_connect)"),
        (["probe", "127.0.0.1:1", "-H", "A: b"], "-H: prober 'tcp' sends no HTTP request (module 'tcp_connect')"),
        (["probe", "http://127.0.0.1:1/", "-H", "no colon"], "-H 'no colon': expected 'Name: value'"),
        (["probe", "https://127.0.0.1:1/", "--cacert", "/nonexistent/ca.pem"], "--cacert: file '/nonexistent/ca.pem' does not exist"),
        (["probe", "http://127.0.0.1:1/", "--resolve", "example.com:80"], "--resolve 'example.com:80': expected HOST:PORT:ADDR"),
        (["probe", "http://127.0.0.1:1/", "--resolve", "example.com:80:nohost"], "'nohost' is not an IP address"),
        (["probe", "http://127.0.0.1:1/", "--connect-to", "a:1:b"], "--connect-to 'a:1:b': expected HOST1:PORT1:HOST2:PORT2"),
        (["probe", "http://127.0.0.1:1/", "-4", "-6"], "argument -6/--ipv6: not allowed with argument -4/--ipv4"),
        (["probe", "http://127.0.0.1:1/", "-X", "GE T"], "invalid method 'GE T'"),
        (["serve", "--web.listen-address", "::1:9115"], "put an IPv6 address in brackets"),
        (["serve", "--history.limit", "0"], "--history.limit must be at least 1 (got 0)"),
        (["check-config"], "check-config: give the config file"),
        (["serve", "--timeout-offset", "-1"], "--timeout-offset must be zero or more and finite"),
        (["diagnose", "http://127.0.0.1:1/", "--idle", "nan"], "--idle must be positive and finite, e.g. 5s or 0.5 (got 'nan')"),
        (["diagnose", "http://127.0.0.1:1/", "--hold", "5parsecs"], "--hold: invalid duration '5parsecs'"),
    ],
    ids=["timeout_inf", "timeout_nan", "timeout_unit", "localhost", "ftp", "ipv6_url", "ipv6_hostport", "k_on_tcp", "H_on_tcp",
         "bad_header", "missing_cacert", "resolve_short", "resolve_not_ip", "connect_to_short", "4_and_6", "bad_method",
         "listen_ipv6", "history_limit", "check_config_no_file", "timeout_offset_negative", "diagnose_idle_nan",
         "diagnose_hold_unit"],
)
async def test_usage_error_is_one_line_exit_2(args, message):
    code, out, err = await run(*args)
    assert code == 2, (out, err)
    assert out == ""
    assert message in err
    assert len(err.strip().splitlines()) == 1, err


async def test_version():
    code, out, err = await run("--version")
    assert (code, out, err) == (0, "connhealth 0.1.0\n", "")


async def test_broken_pipe_is_silent(plain):
    # `connhealth probe URL | head -1`: the reader goes away after one line.
    code, out, err = await run("-c", f"{' '.join(CLI)} probe {plain.url('/ok')} | head -1", cmd=["bash"])
    assert (code, err) == (0, "")
    assert out.startswith(plain.url("/ok")) and out.count("\n") == 1
    # A reader that closed the pipe before anything was written: the write fails with EPIPE.
    code, out, err = await run("-c", f"{' '.join(CLI)} probe {plain.url('/ok')} | (exec 0<&-; sleep 1); "
                               "echo ${PIPESTATUS[0]}", cmd=["bash"])
    assert (out, err) == ("1\n", "")  # silent, and not a success: the output was lost


async def test_help_starts_fast():
    """`connhealth --help` imports no heavy module, and starts in under 0.3 s.

    On a loaded box the interpreter's own start-up can approach that, so the
    bound is 0.3 s or, failing that, 0.1 s over a bare interpreter timed in
    the same loop (before: 1.0-1.75 s, most of it aiohttp, OpenTelemetry, dnspython).
    """
    _, out, _ = await run("-c", "import sys, exporter.cli; print(' '.join(sorted(sys.modules)))", cmd=[sys.executable])
    assert not set(out.split()) & {"aiohttp", "opentelemetry", "yaml", "cryptography", "dns", "exporter.engine"}, out
    cli, bare = [], []
    for _ in range(5):
        start = time.perf_counter()
        code, out, _ = await run("probe", "--help", cmd=[SCRIPT])
        cli.append(time.perf_counter() - start)
        assert code == 0 and "--insecure" in out
        start = time.perf_counter()
        await run("-c", "import argparse", cmd=[sys.executable])
        bare.append(time.perf_counter() - start)
    assert min(cli) < 0.3 or min(cli) - min(bare) < 0.1, (cli, bare)


# --- curl-like options against local servers ------------------------------------------------
async def test_insecure_accepts_a_self_signed_server(certs):
    self_signed = certs.leaf(None, name="self-signed.test", sans=("127.0.0.1",))
    async with HTTPServer(server_context(self_signed)) as srv:
        code, out, err = await run("probe", srv.url("/ok"), "--json")
        assert code == 1 and json.loads(out)["failure"]["reason"] == "tls_cert_untrusted", out
        code, out, err = await run("probe", srv.url("/ok"), "-k", "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["tls"]["verification"] == "skipped" and d["details"]["status"] == 200


async def test_cacert_trusts_a_private_ca(secure, ca):
    code, out, err = await run("probe", secure.url("/ok"), "--cacert", ca.cert_file, "--json")
    assert code == 0, err
    assert json.loads(out)["tls"]["verification"] == "verified"


async def test_client_certificate(certs, ca, leaf):
    client = certs.leaf(ca, name="client.test", sans=("client.test",), client_auth=True)
    context = server_context(leaf)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(ca.cert_file)
    async with HTTPServer(context) as srv:
        code, out, err = await run("probe", srv.url("/ok"), "--cacert", ca.cert_file, "--cert", client.cert_file,
                                   "--key", client.key_file, "--json")
        assert code == 0, (out, err)
        code, out, err = await run("probe", srv.url("/ok"), "--cacert", ca.cert_file, "--json")
    assert code == 1 and json.loads(out)["success"] is False


async def test_headers_method_and_data(plain):
    code, out, err = await run("probe", plain.url("/echo-headers"), "-H", "X-Team: sre", "-H", "Accept: application/json",
                               "-X", "PATCH", "--json")
    assert code == 0, err
    path, headers = plain.requests[-1]
    assert path == "/echo-headers" and headers["X-Team"] == "sre" and headers["Accept"] == "application/json"
    code, out, err = await run("probe", plain.url("/echo-body"), "-d", "a=1&b=2", "--json")
    assert code == 0, err
    assert json.loads(out)["details"]["body_length"] > 0
    path, headers = plain.requests[-1]
    assert headers["Content-Type"] == "application/x-www-form-urlencoded" and headers["Content-Length"] == "7"


async def test_data_from_file_is_posted(plain, tmp_path):
    body = tmp_path / "body.json"
    body.write_text('{"x": 1}')
    code, out, err = await run("probe", plain.url("/echo-body"), "-d", f"@{body}", "-H", "Content-Type: application/json", "--json")
    assert code == 0, err
    _, headers = plain.requests[-1]
    assert headers["Content-Type"] == "application/json" and headers["Content-Length"] == "8"


async def test_resolve_keeps_host_header_and_sni(secure, ca):
    # www.example.test does not exist: --resolve points it at the local server; the
    # leaf has no SAN for it, so --sni names one it has, as curl would be told to.
    url = f"https://www.example.test:{secure.port}/echo-headers"
    code, out, err = await run("probe", url, "--resolve", f"www.example.test:{secure.port}:127.0.0.1", "--cacert", ca.cert_file,
                               "--sni", "localhost", "--json")
    assert code == 0, (out, err)
    d = json.loads(out)
    assert "dns" not in d["phases"] and d["peer"]["ip"] == "127.0.0.1"
    assert d["tls"]["server_name"] == "localhost"
    _, headers = secure.requests[-1]
    assert headers["Host"] == f"www.example.test:{secure.port}"


async def test_sni_mismatch_fails_verification(secure, ca):
    code, out, err = await run("probe", secure.url("/ok"), "--cacert", ca.cert_file, "--sni", "other.test", "--json")
    assert code == 1
    assert json.loads(out)["failure"]["reason"] == "tls_hostname_mismatch"


async def test_connect_to_moves_host_and_port(plain, closed_port):
    url = f"http://app.example.test:{closed_port}/echo-headers"
    code, out, err = await run("probe", url, "--connect-to", f"app.example.test:{closed_port}:127.0.0.1:{plain.port}", "--json")
    assert code == 0, (out, err)
    assert json.loads(out)["peer"] == {"ip": "127.0.0.1", "family": "ipv4", "port": plain.port}
    _, headers = plain.requests[-1]
    assert headers["Host"] == f"app.example.test:{closed_port}"


async def test_ip_family_flags(plain):
    code, out, err = await run("probe", f"http://localhost:{plain.port}/ok", "-4", "--json")
    assert code == 0, err
    assert json.loads(out)["peer"]["family"] == "ipv4"
    code, out, err = await run("probe", f"http://localhost:{plain.port}/ok", "-6", "--json")
    assert code == 1  # the server listens on 127.0.0.1 only; -6 allows no fallback
    assert json.loads(out)["peer"] in (None, {"ip": "::1", "family": "ipv6", "port": plain.port})


async def test_http_version_flags(secure, ca):
    code, out, err = await run("probe", secure.url("/ok"), "--cacert", ca.cert_file, "--http1.1", "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["tls"]["alpn"] in (None, "http/1.1") and d["details"]["version"] == "HTTP/1.1"


async def test_timeout_raises_the_module_timeout_and_says_so(tmp_path):
    config = tmp_path / "c.yml"
    config.write_text("modules:\n  quick:\n    prober: http\n    timeout: 1s\n")
    async with HTTPServer() as srv:
        code, out, err = await run("probe", srv.url("/slow?delay=1.5"), "--module", "quick", "--config.file", str(config),
                                   "--timeout", "5s", "--json")
    assert code == 0, (out, err)
    assert err == "connhealth: --timeout 5s raises module quick's timeout of 1s\n"
    assert json.loads(out)["timeout_seconds"] == 5


# --- the waterfall -----------------------------------------------------------------------
async def test_waterfall_failed_phase_shows_time_spent_and_rows_add_up():
    # Accepts the connection and never answers: the wait belongs to "Server processing".
    async with RawTCPServer("stall") as srv:
        code, out, err = await run("probe", f"http://127.0.0.1:{srv.port}/", "--timeout", "1s")
    assert code == 1, err
    rows = {m.group(1).strip(): float(m.group(2)) for m in re.finditer(r"^  (\S[\w ]+?)\s{2,}([\d.]+) ms", out, re.M)}
    assert "✗ failed here" in out
    failed_line = next(line for line in out.splitlines() if "✗ failed here" in line)
    assert failed_line.lstrip().startswith("Server processing")
    assert 900 <= rows["Server processing"] <= 1500, out
    # the failed phase's bar is the longest: bars are scaled to the total, not to the connect
    assert failed_line.count("▒") >= 35, out
    parts = sum(v for k, v in rows.items() if k != "Total")
    assert abs(parts - rows["Total"]) < 0.05, out
    assert "Other" in rows
    assert "(not reached)" in out and "Content transfer             —   (not reached)" in out
    assert "TLS handshake                —   (n/a)" in out
    assert "Failed in Server processing after" in out and "(http_timeout_first_byte)." in out


async def test_waterfall_failure_has_no_python_exception_text(closed_port):
    code, out, err = await run("probe", f"http://127.0.0.1:{closed_port}/")
    assert code == 1
    assert "Failed in TCP connect after" in out and "the host answered the SYN with a reset (connect_refused)." in out
    assert "Detail: connection refused." in out
    assert "Errno" not in out and "Connect call failed" not in out and "('127.0.0.1'" not in out
    code, out, err = await run("probe", f"http://127.0.0.1:{closed_port}/", "--json")
    assert "[Errno 111]" in json.loads(out)["failure"]["message"]  # the raw detail stays in --json


async def test_waterfall_shows_the_chain_on_failed_verification(secure, leaf):
    code, out, err = await run("probe", secure.url("/ok"))
    assert code == 1
    assert "TLS handshake failed; verification failed: unable to get local issuer certificate" in out
    assert "[0] CN=localhost" in out
    assert re.search(r"^       sha256 [0-9a-f]{64}$", out, re.M), out
    assert "Failed in TLS handshake after" in out


async def test_color_flags_and_no_color(closed_port):
    url = f"http://127.0.0.1:{closed_port}/"
    _, out, _ = await run("probe", url, "--color", "always", env={"NO_COLOR": "1"})
    assert "\033[31mFAILED\033[0m" in out
    _, out, _ = await run("probe", url, "--color", "never", env={})
    assert "\033[" not in out
    _, out, _ = await run("probe", url, env={"NO_COLOR": "1"})  # auto, not a terminal anyway
    assert "\033[" not in out


# --- logs and traces ----------------------------------------------------------------------
async def test_debug_logs_logfmt_and_json(plain):
    code, _, err = await run("probe", plain.url("/ok"), "--log.level", "debug", "--json")
    assert code == 0
    lines = err.strip().splitlines()
    assert any(re.fullmatch(r'ts=\S+Z level=debug logger=connhealth\.probe msg="probe started" target=\S+ module=http_2xx', line)
               for line in lines), err
    assert any('msg="probe finished"' in line and "success=true" in line for line in lines), err
    code, _, err = await run("probe", plain.url("/ok"), "--log.level", "debug", "--log.format", "json", "--json")
    records = [json.loads(line) for line in err.strip().splitlines()]
    finished = [r for r in records if r["msg"] == "probe finished"]
    assert finished and finished[0]["level"] == "debug" and finished[0]["success"] is True
    assert finished[0]["target"] == plain.url("/ok") and finished[0]["duration_seconds"] > 0


async def test_unreachable_otlp_collector_is_one_warning_and_no_delay(plain, closed_port):
    """Against a live collector (same SDK imports, the span exported) the unreachable one costs no extra time."""
    try:
        from tests.otlp_receiver import OTLPReceiver
    except ImportError:  # pragma: no cover
        from otlp_receiver import OTLPReceiver
    live, dead = [], []
    async with OTLPReceiver(grpc_=False) as rx:
        for _ in range(2):
            start = time.perf_counter()
            code, out, err = await run("probe", plain.url("/ok"), "--json", "--otlp.endpoint", rx.http_endpoint)
            live.append(time.perf_counter() - start)
            assert (code, err) == (0, "")
            start = time.perf_counter()
            code, out, err = await run("probe", plain.url("/ok"), "--json", "--otlp.endpoint", f"http://127.0.0.1:{closed_port}")
            dead.append(time.perf_counter() - start)
            assert code == 0 and json.loads(out)["trace_sampled"] is True
            assert err == (f"connhealth: warning: trace not exported: OTLP collector at http://127.0.0.1:{closed_port} "
                           "unreachable (connection refused)\n")
        await rx.wait_for_spans(lambda s: s.name.startswith("probe"), timeout=10)
    # The SDK's retry would back off for 0.8 s and more; the best runs compared leave the box's noise out.
    assert min(dead) - min(live) < 0.5, (live, dead)


async def test_check_config_counts_only_the_files_modules():
    fixture = Path(__file__).parent / "fixtures" / "blackbox.yml"
    import yaml

    defined = len(yaml.safe_load(fixture.read_text())["modules"])
    code, out, err = await run("check-config", str(fixture))
    assert code == 0, err
    assert out.startswith(f"{fixture}: OK ({defined} modules defined, ")
    code, out2, err = await run("check-config", "--config.file", str(fixture))
    assert out2 == out


async def test_debug_logs_redact_the_url_password(closed_port):
    code, out, err = await run("probe", f"http://ops:pa55word@127.0.0.1:{closed_port}/", "--log.level", "debug")
    assert code == 1
    # OTel's url.full rule (README, "Security"): the whole userinfo is redacted.
    assert f"target=http://REDACTED:REDACTED@127.0.0.1:{closed_port}/" in err, err
    assert "pa55word" not in err


async def test_verbose_prints_the_probes_own_log(plain):
    code, out, err = await run("probe", plain.url("/ok"), "-v", "--json")
    assert code == 0
    lines = err.splitlines()
    assert lines and all(line.startswith("* ") for line in lines), err
    assert any(f"connecting to 127.0.0.1:{plain.port}" in line for line in lines)
    assert any(line.endswith("probe succeeded") for line in lines)
    json.loads(out)  # stdout stays machine-readable


async def test_resolve_star_matches_every_host(plain):
    url = f"http://any.example.test:{plain.port}/ok"
    code, out, err = await run("probe", url, "--resolve", f"*:{plain.port}:127.0.0.1", "--json")
    assert code == 0, (out, err)
    assert json.loads(out)["peer"]["ip"] == "127.0.0.1" and "dns" not in json.loads(out)["phases"]
