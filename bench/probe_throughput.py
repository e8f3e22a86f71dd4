#!/usr/bin/env python3
"""/probe throughput: connhealth vs blackbox_exporter, side by side.

Starts on 127.0.0.1 only:
  * nginx: a small 200 over http, over https (certificate from
    exporter/certs.py CertFactory) and on a third plain port used as the
    tcp_connect target;
  * blackbox_exporter and ``connhealth serve``, each on its own port, with the
    same blackbox.yml (http_2xx, tcp_connect, https_2xx with tls_config.ca_file;
    all preferred_ip_protocol ip4).
Then, for each of tcp/http/https and each exporter, runs wrk against
``/probe?target=…&module=…`` for a fixed duration, alternating the exporters
(ABBA order across repetitions), and prints the median probes/s and the
ratio connhealth/blackbox. A wrk Lua hook checks every response body for
``probe_success 1``; any other response is counted as bad and reported.

CPU placement (``--pin``):
  split (default)  exporters on CPU 0, nginx + wrk on CPU 1: each exporter
                   gets exactly one core (Go's GOMAXPROCS follows the
                   affinity mask, so blackbox also runs with 1 P), and the
                   load generator / targets never steal from it.
  none             no pinning: blackbox may use both cores, and shares them
                   with nginx and wrk (how the issue's numbers were taken).

Usage:
  .venv/bin/python bench/probe_throughput.py [--duration 10] [--reps 3]
      [--connections 16] [--pin split|none] [--protocols tcp,http,https]
      [--baseline DIR]   # DIR: e.g. `git worktree add /tmp/before HEAD~1`; runs it side by side as "before"
      [--workers 1,2]    # also run `serve --workers N` for each N > 1 side by side (as connhealth-wN);
                         # with --pin none every exporter may use both cores
Needs: nginx, wrk (apt-get install -y nginx wrk), prometheus-blackbox-exporter.
Stops by itself: total time ≈ reps × protocols × 2 × (duration + 1) s + warm-up.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import (  # noqa: E402
    BLACKBOX, CONNHEALTH, LOCALHOST, PYTHON, connhealth_argv, connhealth_env, cpu_seconds, free_port, get, median, start, stop_all, wait_port,
)
from exporter.certs import CertFactory, Issued  # noqa: E402

WRK_LUA = r"""
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) ok = 0; bad = 0; sample = "" end
function response(status, headers, body)
  if status == 200 and string.find(body, "\nprobe_success 1\n", 1, true) then
    ok = ok + 1
  else
    bad = bad + 1
    if sample == "" then sample = tostring(status) .. " " .. string.sub(body, 1, 300) end
  end
end
function done(summary, latency, requests)
  local o, b = 0, 0
  for _, t in ipairs(threads) do
    o = o + t:get("ok"); b = b + t:get("bad")
    local s = t:get("sample")
    if s ~= nil and s ~= "" then io.write("BADSAMPLE " .. string.gsub(s, "\n", "\\n") .. "\n") end
  end
  io.write(string.format("CHECK ok=%d bad=%d\n", o, b))
end
"""

NGINX_CONF = """
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
{user}
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{http_port};
        location / {{ default_type text/plain; return 200 "ok\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{tcp_port};
        location / {{ default_type text/plain; return 200 "ok\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{https_port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache off;
        ssl_session_tickets off;
        location / {{ default_type text/plain; return 200 "ok\\n"; }}
    }}
}}
"""

BLACKBOX_YML = """
modules:
  http_2xx:
    prober: http
    timeout: 5s
    http:
      preferred_ip_protocol: ip4
  https_2xx:
    prober: http
    timeout: 5s
    http:
      preferred_ip_protocol: ip4
      tls_config:
        ca_file: {ca}
  tcp_connect:
    prober: tcp
    timeout: 5s
    tcp:
      preferred_ip_protocol: ip4
