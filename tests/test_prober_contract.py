"""One prober is one module behind one contract: a test-only prober registered HERE, and nowhere else,
works through check-config, `connhealth probe` (waterfall and --json), /probe and continuous /metrics.

It also pins the layering: net/, probers/ and sinks/ never import the engine or the config file layer.
"""
from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from exporter import cli
from exporter.config import load_config
from exporter.failures import REASONS, ProbeFailure, Reason
from exporter.metrics import ProbeFamily
from exporter.net import connection
from exporter.probers import PROBERS
from exporter.probers.base import PhaseSpec, ProbeContext, Prober, register, unregister
from exporter.result import Details, Peer
from exporter.schema import ConfigError, Fields, Secret, split_host_port
from exporter.server import Exporter, ServeOptions, build_app

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parent.parent
_REPLY_LENGTH = ProbeFamily("probe_echo_reply_length", "Bytes the echo server sent back")


@dataclass(frozen=True, slots=True)
class EchoSettings:
    word: Secret = Secret("ping")  # a secret by its type: masked in every output


@dataclass(frozen=True, slots=True)
class EchoDetails(Details):
    word: str
    reply: str


class EchoProber(Prober):
    """Connects, sends a word, expects it back: phases connect and greet, its own reason."""

    name = "echo_test"
    phases = (PhaseSpec("connect", "TCP connect", limitable=True),
              PhaseSpec("greet", "Echo round trip", "word written → echoed back", limitable=True))
    reasons = {"echo_mismatch": Reason("greet", "the echo server answered something else", "not an echo server")}

    def parse(self, f: Fields, module: str) -> EchoSettings:
        word = f.get("word", str, "ping")
        f.done()
        if not word.isalpha():
            raise ConfigError(f"{f.path}.word: letters only, got {word!r}")
        return EchoSettings(Secret(word))

    def check_target(self, target: str) -> None:
        try:
            split_host_port(target)
        except ValueError as exc:
            raise ProbeFailure("invalid_target", f"target {exc}") from None

    async def probe(self, ctx: ProbeContext, target: str, settings: EchoSettings) -> None:
        host, port = split_host_port(target)
        ctx.peer = Peer(host, "ipv4", port)
        sock, _ = await ctx.phase("connect", connection.open_socket(host, port, 2))
        conn = await connection.wrap(sock)
        try:
            conn.write(settings.word.reveal().encode() + b"\n")
            reply = (await ctx.phase("greet", conn.readuntil(b"\n"))).decode().strip()
        finally:
            conn.close()
        ctx.details = EchoDetails(str(settings.word), reply)
        if reply != settings.word.reveal():
            raise ProbeFailure("echo_mismatch", f"sent {settings.word!r}, got {reply!r}")

    def exposition(self, result):  # type: ignore[no-untyped-def]
        if isinstance(result.details, EchoDetails):
            yield _REPLY_LENGTH, [((), float(len(result.details.reply)))]


@pytest.fixture
def echo_prober() -> Iterator[None]:
    register(EchoProber())
    try:
        yield
    finally:
        unregister("echo_test")
    assert "echo_mismatch" not in REASONS and "echo_test" not in PROBERS


@pytest.fixture
async def echo_server() -> AsyncIterator[int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        writer.write(b"pong\n" if line.strip() == b"wrong" else line)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def _config(tmp_path: Path, port: int, word: str = "hello") -> Path:
    path = tmp_path / "echo.yml"
    path.write_text(f"""
modules:
  echo:
    prober: echo_test
    timeout: 5s
    echo_test: {{word: {word}}}
    phase_timeouts: {{greet: 2s}}
targets:
  - target: 127.0.0.1:{port}
    module: echo
    interval: 1s
""")
    return path


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    # The CLI in this process: the prober is registered here only.
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_check_config_reads_the_probers_own_section(echo_prober: None, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = _config(tmp_path, 9)
    code, out, err = _cli(capsys, "check-config", str(path))
    assert code == 0 and "OK (1 module defined, 4 built-in" in out, (out, err)
    assert load_config(path).modules["echo"].settings == EchoSettings(Secret("hello"))
    bad = tmp_path / "bad.yml"
    bad.write_text("modules:\n  e:\n    prober: echo_test\n    echo_test: {word: '42'}\n")
    code, out, err = _cli(capsys, "check-config", str(bad))
    assert code == 2 and "modules.e.echo_test.word: letters only, got '42'" in err
    bad.write_text("modules:\n  e:\n    prober: echo_test\n    phase_timeouts: {first_byte: 1s}\n")
    code, out, err = _cli(capsys, "check-config", str(bad))
    assert code == 2 and "prober echo_test has no phase 'first_byte' with its own limit (one of connect, greet)" in err


async def test_cli_waterfall_and_json_use_the_probers_phases(echo_prober: None, echo_server: int, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = _config(tmp_path, echo_server)
    target = f"127.0.0.1:{echo_server}"
    # The CLI runs its own event loop: run it in a thread so this test's loop keeps serving.
    code, out, err = await asyncio.to_thread(_cli, capsys, "probe", target, "--config", str(path), "--module", "echo")
    assert code == 0, (out, err)
    assert "Echo round trip" in out and "TCP connect" in out
    assert "word <secret>  reply hello" in out  # the word is a Secret: masked in the details too
    code, out, err = await asyncio.to_thread(_cli, capsys, "probe", target, "--config", str(path), "--module", "echo", "--json")
    d = json.loads(out)
    assert code == 0 and d["success"] is True and list(d["phases"]) == ["connect", "greet"]
    assert d["details"] == {"word": "<secret>", "reply": "hello"}
    bad = _config(tmp_path, echo_server, word="wrong")
    code, out, err = await asyncio.to_thread(_cli, capsys, "probe", target, "--config", str(bad), "--module", "echo")
    assert code == 1
    assert re.search(r"^  Echo round trip +[\d.]+ ms  \|[ █]+\|  ✗ failed here$", out, re.M), out  # completed, then failed its check
    assert re.search(r"^  Failed in Echo round trip: the echo server answered something else \(echo_mismatch\)\.$",
                     out, re.M), out


async def test_probe_endpoint_and_continuous_metrics(echo_prober: None, echo_server: int, tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, echo_server))
    exporter = Exporter(ServeOptions(config_file=None), config)
    async with TestClient(TestServer(build_app(exporter))) as client:
        exporter.start()
        try:
            resp = await client.get("/probe", params={"target": f"127.0.0.1:{echo_server}", "module": "echo"})
            text = await resp.text()
            assert resp.status == 200
            assert "probe_success 1\n" in text and "probe_echo_reply_length 5\n" in text
            assert 'probe_phase_duration_seconds{phase="greet"}' in text
            resp = await client.get("/probe", params={"target": f"127.0.0.1:{echo_server}", "module": "echo", "debug": "true"})
            debug = await resp.text()
            assert "word: <secret>" in debug and "hello" not in debug.split("Module configuration:")[1]
            for _ in range(200):  # the scheduler probes the target within its 1 s interval
                body = await (await client.get("/metrics")).text()
                if 'connhealth_probe_phase_duration_seconds_count{target="127.0.0.1:%d",module="echo",phase="greet"} ' % echo_server in body:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("no greet phase histogram in /metrics:\n" + body)
            assert 'connhealth_probe_successes_total{target="127.0.0.1:%d",module="echo"} ' % echo_server in body
        finally:
            await exporter.stop()


@pytest.mark.parametrize("package", ["exporter.net.connection", "exporter.net.http1", "exporter.net.http2",
                                     "exporter.probers", "exporter.sinks.store", "exporter.sinks.exposition",
                                     "exporter.sinks.traces"])
def test_lower_floors_never_import_the_engine_or_the_config_file_layer(package: str) -> None:
    code = (f"import sys, {package}; "
            "bad = sorted(m for m in sys.modules if m in ('exporter.engine', 'exporter.config', 'exporter.server', "
            "'exporter.scheduler', 'exporter.cli')); print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"{package} pulls in {out.stdout.strip()}"
