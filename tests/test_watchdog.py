"""The loop watchdog (tests/watchdog.py) has teeth: a loop blocked for 300 ms fails its check, an idle one passes.

The server is a real aiohttp app in its own process whose /block handler blocks its event loop
with time.sleep, as a parser running on the loop would.
"""
from __future__ import annotations

import http.client
import subprocess
import sys
import textwrap
import time

import pytest

try:
    from tests.procs import LOCALHOST, free_port
    from tests.watchdog import LoopWatchdog
except ImportError:  # pragma: no cover - depends on how pytest put us on sys.path
    from procs import LOCALHOST, free_port  # type: ignore[no-redef]
    from watchdog import LoopWatchdog  # type: ignore[no-redef]

pytestmark = pytest.mark.timeout(60)

SERVER = textwrap.dedent("""
    import sys, time
    from aiohttp import web
    async def healthy(request): return web.Response(text="Healthy\\n")
    async def block(request):
        time.sleep(float(request.query["s"]))  # blocks the event loop, on purpose
        return web.Response(text="done\\n")
    app = web.Application()
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/block", block)
    web.run_app(app, host=sys.argv[1], port=int(sys.argv[2]), print=None)
""")


@pytest.fixture
def server() -> tuple[int, int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SERVER, LOCALHOST, str(port)])
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                conn = http.client.HTTPConnection(LOCALHOST, port, timeout=1)
                conn.request("GET", "/-/healthy")
                if conn.getresponse().status == 200:
                    conn.close()
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the test server did not start"
            time.sleep(0.05)
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(5)


def _get(port: int, path: str) -> None:
    conn = http.client.HTTPConnection(LOCALHOST, port, timeout=10)
    conn.request("GET", path)
    conn.getresponse().read()
    conn.close()


def test_a_blocked_loop_fails_the_check_naming_the_case(server: tuple[int, int]) -> None:
    port, pid = server
    with LoopWatchdog(LOCALHOST, port, pid=pid) as watchdog:
        with pytest.raises(AssertionError, match=r"event loop not responsive: .* during 'blocker'"):
            with watchdog.watching("blocker"):
                _get(port, "/block?s=0.3")
    worst = max(s.own or 0.0 for s in watchdog.snapshot())
    assert worst >= 0.2, f"the 300 ms block was measured as {worst * 1000:.0f} ms"


def test_an_idle_loop_passes(server: tuple[int, int]) -> None:
    port, pid = server
    with LoopWatchdog(LOCALHOST, port, pid=pid) as watchdog:
        with watchdog.watching("idle"):
            _get(port, "/block?s=0")
            time.sleep(0.3)
    assert len(watchdog.snapshot()) >= 5
