#!/usr/bin/env python3
"""``make stack``: the docker-compose loop without Docker, on this machine's loopback.

  connhealth serve --demo  ->  Prometheus (generated rules, exemplar storage)  ->  Alertmanager  ->  webhook receiver

The files are the ones docker-compose.yml mounts and the tests check: deploy/prometheus.yml (its compose host
names rewritten to 127.0.0.1 ports), alerts/generated/ as its rules/, alerts/alertmanager.example.yml (its
webhook receiver URLs pointed at this script's receiver). The receiver prints every notification it gets.
The demo's expired certificate fires ConnhealthCertificateExpired (for: 0m) as soon as Prometheus has
scraped it once; Alertmanager sends it to the "page" receiver after its 10 s group_wait.

Needs the Debian packages prometheus and prometheus-alertmanager (`make stack` runs the project's install
script first, which installs them when missing, as root). Ctrl-C stops everything.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOCALHOST = "127.0.0.1"
MAX_BODY = 1 << 20


def _print(line: str) -> None:
    print(line, flush=True)


class Receiver(BaseHTTPRequestHandler):
    """Alertmanager's webhook: one line per alert of every notification."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        length = min(int(self.headers.get("Content-Length") or 0), MAX_BODY)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            body = {}
        for alert in body.get("alerts", []):
            labels = alert.get("labels", {})
            shown = " ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "alertname")
            _print(f"webhook {self.path}: {alert.get('status', '?').upper()} {labels.get('alertname', '?')} {shown}")
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet access log
        pass


def prometheus_config(ports: dict[str, int], interval: str | None) -> str:
    """deploy/prometheus.yml with the compose host names replaced by this stack's loopback ports."""
    text = (REPO / "deploy" / "prometheus.yml").read_text()
    for host, port in (("connhealth:9115", ports["connhealth"]), ("prometheus:9090", ports["prometheus"]),
                       ("alertmanager:9093", ports["alertmanager"])):
        text = text.replace(host, f"{LOCALHOST}:{port}")
    if interval:
        text = re.sub(r"^(  (?:scrape|evaluation)_interval:) .*$", rf"\1 {interval}", text, flags=re.M)
    return text


def alertmanager_config(webhook_port: int) -> str:
    text = (REPO / "alerts" / "alertmanager.example.yml").read_text()
    return text.replace("http://127.0.0.1:9099/", f"http://{LOCALHOST}:{webhook_port}/")


def wait_ready(name: str, url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise SystemExit(f"stack: {name} exited with {proc.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"stack: {name} not ready at {url} after {timeout:g}s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exporter-port", type=int, default=9115)
    ap.add_argument("--prometheus-port", type=int, default=9090)
    ap.add_argument("--alertmanager-port", type=int, default=9093)
    ap.add_argument("--webhook-port", type=int, default=9099)
    ap.add_argument("--interval", help="scrape and rule evaluation interval (default: deploy/prometheus.yml's, 15s)")
    args = ap.parse_args(argv)
    binaries = {name: shutil.which(name) for name in ("prometheus", "prometheus-alertmanager")}
    missing = [name for name, path in binaries.items() if path is None]
    if missing:
        _print(f"stack: {' and '.join(missing)} not installed: run `make stack` (installs them as root) or "
               "apt-get install prometheus prometheus-alertmanager")
        return 1
    ports = {"connhealth": args.exporter_port, "prometheus": args.prometheus_port, "alertmanager": args.alertmanager_port}
    work = Path(tempfile.mkdtemp(prefix="connhealth-stack-"))
    (work / "rules").symlink_to(REPO / "alerts" / "generated")  # rule_files: rules/*.rules.yml, as compose mounts it
    (work / "prometheus.yml").write_text(prometheus_config(ports, args.interval))
    (work / "alertmanager.yml").write_text(alertmanager_config(args.webhook_port))

    receiver = ThreadingHTTPServer((LOCALHOST, args.webhook_port), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()

    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(work / f"{name}.log", "wb")  # noqa: SIM115 - kept open for the child's lifetime
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
        procs.append(proc)
        return proc

    stopping = threading.Event()

    def stop(signum: int, frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    code = 0
    try:
        exporter = start("connhealth", [sys.executable, "-m", "exporter", "serve", "--demo",
                                        "--web.listen-address", f"{LOCALHOST}:{ports['connhealth']}"])
        alertmanager = start("alertmanager", [
            str(binaries["prometheus-alertmanager"]), f"--config.file={work / 'alertmanager.yml'}",
            f"--web.listen-address={LOCALHOST}:{ports['alertmanager']}", f"--storage.path={work / 'alertmanager-data'}",
            "--cluster.listen-address="])
        prometheus = start("prometheus", [
            str(binaries["prometheus"]), f"--config.file={work / 'prometheus.yml'}",
            f"--storage.tsdb.path={work / 'prometheus-data'}", f"--web.listen-address={LOCALHOST}:{ports['prometheus']}",
            "--enable-feature=exemplar-storage", "--web.enable-lifecycle"])
        for name, proc in (("connhealth", exporter), ("alertmanager", alertmanager), ("prometheus", prometheus)):
            wait_ready(name, f"http://{LOCALHOST}:{ports[name]}/-/ready", proc, work / f"{name}.log")
        _print(f"connhealth:   http://{LOCALHOST}:{ports['connhealth']}/  (demo targets; /metrics)")
        _print(f"Prometheus:   http://{LOCALHOST}:{ports['prometheus']}/alerts  (generated rules from alerts/generated/)")
        _print(f"Alertmanager: http://{LOCALHOST}:{ports['alertmanager']}/  (alerts/alertmanager.example.yml)")
        _print(f"webhook receiver: http://{LOCALHOST}:{args.webhook_port}/  prints the notifications below")
        _print(f"logs and data: {work}   Ctrl-C stops everything")
        while not stopping.wait(0.5):
            for proc in procs:
                if proc.poll() is not None:
                    _print(f"stack: {proc.args[0]} exited with {proc.returncode}; stopping (logs in {work})")
                    code = 1
                    stopping.set()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        receiver.shutdown()
        shutil.rmtree(work, ignore_errors=True)
        _print("stack: stopped")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
