#!/usr/bin/env python3
"""Continuous mode's cost against blackbox_exporter's: CPU seconds per 1000 probes, same targets, same rate.

Starts (127.0.0.1 / 127.0.0.x only):
  * bench/_tcp_listener.py (pinned to CPU 1): ``--addresses`` × ``--per-address``
    accept-and-close listeners (default 10 × 100 = 1000 targets);
  * in turn, on CPU 0 (one core each, as in bench/probe_throughput.py):
      - ``connhealth serve`` probing every target itself every ``--interval``
        seconds (a file_sd target file, module tcp_connect), scraped on
        /metrics every ``--scrape-every`` seconds as Prometheus would;
      - ``prometheus-blackbox-exporter`` with the same module, driven the way a
        Prometheus with one scrape job per target drives it: one
        ``/probe?target=…&module=tcp_connect`` request per probe, each target
        once per ``--interval`` (start times spread over the interval), over
        ``--connections`` keep-alive connections, from this process (CPU 1).
After a warm-up of one interval, each exporter's CPU time (utime + stime from
/proc) is measured over ``--window`` seconds together with the probes it ran
in that time (connhealth: the delta of connhealth_probe_attempts_total; blackbox:
the /probe responses, every one checked for ``probe_success 1``). Reported:
CPU seconds per 1000 probes for each and the ratio (goal of issue 15: ≤ 0.5).
With ``--reps`` > 1 the exporters alternate (ABBA) and medians are reported.

Usage:
  .venv/bin/python bench/continuous_cost.py [--addresses 10] [--per-address 100] [--interval 5]
      [--window 60] [--reps 3] [--histograms per_target|per_group|none] [--connections 32]
  smoke (≈ 40 s): --per-address 20 --interval 2 --window 10 --reps 1
Needs prometheus-blackbox-exporter. Stops by itself after ≈ reps × 2 × (interval + window + 3) s.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import (  # noqa: E402
    BLACKBOX, CONNHEALTH, LOCALHOST, cpu_seconds, free_port, get, median, start, stop, stop_all, wait_port,
)
from bench.scale import start_listeners, sum_family  # noqa: E402

MODULE = """
modules:
  tcp_connect:
    prober: tcp
    timeout: 5s
    tcp:
      preferred_ip_protocol: ip4
"""

CONNHEALTH_EXTRA = """
target_files:
  - files: ["{targets_file}"]
    module: tcp_connect
    interval: {interval}s
    histograms: {histograms}
"""


def attempts(port: int) -> float:
    status, body = get(port, "/metrics")
    assert status == 200, status
    return sum_family(body, "connhealth_probe_attempts_total")


def run_connhealth(args: argparse.Namespace, tmp: Path) -> tuple[float, float]:
    """(CPU seconds, probes) over the window."""
    port = free_port()
    proc = start([CONNHEALTH, "serve", "--config.file", str(tmp / "connhealth.yml"), "--web.listen-address",
                  f"{LOCALHOST}:{port}", "--log.level", "warn"], tmp / "connhealth.log", cpus="0")
    try:
        wait_port(port, proc)
        time.sleep(args.interval + 1)  # warm-up: every target probed once
        a0, c0, t0 = attempts(port), cpu_seconds(proc.pid), time.monotonic()
        while time.monotonic() - t0 < args.window:
            time.sleep(min(args.scrape_every, max(0.0, args.window - (time.monotonic() - t0))))
            if time.monotonic() - t0 < args.window:
                attempts(port)  # a Prometheus scrape in between: part of continuous mode's cost
        c1 = cpu_seconds(proc.pid)
        a1 = attempts(port)
        return c1 - c0, a1 - a0
    finally:
        stop(proc)


async def _drive(port: int, targets: list[str], interval: float, window: float, connections: int) -> tuple[int, int]:
    """One /probe per target per interval for ``window`` seconds; (good, bad) responses."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str] = asyncio.Queue()
    good = bad = 0
    start_at = loop.time()
    end_at = start_at + window

    async def schedule() -> None:
        # Target i at start + i * interval / n, then every interval: Prometheus spreads its scrapes so.
        n = len(targets)
        k = 0
        while True:
            at = start_at + k * interval / n
            if at >= end_at:
                return
            delay = at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            queue.put_nowait(targets[k % n])
            k += 1

    async def worker() -> None:
        nonlocal good, bad
        reader, writer = await asyncio.open_connection(LOCALHOST, port)
        try:
            while True:
                target = await queue.get()
                query = urllib.parse.urlencode({"target": target, "module": "tcp_connect"})
                writer.write(f"GET /probe?{query} HTTP/1.1\r\nHost: {LOCALHOST}:{port}\r\n"
                             "X-Prometheus-Scrape-Timeout-Seconds: 5\r\n\r\n".encode())
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length:")))
                body = await reader.readexactly(length)
                if head.startswith(b"HTTP/1.1 200") and b"\nprobe_success 1\n" in body:
                    good += 1
                else:
                    bad += 1
                queue.task_done()
        finally:
            writer.close()

    workers = [asyncio.create_task(worker()) for _ in range(connections)]
    await schedule()
    await asyncio.wait_for(queue.join(), 30)
    for w in workers:
        w.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    return good, bad


