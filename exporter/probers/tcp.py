"""The tcp prober: connect, optional TLS, optional query_response dialogue."""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ..config import split_host_port
from ..failures import ProbeFailure
from .connect import Connection, connect, open_socket, start_tls

if TYPE_CHECKING:
    from ..config import Module, QueryStep
    from ..engine import ProbeContext


def check_target(target: str) -> tuple[str, int]:
    try:
        return split_host_port(target)
    except ValueError as exc:
        raise ProbeFailure("invalid_target", f"target {exc}") from None


async def probe(ctx: ProbeContext, target: str, module: Module) -> None:
    cfg = module.tcp
    host, port = check_target(target)
    if not cfg.tls and not cfg.query_response:
        # Connecting is the whole probe: no streams to set up and tear down.
        (await open_socket(ctx, host, port, module)).close()
        return
    conn = await connect(ctx, host, port, module)
    try:
        if cfg.tls:
            await start_tls(ctx, conn, host, cfg.tls_config)
        for i, step in enumerate(cfg.query_response):
            await _step(ctx, conn, host, module, i, step)
    finally:
        conn.close()


async def _step(ctx: ProbeContext, conn: Connection, host: str, module: Module, index: int, step: QueryStep) -> None:
    # Several expect/send steps add up into one first_byte/request phase each.
    if step.expect is not None:
        await ctx.phase("first_byte", _expect(ctx, conn, index, step), accumulate=True)
    if step.send is not None:
        conn.write(step.send.encode() + b"\n")
        await ctx.phase("request", conn.drain(), accumulate=True)
    if step.starttls:
        await start_tls(ctx, conn, host, module.tcp.tls_config)


async def _expect(ctx: ProbeContext, conn: Connection, index: int, step: QueryStep) -> None:
    assert step.expect is not None
    while True:
        try:
            line = await conn.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            # The peer closed: its last, unterminated line still counts.
            line = exc.partial
            if not line or not step.expect.search(line):
                raise ProbeFailure(
                    "protocol_error",
                    f"query_response[{index}]: connection closed before a line matched {step.expect.pattern.decode()!r}",
                ) from None
        if step.expect.search(line):
            ctx.log(f"query_response[{index}]: matched {line.rstrip()!r}")
            return
