#!/usr/bin/env python3
"""10k (or 100k) continuous targets in one ``connhealth serve`` process.

Starts (127.0.0.1 / 127.0.0.x only):
  * bench/_tcp_listener.py in its own process(es) (one per 20k sockets, the fd limit): ``--addresses`` × ``--per-address``
    listening sockets on 127.0.0.1 … 127.0.0.N (default 100 × 100 = 10 000
    distinct ``host:port`` targets), accept-and-close;
  * ``connhealth serve`` with a file_sd target file listing them all, labelled
    ``service: s0`` … ``s<--services - 1>`` in turn, module tcp_connect (ip4, 5 s
    timeout), interval ``--interval`` (default 30 s), histograms ``--histograms``
    (default per_target), default scheduler (concurrency 256).
After a warm-up longer than one interval, it scrapes ``/metrics`` every
``--scrape-every`` seconds for ``--window`` seconds (like Prometheus would),
timing each scrape (wall time until the full body is read), and reports:
  * scheduler lag p99 from the ``connhealth_scheduler_lag_seconds`` bucket
    deltas between the first and last scrape of the window (the bucket that
    holds the 99th percentile, and histogram_quantile-style interpolation);
    the same for ``connhealth_event_loop_lag_seconds``;
  * the median / max scrape time and body size, and the CPU time of connhealth's
    event-loop thread during each scrape (the scrape and the probes meanwhile);
  * probe attempts / successes in the window (all must succeed), and attempts
    against the probes the interval schedules in the window (executed/scheduled);
  * process RSS and CPU% over the window.

Usage:
  .venv/bin/python bench/scale.py [--per-address 100] [--addresses 100]
      [--interval 30] [--warmup 40] [--window 90] [--scrape-every 15] [--pin split|none]
      [--histograms per_target|per_group|none] [--services 10] [--as-prometheus]
  100k targets at 60 s (issue 15):
  .venv/bin/python bench/scale.py --addresses 250 --per-address 400 --interval 60 --warmup 75 --window 120 \
      --scrape-every 30 [--histograms per_group]
Stops by itself after ≈ warmup + window + start-up seconds.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import (  # noqa: E402
    CONNHEALTH, LOCALHOST, PYTHON, connhealth_argv, connhealth_env, cpu_seconds, free_port, get, median, rss_mib, start, stop_all, wait_port,
)

CONFIG = """
modules:
  tcp_connect:
    prober: tcp
    timeout: 5s
    tcp:
      preferred_ip_protocol: ip4
scheduler:
  default_interval: {interval}s
target_files:
  - files: ["{targets_file}"]
    module: tcp_connect
    interval: {interval}s
    histograms: {histograms}
"""


# What Prometheus 2.42 (the one installed here) sends with a scrape: OpenMetrics preferred, gzip accepted
# (--compressed: curl decodes a gzip body, if the exporter sent one).
PROMETHEUS_HEADERS = ("-H", "Accept: application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
                      "text/plain;version=0.0.4;q=0.5,*/*;q=0.1", "-H", "Accept-Encoding: gzip", "--compressed")


def thread_cpu_seconds(pid: int) -> float:
    """CPU time of the process' main thread (the event loop's), from /proc/<pid>/schedstat (nanoseconds)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9


def parse_histogram(body: bytes, name: str) -> dict[str, float]:
    """{le: cumulative count} for an unlabelled histogram, plus '_count'."""
    out: dict[str, float] = {}
    prefix = f"{name}_bucket{{le=\"".encode()
    count_prefix = f"{name}_count ".encode()
    for line in body.split(b"\n"):
        if line.startswith(prefix):
            le, _, value = line[len(prefix):].partition(b'"}')
            out[le.decode()] = float(value)
        elif line.startswith(count_prefix):
            out["_count"] = float(line[len(count_prefix):])
    return out


def sum_family(body: bytes, name: str) -> float:
    prefix = (name + "{").encode()
    total = 0.0
    for line in body.split(b"\n"):
        if line.startswith(prefix):
            total += float(line.rsplit(b" ", 1)[1])
    return total


