"""The unix prober: connect to a unix domain socket, optional TLS, optional query_response (blackbox's unix module).

The target is the socket's path (``/run/app.sock``), or ``@name`` for a
Linux abstract socket, as Go dials it. The dialogue is the tcp prober's
(``query_response`` with ``expect``, ``send`` and ``starttls``), run on a
connection of the same kind, so both probers time and attribute it alike.
With TLS the certificate is checked against ``tls_config.server_name``
(default ``localhost``: a path is no host name).

A unix module lets whoever may call ``/probe`` with it connect to any socket
the exporter can open, as in blackbox: configure one only for trusted callers.
"""
from __future__ import annotations

import asyncio
import errno
import socket
from dataclasses import dataclass, field

from ..failures import ProbeFailure, Reason
from ..net import connection
from ..net.tls import TLSConfig
from ..schema import Fields
from .base import CONNECT, TLS, PhaseSpec, ProbeContext, Prober, register, tls_section
from .connect import tls_context
from .tcp import QueryStep, TCPProber, _parse_step, converse

MAX_PATH = 107  # sun_path holds 108 bytes with its terminating NUL

REASONS = {
    "unix_socket_missing": Reason("connect", "there is no socket at the path (ENOENT) or the path is not a socket",
                                  "service not running, socket in another mount namespace (container), wrong path"),
    "unix_socket_denied": Reason("connect", "the exporter may not connect to the socket (EACCES/EPERM)",
                                 "socket file or directory permissions, the exporter's user not in the socket's group"),
}


@dataclass(frozen=True, slots=True)
class UnixProbeConfig:
    query_response: tuple[QueryStep, ...] = ()
    tls: bool = False
    tls_config: TLSConfig = field(default_factory=TLSConfig)


class UnixProber(Prober):
    name = "unix"
    phases = (PhaseSpec("connect", CONNECT.label, "`connect()` on the socket → accepted by the server", limitable=True), TLS,
              *(p for p in TCPProber.phases if p.name in ("request", "first_byte")))
    reasons = REASONS

    def parse(self, f: Fields, module: str) -> UnixProbeConfig:
        steps = tuple(_parse_step(raw, f"{f.p('query_response')}[{i}]") for i, raw in enumerate(f.get("query_response", list, [])))
        cfg = UnixProbeConfig(query_response=steps, tls=f.get("tls", bool, False), tls_config=tls_section(f))
        f.done()
        return cfg

    def check_target(self, target: str) -> None:
        _address(target)

    def expected_phases(self, target: str, settings: UnixProbeConfig) -> tuple[str, ...]:
        steps = settings.query_response
        reached = {"tls": settings.tls or any(s.starttls for s in steps),
                   "request": any(s.send is not None for s in steps),
                   "first_byte": any(s.expect is not None for s in steps)}
        return tuple(p.name for p in self.phases if reached.get(p.name, True))

    async def probe(self, ctx: ProbeContext, target: str, settings: UnixProbeConfig) -> None:
        cfg = settings
        address = _address(target)
        ctx.log("connecting to unix socket %s", target)
        if cfg.tls or any(step.starttls for step in cfg.query_response):
            await tls_context(cfg.tls_config)  # its files are read (or missing) before anything is sent
        conn = await connection.wrap(await ctx.phase("connect", _open(target, address)))
        server_name = cfg.tls_config.server_name or "localhost"
        await converse(ctx, conn, server_name, cfg.tls, cfg.tls_config, cfg.query_response)  # the tcp prober's exchange


def _address(target: str) -> str:
    """The address to connect to: the path, or an abstract name as ``\\0name``."""
    if "\0" in target:
        raise ProbeFailure("invalid_target", "target: a unix socket path must not contain NUL")
    address = "\0" + target[1:] if target.startswith("@") else target
    if not target.startswith(("/", "@")):
        raise ProbeFailure("invalid_target", f"target {target[:80]!r}: expected an absolute socket path or @abstract-name")
    if len(address.encode()) > MAX_PATH:
        raise ProbeFailure("invalid_target", f"target: a unix socket path is at most {MAX_PATH} bytes")
    return address


async def _open(target: str, address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, address)
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.ENOENT, errno.ENOTSOCK, errno.ENOTDIR):
            raise ProbeFailure("unix_socket_missing", f"{target}: {exc.strerror}") from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise ProbeFailure("unix_socket_denied", f"{target}: {exc.strerror}") from None
        raise
    except BaseException:
        sock.close()
        raise
    return sock


register(UnixProber())
