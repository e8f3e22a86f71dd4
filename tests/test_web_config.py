"""--web.config.file (exporter-toolkit's format): TLS with client certificates, bcrypt basic auth, headers.

Against a real `connhealth serve` process, with real clients: curl (OpenSSL) and a
Prometheus scrape configured with basic_auth and tls_config.
"""
from __future__ import annotations

import asyncio
import base64
import json
import shutil
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import aiohttp
import bcrypt
import pytest
from aiohttp.test_utils import TestClient, TestServer

from exporter.certs import CertFactory, Issued
from exporter.config import ConfigError, parse_config
from exporter.server import Exporter, ServeOptions, build_app
from exporter import webconfig
from exporter.webconfig import load_web_config

try:  # works whether or not tests/ becomes a package later
    from tests.procs import ExporterProcess, ProcessFailed, start_prometheus
except ImportError:  # pragma: no cover
    from procs import ExporterProcess, ProcessFailed, start_prometheus

pytestmark = pytest.mark.timeout(90)

USER, PASSWORD = "prometheus", "correct horse battery staple"
# Cost 4 keeps the test fast; the exporter accepts any bcrypt cost.
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Issued]:
    certs = CertFactory(tmp_path_factory.mktemp("webcerts"))
    ca = certs.ca("web CA")
    client_ca = certs.ca("client CA")
    return {
        "ca": ca,
        "server": certs.leaf(ca, name="localhost", sans=("localhost", "127.0.0.1")),
        "client_ca": client_ca,
        "client": certs.leaf(client_ca, name="scraper", sans=("scraper",), client_auth=True),
        "stranger": certs.leaf(certs.ca("other CA"), name="stranger", sans=("stranger",), client_auth=True),
    }


def _web_config(tmp_path: Path, pki: dict[str, Issued], *, client_auth: str | None = None) -> Path:
    tls = f"""
tls_server_config:
  cert_file: {pki['server'].cert_file}
  key_file: {pki['server'].key_file}
  min_version: TLS12
"""
    if client_auth:
        tls += f"  client_auth_type: {client_auth}\n  client_ca_file: {pki['client_ca'].cert_file}\n"
    path = tmp_path / "web.yml"
    path.write_text(tls + f"""
http_server_config:
  headers:
    Strict-Transport-Security: max-age=31536000
    X-Content-Type-Options: nosniff
    X-Frame-Options: deny
basic_auth_users:
  {USER}: {HASH}
""")
    return path