def run_blackbox(args: argparse.Namespace, tmp: Path, targets: list[str]) -> tuple[float, float]:
    port = free_port()
    proc = start([BLACKBOX, f"--config.file={tmp / 'blackbox.yml'}", f"--web.listen-address={LOCALHOST}:{port}",
                  "--log.level=warn"], tmp / "blackbox.log", cpus="0")
    try:
        wait_port(port, proc)
        asyncio.run(_drive(port, targets, args.interval, args.interval, args.connections))  # warm-up
        c0 = cpu_seconds(proc.pid)
        good, bad = asyncio.run(_drive(port, targets, args.interval, args.window, args.connections))
        c1 = cpu_seconds(proc.pid)
        if bad:
            raise SystemExit(f"blackbox: {bad} of {good + bad} probes did not succeed")
        return c1 - c0, good
    finally:
        stop(proc)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--addresses", type=int, default=10)
    ap.add_argument("--per-address", type=int, default=100)
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between two probes of a target")
    ap.add_argument("--window", type=float, default=60.0, help="seconds measured per exporter and repetition")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--scrape-every", type=float, default=15.0, help="connhealth's /metrics scrapes in the window")
    ap.add_argument("--histograms", choices=("per_target", "per_group", "none"), default="per_target")
    ap.add_argument("--connections", type=int, default=32, help="keep-alive connections driving blackbox")
    ap.add_argument("--json", help="also write the raw results here")
    args = ap.parse_args()
    if not Path(BLACKBOX).exists():
        print(f"needs {BLACKBOX} (apt-get install prometheus-blackbox-exporter)", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {1})  # this script (the blackbox driver, the scrapes) stays off the exporters' core
    tmp = Path(tempfile.mkdtemp(prefix="connhealth-cost-"))
    n = args.addresses * args.per_address
    targets = start_listeners(args.addresses, args.per_address, tmp,
                              args.reps * 2 * (args.interval * 2 + args.window + 30) + 60, "1")
    if targets is None:
        return 1
    (tmp / "targets.json").write_text(json.dumps([{"targets": targets}]))
    (tmp / "blackbox.yml").write_text(MODULE)
    (tmp / "connhealth.yml").write_text(MODULE + CONNHEALTH_EXTRA.format(
        targets_file=tmp / "targets.json", interval=f"{args.interval:g}", histograms=args.histograms))
    print(f"# {datetime.datetime.now().isoformat(timespec='seconds')}  {n} tcp_connect targets every {args.interval:g} s "
          f"({n / args.interval:.0f} probes/s), window {args.window:g} s, connhealth histograms {args.histograms}, "
          f"exporters on CPU 0", flush=True)
    per_1000: dict[str, list[float]] = {"connhealth": [], "blackbox": []}
    for rep in range(args.reps):
        order = ["connhealth", "blackbox"] if rep % 2 == 0 else ["blackbox", "connhealth"]
        for name in order:
            cpu, probes = run_connhealth(args, tmp) if name == "connhealth" else run_blackbox(args, tmp, targets)
            per_1000[name].append(1000 * cpu / probes if probes else float("nan"))
            print(f"rep {rep + 1} {name:10s}: {probes:.0f} probes ({probes / args.window:.0f}/s), CPU {cpu:.2f} s, "
                  f"{per_1000[name][-1]:.3f} CPU s per 1000 probes", flush=True)
    ch, bb = median(per_1000["connhealth"]), median(per_1000["blackbox"])
    print()
    print("| exporter | CPU seconds per 1000 probes (median) |")
    print("|---|---|")
    print(f"| connhealth continuous ({args.histograms}) | {ch:.3f} |")
    print(f"| blackbox_exporter, one /probe per probe | {bb:.3f} |")
    print(f"| ratio connhealth / blackbox (goal ≤ 0.5) | {ch / bb:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"targets": n, "interval": args.interval, "window": args.window,
                                               "per_1000": per_1000, "ratio": ch / bb}, indent=2))
    stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
