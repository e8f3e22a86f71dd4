"""Certificates that fail verification: the reason is kept, and the chain and its expiry are reported everywhere.

blackbox #1119: when verification fails, blackbox_exporter reports no chain and
no expiry, so an alert on the expiry can never fire for a certificate that was
already expired when it was first probed. Here each broken certificate is served
by a real TLS server and probed four ways: in process (the ProbeResult), through
``/probe`` and the continuous ``/metrics`` of one real ``connhealth serve``
process, and through ``connhealth probe`` (waterfall and ``--json``).

Every server presents only its leaf (the roots are never sent), so the earliest
notAfter of the presented chain is the leaf's own.
"""
from __future__ import annotations

import asyncio
import re
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import hashes

from exporter import metrics as m
from exporter.certs import CertFactory, Issued, server_context
from exporter.config import load_config
from exporter.engine import run_probe

try:  # works whether or not tests/ becomes a package later
    from tests import procs
    from tests.peers import HTTPServer
except ImportError:  # pragma: no cover
    import procs  # type: ignore[no-redef]
    from peers import HTTPServer  # type: ignore[no-redef]

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(60)]

MODULE = "https_ca"
TCP_MODULE = "tcp_tls_ca"


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    reason: str
    openssl: str  # OpenSSL's verification message (as Python's ssl module words it)
    served: Issued  # the leaf the server presents
    target: str
    module: str = MODULE

    @property
    def not_after(self) -> float:
        return self.served.not_valid_after.timestamp()

    @property
    def fingerprint(self) -> str:
        assert self.served.certificate is not None
        return self.served.certificate.fingerprint(hashes.SHA256()).hex()

    @property
    def subject(self) -> str:
        assert self.served.certificate is not None
        return self.served.certificate.subject.rfc4514_string()

    @property
    def issuer(self) -> str:
        assert self.served.certificate is not None
        return self.served.certificate.issuer.rfc4514_string()


@dataclass(frozen=True, slots=True)
class Env:
    cases: tuple[Case, ...]
    config: Path
    exporter: procs.ExporterProcess


CASE_NAMES = ("expired", "not_yet_valid", "self_signed", "unknown_ca", "wrong_ip", "wrong_name", "expired_tcp_tls")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    work = tmp_path_factory.mktemp("certfail")
    certs = CertFactory(work / "certs")
    ca = certs.ca("connhealth cert-failure CA")
    now = datetime.now(timezone.utc)
    # (name, reason, OpenSSL message, leaf, host in the URL, module); each leaf has exactly one defect.
    plan = (
        ("expired", "tls_cert_expired", "certificate has expired",
         certs.leaf(ca, name="expired.test", not_after=now - timedelta(days=2)), "127.0.0.1", MODULE),
        ("not_yet_valid", "tls_cert_not_yet_valid", "certificate is not yet valid",
         certs.leaf(ca, name="future.test", not_before=now + timedelta(days=2)), "127.0.0.1", MODULE),
        ("self_signed", "tls_cert_untrusted", "self-signed certificate",
         certs.leaf(None, name="self-signed.test"), "127.0.0.1", MODULE),
        ("unknown_ca", "tls_cert_untrusted", "unable to get local issuer certificate",
         certs.leaf(certs.ca("some other CA"), name="unknown-ca.test"), "127.0.0.1", MODULE),
        ("wrong_ip", "tls_hostname_mismatch", "IP address mismatch, certificate is not valid for '127.0.0.1'",
         certs.leaf(ca, name="other.example", sans=("other.example",)), "127.0.0.1", MODULE),
        # "localhost" with ip4 preferred: the name is checked, the connection stays on 127.0.0.1.
        ("wrong_name", "tls_hostname_mismatch", "Hostname mismatch, certificate is not valid for 'localhost'",
         certs.leaf(ca, name="elsewhere.example", sans=("elsewhere.example", "127.0.0.1")), "localhost", MODULE),
        ("expired_tcp_tls", "tls_cert_expired", "certificate has expired",
         certs.leaf(ca, name="expired-tcp.test", not_after=now - timedelta(days=3)), "127.0.0.1", TCP_MODULE),
    )
    assert tuple(p[0] for p in plan) == CASE_NAMES
    servers = [HTTPServer(server_context(p[3])) for p in plan]
    exporter: procs.ExporterProcess | None = None
    try:
        for s in servers:
            await s.start()
        cases = tuple(
            Case(name, reason, openssl, leaf,
                 srv.url("/ok", host=host) if module == MODULE else f"{host}:{srv.port}", module)
            for (name, reason, openssl, leaf, host, module), srv in zip(plan, servers)
        )
        targets = "".join(f"  - {{target: '{c.target}', module: {c.module}, interval: 500ms}}\n" for c in cases)
        config = work / "connhealth.yml"
        config.write_text(f"""
modules:
  {MODULE}:
    prober: http
    timeout: 5s
    http:
      preferred_ip_protocol: ip4
      ip_protocol_fallback: false
      tls_config:
        ca_file: {ca.cert_file}
  {TCP_MODULE}:
    prober: tcp
    timeout: 5s
    tcp:
      preferred_ip_protocol: ip4
      ip_protocol_fallback: false
      tls: true
      tls_config:
        ca_file: {ca.cert_file}
scheduler:
  default_interval: 1s
  min_interval: 500ms
targets:
{targets}""")
        exporter = await procs.ExporterProcess(config, work).start()
        yield Env(cases, config, exporter)
    finally:
        if exporter is not None:
            await exporter.astop()
        for s in servers:
            await s.stop()


def case_of(env: Env, name: str) -> Case:
    return next(c for c in env.cases if c.name == name)


