"""Event-loop watchdog for hostile-input tests: is the exporter's loop still answering while it is attacked?

``LoopWatchdog`` asks ``GET /-/healthy`` every ``period`` seconds on its own
thread, over its own keep-alive connection, with plain blocking sockets: it
measures the exporter's loop, not the test's (whose loop may be busy running
peers). ``check()`` fails when any answer took longer than ``limit`` (the
issue's bound: 100 ms) or did not come at all, naming the worst samples and
the case that was running (``mark``).

Also here: the exporter process's resident memory and open fds, read from
/proc, for "RSS and fds back to baseline".
"""
from __future__ import annotations

import http.client
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

LIMIT = 0.1  # issue 12: /-/healthy answers in under 100 ms throughout
PERIOD = 0.02


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # monotonic time the request was sent
    latency: float | None  # None: no answer (error or timeout)
    case: str
    error: str = ""


class LoopWatchdog:
    def __init__(self, host: str, port: int, path: str = "/-/healthy", *, limit: float = LIMIT,
                 period: float = PERIOD, timeout: float = 5.0) -> None:
        self.host, self.port, self.path = host, port, path
        self.limit, self.period, self.timeout = limit, period, timeout
        self.samples: list[Sample] = []
        self.case = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> LoopWatchdog:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="loop-watchdog", daemon=True)
        self._thread.start()
        # At least one answer before the attack starts: a watchdog that never connected proves nothing.
        deadline = time.monotonic() + self.timeout
        while not any(s.latency is not None for s in self.snapshot()):
            if time.monotonic() > deadline:
                raise AssertionError(f"watchdog: no answer from {self.path} within {self.timeout:g}s")
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout + 1)

    def mark(self, case: str) -> None:
        """Attribute the following samples to ``case`` (shown when the check fails)."""
        self.case = case

    @contextmanager
    def watching(self, case: str) -> Iterator[None]:
        """Run a case; afterwards, check that every sample taken during it was in time."""
        self.mark(case)
        start = len(self.snapshot())
        try:
            yield
        finally:
            self.mark("")
        # One more sample after the case: a loop blocked at its very end shows up too.
        self._wait_next()
        self.check(since=start)

    def snapshot(self) -> list[Sample]:
        with self._lock:
            return list(self.samples)

    def check(self, since: int = 0) -> None:
        taken = self.snapshot()[since:]
        assert taken, "watchdog took no sample"
        bad = [s for s in taken if s.latency is None or s.latency > self.limit]
        if bad:
            worst = sorted(bad, key=lambda s: -1 if s.latency is None else -s.latency)[:5]
            shown = ", ".join(f"{'no answer (' + s.error + ')' if s.latency is None else f'{s.latency * 1000:.0f} ms'}"
                              f" during {s.case or 'no case'!r}" for s in worst)
            raise AssertionError(f"event loop not responsive: {len(bad)} of {len(taken)} {self.path} answers over "
                                 f"{self.limit * 1000:.0f} ms or missing; worst: {shown}")

    def max_latency(self, since: int = 0) -> float:
        return max((s.latency or float("inf")) for s in self.snapshot()[since:])

    def _wait_next(self) -> None:
        count = len(self.snapshot())
        deadline = time.monotonic() + self.timeout + 1
        while len(self.snapshot()) <= count and time.monotonic() < deadline:
            time.sleep(self.period / 2)

    def _run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set():
            case = self.case
            sent = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
                    conn.connect()
                    sent = time.monotonic()  # the connect is not the loop's answer time
                conn.request("GET", self.path)
                response = conn.getresponse()
                response.read()
                latency: float | None = time.monotonic() - sent
                error = "" if response.status == 200 else f"status {response.status}"
                if error:
                    latency = None
            except (OSError, http.client.HTTPException) as exc:
                latency, error = None, f"{type(exc).__name__}: {exc}"
                if conn is not None:
                    conn.close()
                conn = None
            with self._lock:
                self.samples.append(Sample(sent, latency, case, error))
            self._stop.wait(self.period)
        if conn is not None:
            conn.close()


def process_rss(pid: int) -> int:
    """Resident set size in bytes (VmRSS)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def process_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def describe_fds(pid: int) -> str:
    """What a process's open fds are, for a failure message: kinds and, for TCP sockets, their peers."""
    kinds: dict[str, int] = {}
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
            link = "socket"
        kinds[link.split(":")[0] if ":" in link else link] = kinds.get(link, 0) + 1
    peers: dict[str, int] = {}
    for table in ("tcp", "tcp6"):
        try:
            lines = open(f"/proc/{pid}/net/{table}").read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if parts[9] in inodes:
                local, remote, state = parts[1], parts[2], parts[3]
                key = f"{table} local :{int(local.split(':')[1], 16)} remote :{int(remote.split(':')[1], 16)} state {state}"
                peers[key] = peers.get(key, 0) + 1
    return f"{kinds} {peers}"
