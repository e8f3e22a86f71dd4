"""Local demo targets, so a new user sees the engine at work with no network and no config.

Everything listens on 127.0.0.1 with certificates made at start-up.
"""
from __future__ import annotations

import asyncio
import json
import socket
import ssl
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from aiohttp import WSMsgType, web

from .certs import CertFactory, server_context
from .config import Config, parse_config
from .engine import run_probe
from .render import render
from .server import ServeOptions, serve

SLOW_SECONDS = 1.2
SLOW_TLS_SECONDS = 0.4
SSE_HEARTBEAT = 2.0  # the demo stream's heartbeat interval
SSE_STALL = 8.0  # every third stream goes silent this long (the module allows 2 s × 3 = 6 s)
KEEPALIVE_SECONDS = 1.0  # the demo keep-alive server's idle timeout (the module's client idle is 2 s)


@dataclass
class DemoTarget:
    name: str
    target: str
    module: str
    expect: str  # what the user should see
    service: str = "demo"
    region: str = "local"
    interval: str | None = None  # None: config_text's


@dataclass
class DemoTargets:
    """Starts the demo servers; ``config`` has modules trusting the demo CA."""

    workdir: Path
    targets: list[DemoTarget] = field(default_factory=list)
    config: Config | None = None
    modules_yaml: str = ""
    _runners: list[web.AppRunner] = field(default_factory=list)
    _servers: list[asyncio.Server] = field(default_factory=list)
    _flaky_count: int = 0
    _streams: int = 0

    async def start(self) -> None:
        certs = CertFactory(self.workdir)
        ca = certs.ca("connhealth demo CA")
        now = datetime.now(timezone.utc)
        good = certs.leaf(ca, name="localhost", sans=("localhost", "127.0.0.1"))
        expired = certs.leaf(ca, name="expired.localhost", sans=("localhost", "127.0.0.1"),
                             not_before=now - timedelta(days=60), not_after=now - timedelta(days=2))

        healthy_port = await self._serve(server_context(good))
        expired_port = await self._serve(server_context(expired))
        slow_tls_port = await self._delay_relay(healthy_port, SLOW_TLS_SECONDS)
        refused_port = _closed_port()
        lifecycle_port = await self._serve_lifecycle(None, KEEPALIVE_SECONDS)
        no_tickets_port = await self._serve_lifecycle(_no_resumption(server_context(good)), 75.0)
        self.modules_yaml = f"""
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
  demo_sse:
    prober: sse
    timeout: 14s
    sse:
      hold: 10s
      heartbeat_interval: {SSE_HEARTBEAT:g}s
      missed_heartbeats: 2
      resume: true
      preferred_ip_protocol: ip4
  demo_websocket:
    prober: websocket
    timeout: 5s
    websocket:
      pings: 3
      ping_interval: 200ms
      query_response: [{{send: "hello"}}, {{expect: "^hello"}}]
      preferred_ip_protocol: ip4
  demo_keepalive:
    prober: http
    timeout: 5s
    http:
      preferred_ip_protocol: ip4
      keepalive: {{idle: 2s}}
  demo_tls_resume:
    prober: tcp
    timeout: 5s
    tcp:
      tls: true
      preferred_ip_protocol: ip4
      tls_config:
        ca_file: {ca.cert_file}
    tls_resumption: {{require: true}}
"""
        self.config = parse_config(self.modules_yaml, "demo")
        base = f"https://127.0.0.1:{healthy_port}"
        self.targets = [
            DemoTarget("healthy HTTPS", f"{base}/", "demo_https", "success", "web", "eu-west"),
            DemoTarget("slow first byte", f"{base}/slow", "demo_https", f"success, ~{SLOW_SECONDS:g}s in server processing", "web", "eu-west"),
            DemoTarget("slow TLS", f"https://127.0.0.1:{slow_tls_port}/", "demo_https",
                       f"success, ~{SLOW_TLS_SECONDS:g}s in the TLS handshake", "edge", "us-east"),
            DemoTarget("intermittent 5xx", f"{base}/flaky", "demo_https", "every third probe: first_byte / http_status_5xx", "api", "us-east"),
            DemoTarget("expired certificate", f"https://127.0.0.1:{expired_port}/", "demo_https", "tls / tls_cert_expired", "legacy", "eu-west"),
            DemoTarget("refused port", f"127.0.0.1:{refused_port}", "demo_tcp", "connect / connect_refused", "db", "us-east"),
            DemoTarget("event stream", f"http://127.0.0.1:{lifecycle_port}/events", "demo_sse",
                       f"success; every third stream stalls {SSE_STALL:g}s: stream / sse_heartbeat_missed", "stream", "eu-west",
                       "15s"),  # a probe holds the stream 10 s
            DemoTarget("WebSocket echo", f"ws://127.0.0.1:{lifecycle_port}/ws", "demo_websocket",
                       "success, ping RTTs reported", "chat", "eu-west"),
            DemoTarget("keep-alive 1s", f"http://127.0.0.1:{lifecycle_port}/", "demo_keepalive",
                       f"idle / keepalive_closed_early: the server closes after ~{KEEPALIVE_SECONDS:g}s, the client idles 2s",
                       "web", "us-east"),
            DemoTarget("TLS without resumption", f"127.0.0.1:{no_tickets_port}", "demo_tls_resume",
                       "tls_resumed / tls_resumption_failed: no tickets, no session cache", "edge", "us-east"),
        ]

    def config_text(self, interval: str = "5s") -> str:
        """The bundled continuous-mode config: the demo modules plus these targets."""
        lines = [self.modules_yaml, "targets:"]
        for t in self.targets:
            lines += [
                f"  - target: {t.target}",
                f"    module: {t.module}",
                f"    interval: {t.interval or interval}",
                f"    labels: {{service: {t.service}, region: {t.region}, cluster: demo}}",
            ]
        return "\n".join(lines) + "\n"

    async def _serve(self, sslctx: ssl.SSLContext) -> int:
        app = web.Application()
        app.router.add_get("/", _hello)
        app.router.add_get("/slow", _slow)
        app.router.add_get("/flaky", self._flaky)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=sslctx)
        await site.start()
        self._runners.append(runner)
        return runner.addresses[0][1]

    async def _serve_lifecycle(self, sslctx: ssl.SSLContext | None, keepalive_timeout: float) -> int:
        """The lifecycle demo server: /events (SSE), /ws (WebSocket echo), / (plain), with this keep-alive timeout."""
        app = web.Application()
        app.router.add_get("/", _hello)
        app.router.add_get("/events", self._events)
        app.router.add_get("/ws", _echo)
        runner = web.AppRunner(app, access_log=None, keepalive_timeout=keepalive_timeout, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=sslctx)
        await site.start()
        self._runners.append(runner)
        return runner.addresses[0][1]

    async def _events(self, request: web.Request) -> web.StreamResponse:
        """Heartbeats every SSE_HEARTBEAT s and an event with a growing id; every third stream stalls SSE_STALL s."""
        self._streams += 1
        stalls = self._streams % 3 == 0
        last = request.headers.get("Last-Event-ID", "")
        next_id = int(last) + 1 if last.isdigit() else 0
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        try:
            await resp.write(b"retry: 3000\n\n")
            for tick in range(3600):
                await resp.write(f": ping\n\nid: {next_id}\ndata: tick {next_id}\n\n".encode())
                next_id += 1
                await asyncio.sleep(SSE_STALL if stalls and tick == 1 else SSE_HEARTBEAT)
        except (ConnectionError, asyncio.CancelledError):
            pass
        return resp

    async def _flaky(self, request: web.Request) -> web.Response:
        self._flaky_count += 1
        if self._flaky_count % 3 == 0:
            return web.Response(status=503, text="upstream overloaded\n")
        return web.Response(text="ok this time\n")

    async def _delay_relay(self, upstream_port: int, delay: float) -> int:
        """A TCP relay that waits ``delay`` before forwarding: accepts at once, so the TLS handshake is slow."""

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await asyncio.sleep(delay)
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
            except (OSError, asyncio.CancelledError):
                writer.close()
                return
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer), return_exceptions=True)

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self._servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        for runner in self._runners:
            await runner.cleanup()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def _hello(request: web.Request) -> web.Response:
    return web.Response(text="hello from the connhealth demo\n")


