"""tests/fixtures/blackbox_example/core.yml: our own module for each tcp/http/regexp module shape of
blackbox_exporter's latest example.yml. It loads as it is (its files need not exist at load), and each
module probes a real local peer of its kind with the expected result: an HTTP server, HTTPS with a
private CA, IMAP and SMTP upgrading with STARTTLS, IRC, AMQP over TLS, PostgreSQL's SSLRequest.

A file a module references is read when a probe uses it: missing, it fails only that module's probes
(config_file_missing, nothing sent), and the probe after the file appears succeeds, without a reload.
"""
from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from exporter.certs import CertFactory, server_context
from exporter.config import Config, check_config, load_config, parse_config
from exporter.engine import run_probe
from exporter.sinks.exposition import probe_text

try:  # works whether or not tests/ becomes a package later
    from tests import procs
    from tests.dialogue_peers import IRCPeer, PostgresPeer, StartTLSPeer, TLSListener, amqp_greeter
    from tests.peers import HTTPServer, RawTCPServer
except ImportError:  # pragma: no cover
    import procs  # type: ignore[no-redef]
    from dialogue_peers import IRCPeer, PostgresPeer, StartTLSPeer, TLSListener, amqp_greeter  # type: ignore[no-redef]
    from peers import HTTPServer, RawTCPServer  # type: ignore[no-redef]

pytestmark = pytest.mark.timeout(60)

CORE = Path(__file__).parent / "fixtures" / "blackbox_example" / "core.yml"
PLACEHOLDER = "/run/connhealth-fixture"
MODULES = {"web_full_checks", "api_post_json", "web_private_ca", "tls_handshake", "port_open", "imap_upgrade",
           "smtp_upgrade", "irc_welcome", "amqp_over_tls", "amqp_over_tls_unverified", "postgres_ssl"}


def test_core_fixture_loads_unchanged_and_check_config_warns_about_its_files() -> None:
    config = load_config(CORE)
    assert set(config.raw_modules) == MODULES
    loaded, errors, warnings = check_config(CORE)
    assert loaded is not None and errors == []
    users = ["web_private_ca", "tls_handshake", "imap_upgrade", "smtp_upgrade", "amqp_over_tls",
             "amqp_over_tls_unverified", "postgres_ssl"]
    assert warnings == [
        f"modules.{name}.{'http' if name == 'web_private_ca' else 'tcp'}.tls_config.ca_file {PLACEHOLDER}/ca.pem: "
        "No such file or directory (probes using it will fail with config_file_missing)" for name in users]


def _catalogue(body: bytes, origin: bytes = b"https://shop.test"):
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        handler.heads.append(head)  # type: ignore[attr-defined]
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n"
                     b"Access-Control-Allow-Origin: " + origin + b"\r\nContent-Length: " + str(len(body)).encode() +
                     b"\r\n\r\n" + body)
        await writer.drain()

    handler.heads = []  # type: ignore[attr-defined]
    return handler


def _config(directory: Path) -> Config:
    return parse_config(CORE.read_text().replace(PLACEHOLDER, str(directory)), "core.yml")


