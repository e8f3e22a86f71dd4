"""Run ``connhealth serve`` as a real subprocess and talk to it over HTTP.

Shared by the server lifecycle and status page tests. Everything is async so
the test peers (which live in the test's event loop) keep answering while a
test waits on the exporter. Every wait here is bounded.
"""
from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def refused_port() -> int:
    """A port on 127.0.0.1 with nothing listening (connect gets RST)."""
    return free_port()


# --- Prometheus text parsing ----------------------------------------------------
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m is None or m.group(1) != name:
            continue
        labels = {k: v.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\") for k, v in _LABEL.findall(m.group(2) or "")}
        out.append((labels, float(m.group(3))))
    return out


def value(text: str, name: str, **labels: str) -> float | None:
    """The value of the one sample of ``name`` whose labels include ``labels``; None if absent."""
    found = [v for ls, v in samples(text, name) if all(ls.get(k) == want for k, want in labels.items())]
    assert len(found) <= 1, f"{name}{labels} matches {len(found)} series"
    return found[0] if found else None


# --- the process -------------------------------------------------------------------
class ExporterProcess:
    def __init__(self, config_file: Path | None, workdir: Path, *args: str) -> None:
        self.config_file = config_file
        self.workdir = workdir
        self.args = args
        self.port = 0
        self.proc: asyncio.subprocess.Process | None = None
        self.session: aiohttp.ClientSession | None = None
        self.log_path = workdir / "exporter.log"

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def start(self, ready_timeout: float = 15.0) -> ExporterProcess:
        self.port = free_port()
        cmd = [sys.executable, "-m", "exporter", "serve", "--web.listen-address", f"{HOST}:{self.port}", *self.args]
        if self.config_file is not None:
            cmd[4:4] = ["--config.file", str(self.config_file)]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.log_path, "ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *cmd, cwd=REPO, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
            )
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        try:
            await self._wait_ready(ready_timeout)
        except BaseException:
            await self.stop()
            raise
        return self

    async def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None and self.session is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                raise AssertionError(f"exporter exited with {self.proc.returncode}:\n{self.log()}")
            try:
                async with self.session.get(self.base + "/-/ready", timeout=aiohttp.ClientTimeout(total=1)) as resp:
                    if resp.status == 200:
                        return
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(0.05)
        raise AssertionError(f"exporter not ready within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    async def get(self, path: str, params: dict[str, str] | None = None, headers: dict[str, str] | None = None,
                  timeout: float = 10.0) -> tuple[int, str]:
        assert self.session is not None
        async with self.session.get(self.base + path, params=params, headers=headers,
                                    timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            return resp.status, await resp.text()

    async def post(self, path: str, timeout: float = 10.0) -> tuple[int, str]:
        assert self.session is not None
        async with self.session.post(self.base + path, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            return resp.status, await resp.text()

    async def metrics(self) -> str:
        status, text = await self.get("/metrics")
        assert status == 200, text
        return text

    async def wait_metrics(self, predicate: Any, timeout: float, what: str) -> str:
        """Poll /metrics until ``predicate(text)`` is true; fail with ``what`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = await self.metrics()
            if predicate(text):
                return text
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; last /metrics:\n{text}\nexporter log:\n{self.log()}")

    def send_signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except asyncio.TimeoutError:
            proc.kill()
            await asyncio.wait_for(proc.wait(), 5)