def quantile(delta: dict[str, float], q: float) -> tuple[float, str]:
    """histogram_quantile-style estimate and the bucket (lower, upper] that holds it."""
    buckets = sorted(((float(le), c) for le, c in delta.items() if le != "_count"), key=lambda x: x[0])
    total = buckets[-1][1] if buckets else 0
    if total <= 0:
        return float("nan"), "no observations"
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            if le == float("inf"):
                return prev_le, f"({prev_le:g}, +Inf]"
            est = prev_le + (le - prev_le) * ((rank - prev_c) / (c - prev_c) if c > prev_c else 0)
            return est, f"({prev_le:g}, {le:g}]"
        prev_le, prev_c = le, c
    return float("nan"), "?"


def start_listeners(addresses: int, per_address: int, tmp: Path, lifetime: float, cpus: str | None) -> list[str] | None:
    """bench/_tcp_listener.py processes for ``addresses`` × ``per_address`` targets, as many as the hard fd limit
    asks for (20 000 here: 100k targets take 6); their ``host:port`` list, or None (logged) if one failed."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    per_process = max(1, (hard - 256) // per_address)
    outs = []
    for first in range(1, addresses + 1, per_process):
        n, out = min(per_process, addresses + 1 - first), tmp / f"targets.{first}.json"
        log = tmp / f"listener.{first}.log"
        proc = start([PYTHON, str(Path(__file__).with_name("_tcp_listener.py")), "--first-address", str(first),
                      "--addresses", str(n), "--per-address", str(per_address), "--out", str(out),
                      "--lifetime", f"{lifetime:g}"], log, cpus=cpus)
        outs.append((proc, out, log))
    deadline = time.monotonic() + 120
    targets: list[str] = []
    for proc, out, log in outs:
        while not out.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                print(log.read_text(), file=sys.stderr)
                return None
            time.sleep(0.1)
        targets += json.loads(out.read_text())
    return targets


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--addresses", type=int, default=100)
    ap.add_argument("--per-address", type=int, default=100)
    ap.add_argument("--interval", type=float, default=30.0)
    ap.add_argument("--warmup", type=float, default=40.0, help="seconds after all targets are loaded (> interval)")
    ap.add_argument("--window", type=float, default=90.0)
    ap.add_argument("--scrape-every", type=float, default=15.0)
    ap.add_argument("--histograms", choices=("per_target", "per_group", "none"), default="per_target",
                    help="the target group's histograms mode (docs/metrics.md); per_group sums by service")
    ap.add_argument("--services", type=int, default=10, help="targets are labelled service=s0..s<N-1> in turn")
    ap.add_argument("--pin", choices=("split", "none"), default="split",
                    help="split: connhealth on CPU 0, the listener on CPU 1 (default); none: no pinning")
    ap.add_argument("--uvloop", metavar="DIR", help="experiment: run connhealth on uvloop, importable from DIR "
                    "(pip install --target DIR uvloop); exporter/ is not modified")
    ap.add_argument("--as-prometheus", action="store_true",
                    help="scrape with the headers Prometheus 2.42 sends (Accept: OpenMetrics first, Accept-Encoding: gzip) "
                    "instead of curl's (text format, no compression)")
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--profile", help="record connhealth with py-spy during the window (collapsed stacks to this file)")
    args = ap.parse_args()
    n_targets = args.addresses * args.per_address
    exp_cpus = "0" if args.pin == "split" else None
    load_cpus = "1" if args.pin == "split" else None
    if args.pin == "split":
        os.sched_setaffinity(0, {1})  # this script (and its curl scrapes) stay off connhealth's core

    tmp = Path(tempfile.mkdtemp(prefix="connhealth-scale-"))
    targets = start_listeners(args.addresses, args.per_address, tmp, args.warmup + args.window + 300, load_cpus)
    if targets is None:
        return 1
    targets_file = tmp / "targets.json"
    services = max(args.services, 1)
    targets_file.write_text(json.dumps([{"targets": targets[i::services], "labels": {"bench": "scale", "service": f"s{i}"}}
                                        for i in range(services)]))
    (tmp / "connhealth.yml").write_text(CONFIG.format(interval=f"{args.interval:g}", targets_file=targets_file,
                                                      histograms=args.histograms))

    port = free_port()
    proc = start([*connhealth_argv(args.uvloop), "serve", "--config.file", str(tmp / "connhealth.yml"),
                  "--web.listen-address", f"{LOCALHOST}:{port}", "--log.level", "warn"], tmp / "connhealth.log", cpus=exp_cpus,
                 env=connhealth_env(args.uvloop))
    wait_port(port, proc)
    t_start = time.monotonic()
    print(f"# {datetime.datetime.now().isoformat(timespec='seconds')}  {n_targets} tcp_connect targets, interval "
          f"{args.interval:g}s, histograms {args.histograms}, pin={args.pin}{', uvloop' if args.uvloop else ''}, connhealth pid {proc.pid} on :{port}", flush=True)
    # Wait until the target file is loaded.
    while True:
        _, body = get(port, "/metrics")
        loaded = [line for line in body.split(b"\n") if line.startswith(b"connhealth_scheduled_targets ")]
        if loaded and float(loaded[0].split()[1]) >= n_targets:
            break
        if time.monotonic() - t_start > 60 + n_targets / 1000:
            print(f"targets not loaded after {60 + n_targets / 1000:g} s", file=sys.stderr)
            return 1
        time.sleep(1)
    print(f"# targets loaded after {time.monotonic() - t_start:.1f}s; warming up {args.warmup:g}s", flush=True)
    time.sleep(args.warmup)

    spy = None
    if args.profile:
        spy = subprocess.Popen([str(Path(CONNHEALTH).with_name("py-spy")), "record", "--pid", str(proc.pid), "--rate", "100",
                                "--duration", f"{args.window + 5:g}", "--format", "raw", "-o", args.profile],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    scrapes: list[dict] = []
    bodies: list[tuple[float, bytes]] = []
    cpu0 = cpu_seconds(proc.pid)
    w0 = time.monotonic()
    next_at = w0
    while True:
        now = time.monotonic()
        if now < next_at:
            time.sleep(next_at - now)
        t0 = time.monotonic()
        # curl (C) reads the body: the wall time is the server's, not a Python client's.
        dump = tmp / "scrape.txt"
        cpu_before = thread_cpu_seconds(proc.pid)
        out = subprocess.run(["curl", "-sS", "--max-time", "60", "-o", str(dump), "-w", "%{http_code} %{time_total} %{size_download}",
                              *(PROMETHEUS_HEADERS if args.as_prometheus else ()),
                              f"http://{LOCALHOST}:{port}/metrics"], capture_output=True, text=True, timeout=90).stdout
        cpu = thread_cpu_seconds(proc.pid) - cpu_before
        status_text, dt_text, size_text = out.split()
        assert status_text == "200", out
        dt = float(dt_text)
        body = dump.read_bytes()
        scrapes.append({"seconds": dt, "bytes": len(body), "wire_bytes": int(size_text), "at": t0 - w0, "cpu_seconds": cpu})
        print(f"scrape at +{t0 - w0:5.1f}s: {dt:.3f} s, {len(body) / 1e6:.1f} MB ({int(size_text) / 1e6:.1f} MB on the wire), "
              f"connhealth's event-loop thread on CPU {cpu:.3f} s meanwhile", flush=True)
        bodies = [bodies[0], (t0, body)] if bodies else [(t0, body)]
        next_at += args.scrape_every
        if next_at - w0 > args.window + 1e-6:
            break
    cpu1 = cpu_seconds(proc.pid)
    w1 = time.monotonic()
    rss = rss_mib(proc.pid)

    first, last = bodies[0][1], bodies[-1][1]
    report: dict = {"targets": n_targets, "interval": args.interval, "window_seconds": w1 - w0, "pin": args.pin,
                    "histograms": args.histograms}
    for hist in ("connhealth_scheduler_lag_seconds", "connhealth_event_loop_lag_seconds"):
        h0, h1 = parse_histogram(first, hist), parse_histogram(last, hist)
        delta = {le: h1[le] - h0.get(le, 0.0) for le in h1}
        p99, bucket = quantile(delta, 0.99)
        p50, _ = quantile(delta, 0.50)
        report[hist] = {"observations": delta.get("_count", 0), "p50": p50, "p99": p99, "p99_bucket": bucket,
                        "buckets_delta": delta}
    attempts = sum_family(last, "connhealth_probe_attempts_total") - sum_family(first, "connhealth_probe_attempts_total")
    successes = sum_family(last, "connhealth_probe_successes_total") - sum_family(first, "connhealth_probe_successes_total")
    skipped = sum_family(last, "connhealth_probes_skipped_total") - sum_family(first, "connhealth_probes_skipped_total")
    span = bodies[-1][0] - bodies[0][0]
    times = [s["seconds"] for s in scrapes]
    report.update({
        "scrape_median_s": median(times), "scrape_max_s": max(times), "scrape_count": len(times),
        "scrape_cpu_median_s": median(s["cpu_seconds"] for s in scrapes),
        "body_mb": scrapes[-1]["bytes"] / 1e6,
        "probes_per_s": attempts / span if span else float("nan"), "attempts": attempts, "successes": successes,
        "skipped": skipped, "executed_per_scheduled": attempts / (n_targets * span / args.interval) if span else float("nan"),
        "cpu_pct": 100 * (cpu1 - cpu0) / (w1 - w0), "rss_mib": rss, "scrapes": scrapes,
    })
    sl, el = report["connhealth_scheduler_lag_seconds"], report["connhealth_event_loop_lag_seconds"]
    print()
    print("| metric | value |")
    print("|---|---|")
    print(f"| targets / interval / histograms | {n_targets} tcp_connect / {args.interval:g} s / {args.histograms} |")
    print(f"| probes/s in window (expected {n_targets / args.interval:.0f}) | {report['probes_per_s']:.0f} |")
    print(f"| successes / attempts in window | {successes:.0f} / {attempts:.0f} (skipped {skipped:.0f}) |")
    print(f"| probes executed / scheduled in window | {100 * report['executed_per_scheduled']:.2f} % |")
    print(f"| scheduler lag p50 / p99 (interpolated) | {sl['p50'] * 1e3:.1f} ms / {sl['p99'] * 1e3:.1f} ms |")
    print(f"| scheduler lag p99 bucket | {sl['p99_bucket']} s ({sl['observations']:.0f} observations) |")
    print(f"| event-loop lag p50 / p99 | {el['p50'] * 1e3:.1f} ms / {el['p99'] * 1e3:.1f} ms, bucket {el['p99_bucket']} s |")
    print(f"| /metrics scrape wall time median / max (n={len(times)}) | {report['scrape_median_s']:.3f} s / "
          f"{report['scrape_max_s']:.3f} s |")
    print(f"| connhealth's event-loop thread on CPU during a scrape, median | {report['scrape_cpu_median_s']:.3f} s "
          f"(the scrape and the probes meanwhile) |")
    print(f"| scrape request | {'as Prometheus 2.42: OpenMetrics, Accept-Encoding gzip' if args.as_prometheus else 'curl: text format, no compression'} |")
    print(f"| /metrics body | {report['body_mb']:.1f} MB |")
    print(f"| connhealth CPU (window, incl. scrapes) | {report['cpu_pct']:.0f}% of one core |")
    print(f"| connhealth RSS | {rss:.0f} MiB |")
    print(f"\nscheduler lag bucket deltas: { {k: v for k, v in sl['buckets_delta'].items()} }")
    (tmp / "scrape.txt").unlink(missing_ok=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    if spy is not None:
        spy.wait(timeout=120)
        from bench.probe_throughput import summarize_collapsed
        print(f"\n## py-spy profile of the window ({args.profile})")
        print(summarize_collapsed(Path(args.profile)))
    stop_all()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        stop_all()
