"""Subprocesses for integration tests: connhealth serve, blackbox_exporter, prometheus.

Each process listens on a free 127.0.0.1 port, is waited for with a bounded
readiness poll, and is always torn down (SIGTERM, then SIGKILL after a bounded
wait), even when the test fails or the run is interrupted (atexit). Only
processes started here are ever signalled, by their own pid.

Readiness and scraping are async (aiohttp client) because the tests' peers
(tests/peers.py) run in the test's own event loop: a blocking HTTP call from
the test would freeze the very servers the subprocess is probing.
"""
from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any, Sequence

import aiohttp
import pytest

REPO = Path(__file__).resolve().parent.parent
LOCALHOST = "127.0.0.1"

BLACKBOX_BIN = "prometheus-blackbox-exporter"
PROMETHEUS_BIN = "prometheus"

_live: "weakref.WeakSet[ManagedProcess]" = weakref.WeakSet()


def free_port() -> int:
    """A port that was free a moment ago (the process may still lose a race; start() retries)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOCALHOST, 0))
        return s.getsockname()[1]


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (make test installs the Debian package)")
    return path


class ProcessFailed(RuntimeError):
    pass


class ManagedProcess:
    """One subprocess listening on 127.0.0.1:port; stdout+stderr go to a log file."""

    def __init__(self, name: str, argv: Sequence[str], port: int, ready_path: str, workdir: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.port = port
        self.ready_path = ready_path
        self.log_path = workdir / f"{name}-{port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{LOCALHOST}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"http://{self.address}"

    def log_tail(self, limit: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def spawn(self) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
            )
        _live.add(self)

    async def wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        url = self.base_url + self.ready_path
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0)) as session:
            while True:
                if self.proc.poll() is not None:
                    raise ProcessFailed(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, OSError):
                    async with session.get(url) as resp:
                        if resp.status == 200:
                            return
                if time.monotonic() > deadline:
                    raise ProcessFailed(f"{self.name} not ready on {url} after {timeout:g}s:\n{self.log_tail()}")
                await asyncio.sleep(0.05)

    async def astop(self, grace: float = 5.0) -> None:
        """stop() that keeps the event loop (and the in-loop peers a probe may be talking to) running."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + grace
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        self.stop(grace=0.1)  # reaps it, or SIGKILLs what is still running

    def stop(self, grace: float = 5.0) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            _live.discard(self)
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=5)
        _live.discard(self)


async def start_process(
    name: str, make_argv: Any, ready_path: str, workdir: Path, *, timeout: float = 15.0, attempts: int = 3,
) -> ManagedProcess:
    """Start ``make_argv(port)`` on a free port and wait until ``ready_path`` answers 200.

    A process that exits early (typically: lost the race for the port) is
    retried on a new port, at most ``attempts`` times.
    """
    last: Exception | None = None
    for _ in range(attempts):
        port = free_port()
        p = ManagedProcess(name, make_argv(port), port, ready_path, workdir)
        p.spawn()
        try:
            await p.wait_ready(timeout)
            return p
        except ProcessFailed as exc:
            p.stop()
            last = exc
            if "address already in use" not in p.log_tail().lower():
                break
        except BaseException:
            p.stop()
            raise
    raise ProcessFailed(str(last))


# --- the three programs -------------------------------------------------------


async def start_connhealth(config_file: str | os.PathLike[str], workdir: Path, *extra: str) -> ManagedProcess:
    return await start_process(
        "connhealth",
        lambda port: [sys.executable, "-m", "exporter", "serve", "--config.file", str(config_file),
                      "--web.listen-address", f"{LOCALHOST}:{port}", *extra],
        "/-/ready", workdir,
    )


async def start_blackbox(config_file: str | os.PathLike[str], workdir: Path) -> ManagedProcess:
    binary = require_binary(BLACKBOX_BIN)
    return await start_process(
        "blackbox",
        lambda port: [binary, f"--config.file={config_file}", f"--web.listen-address={LOCALHOST}:{port}"],
        "/-/healthy", workdir,
    )


async def start_prometheus(config_file: str | os.PathLike[str], workdir: Path) -> ManagedProcess:
    binary = require_binary(PROMETHEUS_BIN)
    storage = Path(tempfile.mkdtemp(prefix="tsdb-", dir=workdir))
    return await start_process(
        "prometheus",
        lambda port: [binary, f"--config.file={config_file}", f"--storage.tsdb.path={storage}",
                      f"--web.listen-address={LOCALHOST}:{port}", "--log.level=warn"],
        "/-/ready", workdir, timeout=30.0,
    )


# --- HTTP helpers ---------------------------------------------------------------


async def get_text(url: str, *, params: dict[str, str] | None = None, headers: dict[str, str] | None = None,
                   timeout: float = 10.0) -> tuple[int, str, str]:
    """(status, body, content-type)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        async with session.get(url, params=params, headers=headers) as resp:
            return resp.status, await resp.text(), resp.headers.get("Content-Type", "")


@atexit.register
def _stop_leftovers() -> None:
    # Last line of defence (interrupted run, a fixture that never reached its finally).
    for p in list(_live):
        with contextlib.suppress(Exception):
            p.stop(grace=2.0)
