"""The unix prober against unix socket servers the tests start (a path, an abstract name, TLS)."""
from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest

from exporter.certs import Issued, server_context
from exporter.config import ConfigError
from exporter.engine import run_probe

try:  # works whether or not tests/ becomes a package later
    from tests.probekit import PER_TEST_TIMEOUT, ca, certs, leaf, mod  # noqa: F401
except ImportError:  # pragma: no cover
    from probekit import PER_TEST_TIMEOUT, ca, certs, leaf, mod  # type: ignore[no-redef]  # noqa: F401

pytestmark = pytest.mark.timeout(PER_TEST_TIMEOUT)


async def _banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An SMTP-like dialogue: banner, then one answer per line."""
    try:
        writer.write(b"220 unix.test ready\r\n")
        while line := await reader.readline():
            writer.write(b"250 ok " + line.strip() + b"\r\n")
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass  # the probe hung up, or the test is over
    finally:
        writer.close()


async def test_connect_and_query_response(tmp_path: Path) -> None:
    path = str(tmp_path / "app.sock")
    server = await asyncio.start_unix_server(_banner, path)
    async with server:
        result = await run_probe(path, mod("unix"), 5)
        assert result.success, result.failure
        assert [p.name for p in result.timeline] == ["connect"]
        m = mod("unix", unix={"query_response": [{"expect": "^220 "}, {"send": "HELO probe"}, {"expect": "^250 ok HELO probe"}]})
        result = await run_probe(path, m, 5)
        assert result.success, result.failure
        assert [p.name for p in result.timeline] == ["connect", "first_byte", "request", "first_byte"]
        # As tcp (and blackbox): lines are read until one matches or the deadline; this server never closes.
        result = await run_probe(path, mod("unix", timeout="0.5s", unix={"query_response": [{"expect": "^554 "}]}), 0.5)
        assert (result.failure.phase, result.failure.reason) == ("first_byte", "probe_timeout")


async def test_abstract_socket() -> None:
    name = f"connhealth-test-{os.getpid()}"
    server = await asyncio.start_unix_server(_banner, "\0" + name)
    async with server:
        result = await run_probe("@" + name, mod("unix", unix={"query_response": [{"expect": "ready"}]}), 5)
    assert result.success, result.failure


async def test_tls_over_unix(tmp_path: Path, ca: Issued, leaf: Issued) -> None:
    path = str(tmp_path / "tls.sock")
    server = await asyncio.start_unix_server(_banner, path, ssl=server_context(leaf))
    async with server:
        m = mod("unix", unix={"tls": True, "tls_config": {"ca_file": ca.cert_file},
                              "query_response": [{"expect": "^220 "}]})
        result = await run_probe(path, m, 5)
        assert result.success, result.failure
        assert [p.name for p in result.timeline] == ["connect", "tls", "first_byte"]
        result = await run_probe(path, mod("unix", unix={"tls": True}), 5)
        assert (result.failure.phase, result.failure.reason) == ("tls", "tls_cert_untrusted")


async def test_missing_and_stale_sockets(tmp_path: Path) -> None:
    result = await run_probe(str(tmp_path / "nothing.sock"), mod("unix"), 5)
    assert (result.failure.phase, result.failure.reason) == ("connect", "unix_socket_missing")
    stale = tmp_path / "stale.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(stale))  # bound, never listening: what a crashed server leaves behind
    try:
        result = await run_probe(str(stale), mod("unix"), 5)
    finally:
        sock.close()
    assert (result.failure.phase, result.failure.reason) == ("connect", "connect_refused")


@pytest.mark.parametrize("target", ["relative.sock", "/" + "x" * 200, "/tmp/a\0b"])
async def test_invalid_targets(target: str) -> None:
    result = await run_probe(target, mod("unix"), 5)
    assert result.failure.reason == "invalid_target"


def test_bad_unix_section_is_named() -> None:
    with pytest.raises(ConfigError) as info:
        mod("unix", unix={"query_response": [{"expect": "("}]})
    assert "unix.query_response[0].expect" in str(info.value)
