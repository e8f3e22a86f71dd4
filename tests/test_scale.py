"""Scale out and up: `serve --shard INDEX/COUNT` replicas and `serve --workers N`, over one shard function
(exporter/shard.py: rendezvous hashing of target + module). Real processes, real probes to a real HTTP peer."""
from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
import time
from pathlib import Path

import aiohttp
import pytest
import yaml

from prometheus_client.openmetrics.parser import text_string_to_metric_families

from exporter.schema import ConfigError
from exporter.sinks.merge import add_labels, merge
from exporter.shard import Shard, owner, parse_shard, shard_from_env

try:
    from tests.peers import HTTPServer
    from tests.procs import LOCALHOST, ExporterProcess, run_command, samples, value
except ImportError:  # pragma: no cover
    from peers import HTTPServer  # type: ignore[no-redef]
    from procs import LOCALHOST, ExporterProcess, run_command, samples, value  # type: ignore[no-redef]

pytestmark = pytest.mark.timeout(180)

ATTEMPTS = "connhealth_probe_attempts_total"


# --- the shard function ---------------------------------------------------------------
def test_every_target_has_exactly_one_owner_and_growing_moves_only_to_the_new_shard():
    keys = [(f"https://svc-{i}.example/health", "http_2xx") for i in range(3000)]
    three = {k: owner(*k, 3) for k in keys}
    four = {k: owner(*k, 4) for k in keys}
    for k in keys:  # exactly one of the three shards owns each target
        assert [Shard(i, 3).owns(*k) for i in range(3)].count(True) == 1
    counts = [list(three.values()).count(i) for i in range(3)]
    assert all(900 <= c <= 1100 for c in counts), counts  # even within 10 % of 1000
    moved = [k for k in keys if three[k] != four[k]]
    assert all(four[k] == 3 for k in moved)  # a target only moves to the new shard
    assert 0.20 <= len(moved) / len(keys) <= 0.30  # about 1/4


def test_module_is_part_of_the_identity_and_workers_use_their_own_salt():
    targets = [f"host-{i}:443" for i in range(400)]
    assert any(owner(t, "tcp_connect", 4) != owner(t, "tls_connect", 4) for t in targets)
    assert any(owner(t, "tcp_connect", 4) != owner(t, "tcp_connect", 4, salt="worker") for t in targets)


def test_parse_shard_and_the_statefulset_ordinal():
    assert parse_shard("1/3") == Shard(1, 3)
    assert parse_shard("ordinal/5", hostname="connhealth-4") == Shard(4, 5)
    assert shard_from_env({"CONNHEALTH_SHARD": "2/4"}) == Shard(2, 4)
    assert shard_from_env({}) is None
    for bad, message in (("3/3", "--shard: INDEX must be below COUNT (3), got 3"),
                         ("1", "--shard: expected INDEX/COUNT such as 0/3 or ordinal/3, got '1'"),
                         ("0/0", "--shard: COUNT must be between 1 and 4096, got 0"),
                         ("x/2", "--shard: INDEX must be a number or 'ordinal', got 'x'")):
        with pytest.raises(ConfigError) as exc:
            parse_shard(bad)
        assert str(exc.value) == message
    with pytest.raises(ConfigError, match=r"needs a host name ending in -<number> .*'prober'"):
        parse_shard("ordinal/3", hostname="prober")


def test_merge_keeps_one_group_per_family_and_add_labels_goes_first():
    a = (b'# HELP x_total X.\n# TYPE x_total counter\nx_total{target="a"} 1 # {trace_id="ab"} 1.0\n'
         b'# HELP up Up.\n# TYPE up gauge\nup 1\n# EOF\n')
    b = b'# HELP x_total X.\n# TYPE x_total counter\nx_total{target="b"} 2\n# HELP up Up.\n# TYPE up gauge\nup 1\n# EOF\n'
    assert merge([a, b], openmetrics=True) == (
        b'# HELP x_total X.\n# TYPE x_total counter\nx_total{target="a"} 1 # {trace_id="ab"} 1.0\nx_total{target="b"} 2\n'
        b'# HELP up Up.\n# TYPE up gauge\nup 1\n# EOF\n')
    assert add_labels(b'# TYPE up gauge\nup 1\nup{} 2\n# TYPE y gauge\ny{a="b"} 3\n', (("worker", "1"),), skip=("y",)) == (
        b'# TYPE up gauge\nup{worker="1"} 1\nup{worker="1"} 2\n# TYPE y gauge\ny{a="b"} 3\n')
    assert add_labels(b'm{a="1"} 1\n', (("prober", 'e"u'),)) == b'm{prober="e\\"u",a="1"} 1\n'


# --- replicas ---------------------------------------------------------------------------
def _config(path: Path, urls: list[str], interval: str = "2s") -> Path:
    path.write_text(yaml.safe_dump({"targets": [{"target": u, "module": "http_2xx", "interval": interval} for u in urls]}))
    return path


def _targets(text: str, probed: bool) -> set[str]:
    return {labels["target"] for labels, v in samples(text, ATTEMPTS) if v >= 1 or not probed}


