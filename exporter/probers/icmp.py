"""The icmp prober: one echo request, its matching echo reply timed (blackbox's icmp module).

Unprivileged ping sockets (``SOCK_DGRAM``/``IPPROTO_ICMP``) where the
kernel allows them (``net.ipv4.ping_group_range`` covers our group; the same
sysctl governs ICMPv6), raw sockets otherwise (root or CAP_NET_RAW). Phases:
dns (the target's name, absent for an IP literal), setup (socket created and
configured, the request built) and rtt (request sent → the matching reply);
blackbox's probe_icmp_duration_seconds{phase=resolve|setup|rtt}. The reply's
TTL / hop limit comes from the kernel's ancillary data (IP_RECVTTL,
IPV6_RECVHOPLIMIT), or from the IPv4 header on a raw socket.

``dont_fragment`` sets IP_PMTUDISC_DO (IPv6: IPV6_DONTFRAG): an echo larger
than the path MTU then fails at once (EMSGSIZE) instead of being fragmented.
"""
from __future__ import annotations

import array
import asyncio
import errno
import ipaddress
import itertools
import os
import socket
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..failures import ProbeFailure, Reason
from ..metrics import ProbeFamily, ProbeSamples, label_text
from ..net.resolve import check_host, is_ip
from ..result import Details, ProbeResult
from ..schema import Fields, parse_ip_protocol
from .base import DNS, PhaseSpec, ProbeContext, Prober, register, source_ip_address
from .connect import check_source_family, peer_address

MAX_PAYLOAD = 65_507  # the largest echo payload an IPv4 packet can carry
DEFAULT_PAYLOAD = 28  # blackbox's default payload is its 28-byte name
READ_BATCH = 64  # packets read per wake-up of the socket
_FILLER = b"connhealth icmp probe "
# Linux constants the socket module does not export everywhere.
IP_PMTUDISC_DO = 2
IPV6_PMTUDISC_DO = 2
IPV6_DONTFRAG = getattr(socket, "IPV6_DONTFRAG", 62)
IPV6_RECVHOPLIMIT = getattr(socket, "IPV6_RECVHOPLIMIT", 51)
IPV6_HOPLIMIT = getattr(socket, "IPV6_HOPLIMIT", 52)
IP_RECVTTL = getattr(socket, "IP_RECVTTL", 12)
IPV6_MTU_DISCOVER = getattr(socket, "IPV6_MTU_DISCOVER", 23)
IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)

REASONS = {
    "icmp_timeout": Reason("rtt", "no echo reply before the deadline",
                           "host down, ICMP filtered by a firewall, packet larger than the path MTU with dont_fragment"),
    "icmp_message_too_big": Reason("rtt", "dont_fragment is set and the echo request is larger than the path MTU "
                                   "(the kernel refused to send it: EMSGSIZE)", "payload_size above the MTU of a link, "
                                   "a tunnel with a smaller MTU on the path"),
    "icmp_socket_denied": Reason("setup", "the exporter may open neither an unprivileged ping socket nor a raw socket",
                                 "net.ipv4.ping_group_range does not cover the exporter's group and it lacks CAP_NET_RAW"),
}

_sequence = itertools.count(int.from_bytes(os.urandom(2), "big"))


@dataclass(frozen=True, slots=True)
class ICMPProbeConfig:
    preferred_ip_protocol: str = "ip6"
    ip_protocol_fallback: bool = True
    source_ip_address: str | None = None
    payload_size: int = 0  # 0: the default payload
    dont_fragment: bool = False
    ttl: int = 64


@dataclass(frozen=True, slots=True)
class ICMPDetails(Details):
    socket: str | None = None  # "unprivileged" (ping socket) or "raw"
    reply_hop_limit: int | None = None  # TTL (IPv4) / hop limit (IPv6) of the reply
    payload_size: int = 0

    def summary(self) -> str:
        hops = "-" if self.reply_hop_limit is None else self.reply_hop_limit
        return f"ICMP echo  {self.payload_size} bytes  {self.socket or '-'} socket  reply hop limit {hops}"