async def run_cli(*args: str, timeout: float = 20) -> tuple[int, str, str]:
    return await procs.run_command([sys.executable, "-m", "exporter", *args], env={**os.environ, "NO_COLOR": "1"},
                                   timeout=timeout)


@pytest.mark.parametrize("name", CASE_NAMES)
async def test_result_keeps_the_reason_and_carries_the_presented_chain(env: Env, name: str) -> None:
    case = case_of(env, name)
    result = await run_probe(case.target, load_config(env.config).modules[case.module], 5)
    assert result.failure is not None, result
    assert (result.failure.phase, result.failure.reason) == ("tls", case.reason), result.failure.message
    assert case.openssl in result.failure.message
    tls = result.tls
    assert tls is not None
    assert tls.verification == "failed"
    assert tls.verification_error is not None and case.openssl in tls.verification_error, tls.verification_error
    assert tls.version is None and tls.cipher is None and not tls.completed
    assert tls.verified_chain_expiry is None
    assert len(tls.chain) == 1, tls.chain  # the leaf alone: roots are never sent
    leaf = tls.chain[0]
    assert leaf.fingerprint_sha256 == case.fingerprint
    assert leaf.subject == case.subject
    assert leaf.not_after == case.not_after
    assert leaf.not_before == case.served.not_valid_before.timestamp()
    assert tls.earliest_expiry == case.not_after
    # An IP literal is never sent as SNI, so it is not reported as the server name.
    assert tls.server_name == ("localhost" if name == "wrong_name" else None)


async def test_probe_endpoint_exports_expiry_and_reason(env: Env) -> None:
    async def probe(case: Case) -> tuple[Case, str]:
        status, text = await env.exporter.get("/probe", params={"target": case.target, "module": case.module})
        assert status == 200, text
        return case, text

    for case, text in await asyncio.gather(*(probe(c) for c in env.cases)):
        assert procs.value(text, "probe_success") == 0.0, (case.name, text)
        assert procs.value(text, "probe_ssl_earliest_cert_expiry") == case.not_after, (case.name, text)
        info = procs.samples(text, m.FAILURE_INFO)
        assert info == [({"phase": "tls", "reason": case.reason}, 1.0)], (case.name, text)
        # No handshake completed, so nothing was verified or negotiated.
        for absent in ("probe_ssl_last_chain_expiry_timestamp_seconds", "probe_ssl_last_chain_info",
                       "probe_tls_version_info", "probe_tls_cipher_info"):
            assert procs.samples(text, absent) == [], (case.name, absent, text)


async def test_continuous_metrics_export_expiry_and_reason_per_target(env: Env) -> None:
    def complete(text: str) -> bool:
        return all(
            procs.value(text, m.CERT_EXPIRY, target=c.target) is not None
            and (procs.value(text, m.PROBE_FAILURES, target=c.target, reason=c.reason) or 0) > 0
            for c in env.cases
        )

    text = await env.exporter.wait_metrics(complete, 20, "an expiry and a failure for every target")
    for case in env.cases:
        assert procs.value(text, m.CERT_EXPIRY, target=case.target, module=case.module) == case.not_after, case.name
        failures = {ls["reason"]: ls["phase"] for ls, v in procs.samples(text, m.PROBE_FAILURES)
                    if ls.get("target") == case.target and v > 0}
        assert failures == {case.reason: "tls"}, (case.name, failures)
        assert procs.value(text, m.PROBE_SUCCESSES, target=case.target) in (None, 0.0), case.name
        assert [ls for ls, _ in procs.samples(text, m.TLS_VERSION) if ls.get("target") == case.target] == [], case.name


async def test_cli_waterfall_shows_the_presented_chain(env: Env) -> None:
    runs = await asyncio.gather(*(
        run_cli("probe", c.target, "--module", c.module, "--config", str(env.config), "--timeout", "5")
        for c in env.cases))
    for case, (code, out, err) in zip(env.cases, runs):
        assert code == 1, (case.name, out, err)
        lines = out.splitlines()
        head = f"  TLS handshake failed; verification failed: {case.openssl}"
        assert any(line.startswith(head) and line.endswith("; the chain the server presented:") for line in lines), (
            case.name, out)
        expires = case.served.not_valid_after.strftime("%Y-%m-%d %H:%M:%S")
        at = lines.index(f"   [0] {case.subject}")
        assert lines[at + 1].startswith(f"       issuer {case.issuer}; expires {expires} UTC ("), (case.name, out)
        assert f"       sha256 {case.fingerprint}" in lines, (case.name, out)
        assert "   [1]" not in out, (case.name, out)
        assert re.search(rf"^  Failed in TLS handshake after [\d.]+ ms: .*\({case.reason}\)\.$", out, re.M), (case.name, out)


async def test_cli_json_carries_the_chain_and_its_expiry(env: Env) -> None:
    runs = await asyncio.gather(*(
        run_cli("probe", c.target, "--module", c.module, "--config", str(env.config), "--timeout", "5", "--json")
        for c in env.cases))
    for case, (code, out, err) in zip(env.cases, runs):
        assert code == 1, (case.name, out, err)
        d = json.loads(out)
        assert d["success"] is False
        assert (d["failure"]["phase"], d["failure"]["reason"]) == ("tls", case.reason), case.name
        tls = d["tls"]
        assert tls["verification"] == "failed" and tls["version"] is None, (case.name, tls)
        assert case.openssl in tls["verification_error"], (case.name, tls)
        assert [c["fingerprint_sha256"] for c in tls["chain"]] == [case.fingerprint], (case.name, tls)
        assert tls["chain"][0]["not_after"] == case.not_after, (case.name, tls)
        assert tls["chain"][0]["subject"] == case.subject, (case.name, tls)
        assert tls["earliest_expiry"] == case.not_after, (case.name, tls)
        assert tls["verified_chain_expiry"] is None, (case.name, tls)
