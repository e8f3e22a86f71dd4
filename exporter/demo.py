"""Local demo targets, so a new user sees the engine at work with no network and no config.

Everything listens on 127.0.0.1 with certificates made at start-up.
"""
from __future__ import annotations

import asyncio
import json
import socket
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from aiohttp import web

from .certs import CertFactory, server_context
from .config import Config, parse_config
from .engine import run_probe
from .render import render

SLOW_SECONDS = 1.2


@dataclass
class DemoTarget:
    name: str
    target: str
    module: str
    expect: str  # what the user should see


@dataclass
class DemoTargets:
    """Starts the demo servers; ``config`` has modules trusting the demo CA."""

    workdir: Path
    targets: list[DemoTarget] = field(default_factory=list)
    config: Config | None = None
    _runners: list[web.AppRunner] = field(default_factory=list)

    async def start(self) -> None:
        certs = CertFactory(self.workdir)
        ca = certs.ca("connhealth demo CA")
        now = datetime.now(timezone.utc)
        good = certs.leaf(ca, name="localhost", sans=("localhost", "127.0.0.1"))
        expired = certs.leaf(ca, name="expired.localhost", sans=("localhost", "127.0.0.1"),
                             not_before=now - timedelta(days=60), not_after=now - timedelta(days=2))

        healthy_port = await self._serve(server_context(good))
        expired_port = await self._serve(server_context(expired))
        refused_port = _closed_port()
        self.config = parse_config(
            f"""
modules:
  demo_https:
    prober: http
    timeout: 5s
    http:
      preferred_ip_protocol: ip4
      fail_if_not_ssl: true
      tls_config:
        ca_file: {ca.cert_file}
  demo_tcp:
    prober: tcp
    timeout: 5s
    tcp:
      preferred_ip_protocol: ip4
""",
            "demo",
        )
        base = f"https://127.0.0.1:{healthy_port}"
        self.targets = [
            DemoTarget("healthy HTTPS", f"{base}/", "demo_https", "success"),
            DemoTarget("slow first byte", f"{base}/slow", "demo_https", f"success, ~{SLOW_SECONDS:g}s in server processing"),
            DemoTarget("expired certificate", f"https://127.0.0.1:{expired_port}/", "demo_https", "tls / tls_cert_expired"),
            DemoTarget("refused port", f"127.0.0.1:{refused_port}", "demo_tcp", "connect / connect_refused"),
        ]

    async def _serve(self, sslctx: object) -> int:
        app = web.Application()
        app.router.add_get("/", _hello)
        app.router.add_get("/slow", _slow)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=sslctx)
        await site.start()
        self._runners.append(runner)
        return runner.addresses[0][1]

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()


async def _hello(request: web.Request) -> web.Response:
    return web.Response(text="hello from the connhealth demo\n")


async def _slow(request: web.Request) -> web.Response:
    await asyncio.sleep(SLOW_SECONDS)
    return web.Response(text="slow but fine\n")


def _closed_port() -> int:
    """A port nothing listens on: bind, read the number, close."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _run(as_json: bool) -> int:
    with tempfile.TemporaryDirectory(prefix="connhealth-demo-") as tmp:
        demo = DemoTargets(Path(tmp))
        await demo.start()
        assert demo.config is not None
        try:
            for t in demo.targets:
                result = await run_probe(t.target, demo.config.modules[t.module])
                if as_json:
                    print(json.dumps({"demo": t.name, "expected": t.expect, **result.to_dict()}))
                else:
                    print(f"=== {t.name} (expected: {t.expect})")
                    print(render(result, color=sys.stdout.isatty()))
                    print()
        finally:
            await demo.stop()
    return 0


def run_demo(as_json: bool = False) -> int:
    return asyncio.run(_run(as_json))
