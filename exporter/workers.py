"""``serve --workers N``: N worker processes on one machine, one view from outside.

The parent starts N copies of ``connhealth serve`` (the same arguments, plus
``--worker-index i``) and supervises them:

- worker ``i`` probes shard ``i/N`` of the continuous targets (exporter.shard,
  salt "worker": the same rendezvous function as ``--shard``);
- every worker listens on the listen addresses with ``SO_REUSEPORT``: the
  kernel spreads connections, so ``/probe`` (and the status page) is served by
  all of them;
- ``/metrics``, ``POST /-/reload`` and ``/-/ready`` on any worker are passed
  to the parent, over a Unix socket in a private directory (mode 0700): the
  parent asks every worker over its own socket, merges their disjoint series
  into one exposition (sinks/merge.py), reloads all of them, or says ready
  when all are;
- SIGHUP to the parent reloads every worker; SIGTERM and SIGINT stop every
  worker (each drains its probes for --shutdown-grace) and then the parent;
- a worker that exits unasked is started again after a backoff and counted in
  ``connhealth_worker_restarts_total{worker}``. A worker that fails before it
  was ever ready (a port in use, say) stops the whole start-up instead.
"""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from . import metrics as m
from .schema import StartupError
from .sinks.merge import add_labels, merge

if TYPE_CHECKING:
    from .server import Exporter, ServeOptions

log = logging.getLogger("connhealth.workers")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PARENT_SOCKET = "parent.sock"
# How long the parent waits for a worker's answer (a 10k-target exposition included).
ASK_TIMEOUT = 30.0
RESTART_BACKOFF = (0.5, 30.0)  # first delay, ceiling; doubles per quick crash
WORKER_HEADER = "X-Connhealth-Worker"


def worker_socket(control: str, index: int) -> str:
    return os.path.join(control, f"worker-{index}.sock")


# --- the worker's side -------------------------------------------------------------
def die_with_parent() -> None:
    """Linux: SIGTERM this worker when the parent dies (even by SIGKILL), so no worker outlives it."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def worker_app(exporter: Exporter) -> web.Application:
    """The worker's private side, on its Unix socket: its own series, its own reload, its own readiness."""
    app = web.Application()

    async def local_reload(request: web.Request) -> web.Response:
        ok, message = await exporter.reload()
        return web.Response(status=200 if ok else 500, text=message + "\n")

    app.router.add_get("/metrics", exporter.handle_metrics)
    app.router.add_post("/-/reload", local_reload)
    app.router.add_get("/-/ready", exporter.handle_ready)
    return app


def parent_routes(exporter: Exporter, control: str, index: int) -> dict[str, Handler]:
    """The worker's public /metrics, POST /-/reload and /-/ready: answered by the parent (for all workers)."""

    async def ask(request: web.Request, method: str, path: str) -> web.Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() == "accept"}
        try:
            status, body, ctype = await _unix_request(os.path.join(control, PARENT_SOCKET), method, path, headers)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return web.Response(status=503, text=f"worker {index}: the parent process did not answer: {exc}\n")
        return web.Response(status=status, body=body, headers={"Content-Type": ctype})

    async def metrics(request: web.Request) -> web.Response:
        return await ask(request, "GET", "/metrics")

    async def reload(request: web.Request) -> web.Response:
        return await ask(request, "POST", "/-/reload")

    async def ready(request: web.Request) -> web.Response:
        if not exporter.ready:
            return await exporter.handle_ready(request)
        return await ask(request, "GET", "/-/ready")

    return {"/metrics": metrics, "/-/reload": reload, "/-/ready": ready}


async def name_worker(request: web.Request, response: web.StreamResponse) -> None:
    """Every response of a worker names it (how a client, or a test, sees which worker answered)."""
    response.headers[WORKER_HEADER] = str(request.app["worker_index"])


async def _unix_request(path: str, method: str, url_path: str, headers: dict[str, str] | None = None,
                        timeout: float = ASK_TIMEOUT) -> tuple[int, bytes, str]:
    connector = aiohttp.UnixConnector(path=path)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        async with session.request(method, "http://worker" + url_path, headers=headers) as resp:
            return resp.status, await resp.read(), resp.headers.get("Content-Type", "text/plain")


# --- the parent's side ---------------------------------------------------------------
class _Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.ready = False  # answered ready since it was (re)started
        self.ever_ready = False
        self.restarts = 0