async def test_every_core_module_probes_its_peer(tmp_path: Path) -> None:
    certs = CertFactory(tmp_path / "certs")
    ca = certs.ca("fixture CA")
    files = tmp_path / "files"
    files.mkdir()
    (files / "ca.pem").write_bytes(ca.cert_pem)
    trusted = server_context(certs.leaf(ca))
    stranger = server_context(certs.leaf(None, name="self-signed.test"))
    config = _config(files)
    good = _catalogue("Spring catalogue \u00e9t\u00e9".encode())
    down = _catalogue(b"Service temporarily unavailable. Spring catalogue soon")
    irc, imap, smtp, pg = IRCPeer(), StartTLSPeer("imap", trusted), StartTLSPeer("smtp", trusted), PostgresPeer(trusted)

    async def probe(target: str, module: str) -> tuple[bool, str | None, str]:
        result = await run_probe(target, config.modules[module], 10)
        return result.success, result.failure.reason if result.failure else None, probe_text(result)

    async with (RawTCPServer(good) as web, RawTCPServer(down) as web_down, HTTPServer() as api,
                HTTPServer(trusted) as https, RawTCPServer(irc) as irc_srv, RawTCPServer(imap) as imap_srv,
                RawTCPServer(smtp) as smtp_srv, RawTCPServer(pg) as pg_srv,
                TLSListener(amqp_greeter, trusted) as amqp, TLSListener(amqp_greeter, stranger) as amqp_stranger):
        loopback = "127.0.0.1"
        ok, reason, _ = await probe(f"http://{loopback}:{web.port}/", "web_full_checks")
        assert (ok, reason) == (True, None)
        assert b"\r\nHost: www.shop.test\r\n" in good.heads[0] and b"\r\nOrigin: shop.test\r\n" in good.heads[0]
        assert (await probe(f"http://{loopback}:{web_down.port}/", "web_full_checks"))[:2] == (False, "http_body_mismatch")
        assert (await probe(api.url("/echo-body"), "api_post_json"))[:2] == (True, None)
        assert (await probe(https.url("/ok"), "web_private_ca"))[:2] == (True, None)
        assert (await probe(f"{loopback}:{https.port}", "tls_handshake"))[:2] == (True, None)
        assert (await probe(f"{loopback}:{procs.refused_port()}", "port_open"))[:2] == (False, "connect_refused")
        assert (await probe(f"{loopback}:{api.port}", "port_open"))[:2] == (True, None)

        ok, reason, text = await probe(f"{loopback}:{imap_srv.port}", "imap_upgrade")
        assert (ok, reason) == (True, None) and imap.received == [b"a1 STARTTLS", b"a2 CAPABILITY"]
        assert "probe_tls_version_info" in text
        ok, reason, text = await probe(f"{loopback}:{smtp_srv.port}", "smtp_upgrade")
        assert (ok, reason) == (True, None)
        for _ in range(100):  # the peer reads QUIT after the probe has finished: wait for it, bounded
            if len(smtp.received) == 4:
                break
            await asyncio.sleep(0.05)
        assert smtp.received == [b"EHLO connhealth", b"STARTTLS", b"EHLO connhealth", b"QUIT"]
        # blackbox's probe_expect_info: the labels' values expanded from the greeting's groups
        assert procs.samples(text, "probe_expect_info") == [
            ({"mta_host": "mx.shop.test", "mta_software": "Postfix (Debian)"}, 1.0)]

        assert (await probe(f"{loopback}:{irc_srv.port}", "irc_welcome"))[:2] == (True, None)
        assert irc.received == [[b"NICK connhealth", b"USER connhealth connhealth connhealth :connhealth",
                                 b"PONG " + IRCPeer.TOKEN]]
        assert (await probe(f"{loopback}:{amqp.port}", "amqp_over_tls"))[:2] == (True, None)
        assert (await probe(f"{loopback}:{amqp_stranger.port}", "amqp_over_tls"))[:2] == (False, "tls_cert_untrusted")
        assert (await probe(f"{loopback}:{amqp_stranger.port}", "amqp_over_tls_unverified"))[:2] == (True, None)

        ok, reason, text = await probe(f"{loopback}:{pg_srv.port}", "postgres_ssl")
        assert (ok, reason) == (True, None) and pg.received == [PostgresPeer.SSL_REQUEST + b"\n"]
        assert procs.value(text, "probe_failed_due_to_bytes") == 0.0


async def test_expect_bytes_mismatch_is_counted_as_blackbox_does(tmp_path: Path) -> None:
    config = parse_config("modules:\n  pg:\n    prober: tcp\n    tcp:\n      query_response:\n"
                          "        - send: !!binary AAAACATSFi8=\n        - expect_bytes: S\n", "t")

    async def refuses_tls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(9)
        writer.write(b"N")
        await writer.drain()

    async with RawTCPServer(refuses_tls) as srv:
        result = await run_probe(f"127.0.0.1:{srv.port}", config.modules["pg"], 5)
    assert (result.success, result.failure.reason if result.failure else None) == (False, "protocol_error")
    assert "expected bytes b'S', got b'N'" in (result.failure.message if result.failure else "")
    assert procs.value(probe_text(result), "probe_failed_due_to_bytes") == 1.0


async def test_a_missing_ca_file_fails_only_its_probes_until_it_appears(tmp_path: Path) -> None:
    certs = CertFactory(tmp_path / "certs")
    ca = certs.ca("late CA")
    files = tmp_path / "not-yet"
    config = _config(files)  # loads: nothing is read until a probe needs it
    async with HTTPServer(server_context(certs.leaf(ca))) as https:
        result = await run_probe(https.url("/ok"), config.modules["web_private_ca"], 5)
        assert result.failure is not None
        assert (result.failure.phase, result.failure.reason) == ("probe", "config_file_missing")
        assert result.failure.message == (f"tls_config.ca_file {files}/ca.pem: No such file or directory")
        assert result.peer is None and https.requests == []  # nothing was sent
        other = await run_probe(f"127.0.0.1:{https.port}", config.modules["port_open"], 5)
        assert other.success
        files.mkdir()
        (files / "ca.pem").write_bytes(ca.cert_pem)
        again = await run_probe(https.url("/ok"), config.modules["web_private_ca"], 5)
        assert again.success, again.failure


async def test_a_file_that_is_not_a_regular_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    fifo = tmp_path / "ca.pem"
    os.mkfifo(fifo)  # open() would block the reading thread (and check-config) for good
    config = _config(tmp_path)
    result = await run_probe("https://127.0.0.1:1/", config.modules["web_private_ca"], 5)
    assert result.failure is not None and result.failure.reason == "config_file_missing"
    assert result.failure.message == f"tls_config.ca_file {fifo} is not a regular file"
    path = tmp_path / "c.yml"
    path.write_text(CORE.read_text().replace(PLACEHOLDER, str(tmp_path)))
    _, errors, warnings = check_config(path)
    assert errors == [] and warnings[0] == (f"modules.web_private_ca.http.tls_config.ca_file {fifo}: not a regular file "
                                            "(probes using it will fail with config_file_missing)")
