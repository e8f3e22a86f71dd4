#!/usr/bin/env python3
"""The dns, icmp and grpc probers next to blackbox_exporter: median /probe wall time and probe_duration_seconds.

Starts (127.0.0.1 only): the tests' DNS server (in this process's loop, so its
answers share the loop with the HTTP client: the dns_udp rows carry that
contention for both exporters alike), grpcio's health server, and both
exporters with the same four modules; 50 /probe requests per module and
exporter, each must succeed. Usage: ``.venv/bin/python bench/probers_side_by_side.py``
(about 10 s; needs root for icmp).
"""
from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]
import procs  # noqa: E402
from grpcpeer import HealthServer  # noqa: E402
from peers import DNSServer  # noqa: E402

CFG = """modules:
  dns_udp: {prober: dns, timeout: 3s, dns: {preferred_ip_protocol: ip4, query_name: www.example.test, query_type: A}}
  dns_tcp: {prober: dns, timeout: 3s, dns: {transport_protocol: tcp, preferred_ip_protocol: ip4, query_name: www.example.test, query_type: A}}
  icmp: {prober: icmp, timeout: 3s, icmp: {preferred_ip_protocol: ip4}}
  grpc: {prober: grpc, timeout: 3s, grpc: {preferred_ip_protocol: ip4}}
"""


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        await compare(Path(tmp))


async def compare(work: Path) -> None:
    cfg = work / "blackbox.yml"
    cfg.write_text(CFG)
    async with DNSServer({"www.example.test": "A:192.0.2.10"}) as dns:
        with HealthServer() as g:
            bb = await procs.start_blackbox(cfg, work)
            ch = await procs.start_connhealth(cfg, work)
            try:
                for module, target in (("dns_udp", f"127.0.0.1:{dns.port}"), ("dns_tcp", f"127.0.0.1:{dns.port}"),
                                       ("icmp", "127.0.0.1"), ("grpc", f"127.0.0.1:{g.port}")):
                    row = [module]
                    for p in (bb, ch):
                        walls, durs = [], []
                        for _ in range(50):
                            t = time.perf_counter()
                            _, text, _ = await procs.get_text(p.base_url + "/probe", params={"target": target, "module": module})
                            walls.append(time.perf_counter() - t)
                            durs.append(procs.samples(text, "probe_duration_seconds")[0][1])
                            assert procs.samples(text, "probe_success")[0][1] == 1.0, text
                        row.append(f"{p.name}: wall {statistics.median(walls)*1e3:.2f} ms, probe_duration {statistics.median(durs)*1e3:.3f} ms")
                    print(" | ".join(row))
            finally:
                await ch.astop()
                await bb.astop()
if __name__ == "__main__":
    asyncio.run(main())
