"""A userspace relay between two TUN devices that drops chosen packets: loss without netem (the kernel here has none).

Topology (X chosen per instance so parallel users don't clash)::

    root ns  tun chtunXr 198.18.X.1 peer 198.18.X.2      test ns chsyn-<pid>-<n>
                  |                                          tun chtunXn 198.18.X.2 peer 198.18.X.1
                  +----- relay thread (this process) --------+   a TCP listener on 198.18.X.2:PORT

Both TUN devices are created here (IFF_TUN | IFF_NO_PI); one is then moved into
the namespace, its file descriptor still ours. A thread copies every IP packet
from one to the other, except those ``drop`` says to discard. With
``drop_first_syns=1`` the client's first SYN never arrives: Linux retransmits
it after its initial RTO (1 s), so connect takes about 1 s and TCP_INFO counts
one retransmit. With ``delay=d`` it is a delay line: every packet is held d
seconds in each direction, so the path's RTT is 2d (latency without netem).
``late_max`` is how much later than due the relay forwarded any packet (a
loaded machine); a test compares against the delay only when that is small.
``http=True`` makes the listener answer every request at once with a tiny HTTP
response (first byte one RTT after the request). ``process=True`` runs the
relay in a forked process at real-time priority (and the responder too), so
neither the machine's load nor the prober's own CPU (and GIL) holds packets
back; the counters and ``late_max`` live in shared memory, so they read the
same either way. Needs root and /dev/net/tun; traffic stays inside
198.18.0.0/15.
"""
from __future__ import annotations

import fcntl
import heapq
import mmap
import os
import re
import select
import shutil
import struct
import subprocess
import sys
import threading
import time

_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_CMD_TIMEOUT = 15.0
_counter = iter(range(1_000_000))


def _run(*args: str) -> str:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=_CMD_TIMEOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)!r} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def _tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TUN | _IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


def is_first_syn(packet: bytes) -> bool:
    """An IPv4 TCP segment with SYN set and ACK clear (a connection attempt)."""
    if len(packet) < 20 or packet[0] >> 4 != 4 or packet[9] != 6:
        return False
    ihl = (packet[0] & 0x0F) * 4
    if len(packet) < ihl + 14:
        return False
    flags = packet[ihl + 13]
    return bool(flags & 0x02) and not flags & 0x10


_STATS = struct.Struct("qqd")  # dropped, relayed, late_max

_ACCEPT_SERVER = """\
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(ADDRESS)
s.listen(1024); print('ready', flush=True)
while True:
    c, _ = s.accept(); c.close()
"""

# Answers each request as soon as its head is in: first byte = one RTT after the request.
_HTTP_SERVER = """\
import asyncio
async def answer(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\\r\\n\\r\\n")
            writer.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\nContent-Type: text/plain\\r\\n\\r\\nok")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()
async def main():
    server = await asyncio.start_server(answer, *ADDRESS, backlog=4096, reuse_address=True)
    print('ready', flush=True)
    await server.serve_forever()
asyncio.run(main())
"""


