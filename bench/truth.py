#!/usr/bin/env python3
"""Truth under load: connect and first-byte error against the wire, connhealth vs blackbox_exporter.

Sets up a TUN delay line (tests/tunrelay.py: two TUN devices, one in a test
network namespace, a relay *process* holding every packet ``--rtt``/2 in each
direction; addresses in 198.18.0.0/15 only) with a tiny HTTP server in the
namespace that answers each request as soon as its head is in. Then, for each
concurrency level and each exporter (one core each, ``taskset``), keeps that
many ``/probe?module=http_2xx`` requests in flight for ``--duration`` seconds
and collects each probe's reported figures from the same blackbox names:

  connect     probe_http_duration_seconds{phase="connect"}
  first byte  probe_http_duration_seconds{phase="processing"} (request written +
              server processing: GotConn -> first response byte, in both)

Truth is the set RTT as the wire delivered it: a low-rate observer process
(one fresh connection every 50 ms, blocking sockets, no load of its own) reads
the kernel's handshake RTT (TCP_INFO) for connect and times request -> first
response byte with the kernel receive timestamp (SO_TIMESTAMPNS); the truth of
a level is the observer's median during that level. Reported: p50 / p99 of
(reported - truth) per exporter, plus connhealth's own delay
(connhealth_probe_self_delay_seconds, /metrics) and how late the relay was.

Usage (root, /dev/net/tun, prometheus-blackbox-exporter):
  .venv/bin/python bench/truth.py [--levels 1,50,200,500] [--duration 10] [--rtt 20ms]
  .venv/bin/python bench/truth.py --smoke     # levels 1,50 for 3 s each: a check that it works
Stops by itself: about levels x 2 x (duration + 3) s plus set-up.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import multiprocessing
import re
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import BLACKBOX, LOCALHOST, connhealth_argv, free_port, get, start, stop, stop_all, wait_port  # noqa: E402
from exporter.net.connection import tcp_info_of  # noqa: E402
from tests.tunrelay import TunRelay  # noqa: E402

CONFIG = """\
modules:
  http_2xx:
    prober: http
    timeout: 10s
    http:
      preferred_ip_protocol: ip4
"""
_PHASE = re.compile(rb'^probe_http_duration_seconds\{phase="(connect|processing)"\} (\S+)$', re.M)
_SUCCESS = re.compile(rb"^probe_success 1$", re.M)
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


def _observer(ip: str, port: int, stop_at: float, out: multiprocessing.Queue) -> None:
    """One blocking HTTP exchange every 50 ms: (kernel connect RTT, request -> first byte by the kernel's stamp)."""
    request = f"GET / HTTP/1.1\r\nHost: {ip}\r\nConnection: close\r\n\r\n".encode()
    while time.time() < stop_at:
        try:
            with socket.create_connection((ip, port), timeout=5) as s:
                info = tcp_info_of(s)
                s.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
                sent = time.time_ns()
                s.sendall(request)
                _, anc, _, _ = s.recvmsg(4096, socket.CMSG_SPACE(16))
                if info is not None and not info.retransmits and anc:
                    sec, nsec = struct.unpack_from("@ll", anc[0][2])
                    out.put((time.time(), info.rtt_seconds, (sec * 1_000_000_000 + nsec - sent) / 1e9))
        except OSError:
            pass
        time.sleep(0.05)


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def _drive(port: int, target: str, concurrency: int, duration: float) -> tuple[list[float], list[float], int]:
    """Keep ``concurrency`` /probe requests in flight: (connect figures, first-byte figures, failed probes)."""
    connects: list[float] = []
    firsts: list[float] = []
    failed = 0
    url = f"http://{LOCALHOST}:{port}/probe"
    params = {"target": target, "module": "http_2xx"}
    end = time.monotonic() + duration
    connector = aiohttp.TCPConnector(limit=concurrency + 8)
    timeout = aiohttp.ClientTimeout(total=15)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     headers={"X-Prometheus-Scrape-Timeout-Seconds": "10"}) as session:
        async def worker() -> None:
            nonlocal failed
            while time.monotonic() < end:
                try:
                    async with session.get(url, params=params) as response:
                        body = await response.read()
                except (aiohttp.ClientError, TimeoutError):
                    failed += 1
                    continue
                if not _SUCCESS.search(body):
                    failed += 1
                    continue
                figures = {m.group(1): float(m.group(2)) for m in _PHASE.finditer(body)}
                connects.append(figures[b"connect"])
                firsts.append(figures[b"processing"])

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return connects, firsts, failed


