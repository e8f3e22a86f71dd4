"""A real forward proxy for the tests: Debian's tinyproxy on 127.0.0.1 (plain requests and CONNECT).

tinyproxy adds ``Via: 1.1 tinyproxy (...)`` to every request it forwards in
plain HTTP: a server seeing it knows the request came through the proxy. A
CONNECT tunnel is opaque, so ``connects()`` reads the proxy's own log.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

try:  # works whether or not tests/ becomes a package later
    from tests import procs
except ImportError:  # pragma: no cover
    import procs  # type: ignore[no-redef]


class TinyProxy(procs.ManagedProcess):
    """``tinyproxy -d`` on a free loopback port; ``basic_auth=(user, password)`` makes it require them."""

    def __init__(self, workdir: Path, *, basic_auth: tuple[str, str] | None = None,
                 connect_ports: tuple[int, ...] = ()) -> None:
        binary = procs.require_binary("tinyproxy", "tinyproxy-bin")
        self.conf = workdir / "tinyproxy.conf"
        self.basic_auth = basic_auth
        self.connect_ports = connect_ports

        def argv(port: int) -> list[str]:
            lines = [f"Port {port}", "Listen 127.0.0.1", "Timeout 15", "LogLevel Connect", "MaxClients 64",
                     "Allow 127.0.0.1"]
            if basic_auth:
                lines.append(f"BasicAuth {basic_auth[0]} {basic_auth[1]}")
            lines += [f"ConnectPort {p}" for p in connect_ports]  # none: CONNECT to any port
            self.conf.write_text("\n".join(lines) + "\n")
            return [binary, "-d", "-c", str(self.conf)]

        super().__init__("tinyproxy", argv, "/", workdir)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def wait_ready(self, timeout: float) -> None:
        """Ready when it accepts a connection (it answers a non-proxy request with 400)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise procs.ProcessFailed(f"tinyproxy exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            if time.monotonic() > deadline:
                raise procs.ProcessFailed(f"tinyproxy not listening after {timeout:g}s:\n{self.log_tail()}")
            await asyncio.sleep(0.05)

    def connects(self) -> list[str]:
        """The CONNECT targets the proxy was asked for, from its log ("host:port")."""
        out = []
        for line in self.log().splitlines():
            # CONNECT   Nov 30 18:41:08.153 [15070]: Request (file descriptor 6): CONNECT 127.0.0.1:443 HTTP/1.1
            if "Request (file descriptor" in line and "): CONNECT " in line:
                out.append(line.split("): CONNECT ", 1)[1].split(" ", 1)[0])
        return out
