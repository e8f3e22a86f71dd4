"""Shared helpers for the benchmarks: free ports, managed subprocesses, HTTP GET, /proc stats.

Every process started here is tracked and torn down by its own pid (SIGTERM,
then SIGKILL after a bounded wait) on normal exit, on exceptions and on
SIGINT/SIGTERM. Nothing is ever sent anywhere but 127.0.0.1.
"""
from __future__ import annotations

import atexit
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOCALHOST = "127.0.0.1"
VENV_BIN = REPO / ".venv" / "bin"
CONNHEALTH = str(VENV_BIN / "connhealth")
PYTHON = str(VENV_BIN / "python")
BLACKBOX = "/usr/bin/prometheus-blackbox-exporter"

_procs: list[subprocess.Popen] = []

_UVLOOP_MAIN = ("import asyncio, sys, uvloop; asyncio.set_event_loop_policy(uvloop.EventLoopPolicy()); "
                "from exporter.cli import main; sys.exit(main(sys.argv[1:]))")


def connhealth_argv(uvloop_dir: str | None = None) -> list[str]:
    """The connhealth command; with ``uvloop_dir``, the same CLI on a uvloop event loop (an experiment)."""
    return [PYTHON, "-c", _UVLOOP_MAIN] if uvloop_dir else [CONNHEALTH]


def connhealth_env(uvloop_dir: str | None = None) -> dict[str, str]:
    return {"PYTHONPATH": uvloop_dir} if uvloop_dir else {}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOCALHOST, 0))
        return s.getsockname()[1]


def start(argv: list[str], log: Path, cpus: str | None = None, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start argv (optionally under ``taskset -c cpus``), output to ``log``."""
    if cpus is not None:
        argv = ["taskset", "-c", cpus, *argv]
    fh = open(log, "wb")
    proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})}, start_new_session=True)
    fh.close()
    _procs.append(proc)
    return proc


def stop(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)
        except ProcessLookupError:
            pass
    if proc in _procs:
        _procs.remove(proc)


def stop_all() -> None:
    for proc in list(reversed(_procs)):
        stop(proc)


def _on_signal(signum: int, frame: object) -> None:
    stop_all()
    sys.exit(128 + signum)


atexit.register(stop_all)
signal.signal(signal.SIGTERM, _on_signal)
signal.signal(signal.SIGINT, _on_signal)


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 20.0, host: str = LOCALHOST) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.args} exited with {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} not listening after {timeout}s ({proc.args})")


def get(port: int, path: str, timeout: float = 30.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(LOCALHOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its live children (serve --workers), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total = (int(fields[11]) + int(fields[12])) / CLK_TCK
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                total += cpu_seconds(int(child))
            except (FileNotFoundError, ProcessLookupError):
                pass
    return total


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    if n == 0:
        return float("nan")
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