async def _replicas(config: Path, tmp_path: Path, count: int) -> list[ExporterProcess]:
    procs = []
    for i in range(count):
        # Replica 0 takes its shard from the environment, as a StatefulSet's pods do; the others from the flag.
        if i == 0:
            p = ExporterProcess(config, tmp_path, name=f"r{i}of{count}", env=dict(os.environ, CONNHEALTH_SHARD=f"0/{count}"))
        else:
            p = ExporterProcess(config, tmp_path, "--shard", f"{i}/{count}", name=f"r{i}of{count}")
        procs.append(p)
    await asyncio.gather(*(p.start(timeout=30) for p in procs))
    return procs


async def test_three_replicas_probe_every_target_once_and_a_fourth_moves_at_most_30_percent(tmp_path):
    peer = await HTTPServer().start()
    urls = [peer.url(f"/ok?t={i}") for i in range(300)]
    config = _config(tmp_path / "targets.yml", urls)
    procs = await _replicas(config, tmp_path, 3)
    try:
        deadline = time.monotonic() + 60
        while True:
            texts = [await p.metrics() for p in procs]
            probed = [_targets(t, probed=True) for t in texts]
            if sum(map(len, probed)) >= 300 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        scheduled = [_targets(t, probed=False) for t in texts]
        # Each replica probes (and exposes) only its own targets; together, every target exactly once.
        assert sorted(u for s in scheduled for u in s) == sorted(urls)
        assert [len(p) for p in probed] == [len(s) for s in scheduled]
        assert all(80 <= len(s) <= 120 for s in scheduled), [len(s) for s in scheduled]
        assert [value(t, "connhealth_scheduled_targets") for t in texts] == [float(len(s)) for s in scheduled]
        for i, s in enumerate(scheduled):
            assert all(owner(u, "http_2xx", 3) == i for u in s)
    finally:
        await asyncio.gather(*(p.astop() for p in procs))
    procs = await _replicas(config, tmp_path, 4)
    try:
        four = [_targets(await p.metrics(), probed=False) for p in procs]
    finally:
        await asyncio.gather(*(p.astop() for p in procs))
        await peer.stop()
    assert sorted(u for s in four for u in s) == sorted(urls)
    before = {u: i for i, s in enumerate(scheduled) for u in s}
    after = {u: i for i, s in enumerate(four) for u in s}
    moved = [u for u in urls if before[u] != after[u]]
    assert 0 < len(moved) <= 90, len(moved)  # at most 30 % of 300
    assert all(after[u] == 3 for u in moved)


# --- workers ------------------------------------------------------------------------------
def _children(pid: int) -> dict[int, int]:
    """worker index -> pid, from the parent's children's command lines."""
    out = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        for child in Path(f"/proc/{pid}/task/{task}/children").read_text().split():
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            if b"--worker-index" in argv:
                out[int(argv[argv.index(b"--worker-index") + 1])] = int(child)
    return out


async def _answering_workers(p: ExporterProcess, n: int) -> set[str]:
    """Which workers answered ``n`` /probe requests, each on a new connection (the kernel picks per connection)."""
    seen = set()
    for _ in range(n):
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            async with session.get(p.base_url + "/probe", params={"target": p.address, "module": "tcp_connect"}) as resp:
                assert resp.status == 200
                assert "probe_success 1" in await resp.text()
                seen.add(resp.headers["X-Connhealth-Worker"])
    return seen


