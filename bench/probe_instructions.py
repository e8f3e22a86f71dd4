#!/usr/bin/env python3
"""CPU instructions per probe, counted by valgrind: a before/after comparison that load cannot blur.

Wall-clock throughput (bench/probe_throughput.py) is the goal, but on a
shared 2-core machine its runs vary by ±10-20 %, more than most changes to
the probe path. Instructions retired in user space are deterministic to
about 0.5 %: this counts them for one /probe's work — ``run_probe`` plus
``probe_text``, i.e. everything but aiohttp, which is the same code on both
sides — on each tree.

For each tree and protocol it runs the probe loop under ``valgrind
--tool=callgrind`` twice, with N1 and N2 probes (16 concurrent, uvloop), and
reports (Ir(N2) - Ir(N1)) / (N2 - N1): start-up and imports cancel out.
Kernel time (connect, loopback) is not counted; it is the same code on both
sides. Targets are nginx on 127.0.0.1 (http, https with a certificate made
here, and a plain port for tcp_connect), as in probe_throughput.py.

Usage:
  .venv/bin/python bench/probe_instructions.py [--baseline DIR] [--protocols tcp,http,https] [--n1 48] [--n2 208]
      DIR: another checkout, e.g. `git worktree add /tmp/before <commit>`; it is imported from there.
Needs: valgrind, nginx. Takes about 1-2 minutes per tree and protocol (valgrind runs ~50x slower).
"""
from __future__ import annotations

import argparse
import datetime
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import PYTHON, REPO, stop_all  # noqa: E402
from bench.probe_throughput import start_nginx  # noqa: E402

# Runs inside valgrind, with the tree under test first on sys.path. It uses
# only run_probe, parse_config and probe_text, which every version has.
DRIVER = r"""
import asyncio, os, sys
tree, kind, target, ca, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
sys.path.insert(0, tree)
os.chdir(tree)
import uvloop
from exporter.config import parse_config
from exporter.engine import run_probe
try:
    from exporter.sinks.exposition import probe_text
except ImportError:  # before the prober layer v2
    from exporter.exposition import probe_text
prober = "tcp" if kind == "tcp" else "http"
extra = f", tls_config: {{ca_file: {ca}}}" if kind == "https" else ""
module = parse_config(f"modules:\n  m: {{prober: {prober}, timeout: 60s, {prober}: {{preferred_ip_protocol: ip4{extra}}}}}\n").modules["m"]
CONCURRENCY = 16

async def worker(k):
    for _ in range(k):
        result = await run_probe(target, module, 60.0, None)
        if result.failure is not None:
            raise SystemExit(f"probe failed: {result.failure}")
        probe_text(result)

async def main():
    await asyncio.gather(*(worker(n // CONCURRENCY) for _ in range(CONCURRENCY)))

uvloop.run(main())
"""

_COLLECTED = re.compile(r"Collected : (\d+)")


def instructions(tree: Path, kind: str, target: str, ca: str, n: int) -> int:
    proc = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", PYTHON, "-c", DRIVER, str(tree), kind, target,
         ca, str(n)],
        capture_output=True, text=True, timeout=1800,
    )
    match = _COLLECTED.search(proc.stderr)
    if proc.returncode != 0 or match is None:
        raise RuntimeError(f"{tree} {kind} n={n} failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr[-3000:]}")
    return int(match.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", help="another checkout to compare with (imported from its directory)")
    ap.add_argument("--protocols", default="tcp,http,https")
    ap.add_argument("--n1", type=int, default=48, help="probes in the short run (multiple of 16)")
    ap.add_argument("--n2", type=int, default=208, help="probes in the long run (multiple of 16)")
    args = ap.parse_args()
    if args.n2 <= args.n1 or args.n1 % 16 or args.n2 % 16:
        ap.error("--n1 < --n2, both multiples of 16")

    tmp = Path(tempfile.mkdtemp(prefix="connhealth-ir-"))
    os.chmod(tmp, 0o755)
    try:
        ca, (http_port, https_port, tcp_port) = start_nginx(tmp)
        targets = {"tcp": f"127.0.0.1:{tcp_port}", "http": f"http://127.0.0.1:{http_port}/",
                   "https": f"https://localhost:{https_port}/"}
        trees = {"after": REPO}
        if args.baseline:
            trees = {"before": Path(args.baseline).resolve(), "after": REPO}
        print(f"# {datetime.datetime.now().isoformat(timespec='seconds')}  instructions per probe (run_probe + probe_text), "
              f"callgrind, ({args.n2} - {args.n1}) probes")
        results: dict[str, dict[str, float]] = {}
        for kind in args.protocols.split(","):
            for name, tree in trees.items():
                low = instructions(tree, kind, targets[kind], ca.cert_file, args.n1)
                high = instructions(tree, kind, targets[kind], ca.cert_file, args.n2)
                results.setdefault(kind, {})[name] = (high - low) / (args.n2 - args.n1)
        header = f"{'protocol':<9}" + "".join(f"{name:>14}" for name in trees) + ("   after/before" if args.baseline else "")
        print(header)
        for kind, row in results.items():
            line = f"{kind:<9}" + "".join(f"{row[name]:>14,.0f}" for name in trees)
            if args.baseline:
                line += f"   {row['after'] / row['before']:.3f}"
            print(line)
    finally:
        stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