async def _slow(request: web.Request) -> web.Response:
    await asyncio.sleep(SLOW_SECONDS)
    return web.Response(text="slow but fine\n")


async def _echo(request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse()  # aiohttp answers pings itself
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            await ws.send_str(msg.data)
    return ws


def _no_resumption(ctx: ssl.SSLContext) -> ssl.SSLContext:
    """A TLS 1.3-only server context that issues no tickets: nothing a client could resume."""
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.options |= ssl.OP_NO_TICKET
    ctx.num_tickets = 0
    return ctx


def _closed_port() -> int:
    """A port nothing listens on: bind, read the number, close."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _run(as_json: bool, color: bool) -> int:
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
                    print(render(result, color=color))
                    print()
        finally:
            await demo.stop()
    return 0


def run_demo(as_json: bool = False, color: bool = False) -> int:
    return asyncio.run(_run(as_json, color))


async def serve_demo(options: ServeOptions) -> int:
    """``connhealth serve --demo``: the exporter in continuous mode over the demo targets."""
    with tempfile.TemporaryDirectory(prefix="connhealth-demo-") as tmp:
        demo = DemoTargets(Path(tmp))
        await demo.start()
        config_file = Path(tmp) / "demo.yml"
        config_file.write_text(demo.config_text())
        options.config_file = str(config_file)
        try:
            return await serve(options, on_started=_announce)
        finally:
            await demo.stop()


def _announce(exporter: object, runner: web.AppRunner) -> None:
    for host, port, *_ in runner.addresses:
        shown = "localhost" if host in ("0.0.0.0", "::") else host
        print(f"connhealth demo: status page http://{shown}:{port}/  metrics http://{shown}:{port}/metrics", flush=True)
        break