async def test_workers_one_metrics_view_probe_from_both_reload_and_restart(tmp_path):
    peer = await HTTPServer().start()
    urls = [peer.url(f"/ok?t={i}") for i in range(40)]
    config = _config(tmp_path / "targets.yml", urls, interval="1s")
    p = await ExporterProcess(config, tmp_path, "--workers", "2", "--prober", "eu-west").start(timeout=30)
    try:
        # /metrics: every target exactly once, though each worker probes only its half.
        text = await p.wait_metrics(lambda t: _targets(t, probed=True) == set(urls), 60, "every target probed")
        assert sorted(labels["target"] for labels, _ in samples(text, ATTEMPTS)) == sorted(urls)
        assert all(labels["prober"] == "eu-west" for labels, _ in samples(text, ATTEMPTS))
        per_worker = {w: value(text, "connhealth_scheduled_targets", worker=w) for w in ("0", "1")}
        assert per_worker == {str(i): float(sum(owner(u, "http_2xx", 2, "worker") == i for u in urls)) for i in (0, 1)}
        assert min(per_worker.values()) > 0
        assert text.count("# TYPE connhealth_probe_attempts_total counter") == 1
        assert len(samples(text, "connhealth_build_info")) == 1  # the same in both workers: once, without worker
        assert value(text, "connhealth_workers") == 2 and value(text, "connhealth_workers_ready") == 2
        # OpenMetrics (what Prometheus asks for, exemplars and all): one valid exposition, every target once.
        status, om = await p.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        assert status == 200 and om.endswith("# EOF\n") and om.count("# EOF") == 1
        families = {f.name: f for f in text_string_to_metric_families(om)}  # the reference parser: raises if invalid
        assert sorted(s.labels["target"] for s in families["connhealth_probe_attempts"].samples
                      if s.name == ATTEMPTS) == sorted(urls)

        # /probe: answered by both workers (each response names its worker in X-Connhealth-Worker;
        # 40 new connections all landing on one worker would have odds of 2^-39).
        assert await _answering_workers(p, 40) == {"0", "1"}

        # SIGHUP to the parent reloads both workers: a new target appears, probed once.
        new = peer.url("/ok?t=new")
        _config(config, urls + [new], interval="1s")
        p.send_signal(signal.SIGHUP)
        text = await p.wait_metrics(
            lambda t: all(value(t, "connhealth_config_reloads_total", worker=w, result="success") == 1 for w in "01")
            and new in _targets(t, probed=True), 30, "both workers reloaded")
        assert [labels["target"] for labels, _ in samples(text, ATTEMPTS)].count(new) == 1
        # POST /-/reload on whichever worker reaches both as well.
        status, body = await p.post("/-/reload")
        assert (status, body) == (200, "worker 0: config reloaded\nworker 1: config reloaded\n")

        # A killed worker is started again and counted; its targets come back.
        assert p.proc is not None
        workers = _children(p.proc.pid)
        assert sorted(workers) == [0, 1]
        os.kill(workers[1], signal.SIGKILL)
        text = await p.wait_metrics(lambda t: value(t, "connhealth_worker_restarts_total", worker="1") == 1
                                    and value(t, "connhealth_workers_ready") == 2
                                    and _targets(t, probed=True) == set(urls) | {new}, 60, "worker 1 restarted")
        assert value(text, "connhealth_worker_restarts_total", worker="0") == 0
        restarted = _children(p.proc.pid)
        assert restarted[0] == workers[0] and restarted[1] != workers[1]
    finally:
        await p.astop(grace=15)
        await peer.stop()
    # SIGTERM reaches every worker: the parent exits 0 and leaves no worker behind.
    assert p.proc.returncode == 0, p.log_tail()
    for pid in restarted.values():
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


async def test_a_worker_that_cannot_start_stops_the_start_up(tmp_path):
    with socket.socket() as taken:  # bound without SO_REUSEPORT: no worker can share it
        taken.bind((LOCALHOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = await run_command([sys.executable, "-m", "exporter", "serve", "--workers", "2",
                                            "--web.listen-address", f"{LOCALHOST}:{port}"], timeout=60)
    assert code == 1
    assert f"connhealth: cannot listen on {LOCALHOST}:{port}: address already in use\n" in err
    assert re.search(r"^connhealth: --workers: worker [01] exited with 1 before it was ready$", err, re.M), err


@pytest.mark.parametrize("args, message", [
    (["--workers", "0"], "--workers must be between 1 and 4096, got 0"),
    (["--workers", "2", "--demo"], "--workers does not combine with --demo (each worker would start demo targets of its own)"),
    (["--shard", "2/2"], "--shard: INDEX must be below COUNT (2), got 2"),
    (["--external-label", "prober"], "--external-label: expected NAME=VALUE, got 'prober'"),
    (["--prober", "x", "--external-label", "job=a"], "--external-label.job: label name is reserved by connhealth"),
])
async def test_scale_flags_are_validated_before_anything_starts(args, message):
    code, out, err = await run_command([sys.executable, "-m", "exporter", "serve", *args])
    assert (code, err) == (2, f"connhealth: {message}\n")


async def test_workers_keep_a_per_group_histogram_per_worker(tmp_path):
    """Under --workers, a group's targets are split over the workers: each worker's group histograms carry
    its ``worker`` label, so the merged /metrics has no duplicate series and their sum is the group's."""
    peer = await HTTPServer().start()
    urls = [peer.url(f"/ok?t={i}") for i in range(12)]
    config = tmp_path / "targets.yml"
    config.write_text(yaml.safe_dump({"targets": [{"target": u, "module": "http_2xx", "interval": "1s",
                                                   "labels": {"service": "shop"}, "histograms": "per_group"}
                                                  for u in urls]}))
    p = await ExporterProcess(config, tmp_path, "--workers", "2").start(timeout=30)
    try:
        text = await p.wait_metrics(lambda t: _targets(t, probed=True) == set(urls), 60, "every target probed")
        keys = [line.rsplit(" ", 1)[0] for line in text.splitlines() if line and not line.startswith("#")]
        assert len(keys) == len(set(keys)), sorted(k for k in keys if keys.count(k) > 1)[:5]
        counts = samples(text, "connhealth_probe_duration_seconds_count")
        assert {(ls.get("worker"), ls["service"]) for ls, _ in counts} == {("0", "shop"), ("1", "shop")}
        assert all("target" not in ls for ls, _ in counts)
        attempts = sum(v for _, v in samples(text, ATTEMPTS))
        assert sum(v for _, v in counts) <= attempts  # every finished probe counted once, in its worker's group
        assert sum(v for _, v in counts) >= len(urls)
    finally:
        await p.astop()
        await peer.stop()