"""

_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_CHECK = re.compile(r"CHECK ok=(\d+) bad=(\d+)")
_LAT = re.compile(r"Latency\s+([\d.]+)(us|ms|s)\s")
_ERRS = re.compile(r"Socket errors: (.*)")


def _lat_ms(value: str, unit: str) -> float:
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def run_wrk(url: str, duration: float, connections: int, lua: Path, cpus: str | None) -> dict:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--timeout", "10s", "-s", str(lua), url]
    if cpus is not None:
        argv = ["taskset", "-c", cpus, *argv]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60).stdout
    rps = _RPS.search(out)
    check = _CHECK.search(out)
    lat = _LAT.search(out)
    errs = _ERRS.search(out)
    bad_sample = [line for line in out.splitlines() if line.startswith("BADSAMPLE")]
    if rps is None or check is None:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    return {
        "rps": float(rps.group(1)),
        "ok": int(check.group(1)),
        "bad": int(check.group(2)),
        "latency_ms": _lat_ms(lat.group(1), lat.group(2)) if lat else float("nan"),
        "socket_errors": errs.group(1) if errs else "",
        "bad_sample": bad_sample[:1],
    }


def summarize_collapsed(path: Path, top: int = 25) -> str:
    """Self and inclusive sample shares per function from py-spy's raw (collapsed) output."""
    self_n: dict[str, int] = {}
    incl_n: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n_text = line.rpartition(" ")
        if not stack:
            continue
        n = int(n_text)
        total += n
        frames = [f.split(" (", 1)[0] + " (" + f.split(" (", 1)[1].rsplit(":", 1)[0].split("/")[-1] + ")"
                  if " (" in f else f for f in stack.split(";")]
        self_n[frames[-1]] = self_n.get(frames[-1], 0) + n
        for f in set(frames):
            incl_n[f] = incl_n.get(f, 0) + n
    lines = [f"total samples {total}", "self %   function"]
    for f, n in sorted(self_n.items(), key=lambda x: -x[1])[:top]:
        lines.append(f"{100 * n / total:6.1f}  {f}")
    lines.append("incl %   function")
    for f, n in sorted(incl_n.items(), key=lambda x: -x[1])[:top * 2]:
        lines.append(f"{100 * n / total:6.1f}  {f}")
    return "\n".join(lines) + "\n"