class SecureExporter(ExporterProcess):
    """connhealth serve behind TLS and basic auth: readiness is checked as an authorised HTTPS client."""

    def __init__(self, workdir: Path, web_config: Path, pki: dict[str, Issued]) -> None:
        super().__init__(None, workdir, "--web.config.file", str(web_config))
        self.pki = pki

    @property
    def base_url(self) -> str:
        return f"https://{self.address}"

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.pki["ca"].cert_file)
        ctx.load_cert_chain(self.pki["client"].cert_file, self.pki["client"].key_file)
        return ctx

    async def wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = asyncio.get_running_loop().time() + timeout
        auth = {"Authorization": aiohttp.encode_basic_auth(USER, PASSWORD)}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as session:
            while True:
                if self.proc.poll() is not None:
                    raise ProcessFailed(f"exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    async with session.get(self.base_url + "/-/ready", headers=auth, ssl=self.client_context()) as resp:
                        if resp.status == 200:
                            return
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                    pass
                if asyncio.get_running_loop().time() > deadline:
                    raise ProcessFailed(f"not ready after {timeout:g}s:\n{self.log_tail()}")
                await asyncio.sleep(0.1)


async def curl(*args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of a real curl, run without blocking the loop."""
    binary = shutil.which("curl")
    assert binary, "curl is installed by scripts/install-system-deps.sh"
    proc = await asyncio.create_subprocess_exec(binary, "-sS", "--max-time", "10", *args,
                                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


def _status(out: str) -> int:
    return int(out.rsplit("\n", 1)[-1])


async def test_curl_tls_basic_auth_headers_and_cross_origin_reload(tmp_path: Path, pki: dict[str, Issued]) -> None:
    exporter = await SecureExporter(tmp_path, _web_config(tmp_path, pki), pki).start()
    try:
        url = exporter.base_url
        ca = ("--cacert", pki["ca"].cert_file)
        code, out, err = await curl(*ca, "-u", f"{USER}:{PASSWORD}", "-D", "-", "-w", "\n%{http_code}", url + "/metrics")
        assert code == 0 and _status(out) == 200, err
        assert "connhealth_build_info" in out
        head = out.split("\r\n\r\n", 1)[0].lower()
        for header in ("strict-transport-security: max-age=31536000", "x-content-type-options: nosniff", "x-frame-options: deny"):
            assert header in head, head
        # Wrong password, unknown user, no credentials: 401 with a challenge, on every endpoint.
        for auth, path in ((("-u", f"{USER}:wrong"), "/metrics"), (("-u", f"nobody:{PASSWORD}"), "/probe?target=x"),
                           ((), "/-/healthy"), (("-u", f"{USER}:wrong"), "/")):
            code, out, err = await curl(*ca, *auth, "-D", "-", "-w", "\n%{http_code}", url + path)
            assert code == 0 and _status(out) == 401, (auth, path, out, err)
            assert 'www-authenticate: basic realm="connhealth"' in out.lower()
            assert "strict-transport-security" in out.lower()  # the headers are on errors too
        # Plain HTTP on the TLS port gets no answer; an untrusting client refuses the certificate.
        code, out, err = await curl("-u", f"{USER}:{PASSWORD}", "-w", "\n%{http_code}", f"http://{exporter.address}/metrics")
        assert code != 0 or _status(out) != 200, out
        code, _, err = await curl("-u", f"{USER}:{PASSWORD}", url + "/metrics")
        assert code == 60, err  # CURLE_PEER_FAILED_VERIFICATION
        # TLS 1.1 is below min_version TLS12.
        code, _, err = await curl(*ca, "--tls-max", "1.1", "-u", f"{USER}:{PASSWORD}", url + "/metrics")
        assert code != 0, err
        # /-/reload: fine from curl (no Origin) and same-origin, refused cross-origin.
        auth = ("-u", f"{USER}:{PASSWORD}", "-X", "POST", "-w", "\n%{http_code}")
        code, out, _ = await curl(*ca, *auth, url + "/-/reload")
        assert _status(out) == 200, out
        code, out, _ = await curl(*ca, *auth, "-H", f"Origin: {url}", url + "/-/reload")
        assert _status(out) == 200, out
        for header in ("Origin: https://evil.example", f"Origin: http://{exporter.address}", "Sec-Fetch-Site: cross-site"):
            code, out, _ = await curl(*ca, *auth, "-H", header, url + "/-/reload")
            assert _status(out) == 403 and "Cross-origin reload refused" in out, (header, out)
    finally:
        await exporter.astop()


async def test_client_certificates_required_and_verified(tmp_path: Path, pki: dict[str, Issued]) -> None:
    exporter = await SecureExporter(tmp_path, _web_config(tmp_path, pki, client_auth="RequireAndVerifyClientCert"), pki).start()
    try:
        url, ca = exporter.base_url + "/-/healthy", ("--cacert", pki["ca"].cert_file, "-u", f"{USER}:{PASSWORD}")
        client, stranger = pki["client"], pki["stranger"]
        code, out, err = await curl(*ca, "--cert", client.cert_file, "--key", client.key_file, url)
        assert code == 0 and out == "Healthy\n", err
        code, out, err = await curl(*ca, url)
        assert code != 0 and not out, (code, out)  # no certificate: the handshake fails
        code, out, err = await curl(*ca, "--cert", stranger.cert_file, "--key", stranger.key_file, url)
        assert code != 0 and not out, (code, out)  # a certificate from another CA: refused
    finally:
        await exporter.astop()


async def test_prometheus_scrapes_with_basic_auth_and_tls_config(tmp_path: Path, pki: dict[str, Issued]) -> None:
    exporter = await SecureExporter(tmp_path, _web_config(tmp_path, pki, client_auth="VerifyClientCertIfGiven"), pki).start()
    try:
        tls = f"""
    tls_config:
      ca_file: {pki['ca'].cert_file}
      cert_file: {pki['client'].cert_file}
      key_file: {pki['client'].key_file}
      server_name: localhost"""
        prom_config = tmp_path / "prometheus.yml"
        prom_config.write_text(f"""
global: {{scrape_interval: 1s, scrape_timeout: 1s}}
scrape_configs:
  - job_name: secure
    scheme: https
    basic_auth: {{username: {USER}, password: "{PASSWORD}"}}{tls}
    static_configs: [{{targets: ["{exporter.address}"]}}]
  - job_name: wrong_password
    scheme: https
    basic_auth: {{username: {USER}, password: wrong}}{tls}
    static_configs: [{{targets: ["{exporter.address}"]}}]
""")
        prometheus = await start_prometheus(prom_config, tmp_path)
        try:
            base = f"http://{prometheus.address}"
            async with aiohttp.ClientSession() as session:
                health: dict[str, tuple[str, str]] = {}
                for _ in range(200):  # bounded: ~20 s
                    async with session.get(base + "/api/v1/targets") as resp:
                        active = (await resp.json())["data"]["activeTargets"]
                    health = {t["labels"]["job"]: (t["health"], t["lastError"]) for t in active}
                    if health.get("secure", ("",))[0] == "up" and health.get("wrong_password", ("",))[0] == "down":
                        break
                    await asyncio.sleep(0.1)
                assert health["secure"] == ("up", ""), health
                assert health["wrong_password"][0] == "down" and "401" in health["wrong_password"][1], health
                async with session.get(base + "/api/v1/query", params={"query": 'connhealth_build_info{job="secure"}'}) as resp:
                    result = (await resp.json())["data"]["result"]
                assert len(result) == 1 and result[0]["value"][1] == "1", json.dumps(result)
        finally:
            await prometheus.astop()
    finally:
        await exporter.astop()


@pytest.mark.parametrize("text, error", [
    ("basic_auth_users: {admin: hunter2}", "basic_auth_users.admin: expected a bcrypt hash"),
    ("basic_auth_users: {'a:b': '" + HASH + "'}", "basic_auth_users.a:b: a user name is a non-empty string without ':'"),
    ("http_server_config: {headers: {X-Powered-By: me}}", "http_server_config.headers.X-Powered-By: header not allowed"),
    ("http_server_config: {headers: {X-Frame-Options: allow}}", "http_server_config.headers.X-Frame-Options: invalid value"),
    ("http_server_config: {headers: {X-XSS-Protection: \"1\\r\\nSet-Cookie: a=b\"}}", "expected a single-line string"),
    ("tls_server_config: {cert_file: missing.crt, key_file: missing.key}", "tls_server_config.cert_file: file 'missing.crt' does not exist"),
    ("tls_server_config: {client_auth_type: RequireAnyClientCert, cert_file: CERT, key_file: KEY}", "RequireAnyClientCert (a client certificate accepted without verification) is not supported"),
    ("tls_server_config: {client_auth_type: Sometimes, cert_file: CERT, key_file: KEY}", "invalid client auth type 'Sometimes'"),
    ("tls_server_config: {client_auth_type: RequireAndVerifyClientCert, cert_file: CERT, key_file: KEY}", "client_ca_file: required"),
    ("tls_server_config: {client_ca_file: CERT, cert_file: CERT, key_file: KEY}", "client CAs are configured without a client_auth_type"),
    ("tls_server_config: {min_version: TLS14, cert_file: CERT, key_file: KEY}", "tls_server_config.min_version: unknown TLS version 'TLS14'"),
    ("tls_server_config: {cipher_suites: [TLS_NULL], cert_file: CERT, key_file: KEY}", "cipher_suites[0]: unknown or unsupported cipher suite"),
    ("tls_server_config: {curve_preferences: [X25519], cert_file: CERT, key_file: KEY}", "curve_preferences: unsupported field"),
    ("tls_server_config: {cert_file: CERT}", "cert_file and key_file are both required"),
    ("basic_auth: {}", "basic_auth: unknown field"),
    ("[1, 2]", "expected a mapping"),
])
def test_bad_web_config_names_the_field(tmp_path: Path, pki: dict[str, Issued], text: str, error: str) -> None:
    path = tmp_path / "web.yml"
    path.write_text(text.replace("CERT", pki["server"].cert_file).replace("KEY", pki["server"].key_file))
    with pytest.raises(ConfigError) as info:
        load_web_config(str(path))
    assert error in str(info.value)
    assert "hunter2" not in str(info.value)


def test_serve_refuses_to_start_with_a_bad_web_config(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text("basic_auth_users: {admin: hunter2}\n")
    proc = subprocess.run([sys.executable, "-m", "exporter", "serve", "--web.config.file", str(path),
                           "--web.listen-address", "127.0.0.1:9"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "basic_auth_users.admin: expected a bcrypt hash" in proc.stderr and "hunter2" not in proc.stderr




async def test_a_flood_of_wrong_credentials_queues_without_stalling_the_loop(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """bcrypt runs in threads, at most two at once; a known-good login is answered from the cache meanwhile."""
    running, most = 0, 0
    lock = threading.Lock()
    real_check = webconfig._bcrypt_ok

    def counting_check(password: bytes, hashed: bytes) -> bool:  # the real check, with a concurrency count around it
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        try:
            return real_check(password, hashed)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(webconfig, "_bcrypt_ok", counting_check)
    path = tmp_path / "web.yml"
    path.write_text(f"basic_auth_users: {{{USER}: '{HASH}'}}\n")
    exporter = Exporter(ServeOptions(), parse_config(""))
    good = {"Authorization": aiohttp.encode_basic_auth(USER, PASSWORD)}
    async with TestClient(TestServer(build_app(exporter, load_web_config(str(path))))) as client:
        assert (await client.get("/-/healthy", headers=good)).status == 200  # verified once, then cached
        # Malformed credentials are a 401 like any wrong password, never a 500.
        for header in ("Basic !!!", "Basic " + base64.b64encode(b"\xff\xfe:x").decode(), "Bearer x", "Basic",
                       aiohttp.encode_basic_auth(USER, "p" * 100), aiohttp.encode_basic_auth(USER, "")):
            assert (await client.get("/-/healthy", headers={"Authorization": header})).status == 401, header
        # Unknown users cost a full cost-10 bcrypt each (the dummy hash), like a wrong password would.
        flood = [asyncio.ensure_future(client.get("/metrics", headers={
            "Authorization": aiohttp.encode_basic_auth(f"intruder{i}", "guess")})) for i in range(12)]
        await asyncio.sleep(0)
        healthy = await client.get("/-/healthy", headers=good)
        pending_when_healthy_answered = sum(not f.done() for f in flood)
        responses = await asyncio.gather(*flood)
    assert healthy.status == 200
    assert pending_when_healthy_answered > 0  # the loop answered while the checks were still queued
    assert [r.status for r in responses] == [401] * 12
    assert most == 2, most
