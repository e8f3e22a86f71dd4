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
the /probe responses, every one checked for ``probe_success 1``). connhealth's
window holds exactly window // scrape_every /metrics scrapes (the last at its end
when it divides evenly). Reported: CPU seconds per 1000 probes for each and the
ratio (goal of issue 15: ≤ 0.5); next to it, the CPU time of CPU 0's kernel
workers (kworker/0:*) in the same window: kernel work an exporter causes outside
its own process (shown, not in the ratio: other processes on CPU 0 add to it).
With ``--reps`` > 1 the exporters alternate (ABBA) and medians are reported.
``--baseline DIR`` also measures another checkout's connhealth in the same run.

Usage:
  .venv/bin/python bench/continuous_cost.py [--addresses 10] [--per-address 100] [--interval 5]
      [--window 60] [--reps 3] [--scrape-every 15] [--histograms per_target|per_group|none]
      [--connections 32] [--baseline DIR]
  smoke (≈ 1 min): --per-address 20 --interval 2 --window 15 --reps 1
Needs prometheus-blackbox-exporter. Stops by itself after ≈ reps × exporters × (interval + window + 3) s.
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
    BLACKBOX, CLK_TCK, CONNHEALTH, LOCALHOST, PYTHON, cpu_seconds, free_port, get, median, start, stop, stop_all, wait_port,
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


def kworker_seconds(cpu: int) -> float:
    """CPU seconds of the kernel's per-CPU workers of ``cpu`` (kworker/<cpu>:*) so far: work an exporter
    pinned there makes the kernel do outside its own process (e.g. switching the global receive-timestamp
    key on and off for every socket that enables SO_TIMESTAMPNS when no other socket has it on)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if f"(kworker/{cpu}:" in text:
            fields = text.rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def connhealth_argv(tree: str | None) -> list[str]:
    """The connhealth command: this checkout's, or (``--baseline``) the exporter/ of another tree."""
    if tree is None:
        return [CONNHEALTH]
    return [PYTHON, "-c", f"import sys; sys.path.insert(0, {str(Path(tree).resolve())!r}); "
                          "from exporter.cli import main; sys.exit(main(sys.argv[1:]))"]


def run_connhealth(args: argparse.Namespace, tmp: Path, tree: str | None = None) -> tuple[float, float, float]:
    """(CPU seconds, CPU 0's kernel-worker seconds, probes) over the window.

    The window holds exactly window // scrape_every scrapes, at scrape_every, 2 × scrape_every, ...
    (the last one at the window's end when it divides evenly), as a Prometheus scraping every
    scrape_every seconds would: each one is part of continuous mode's cost.
    """
    port = free_port()
    proc = start([*connhealth_argv(tree), "serve", "--config.file", str(tmp / "connhealth.yml"),
                  "--web.listen-address", f"{LOCALHOST}:{port}", "--log.level", "warn"], tmp / "connhealth.log", cpus="0")
    try:
        wait_port(port, proc)
        time.sleep(args.interval + 1)  # warm-up: every target probed once
        a0, c0, k0, t0 = attempts(port), cpu_seconds(proc.pid), kworker_seconds(0), time.monotonic()
        scrapes = int(args.window / args.scrape_every + 1e-9)
        a1 = None
        for k in range(1, scrapes + 1):
            time.sleep(max(0.0, t0 + k * args.scrape_every - time.monotonic()))
            a1 = attempts(port)
        if scrapes * args.scrape_every < args.window - 1e-9:
            time.sleep(max(0.0, t0 + args.window - time.monotonic()))
            a1 = None
        c1, k1 = cpu_seconds(proc.pid), kworker_seconds(0)
        if a1 is None:
            a1 = attempts(port)  # after the window: not counted
        return c1 - c0, k1 - k0, a1 - a0
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


def run_blackbox(args: argparse.Namespace, tmp: Path, targets: list[str]) -> tuple[float, float, float]:
    port = free_port()
    proc = start([BLACKBOX, f"--config.file={tmp / 'blackbox.yml'}", f"--web.listen-address={LOCALHOST}:{port}",
                  "--log.level=warn"], tmp / "blackbox.log", cpus="0")
    try:
        wait_port(port, proc)
        asyncio.run(_drive(port, targets, args.interval, args.interval, args.connections))  # warm-up
        c0, k0 = cpu_seconds(proc.pid), kworker_seconds(0)
        good, bad = asyncio.run(_drive(port, targets, args.interval, args.window, args.connections))
        c1, k1 = cpu_seconds(proc.pid), kworker_seconds(0)
        if bad:
            raise SystemExit(f"blackbox: {bad} of {good + bad} probes did not succeed")
        return c1 - c0, k1 - k0, good
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
    ap.add_argument("--baseline", metavar="DIR", help="also measure the connhealth of another checkout (its exporter/ "
                    "is imported from DIR, e.g. `git archive <commit> exporter | tar -x -C DIR`), in the same run")
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
    names = ["connhealth", *(["baseline"] if args.baseline else []), "blackbox"]
    per_1000: dict[str, list[float]] = {name: [] for name in names}  # the exporter's process
    kernel_1000: dict[str, list[float]] = {name: [] for name in names}  # CPU 0's kernel workers meanwhile
    for rep in range(args.reps):
        for name in names if rep % 2 == 0 else names[::-1]:  # ABBA
            if name == "blackbox":
                cpu, kworkers, probes = run_blackbox(args, tmp, targets)
            else:
                cpu, kworkers, probes = run_connhealth(args, tmp, args.baseline if name == "baseline" else None)
            per_1000[name].append(1000 * cpu / probes if probes else float("nan"))
            kernel_1000[name].append(1000 * kworkers / probes if probes else float("nan"))
            planned = n * args.window / args.interval
            behind = f" (only {100 * probes / planned:.0f} % of the planned {planned:.0f}: CPU 0 busy?)" \
                if probes < 0.95 * planned else ""
            print(f"rep {rep + 1} {name:10s}: {probes:.0f} probes ({probes / args.window:.0f}/s){behind}, CPU {cpu:.2f} s "
                  f"+ kernel workers {kworkers:.2f} s, {per_1000[name][-1]:.3f} + {kernel_1000[name][-1]:.3f} "
                  "CPU s per 1000 probes", flush=True)
    labels = {"connhealth": f"connhealth continuous ({args.histograms})",
              "baseline": f"connhealth continuous ({args.histograms}), {args.baseline}",
              "blackbox": "blackbox_exporter, one /probe per probe"}
    med = {name: median(per_1000[name]) for name in names}
    kmed = {name: median(kernel_1000[name]) for name in names}
    print()
    print("| exporter | CPU s per 1000 probes: process | + CPU 0's kernel workers | ratio to blackbox (process; goal ≤ 0.5) |")
    print("|---|---|---|---|")
    for name in names:
        print(f"| {labels[name]} | {med[name]:.3f} | {kmed[name]:.3f} | {med[name] / med['blackbox']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"targets": n, "interval": args.interval, "window": args.window,
                                               "scrape_every": args.scrape_every, "per_1000": per_1000,
                                               "kernel_workers_per_1000": kernel_1000,
                                               "ratio": med["connhealth"] / med["blackbox"]}, indent=2))
    stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