def start_nginx(tmp: Path, cpus: str | None = None) -> tuple[Issued, tuple[int, int, int]]:
    """nginx on 127.0.0.1 with a certificate made here: (its CA, (http, https, tcp ports)), once all listen."""
    certs = CertFactory(tmp / "certs")
    ca = certs.ca("bench CA")
    leaf = certs.leaf(ca, name="localhost", sans=("localhost", "127.0.0.1"))
    for p in (tmp / "certs").iterdir():
        os.chmod(p, 0o644)
    ports = http_port, https_port, tcp_port = free_port(), free_port(), free_port()
    (tmp / "nginx.conf").write_text(NGINX_CONF.format(
        tmp=tmp, http_port=http_port, https_port=https_port, tcp_port=tcp_port, cert=leaf.cert_file, key=leaf.key_file,
        user="user root;" if os.geteuid() == 0 else ""))
    nginx = start(["nginx", "-p", str(tmp), "-e", str(tmp / "nginx-error.log"), "-c", str(tmp / "nginx.conf"),
                   "-g", "daemon off;"], tmp / "nginx.out", cpus=cpus)
    for port in ports:
        wait_port(port, nginx)
    return ca, ports


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run (default 10)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions per exporter and protocol (default 3)")
    ap.add_argument("--connections", type=int, default=16, help="wrk connections (default 16)")
    ap.add_argument("--pin", choices=("split", "none"), default="split")
    ap.add_argument("--protocols", default="tcp,http,https")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of unrecorded load per exporter/protocol first")
    ap.add_argument("--uvloop", metavar="DIR", help="experiment: run connhealth on uvloop, importable from DIR "
                    "(pip install --target DIR uvloop); exporter/ is not modified")
    ap.add_argument("--baseline", metavar="DIR", help="also run the connhealth in source tree DIR (e.g. a git worktree of "
                    "the previous commit) as 'before', side by side in the same run, to compare before/after")
    ap.add_argument("--workers", default="1", help="comma-separated worker counts: connhealth runs with --workers N for each "
                    "(N=1 is 'connhealth', N>1 'connhealth-wN'), side by side in the same run (default 1)")
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--profile-dir", help="after the comparison, profile connhealth with py-spy (one wrk run per "
                    "protocol) and write collapsed stacks + a summary here; --reps 0 profiles only")
    args = ap.parse_args()
    protocols = [p for p in args.protocols.split(",") if p]
    exp_cpus = "0" if args.pin == "split" else None
    load_cpus = "1" if args.pin == "split" else None

    tmp = Path(tempfile.mkdtemp(prefix="connhealth-bench-"))
    os.chmod(tmp, 0o755)
    lua = tmp / "check.lua"
    lua.write_text(WRK_LUA)
    ca, (http_port, https_port, tcp_port) = start_nginx(tmp, load_cpus)
    (tmp / "blackbox.yml").write_text(BLACKBOX_YML.format(ca=ca.cert_file))

    bb_port, ch_port = free_port(), free_port()
    exporters = {
        "blackbox": start([BLACKBOX, f"--config.file={tmp / 'blackbox.yml'}", f"--web.listen-address={LOCALHOST}:{bb_port}",
                           "--log.level=warn"], tmp / "blackbox.log", cpus=exp_cpus),
        "connhealth": start([*connhealth_argv(args.uvloop), "serve", "--config.file", str(tmp / "blackbox.yml"),
                             "--web.listen-address", f"{LOCALHOST}:{ch_port}", "--log.level", "warn"],
                            tmp / "connhealth.log", cpus=exp_cpus, env=connhealth_env(args.uvloop)),
    }
    ports = {"blackbox": bb_port, "connhealth": ch_port}
    worker_counts = sorted({int(n) for n in args.workers.split(",") if n} - {1})
    for n in worker_counts:
        port = ports[f"connhealth-w{n}"] = free_port()
        exporters[f"connhealth-w{n}"] = start(
            [*connhealth_argv(args.uvloop), "serve", "--config.file", str(tmp / "blackbox.yml"), "--workers", str(n),
             "--web.listen-address", f"{LOCALHOST}:{port}", "--log.level", "warn"],
            tmp / f"connhealth-w{n}.log", cpus=exp_cpus, env=connhealth_env(args.uvloop))
    if args.baseline:
        before_port = ports["before"] = free_port()
        baseline = str(Path(args.baseline).resolve())
        # cwd = the baseline tree: `-m` puts the cwd first on sys.path, ahead of PYTHONPATH.
        exporters["before"] = start(["env", "-C", baseline, PYTHON, "-m", "exporter", "serve", "--config.file", str(tmp / "blackbox.yml"),
                                     "--web.listen-address", f"{LOCALHOST}:{before_port}", "--log.level", "warn"],
                                    tmp / "before.log", cpus=exp_cpus, env={"PYTHONPATH": baseline})
    for name, proc in exporters.items():
        wait_port(ports[name], proc)

    targets = {
        "tcp": (f"{LOCALHOST}:{tcp_port}", "tcp_connect"),
        "http": (f"http://{LOCALHOST}:{http_port}/", "http_2xx"),
        "https": (f"https://{LOCALHOST}:{https_port}/", "https_2xx"),
    }

    def url(exporter: str, proto: str) -> str:
        target, module = targets[proto]
        q = urllib.parse.urlencode({"target": target, "module": module})
        return f"http://{LOCALHOST}:{ports[exporter]}/probe?{q}"

    # Sanity: one probe each, must succeed, before any load.
    for exporter in exporters:
        for proto in protocols:
            status, body = get(ports[exporter], url(exporter, proto).split(str(ports[exporter]), 1)[1])
            if status != 200 or b"\nprobe_success 1\n" not in body:
                print(f"SANITY FAILED: {exporter} {proto}: {status}\n{body.decode(errors='replace')}", file=sys.stderr)
                return 1
    print(f"# {datetime.datetime.now().isoformat(timespec='seconds')}  pin={args.pin}  wrk -t1 -c{args.connections} "
          f"-d{args.duration:g}s  reps={args.reps}{'  connhealth on uvloop' if args.uvloop else ''}  nproc={os.cpu_count()}", flush=True)
    print(f"# nginx http :{http_port} https :{https_port} tcp :{tcp_port}; blackbox :{bb_port}; connhealth :{ch_port}", flush=True)

    if args.warmup > 0:
        for proto in protocols:
            for exporter in exporters:
                run_wrk(url(exporter, proto), args.warmup, args.connections, lua, load_cpus)

    results: dict[str, dict[str, list[dict]]] = {p: {e: [] for e in exporters} for p in protocols}
    order = list(exporters)
    for rep in range(args.reps):
        for proto in protocols:
            seq = order if (rep % 2 == 0) else order[::-1]  # ABBA: no exporter always goes first
            for exporter in seq:
                pid = exporters[exporter].pid
                c0, t0 = cpu_seconds(pid), time.monotonic()
                r = run_wrk(url(exporter, proto), args.duration, args.connections, lua, load_cpus)
                r["cpu_pct"] = 100 * (cpu_seconds(pid) - c0) / (time.monotonic() - t0)
                results[proto][exporter].append(r)
                flag = "" if r["bad"] == 0 else f"  BAD={r['bad']} {r['bad_sample']}"
                print(f"rep {rep + 1} {proto:5s} {exporter:10s} {r['rps']:8.0f} probes/s  ok={r['ok']:<7d} "
                      f"lat {r['latency_ms']:6.2f} ms  exporter CPU {r['cpu_pct']:5.0f}%{flag}"
                      f"{'  socket errors: ' + r['socket_errors'] if r['socket_errors'] else ''}", flush=True)

    print()
    print(f"| probe | blackbox probes/s (median) | connhealth probes/s (median) | connhealth / blackbox | "
          f"blackbox CPU | connhealth CPU | all probe_success 1 |")
    print("|---|---|---|---|---|---|---|")
    summary = {}
    for proto in protocols:
        bb = median([r["rps"] for r in results[proto]["blackbox"]])
        ch = median([r["rps"] for r in results[proto]["connhealth"]])
        bb_cpu = median([r["cpu_pct"] for r in results[proto]["blackbox"]])
        ch_cpu = median([r["cpu_pct"] for r in results[proto]["connhealth"]])
        bad = sum(r["bad"] for e in exporters for r in results[proto][e])
        okn = sum(r["ok"] for e in exporters for r in results[proto][e])
        summary[proto] = {"blackbox": bb, "connhealth": ch, "ratio": ch / bb if bb else float("nan")}
        print(f"| {proto} | {bb:.0f} | {ch:.0f} | {ch / bb:.2f}× | {bb_cpu:.0f}% | {ch_cpu:.0f}% | "
              f"{'yes' if bad == 0 else f'NO: {bad} bad'} ({okn} checked) |")
    if args.baseline:
        print()
        print("| probe | before probes/s (median) | before / blackbox | after / blackbox | after / before |")
        print("|---|---|---|---|---|")
        for proto in protocols:
            bb = summary[proto]["blackbox"]
            before = median([r["rps"] for r in results[proto]["before"]])
            after = summary[proto]["connhealth"]
            summary[proto].update({"before": before, "before_ratio": before / bb if bb else float("nan")})
            print(f"| {proto} | {before:.0f} | {before / bb:.2f}× | {after / bb:.2f}× | {after / before:.2f}× |")
    if worker_counts:
        print()
        print("| probe | blackbox | connhealth (1 process) | " + " | ".join(f"connhealth --workers {n}" for n in worker_counts)
              + " | " + " | ".join(f"--workers {n} / blackbox" for n in worker_counts) + " |")
        print("|---" * (3 + 2 * len(worker_counts)) + "|")
        for proto in protocols:
            bb = summary[proto]["blackbox"]
            rates = [median([r["rps"] for r in results[proto][f"connhealth-w{n}"]]) for n in worker_counts]
            summary[proto].update({f"workers_{n}": rate for n, rate in zip(worker_counts, rates)})
            print(f"| {proto} | {bb:.0f} | {summary[proto]['connhealth']:.0f} | " + " | ".join(f"{r:.0f}" for r in rates)
                  + " | " + " | ".join(f"{r / bb:.2f}×" for r in rates) + " |")
    if args.json and args.reps:
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": results, "summary": summary}, indent=2))
    if args.profile_dir:
        out = Path(args.profile_dir)
        out.mkdir(parents=True, exist_ok=True)
        pid = exporters["connhealth"].pid
        for proto in protocols:
            raw = out / f"{proto}.collapsed"
            spy = subprocess.Popen([str(Path(CONNHEALTH).with_name("py-spy")), "record", "--pid", str(pid), "--rate", "250",
                                    "--duration", f"{args.duration:g}", "--format", "raw", "-o", str(raw)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            r = run_wrk(url("connhealth", proto), args.duration, args.connections, lua, load_cpus)
            spy.wait(timeout=args.duration + 60)
            print(f"\n## profile {proto}: {r['rps']:.0f} probes/s under py-spy (sampling slows it), {raw}")
            summary_text = summarize_collapsed(raw)
            (out / f"{proto}.summary.txt").write_text(summary_text)
            print(summary_text)
    stop_all()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        stop_all()
