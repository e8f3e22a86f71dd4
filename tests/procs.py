"""Subprocesses for integration tests: connhealth serve, blackbox_exporter, prometheus.

The one way the tests run a long-lived subprocess. Each process listens on a
free 127.0.0.1 port, is waited for with a bounded readiness poll, and is always
torn down (SIGTERM, then SIGKILL after a bounded wait), even when the test
fails or the run is interrupted (atexit). Only processes started here are ever
signalled, by their own pid.

Readiness and scraping are async (aiohttp client) because the tests' peers
(tests/peers.py) run in the test's own event loop: a blocking HTTP call from
the test would freeze the very servers the subprocess is probing. For the same
reason tests stop processes with ``await p.astop()``; the blocking ``stop()`` is
for synchronous code and the atexit cleanup.
"""
from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Mapping, Self, Sequence

import aiohttp
import pytest

REPO = Path(__file__).resolve().parent.parent
LOCALHOST = "127.0.0.1"

BLACKBOX_BIN = "prometheus-blackbox-exporter"
PROMETHEUS_BIN = "prometheus"

_live: "weakref.WeakSet[ManagedProcess]" = weakref.WeakSet()


async def run_command(argv: Sequence[str], *, env: Mapping[str, str] | None = None, stdin: bytes | None = None,
                      timeout: float = 20) -> tuple[int, str, str]:
    """Run a command to its end: (exit code, stdout, stderr); killed and re-raised after ``timeout``."""
    proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.PIPE if stdin is not None else None,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                env=dict(env) if env is not None else None)
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def free_port() -> int:
    """A port that was free a moment ago (the process may still lose a race; start() retries)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOCALHOST, 0))
        return s.getsockname()[1]


def refused_port() -> int:
    """A port on 127.0.0.1 with nothing listening (connect gets RST)."""
    return free_port()


def require_binary(name: str, package: str | None = None) -> str:
    """The path of ``name``; it comes from the Debian package ``package`` (default: ``name``).

    `make test` installs it, so a missing binary fails the test instead of skipping it.
    """
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not installed (make test installs the Debian package {package or name})")
    return path


class ProcessFailed(RuntimeError):
    pass


class ManagedProcess:
    """``make_argv(port)`` as a subprocess listening on 127.0.0.1:port; stdout+stderr go to a log file."""

    def __init__(self, name: str, make_argv: Callable[[int], Sequence[str]], ready_path: str, workdir: Path,
                 *, env: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.make_argv = make_argv
        self.ready_path = ready_path
        self.workdir = workdir
        self.env = dict(env) if env is not None else None
        self.port = 0
        self.argv: list[str] = []
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{LOCALHOST}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"http://{self.address}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, limit: int = 4000) -> str:
        return self.log()[-limit:]

    def spawn(self, port: int) -> None:
        self.port = port
        self.argv = list(self.make_argv(port))
        self.log_path = self.workdir / f"{self.name}-{port}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO, env=self.env,
            )
        _live.add(self)

    async def start(self, timeout: float = 15.0, attempts: int = 3) -> Self:
        """Spawn on a free port and wait until ``ready_path`` answers 200; returns self.

        A process that exits early (typically: lost the race for the port) is
        retried on a new port, at most ``attempts`` times.
        """
        last: Exception | None = None
        for _ in range(attempts):
            self.spawn(free_port())
            try:
                await self.wait_ready(timeout)
                return self
            except ProcessFailed as exc:
                await self.astop()
                last = exc
                if "address already in use" not in self.log_tail().lower():
                    break
            except BaseException:
                self.stop()
                raise
        raise ProcessFailed(str(last))

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

    def send_signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait_exit(self, timeout: float) -> int:
        """The exit code, polled without blocking the event loop; asyncio.TimeoutError after ``timeout`` seconds."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while (code := self.proc.poll()) is None:
            if time.monotonic() > deadline:
                raise asyncio.TimeoutError(f"{self.name} still running after {timeout:g}s")
            await asyncio.sleep(0.02)
        return code

    async def astop(self, grace: float = 5.0) -> None:
        """stop() that keeps the event loop (and the in-loop peers a probe may be talking to) running."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(asyncio.TimeoutError):
                await self.wait_exit(grace)
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
    name: str, make_argv: Callable[[int], Sequence[str]], ready_path: str, workdir: Path, *,
    timeout: float = 15.0, attempts: int = 3,
) -> ManagedProcess:
    """Start ``make_argv(port)`` on a free port and wait until ``ready_path`` answers 200 (see ManagedProcess.start)."""
    return await ManagedProcess(name, make_argv, ready_path, workdir).start(timeout, attempts)


# --- connhealth serve, with HTTP conveniences --------------------------------------


class ExporterProcess(ManagedProcess):
    """``python -m exporter serve [--config.file F] --web.listen-address 127.0.0.1:port *args``.

    Construct, then ``await p.start()``; stop with ``await p.astop()``. Output is
    unbuffered so ``log()`` is current.
    """

    def __init__(self, config_file: Path | None, workdir: Path, *args: str, name: str = "connhealth",
                 env: Mapping[str, str] | None = None) -> None:
        self.config_file = config_file
        self.args = args

        def argv(port: int) -> list[str]:
            config = ["--config.file", str(self.config_file)] if self.config_file is not None else []
            return [sys.executable, "-m", "exporter", "serve", *config,
                    "--web.listen-address", f"{LOCALHOST}:{port}", *self.args]

        super().__init__(name, argv, "/-/ready", workdir,
                         env=dict(os.environ if env is None else env, PYTHONUNBUFFERED="1"))

    async def get(self, path: str, params: dict[str, str] | None = None, headers: dict[str, str] | None = None,
                  timeout: float = 10.0) -> tuple[int, str]:
        status, text, _ = await get_text(self.base_url + path, params=params, headers=headers, timeout=timeout)
        return status, text

    async def post(self, path: str, timeout: float = 10.0) -> tuple[int, str]:
        status, text, _ = await _request("POST", self.base_url + path, timeout=timeout)
        return status, text

    async def metrics(self) -> str:
        status, text = await self.get("/metrics")
        assert status == 200, text
        return text

    async def wait_metrics(self, predicate: Callable[[str], Any], timeout: float, what: str) -> str:
        """Poll /metrics until ``predicate(text)`` is true; fail with ``what`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = await self.metrics()
            if predicate(text):
                return text
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; last /metrics:\n{text}\nexporter log:\n{self.log()}")


async def start_connhealth(config_file: str | os.PathLike[str], workdir: Path, *extra: str) -> ExporterProcess:
    return await ExporterProcess(Path(config_file), workdir, *extra).start()


# --- the other programs -------------------------------------------------------------


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


async def _request(method: str, url: str, *, params: dict[str, str] | None = None,
                   headers: dict[str, str] | None = None, timeout: float = 10.0) -> tuple[int, str, str]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        async with session.request(method, url, params=params, headers=headers) as resp:
            return resp.status, await resp.text(), resp.headers.get("Content-Type", "")


async def get_text(url: str, *, params: dict[str, str] | None = None, headers: dict[str, str] | None = None,
                   timeout: float = 10.0) -> tuple[int, str, str]:
    """(status, body, content-type)."""
    return await _request("GET", url, params=params, headers=headers, timeout=timeout)


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


@atexit.register
def _stop_leftovers() -> None:
    # Last line of defence (interrupted run, a fixture that never reached its finally).
    for p in list(_live):
        with contextlib.suppress(Exception):
            p.stop(grace=2.0)