class ICMPProber(Prober):
    name = "icmp"
    phases = (DNS,
              PhaseSpec("setup", "ICMP socket setup", "socket opened and configured (TTL, don't fragment) → echo request built"),
              PhaseSpec("rtt", "Echo round trip", "echo request sent → its echo reply received",
                        timeout_reason="icmp_timeout", limitable=True))
    reasons = REASONS

    def parse(self, f: Fields, module: str) -> ICMPProbeConfig:
        proto, fallback = parse_ip_protocol(f)
        cfg = ICMPProbeConfig(preferred_ip_protocol=proto, ip_protocol_fallback=fallback, source_ip_address=source_ip_address(f),
                              payload_size=f.integer("payload_size", 0, 0, MAX_PAYLOAD),
                              dont_fragment=f.get("dont_fragment", bool, False), ttl=f.integer("ttl", 64, 0, 255))
        f.done()
        return cfg

    def check_target(self, target: str) -> None:
        _host(target)

    def expected_phases(self, target: str, settings: ICMPProbeConfig) -> tuple[str, ...]:
        try:
            host = _host(target)
        except ProbeFailure:
            return ()
        return ("setup", "rtt") if is_ip(host) else ("dns", "setup", "rtt")

    async def probe(self, ctx: ProbeContext, target: str, settings: ICMPProbeConfig) -> None:
        cfg = settings
        ip, family, _ = await peer_address(ctx, _host(target), 0, cfg.preferred_ip_protocol, cfg.ip_protocol_fallback)
        check_source_family(cfg.source_ip_address, family)
        size = cfg.payload_size or DEFAULT_PAYLOAD
        ping = _Ping(family, ip, size)
        try:
            await ctx.phase("setup", ping.open(cfg))
            ctx.log("echo request to %s: %d bytes, seq %d (%s socket)", ip, size, ping.seq, ping.kind)
            await ctx.phase("rtt", ping.exchange())
        finally:
            ping.close()
            ctx.details = ICMPDetails(socket=ping.kind, reply_hop_limit=ping.hop_limit, payload_size=size)
        ctx.log("echo reply from %s, hop limit %s", ip, ping.hop_limit)

    def exposition(self, result: ProbeResult) -> Iterable[tuple[ProbeFamily, ProbeSamples]]:
        d = result.details if isinstance(result.details, ICMPDetails) else ICMPDetails()
        phases = result.total_phases()
        yield _DURATION, [(text, phases.get(ours, 0.0)) for text, ours in _BLACKBOX_PHASES]
        if result.success and d.reply_hop_limit is not None:
            yield _HOP_LIMIT, float(d.reply_hop_limit)


def _host(target: str) -> str:
    host = target[1:-1] if target.startswith("[") and target.endswith("]") else target
    try:
        check_host(host)
    except ValueError as exc:
        raise ProbeFailure("invalid_target", f"target {exc}") from None
    return host


async def _wait(loop: asyncio.AbstractEventLoop, sock: socket.socket, add: Any, remove: Any,
                attempt: Callable[[], object] | None) -> None:
    """Run ``attempt`` once the socket is ready for it (at once if it does not block); None: wait for readability.

    By hand, not loop.sock_sendto: uvloop (the exporter's loop) does not implement it.
    """
    while True:
        if attempt is not None:
            try:
                attempt()
                return
            except (BlockingIOError, InterruptedError):
                pass
        ready: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        add(sock.fileno(), wake)
        try:
            await ready
        finally:
            remove(sock.fileno())
        if attempt is None:
            return


# Linux raw-socket filters: a set bit blocks that ICMP type (SOL_RAW/ICMP_FILTER for IPv4: one 32-bit word;
# IPPROTO_ICMPV6/ICMP6_FILTER: 256 bits). Only echo replies and destination-unreachable reach the probe.
SOL_RAW, ICMP_FILTER, ICMP6_FILTER = 255, 1, 1


