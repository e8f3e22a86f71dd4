"""Real stream servers for the lifecycle probers: Server-Sent Events and WebSocket, on aiohttp.

Each runs in the test's event loop on 127.0.0.1 with an ephemeral port and
misbehaves in one precise, documented way. aiohttp is another implementation
than ours (its own HTTP/1.1 server and WebSocket framing), so these are real
peers, not mocks.
"""
from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import WSMsgType, web


class _Site:
    host = "127.0.0.1"

    def __init__(self, keepalive_timeout: float = 75.0) -> None:
        self.port = 0
        self.keepalive_timeout = keepalive_timeout  # aiohttp's idle keep-alive timeout (its default: 75 s)
        self._runner: web.AppRunner | None = None
        self.headers: list[dict[str, str]] = []  # each stream request's headers, as received (what went on the wire)

    def app(self) -> web.Application:  # pragma: no cover - overridden
        raise NotImplementedError

    async def __aenter__(self) -> Any:
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False, shutdown_timeout=0.2,
                                     keepalive_timeout=self.keepalive_timeout)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class SSEServer(_Site):
    """GET /events: an event stream (and GET /ok: a plain 200, for keep-alive checks).

    Every ``interval`` seconds it sends a ``: ping`` comment and an event with
    a growing numeric id (``id: n``). ``stop_after``: after that many seconds
    it goes silent and keeps the connection open. ``close_after``: it ends the
    response then. ``silent``: headers only, never a byte of body.
    ``resume``: with Last-Event-ID n the ids continue at n+1 (else they restart
    at 0). ``burst_after``: nothing for that long, then three events in one
    write (a buffering proxy). ``content_type`` replaces text/event-stream.
    ``retry``: a ``retry:`` field first. ``last_event_ids`` records each
    request's Last-Event-ID header (None when absent).
    """

    def __init__(self, *, interval: float = 0.2, stop_after: float | None = None, close_after: float | None = None,
                 silent: bool = False, resume: bool = True, burst_after: float | None = None,
                 content_type: str = "text/event-stream", retry: int | None = None, keepalive_timeout: float = 75.0) -> None:
        super().__init__(keepalive_timeout)
        self.interval, self.stop_after, self.close_after = interval, stop_after, close_after
        self.silent, self.resume, self.burst_after = silent, resume, burst_after
        self.content_type, self.retry = content_type, retry
        self.last_event_ids: list[str | None] = []

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/events"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/events", self._events)
        app.router.add_get("/ok", self._ok)
        return app

    async def _ok(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="ok")

    async def _events(self, request: web.Request) -> web.StreamResponse:
        self.headers.append(dict(request.headers))
        last = request.headers.get("Last-Event-ID")
        self.last_event_ids.append(last)
        resp = web.StreamResponse(headers={"Content-Type": self.content_type, "Cache-Control": "no-cache"})
        await resp.prepare(request)
        loop = asyncio.get_running_loop()
        start = loop.time()
        next_id = int(last) + 1 if self.resume and last is not None and last.isdigit() else 0
        try:
            if self.silent:
                await asyncio.sleep(3600)
            if self.retry is not None:
                await resp.write(f"retry: {self.retry}\n\n".encode())
            if self.burst_after is not None:
                await asyncio.sleep(self.burst_after)
                await resp.write(b"".join(f"id: {next_id + i}\ndata: burst\n\n".encode() for i in range(3)))
                next_id += 3
            while True:
                elapsed = loop.time() - start
                if self.close_after is not None and elapsed >= self.close_after:
                    return resp  # the response ends: the chunked stream's last chunk
                if self.stop_after is not None and elapsed >= self.stop_after:
                    await asyncio.sleep(3600)
                await resp.write(f": ping\n\nid: {next_id}\ndata: tick {next_id}\n\n".encode())
                next_id += 1
                await asyncio.sleep(self.interval)
        except (ConnectionError, asyncio.CancelledError):
            return resp


class WebSocketServer(_Site):
    """GET /ws: a WebSocket echo server (aiohttp's framing and handshake).

    ``answer_pings=False``: it never answers a ping (the pong never comes).
    ``close_code``: it closes with that code right after the upgrade.
    ``reply``: answers every text message with this instead of an echo.
    """

    def __init__(self, *, answer_pings: bool = True, close_code: int | None = None, reply: str | None = None) -> None:
        super().__init__()
        self.answer_pings, self.close_code, self.reply = answer_pings, close_code, reply
        self.pings = 0
        self.messages: list[str] = []

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/ws"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/ws", self._ws)
        app.router.add_get("/plain", self._plain)
        return app

    async def _plain(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="not a websocket")

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        self.headers.append(dict(request.headers))
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        if self.close_code is not None:
            await ws.close(code=self.close_code, message=b"bye")
            return ws
        async for msg in ws:
            if msg.type == WSMsgType.PING:
                self.pings += 1
                if self.answer_pings:
                    await ws.pong(msg.data)
            elif msg.type == WSMsgType.TEXT:
                self.messages.append(msg.data)
                await ws.send_str(self.reply if self.reply is not None else msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws
