"""Line-protocol peers for tcp query_response tests: IRC, IMAP and SMTP with STARTTLS, an
AMQP-over-TLS greeter and PostgreSQL's SSLRequest. Each records what it received, so a test can
assert on the exact bytes the prober sent. Use with tests.peers.RawTCPServer (plain) or
TLSListener (TLS from the first byte)."""
from __future__ import annotations

import asyncio
import ssl
from typing import Awaitable, Callable

try:
    from tests.peers import LOCALHOST
except ImportError:  # pragma: no cover
    from peers import LOCALHOST  # type: ignore[no-redef]

WAIT = 5.0  # bound on each read: a test never hangs on a prober that went quiet
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _line(reader: asyncio.StreamReader) -> bytes:
    return (await asyncio.wait_for(reader.readline(), WAIT)).rstrip(b"\r\n")


class IRCPeer:
    """Just enough of an IRC server: a PING after NICK/USER, the welcome only for the right PONG."""

    TOKEN = b"tok-7f3a"

    def __init__(self) -> None:
        self.received: list[list[bytes]] = []

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        lines: list[bytes] = []
        self.received.append(lines)
        for _ in range(2):
            lines.append(await _line(reader))
        writer.write(b":irc.test NOTICE * :hello\r\nPING :" + self.TOKEN + b"\r\n")
        await writer.drain()
        lines.append(await _line(reader))
        ok = lines[-1] == b"PONG " + self.TOKEN
        writer.write(b":irc.test 001 prober :Welcome\r\n" if ok else b":irc.test 464 prober :Bad PONG\r\n")
        await writer.drain()
        await asyncio.wait_for(reader.read(100), WAIT)


class StartTLSPeer:
    """IMAP or SMTP up to and after STARTTLS: the plain greeting and capabilities, the upgrade,
    the capabilities again over TLS. ``received`` holds every line, plain and encrypted."""

    def __init__(self, kind: str, context: ssl.SSLContext) -> None:
        self.kind, self.context = kind, context
        self.received: list[bytes] = []

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        smtp = self.kind == "smtp"
        writer.write(b"220 mx.shop.test ESMTP Postfix (Debian)\r\n" if smtp else
                     b"* OK [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n")
        await writer.drain()
        if smtp:
            self.received.append(await _line(reader))  # EHLO
            writer.write(b"250-mx.shop.test\r\n250-STARTTLS\r\n250 8BITMIME\r\n")
            await writer.drain()
        self.received.append(await _line(reader))  # STARTTLS
        writer.write(b"220 2.0.0 Ready to start TLS\r\n" if smtp else b"a1 OK Begin TLS negotiation now\r\n")
        await writer.drain()
        await writer.start_tls(self.context)
        self.received.append(await _line(reader))  # EHLO / a2 CAPABILITY, now over TLS
        writer.write(b"250-mx.shop.test\r\n250-AUTH PLAIN\r\n250 OK\r\n" if smtp else
                     b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\na2 OK\r\n")
        await writer.drain()
        if smtp:
            self.received.append(await _line(reader))  # QUIT


async def amqp_greeter(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """What RabbitMQ answers to a line that is not an AMQP header: its own header, then it hangs up."""
    await _line(reader)
    writer.write(b"AMQP\x00\x00\x09\x01")
    await writer.drain()


class PostgresPeer:
    """PostgreSQL's SSLRequest: 8 bytes in, 'S' out, then TLS. blackbox writes ``send`` + "\\n" for a
    binary send too, so a ninth byte follows (see the README); the peer takes it before the handshake."""

    SSL_REQUEST = bytes.fromhex("0000000804d2162f")

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.received: list[bytes] = []

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await asyncio.wait_for(reader.readexactly(9), WAIT)
        self.received.append(request)
        writer.write(b"S" if request[:8] == self.SSL_REQUEST else b"N")
        await writer.drain()
        await writer.start_tls(self.context)
        await asyncio.wait_for(reader.read(100), WAIT)


class TLSListener:
    """A TLS listener from the first byte (``asyncio.start_server(ssl=...)``) running ``handler``."""

    def __init__(self, handler: Handler, context: ssl.SSLContext) -> None:
        self.handler, self.context = handler, context
        self.server: asyncio.Server | None = None
        self.port = 0

    async def _guarded(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError, ssl.SSLError):
            pass  # the prober going away (or failing verification) mid-dialogue is expected
        finally:
            writer.close()

    async def __aenter__(self) -> "TLSListener":
        self.server = await asyncio.start_server(self._guarded, LOCALHOST, 0, ssl=self.context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()