def _only_replies(sock: socket.socket, v6: bool) -> None:
    try:
        if v6:
            words = [0xFFFFFFFF] * 8
            for kind in (1, 129):  # destination unreachable, echo reply
                words[kind >> 5] &= ~(1 << (kind & 31)) & 0xFFFFFFFF
            sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, struct.pack("=8I", *words))
        else:
            sock.setsockopt(SOL_RAW, ICMP_FILTER, struct.pack("=I", ~((1 << 0) | (1 << 3)) & 0xFFFFFFFF))
    except OSError:
        pass  # an optimisation: without it, _matches skips the other packets


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(array.array("H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return socket.htons(~total & 0xFFFF)


class _Ping:
    """One echo request on its own socket, and the wait for its reply."""

    def __init__(self, family: int, ip: str, size: int) -> None:
        self.family, self.ip, self.size = family, ip, size
        self.v6 = family == socket.AF_INET6
        self.sock: socket.socket | None = None
        self.kind: str | None = None
        self.seq = next(_sequence) & 0xFFFF
        self.ident = int.from_bytes(os.urandom(2), "big")
        self.data = (_FILLER * (size // len(_FILLER) + 1))[:size]
        self.hop_limit: int | None = None

    async def open(self, cfg: ICMPProbeConfig) -> None:
        proto = socket.IPPROTO_ICMPV6 if self.v6 else socket.IPPROTO_ICMP
        try:
            sock = socket.socket(self.family, socket.SOCK_DGRAM, proto)
            self.kind = "unprivileged"
        except PermissionError:
            try:
                sock = socket.socket(self.family, socket.SOCK_RAW, proto)
            except PermissionError as exc:
                raise ProbeFailure("icmp_socket_denied", f"no ping socket (net.ipv4.ping_group_range) and no raw "
                                   f"socket (CAP_NET_RAW): {exc.strerror}") from None
            self.kind = "raw"
            _only_replies(sock, self.v6)
        self.sock = sock
        sock.setblocking(False)
        if cfg.source_ip_address is not None:
            sock.bind((cfg.source_ip_address, 0))
        if self.v6:
            if cfg.ttl:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, cfg.ttl)
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVHOPLIMIT, 1)
            if cfg.dont_fragment:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_DONTFRAG, 1)
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO)
        else:
            if cfg.ttl:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, cfg.ttl)
            sock.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
            if cfg.dont_fragment:
                sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)

    def _request(self) -> bytes:
        kind = 128 if self.v6 else 8
        header = struct.pack("!BBHHH", kind, 0, 0, self.ident, self.seq)
        if self.v6:  # the kernel fills in the ICMPv6 checksum (it covers the pseudo-header)
            return header + self.data
        checksum = _checksum(header + self.data)
        return struct.pack("!BBHHH", kind, 0, checksum, self.ident, self.seq) + self.data

    async def exchange(self) -> None:
        sock = self.sock
        assert sock is not None
        loop = asyncio.get_running_loop()
        try:
            await _wait(loop, sock, loop.add_writer, loop.remove_writer, lambda: sock.sendto(self._request(), (self.ip, 0)))
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:
                raise ProbeFailure("icmp_message_too_big", f"{self.size}-byte echo with dont_fragment: {exc.strerror}") from None
            raise
        while True:
            await _wait(loop, sock, loop.add_reader, loop.remove_reader, None)
            # A raw socket sees the host's other ICMP traffic too: at most a batch per wake-up, so a flood
            # cannot hold the loop; the deadline bounds the whole wait.
            for _ in range(READ_BATCH):
                try:
                    packet, ancdata, _flags, sender = sock.recvmsg(MAX_PAYLOAD + 128, socket.CMSG_SPACE(4))
                except (BlockingIOError, InterruptedError):
                    break
                if self._matches(packet, sender[0], ancdata):
                    return

    def _matches(self, packet: bytes, sender: str, ancdata: list[tuple[int, int, bytes]]) -> bool:
        hop_limit = None
        if self.kind == "raw" and not self.v6:  # a raw IPv4 socket hands over the IP header too
            if len(packet) < 20:
                return False
            hop_limit = packet[8]
            packet = packet[(packet[0] & 0x0F) * 4:]
        if len(packet) < 8:
            return False
        kind, code, _, ident, seq = struct.unpack_from("!BBHHH", packet)
        if kind == (1 if self.v6 else 3) and self.kind == "raw":
            self._unreachable(packet, code, sender)
            return False
        if ipaddress.ip_address(sender) != ipaddress.ip_address(self.ip):
            return False
        if kind != (129 if self.v6 else 0) or code != 0 or seq != self.seq or packet[8:] != self.data:
            return False
        # A ping socket's kernel rewrites the identifier to its own (and only hands us its replies).
        if self.kind == "raw" and ident != self.ident:
            return False
        for level, kind_, value in ancdata:  # IP_TTL / IPV6_HOPLIMIT: a native int
            if (level, kind_) in ((socket.IPPROTO_IP, socket.IP_TTL), (socket.IPPROTO_IPV6, IPV6_HOPLIMIT)) and len(value) >= 4:
                (hop_limit,) = struct.unpack("=i", value[:4])
        self.hop_limit = hop_limit
        return True

    def _unreachable(self, packet: bytes, code: int, sender: str) -> None:
        """A destination-unreachable that quotes our request: fail now, as a connect would (raw sockets only)."""
        quoted = packet[8:]
        header = 40 if self.v6 else (quoted[0] & 0x0F) * 4 if quoted else 0
        if len(quoted) < header + 8:
            return
        kind, _, _, ident, seq = struct.unpack_from("!BBHHH", quoted, header)
        if (kind, ident, seq) == ((128 if self.v6 else 8), self.ident, self.seq):
            raise ProbeFailure("connect_unreachable", f"{sender} answered destination unreachable (code {code})")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


_BLACKBOX_PHASES = tuple((label_text((("phase", bb),)), ours) for bb, ours in (
    ("resolve", "dns"), ("setup", "setup"), ("rtt", "rtt")))
_DURATION = ProbeFamily("probe_icmp_duration_seconds", "Duration of icmp request by phase")
_HOP_LIMIT = ProbeFamily("probe_icmp_reply_hop_limit", "Replied packet hop limit (TTL for ipv4)")

register(ICMPProber())