class Parent:
    def __init__(self, options: ServeOptions, count: int, argv: list[str], control: str) -> None:
        self.options = options
        self.argv = argv
        self.control = control
        self.workers = [_Worker(i) for i in range(count)]
        self.stopping = False
        self.failed: str | None = None
        self.done = asyncio.Event()

    # --- processes
    async def spawn(self, worker: _Worker) -> None:
        package = __package__ or "exporter"
        argv = [sys.executable, "-m", package, *self.argv,
                "--worker-index", str(worker.index), "--worker-control", self.control]
        worker.ready = False
        worker.proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL)
        log.info("worker %d started (pid %d)", worker.index, worker.proc.pid)

    async def supervise(self, worker: _Worker) -> None:
        backoff = RESTART_BACKOFF[0]
        while not self.stopping:
            await self.spawn(worker)
            assert worker.proc is not None
            started = time.monotonic()
            watcher = asyncio.create_task(self._watch_ready(worker))
            code = await worker.proc.wait()
            watcher.cancel()
            worker.ready = False
            if self.stopping:
                return
            if not worker.ever_ready:
                self.failed = f"worker {worker.index} exited with {code} before it was ready"
                self.done.set()
                return
            worker.restarts += 1
            log.error("worker %d (pid %d) exited with %d; starting it again in %gs (restart %d)",
                      worker.index, worker.proc.pid, code, backoff, worker.restarts)
            await asyncio.sleep(backoff)
            backoff = RESTART_BACKOFF[0] if time.monotonic() - started > 60 else min(backoff * 2, RESTART_BACKOFF[1])

    async def _watch_ready(self, worker: _Worker) -> None:
        """Until the worker says ready (however long its config takes to load); cancelled when it exits."""
        pause = 0.05
        while True:
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                status, _, _ = await _unix_request(worker_socket(self.control, worker.index), "GET", "/-/ready", timeout=2.0)
                if status == 200:
                    worker.ready = worker.ever_ready = True
                    return
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)

    async def stop(self) -> None:
        self.stopping = True
        procs = [w.proc for w in self.workers if w.proc is not None and w.proc.returncode is None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        waits = [asyncio.create_task(p.wait()) for p in procs]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=self.options.grace + 5.0)
            for proc in procs:
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            if pending:
                await asyncio.wait(pending, timeout=5.0)

    # --- what the workers pass on
    async def _ask_all(self, method: str, path: str, headers: dict[str, str] | None = None) -> list[tuple[int, bytes] | BaseException]:
        async def one(w: _Worker) -> tuple[int, bytes]:
            status, body, _ = await _unix_request(worker_socket(self.control, w.index), method, path, headers)
            return status, body

        return await asyncio.gather(*(one(w) for w in self.workers), return_exceptions=True)

    async def handle_metrics(self, request: web.Request) -> web.Response:
        from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS

        from .server import CONTENT_TYPE_TEXT

        openmetrics = "application/openmetrics-text" in request.headers.get("Accept", "")
        answers = await self._ask_all("GET", "/metrics", {"Accept": request.headers.get("Accept", "*/*")})
        texts = [a[1] for a in answers if not isinstance(a, BaseException) and a[0] == 200]
        texts.append(self.own_metrics(openmetrics))
        body = await asyncio.to_thread(merge, texts, openmetrics)
        return web.Response(body=body, headers={"Content-Type": OPENMETRICS if openmetrics else CONTENT_TYPE_TEXT})

    def own_metrics(self, openmetrics: bool) -> bytes:
        restarts = m.WORKER_RESTARTS.removesuffix("_total") if openmetrics else m.WORKER_RESTARTS
        spec = {s.name: s for s in m.WORKERS}
        lines = [f"# HELP {m.WORKERS_CONFIGURED} {spec[m.WORKERS_CONFIGURED].help}", f"# TYPE {m.WORKERS_CONFIGURED} gauge",
                 f"{m.WORKERS_CONFIGURED} {len(self.workers)}",
                 f"# HELP {m.WORKERS_READY} {spec[m.WORKERS_READY].help}", f"# TYPE {m.WORKERS_READY} gauge",
                 f"{m.WORKERS_READY} {sum(w.ready for w in self.workers)}",
                 f"# HELP {restarts} {spec[m.WORKER_RESTARTS].help}", f"# TYPE {restarts} counter"]
        lines += [f'{m.WORKER_RESTARTS}{{worker="{w.index}"}} {w.restarts}' for w in self.workers]
        return add_labels(("\n".join(lines) + "\n").encode(), self.options.external_labels)

    async def reload_all(self) -> tuple[bool, str]:
        answers = await self._ask_all("POST", "/-/reload")
        ok = all(not isinstance(a, BaseException) and a[0] == 200 for a in answers)
        lines = [f"worker {i}: " + (f"{type(a).__name__}: {a}" if isinstance(a, BaseException) else a[1].decode(errors="replace").strip())
                 for i, a in enumerate(answers)]
        (log.info if ok else log.error)("reload of %d workers: %s", len(answers), "; ".join(lines))
        return ok, "\n".join(lines)

    async def handle_reload(self, request: web.Request) -> web.Response:
        ok, message = await self.reload_all()
        return web.Response(status=200 if ok else 500, text=message + "\n")

    async def handle_ready(self, request: web.Request) -> web.Response:
        ready = sum(w.ready for w in self.workers)
        if ready == len(self.workers):
            return web.Response(text="Ready\n")
        return web.Response(status=503, text=f"Not ready: {ready} of {len(self.workers)} workers ready\n")

    async def run(self) -> int:
        app = web.Application()
        app.router.add_get("/metrics", self.handle_metrics)
        app.router.add_post("/-/reload", self.handle_reload)
        app.router.add_get("/-/ready", self.handle_ready)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.UnixSite(runner, os.path.join(self.control, PARENT_SOCKET)).start()
        loop = asyncio.get_running_loop()
        reloads: set[asyncio.Task[tuple[bool, str]]] = set()

        def on_hup() -> None:
            task = loop.create_task(self.reload_all())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        def on_stop() -> None:
            self.stopping = True  # before a worker's exit (Ctrl-C reaches the workers too) looks like a crash
            self.done.set()

        loop.add_signal_handler(signal.SIGTERM, on_stop)
        loop.add_signal_handler(signal.SIGINT, on_stop)
        loop.add_signal_handler(signal.SIGHUP, on_hup)
        tasks = [loop.create_task(self.supervise(w)) for w in self.workers]
        try:
            await self.done.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            await self.stop()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await runner.cleanup()
        if self.failed:
            raise StartupError(f"--workers: {self.failed}")
        return 0


def run_parent(options: ServeOptions, count: int, argv: list[str]) -> int:
    """Run ``count`` workers with the serve arguments ``argv`` until SIGTERM/SIGINT."""
    options.check()
    control = tempfile.mkdtemp(prefix="connhealth-workers-")  # 0700: only this user reaches the sockets
    try:
        return asyncio.run(Parent(options, count, argv, control).run())
    finally:
        shutil.rmtree(control, ignore_errors=True)