def _self_delay(port: int) -> tuple[float, float]:
    """(sum, count) of connhealth_probe_self_delay_seconds{mode="probe_endpoint"}."""
    _, body = get(port, "/metrics")
    total = count = 0.0
    for line in body.decode().splitlines():
        if line.startswith('connhealth_probe_self_delay_seconds_sum{mode="probe_endpoint"}'):
            total = float(line.split()[-1])
        elif line.startswith('connhealth_probe_self_delay_seconds_count{mode="probe_endpoint"}'):
            count = float(line.split()[-1])
    return total, count


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", default="1,50,200,500", help="concurrent probes, comma-separated")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per level and exporter")
    ap.add_argument("--rtt", default="20ms", help="the RTT the delay line sets (ms)")
    ap.add_argument("--smoke", action="store_true", help="levels 1,50 for 3 s each")
    ap.add_argument("--cpus", default="0,1", help="CPU for connhealth, CPU for blackbox (taskset)")
    args = ap.parse_args()
    if args.smoke:
        args.levels, args.duration = "1,50", 3.0
    levels = [int(x) for x in args.levels.split(",")]
    rtt = float(args.rtt.removesuffix("ms")) / 1000
    if not all(1 <= n <= 5000 for n in levels) or not 0.001 <= rtt <= 1.0 or not 1 <= args.duration <= 600:
        ap.error("levels 1..5000, rtt 1..1000 ms, duration 1..600 s")
    cpu_ch, cpu_bb = args.cpus.split(",")

    tmp = Path(tempfile.mkdtemp(prefix="connhealth-truth-"))
    (tmp / "blackbox.yml").write_text(CONFIG)
    print(f"# {datetime.datetime.now().isoformat(timespec='seconds')}  bench/truth.py  rtt {rtt * 1000:g} ms, "
          f"levels {levels}, {args.duration:g} s each, exporters on CPUs {cpu_ch} (connhealth) / {cpu_bb} (blackbox)")
    rows = []
    with TunRelay(delay=rtt / 2, http=True, process=True) as net:
        target = f"http://{net.server_ip}:{net.port}/"
        ch_port, bb_port = free_port(), free_port()
        exporters = {
            "connhealth": (start([*connhealth_argv(), "serve", "--config.file", str(tmp / "blackbox.yml"),
                                  "--web.listen-address", f"{LOCALHOST}:{ch_port}", "--log.level", "warn",
                                  "--probe.concurrency", "10000"], tmp / "connhealth.log", cpu_ch), ch_port),
            "blackbox": (start([BLACKBOX, f"--config.file={tmp / 'blackbox.yml'}",
                                f"--web.listen-address={LOCALHOST}:{bb_port}"], tmp / "blackbox.log", cpu_bb), bb_port),
        }
        try:
            for proc, port in exporters.values():
                wait_port(port, proc)
            for level in levels:
                for name, (_, port) in exporters.items():
                    before = _self_delay(port) if name == "connhealth" else (0.0, 0.0)
                    truth: multiprocessing.Queue = multiprocessing.get_context("fork").Queue()
                    observer = multiprocessing.get_context("fork").Process(
                        target=_observer, args=(net.server_ip, net.port, time.time() + args.duration, truth), daemon=True)
                    net.late_max = 0.0
                    observer.start()
                    connects, firsts, failed = asyncio.run(_drive(port, target, level, args.duration))
                    observer.join(15)
                    seen = []
                    while not truth.empty():
                        seen.append(truth.get())
                    true_connect = _quantile([s[1] for s in seen], 0.5)
                    true_first = _quantile([s[2] for s in seen], 0.5)
                    after = _self_delay(port) if name == "connhealth" else (0.0, 0.0)
                    delay = ((after[0] - before[0]) / (after[1] - before[1])) if after[1] > before[1] else float("nan")
                    rows.append((level, name, len(connects), failed, len(seen), true_connect, true_first,
                                 [c - true_connect for c in connects], [f - true_first for f in firsts], delay, net.late_max))
                    print(f"  level {level:>4} {name:<10} probes {len(connects):>6} failed {failed}  observer {len(seen)} "
                          f"(connect {true_connect * 1000:.2f} ms, first byte {true_first * 1000:.2f} ms)  "
                          f"relay late ≤ {net.late_max * 1000:.1f} ms", flush=True)
        finally:
            for proc, _ in exporters.values():
                stop(proc)
    print()
    print("| concurrent | exporter | probes | truth connect / first byte (ms) | connect error p50 / p99 (ms) "
          "| first-byte error p50 / p99 (ms) | self delay mean (ms) | relay late max (ms) |")
    print("|---|---|---|---|---|---|---|---|")
    for level, name, n, failed, _, tc, tf, ce, fe, delay, late in rows:
        self_delay = f"{delay * 1000:.2f}" if name == "connhealth" and delay == delay else "—"
        print(f"| {level} | {name} | {n}{f' ({failed} failed)' if failed else ''} | {tc * 1000:.2f} / {tf * 1000:.2f} "
              f"| {_quantile(ce, 0.5) * 1000:+.2f} / {_quantile(ce, 0.99) * 1000:+.2f} "
              f"| {_quantile(fe, 0.5) * 1000:+.2f} / {_quantile(fe, 0.99) * 1000:+.2f} | {self_delay} | {late * 1000:.1f} |")
    stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