class TunRelay:
    """Start with ``with TunRelay(drop_first_syns=1) as net:``; connect to ``net.server_ip``:``net.port``."""

    def __init__(self, *, drop_first_syns: int = 0, delay: float = 0.0, http: bool = False, process: bool = False) -> None:
        self.drop_first_syns = drop_first_syns
        self.delay = delay
        self.http = http
        self.process = process
        # dropped, relayed, late_max: shared with a relay process (an anonymous mmap is MAP_SHARED).
        self._stats = mmap.mmap(-1, _STATS.size)
        self._child = 0
        self.ns = f"chsyn-{os.getpid()}-{next(_counter)}"
        self.octet: int | None = None
        self.port = 8080
        self._fds: list[int] = []
        self._stop_r, self._stop_w = -1, -1
        self._thread: threading.Thread | None = None
        self._server: subprocess.Popen[bytes] | None = None
        self._ns_created = False

    def _stat(self, i: int) -> float:
        return float(_STATS.unpack_from(self._stats)[i])

    def _set_stat(self, i: int, value: float) -> None:
        values = list(_STATS.unpack_from(self._stats))
        values[i] = value
        _STATS.pack_into(self._stats, 0, *values)

    dropped = property(lambda self: int(self._stat(0)), lambda self, v: self._set_stat(0, v))
    relayed = property(lambda self: int(self._stat(1)), lambda self, v: self._set_stat(1, v))
    late_max = property(lambda self: self._stat(2), lambda self, v: self._set_stat(2, v))

    @property
    def client_ip(self) -> str:
        return f"198.18.{self.octet}.1"

    @property
    def server_ip(self) -> str:
        return f"198.18.{self.octet}.2"

    def __enter__(self) -> TunRelay:
        try:
            self._setup()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _setup(self) -> None:
        _run("ip", "netns", "add", self.ns)
        self._ns_created = True
        used = {int(m) for m in re.findall(r"\b198\.1[89]\.(\d{1,3})\.", _run("ip", "-4", "-o", "addr", "show")
                                                   + _run("ip", "-4", "route", "show"))}
        start = (os.getpid() * 53 + 17) % 250
        for i in range(250):
            octet = (start + i) % 250 + 1
            if octet in used:
                continue
            try:
                root = _tun(f"chtun{octet}r")
            except OSError:
                continue  # taken by a parallel run
            self._fds.append(root)
            self.octet = octet
            break
        else:
            raise RuntimeError("no free 198.18.X.0/30 slot for the TUN relay")
        inner = _tun(f"chtun{self.octet}n")
        self._fds.append(inner)
        ns = ("ip", "netns", "exec", self.ns)
        _run("ip", "link", "set", f"chtun{self.octet}n", "netns", self.ns)
        _run("ip", "addr", "add", self.client_ip, "peer", self.server_ip, "dev", f"chtun{self.octet}r")
        _run("ip", "link", "set", f"chtun{self.octet}r", "up")
        _run(*ns, "ip", "link", "set", "lo", "up")
        _run(*ns, "ip", "addr", "add", self.server_ip, "peer", self.client_ip, "dev", f"chtun{self.octet}n")
        _run(*ns, "ip", "link", "set", f"chtun{self.octet}n", "up")
        self._stop_r, self._stop_w = os.pipe()
        if self.process:
            self._child = os.fork()
            if self._child == 0:  # pragma: no cover - the child only relays
                try:
                    # Real-time priority, as the responder's below.
                    try:
                        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
                    except (OSError, AttributeError):
                        pass
                    self._relay()
                finally:
                    os._exit(0)
        else:
            self._thread = threading.Thread(target=self._relay, name="tun-relay", daemon=True)
            self._thread.start()
        # A listener inside the namespace: connect completes with its SYN-ACK (no accept needed).
        code = _HTTP_SERVER if self.http else _ACCEPT_SERVER
        code = code.replace("ADDRESS", repr((self.server_ip, self.port)))
        # The relay process and the HTTP responder run at real-time priority: what they add to the
        # path is then the delay asked for, not the machine's load (they only ever wait in poll/epoll).
        realtime = ["chrt", "-f", "10"] if self.process and shutil.which("chrt") else []
        self._server = subprocess.Popen([*ns, *realtime, sys.executable, "-c", code], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE)
        assert self._server.stdout is not None
        ready, _, _ = select.select([self._server.stdout], [], [], _CMD_TIMEOUT)
        if not ready or self._server.stdout.readline().strip() != b"ready":
            raise RuntimeError("listener in the namespace did not start")

    def _relay(self) -> None:
        root, inner = self._fds
        peer = {root: inner, inner: root}
        held: list[tuple[float, int, int, bytes]] = []  # (due, sequence, to fd, packet)
        sequence = relayed = 0
        poller = select.poll()
        for fd in (root, inner, self._stop_r):
            poller.register(fd, select.POLLIN)
        while True:
            timeout = None
            if held:
                timeout = max(0.0, held[0][0] - time.monotonic()) * 1000
            for fd, _ in poller.poll(timeout):
                if fd == self._stop_r:
                    return
                try:
                    packet = os.read(fd, 65536)
                except OSError:
                    return
                if fd == root and self.dropped < self.drop_first_syns and is_first_syn(packet):
                    self.dropped += 1
                    continue
                relayed += 1
                sequence += 1
                heapq.heappush(held, (time.monotonic() + self.delay, sequence, peer[fd], packet))
            now = time.monotonic()
            late = 0.0
            while held and held[0][0] <= now:
                due, _, to, packet = heapq.heappop(held)
                late = max(late, now - due)
                try:
                    os.write(to, packet)
                except OSError:
                    pass  # the other side is going away
            dropped, _, late_max = _STATS.unpack_from(self._stats)
            _STATS.pack_into(self._stats, 0, dropped, relayed, max(late_max, late))

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.kill()
            self._server.wait(timeout=5)
            for stream in (self._server.stdout, self._server.stderr):
                if stream is not None:
                    stream.close()
            self._server = None
        if self._thread is not None:
            os.write(self._stop_w, b"x")
            self._thread.join(timeout=5)
            self._thread = None
        if self._child:
            os.write(self._stop_w, b"x")
            os.waitpid(self._child, 0)
            self._child = 0
        for fd in (*self._fds, self._stop_r, self._stop_w):
            if fd >= 0:
                os.close(fd)
        self._fds, self._stop_r, self._stop_w = [], -1, -1
        if self._ns_created:
            subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, timeout=_CMD_TIMEOUT)
            self._ns_created = False
        time.sleep(0)  # the TUN devices vanish with their last fd
