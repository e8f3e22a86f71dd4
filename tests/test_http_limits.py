"""Hostile HTTP peers end as clear failures, never as the exporter's memory.

The exporter runs as a real process (``connhealth serve``); raw servers in the
test's loop send what the issue measured: a chunk size of FFFFFFFFFF followed
by an endless stream (3.2 GB before), an endless body on a module with a body
regexp (3.5 GB), 500 headers of 1 MiB each (514 MB per probe). The peak RSS of
the exporter (VmHWM) must stay within 50 MB of its RSS after a warm-up probe.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

try:
    from tests.peers import RawTCPServer
    from tests.procs import ExporterProcess, samples, value
except ImportError:  # pragma: no cover - depends on how pytest put us on sys.path
    from peers import RawTCPServer  # type: ignore[no-redef]
    from procs import ExporterProcess, samples, value  # type: ignore[no-redef]

pytestmark = pytest.mark.timeout(90)

RSS_BUDGET = 50 << 20
CONFIG = """
modules:
  plain:
    prober: http
    timeout: 4s
    http: {preferred_ip_protocol: ip4}
  regexp:
    prober: http
    timeout: 8s
    http:
      preferred_ip_protocol: ip4
      fail_if_body_not_matches_regexp: ["never-there"]
  limited:
    prober: http
    timeout: 8s
    http: {preferred_ip_protocol: ip4, body_size_limit: 1MB}
"""
_BLOCK = b"x" * 65536


def _status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {key} in /proc/{pid}/status")


async def _read_head(reader: asyncio.StreamReader) -> None:
    await reader.readuntil(b"\r\n\r\n")


async def huge_chunk_then_endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_head(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFF\r\n")
    while True:
        writer.write(_BLOCK)
        await writer.drain()


async def endless_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_head(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
    while True:
        writer.write(_BLOCK)
        await writer.drain()


async def huge_headers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_head(reader)
    writer.write(b"HTTP/1.1 200 OK\r\n")
    value_ = b"v" * (1 << 20)
    for i in range(500):
        writer.write(b"X-Big-%d: " % i + value_ + b"\r\n")
        await writer.drain()
    writer.write(b"\r\n")
    await writer.drain()


async def small_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_head(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    await writer.drain()


async def _probe(exporter: ExporterProcess, port: int, module: str) -> str:
    status, text = await exporter.get("/probe", params={"target": f"http://127.0.0.1:{port}/", "module": module}, timeout=20)
    assert status == 200, text
    return text


def _failure(text: str) -> tuple[str, str]:
    [(labels, _)] = samples(text, "probe_failure_info")
    return labels["phase"], labels["reason"]


async def test_hostile_bodies_and_headers_fail_clearly_within_the_memory_budget(tmp_path: Path) -> None:
    config = tmp_path / "limits.yml"
    config.write_text(CONFIG)
    exporter = await ExporterProcess(config, tmp_path).start()
    try:
        assert exporter.proc is not None
        pid = exporter.proc.pid
        async with RawTCPServer(small_ok) as ok:
            text = await _probe(exporter, ok.port, "regexp")  # warm-up: every code path loaded once
            assert _failure(text) == ("transfer", "http_body_mismatch")
        baseline = _status(pid, "VmRSS")

        async with RawTCPServer(huge_chunk_then_endless) as srv:
            text = await _probe(exporter, srv.port, "plain")
        # Nothing is kept: the stream is counted and discarded until the deadline.
        assert _failure(text) == ("transfer", "probe_timeout"), text
        assert value(text, "probe_http_status_code") == 200
        assert value(text, "probe_http_uncompressed_body_length") > 1 << 20

        async with RawTCPServer(endless_body) as srv:
            text = await _probe(exporter, srv.port, "regexp")
        assert _failure(text) == ("transfer", "http_body_too_large"), text
        async with RawTCPServer(endless_body) as srv:
            text = await _probe(exporter, srv.port, "limited")
        assert _failure(text) == ("transfer", "http_body_too_large"), text
        assert value(text, "probe_http_uncompressed_body_length") <= 1 << 20

        async with RawTCPServer(huge_headers) as srv:
            text = await _probe(exporter, srv.port, "plain")
        assert _failure(text) == ("transfer", "http_header_too_large"), text

        peak = _status(pid, "VmHWM")
        assert peak - baseline < RSS_BUDGET, f"peak RSS {peak >> 20} MiB vs {baseline >> 20} MiB after warm-up"
        status, _ = await exporter.get("/-/healthy")
        assert status == 200
    finally:
        await exporter.astop()
