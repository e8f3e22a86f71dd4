"""Run inside an isolated network namespace by test_probe_guard.py: the "no packet sent" proof.

In the namespace, 169.254.169.254 (the cloud metadata address) is a real
address on ``lo`` with a real HTTP listener behind it, and an AF_PACKET
sniffer on ``lo`` counts every IPv4 packet to it. A control probe without the
guard reaches the listener (so the sniffer would see a leak); then every
encoding of the address, a name resolving to it and a redirect into it go
through a real in-process exporter's ``/probe`` with the default guard. Prints
one JSON object: what each probe failed with, and what the sniffer and the
listener saw.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import socket
import sys
import threading
from pathlib import Path

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.config import parse_config  # noqa: E402
from exporter.engine import run_probe  # noqa: E402
from exporter.server import Exporter, ServeOptions, build_app  # noqa: E402
from peers import DNSServer, HTTPServer  # noqa: E402

METADATA = "169.254.169.254"
_ETH_P_ALL = 0x0003


class Sniffer:
    """Counts IPv4 frames on ``lo`` whose destination is METADATA."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
        self.sock.bind(("lo", 0))
        self.sock.settimeout(0.05)
        self.packets = 0
        self._stop = threading.Event()
        self._target = ipaddress.IPv4Address(METADATA).packed
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame = self.sock.recv(65536)
            except TimeoutError:
                continue
            # lo frames carry a (zeroed) Ethernet header: ethertype at 12, IPv4 destination at 14 + 16.
            if frame[12:14] == b"\x08\x00" and frame[30:34] == self._target:
                self.packets += 1

    async def settle(self) -> int:
        """The count once it has stopped changing for 0.3 s (a closed connection's FIN exchange included)."""
        last, stable = -1, 0
        for _ in range(100):
            await asyncio.sleep(0.1)  # the loop runs on: the servers in it finish their side
            stable = stable + 1 if self.packets == last else 0
            last = self.packets
            if stable >= 3:
                break
        return self.packets

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


async def main() -> dict[str, object]:
    sniffer = Sniffer()
    metadata = await HTTPServer(host=METADATA).start()
    redirector = await HTTPServer().start()
    dns = await DNSServer({"meta.test": f"A:{METADATA}"}).start()
    port = metadata.port
    config = parse_config(f"""
modules:
  http_dns:
    prober: http
    resolver: {{nameservers: ["127.0.0.1:{dns.port}"]}}
  http_ip4:
    prober: http
    http: {{preferred_ip_protocol: ip4}}
""")
    out: dict[str, object] = {}
    try:
        # Control: the same address without the guard is reached, and seen.
        control = await run_probe(f"http://{METADATA}:{port}/", config.modules["http_2xx"], 5)
        out["control"] = {"success": control.success, "packets": await sniffer.settle(), "requests": len(metadata.requests)}
        sniffer.packets = 0
        metadata.requests.clear()

        exporter = Exporter(ServeOptions(), config)
        runner = web.AppRunner(build_app(exporter))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        cases = {
            "dotted": (f"http://{METADATA}:{port}/latest/meta-data/", "http_2xx"),
            "decimal": (f"http://2852039166:{port}/", "http_ip4"),
            "octal": (f"http://0251.0376.0251.0376:{port}/", "http_ip4"),
            "hex": (f"http://0xa9fea9fe:{port}/", "http_ip4"),
            "hex_dotted": (f"http://0xa9.0xfe.0xa9.0xfe:{port}/", "http_ip4"),
            "short": (f"http://169.254.43518:{port}/", "http_ip4"),
            "ipv4_mapped": (f"http://[::ffff:{METADATA}]:{port}/", "http_2xx"),
            "ipv4_mapped_hex": (f"http://[::ffff:a9fe:a9fe]:{port}/", "http_2xx"),
            "tcp": (f"{METADATA}:{port}", "tcp_connect"),
            "dns_name": (f"http://meta.test:{port}/", "http_dns"),
            "redirect": (redirector.url(f"/to-http?url=http://{METADATA}:{port}/latest/meta-data/"), "http_2xx"),
        }
        results: dict[str, object] = {}
        async with aiohttp.ClientSession() as session:
            for name, (target, module) in cases.items():
                params = {"target": target, "module": module, "debug": "true"}
                async with session.get(base + "/probe", params=params) as response:
                    text = await response.text()
                failed = re.search(r"FAILED in phase (\w+): (\w+): (.*)", text)
                results[name] = {
                    "packets": await sniffer.settle(),
                    "status": response.status,
                    "failure": [failed.group(1), failed.group(2)] if failed else None,
                    "message": failed.group(3) if failed else text[-500:],
                    "success_line": "probe_success 0" in text,
                }
        out["cases"] = results
        out["redirect_requests"] = [path for path, _ in redirector.requests]
        out["dns_queries"] = [q.name for q in dns.queries]
        out["packets"] = await sniffer.settle()
        out["requests"] = len(metadata.requests)
        await runner.cleanup()
    finally:
        await dns.stop()
        await redirector.stop()
        await metadata.stop()
        sniffer.close()
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main())))
