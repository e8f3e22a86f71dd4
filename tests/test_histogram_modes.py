"""``histograms: per_target | per_group | none``: where a target group's histograms are kept.

The store is fed real result values (as the scheduler hands them over) and read back
through its exposition; the SLO rules are run by the real promtool on what it exposes.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from exporter import metrics as m
from exporter.config import parse_config
from exporter.result import Failure, Phase, ProbeResult
from exporter.sinks.store import SeriesStore

try:
    from tests import procs
    from tests.procs import samples, value
except ImportError:  # pragma: no cover - depends on how pytest put us on sys.path
    import procs  # type: ignore[no-redef]
    from procs import samples, value  # type: ignore[no-redef]

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parent.parent
N_LES = len(m.DEFAULT_BUCKETS) + 1
API = (("cluster", "c1"), ("service", "api"))


def result(target: str, connect: float, ok: bool = True) -> ProbeResult:
    return ProbeResult(target=target, module="tcp_connect", prober="tcp", started_at=1000.0, duration_seconds=connect,
                       timeout_seconds=5.0, timeline=(Phase("connect", 0.0, connect),),
                       failure=None if ok else Failure("connect", "connect_timeout", "timed out"))


def key(target: str, labels: tuple[tuple[str, str], ...] = API) -> tuple[str, str, tuple[tuple[str, str], ...]]:
    return (target, "tcp_connect", labels)


def store_with(modes: dict[str, str], labels: tuple[tuple[str, str], ...] = API) -> SeriesStore:
    store = SeriesStore(["cluster", "service"])
    store.sync({key(t, labels): ("connect",) for t in modes}, None, {key(t, labels): mode for t, mode in modes.items()})
    return store


def test_per_group_sums_the_groups_histograms_and_keeps_every_targets_counters() -> None:
    store = store_with({"a:1": m.PER_GROUP, "b:1": m.PER_GROUP})
    store.observe(*key("a:1"), result("a:1", 0.004))
    store.observe(*key("a:1"), result("a:1", 0.04))
    store.observe(*key("b:1"), result("b:1", 0.4, ok=False))
    text = store.render().decode()
    group = {"module": "tcp_connect", "service": "api", "cluster": "c1", "region": ""}
    # One histogram set for the group, labelled by the module and group_labels (no target).
    counts = samples(text, m.PHASE_DURATION + "_count")
    assert counts == [({**group, "phase": "connect"}, 3.0)]
    buckets = {ls["le"]: v for ls, v in samples(text, m.PHASE_DURATION + "_bucket")}
    assert (buckets["0.005"], buckets["0.05"], buckets["0.5"], buckets["+Inf"]) == (1, 2, 3, 3)
    assert value(text, m.PHASE_DURATION + "_sum", phase="connect") == pytest.approx(0.444)
    assert samples(text, m.PROBE_DURATION + "_count") == [(group, 3.0)]
    # Counters and gauges stay per target.
    assert value(text, m.PROBE_ATTEMPTS, target="a:1") == 2 and value(text, m.PROBE_ATTEMPTS, target="b:1") == 1
    assert value(text, m.PROBE_FAILURES, target="b:1", phase="connect", reason="connect_timeout") == 1
    assert value(text, m.PROBE_SUCCESS, target="b:1") == 0


def test_per_group_keeps_groups_apart_by_module_and_group_labels() -> None:
    store = SeriesStore(["region", "service"], group_labels=("service",))
    a, b, c = (key("a:1", (("region", "eu"), ("service", "api"))), key("b:1", (("region", "us"), ("service", "api"))),
               key("c:1", (("service", "web"),)))
    store.sync({k: ("connect",) for k in (a, b, c)}, None, dict.fromkeys((a, b, c), m.PER_GROUP))
    for k in (a, b, c):
        store.observe(*k, result(k[0], 0.01))
    text = store.render().decode()
    # region is not a group label: eu and us are one group.
    assert sorted((ls["service"], v) for ls, v in samples(text, m.PHASE_DURATION + "_count")) == [("api", 2), ("web", 1)]
    assert all(set(ls) == {"module", "service", "phase"} for ls, _ in samples(text, m.PHASE_DURATION + "_count"))


def test_none_exports_no_histograms_and_per_target_stays_as_before() -> None:
    store = store_with({"a:1": m.NO_HISTOGRAMS, "b:1": m.PER_TARGET})
    store.observe(*key("a:1"), result("a:1", 0.01))
    store.observe(*key("b:1"), result("b:1", 0.01))
    text = store.render().decode()
    assert [ls["target"] for ls, _ in samples(text, m.PHASE_DURATION + "_count")] == ["b:1"]
    assert [ls["target"] for ls, _ in samples(text, m.PROBE_DURATION + "_count")] == ["b:1"]
    assert len([ls for ls, _ in samples(text, m.PHASE_DURATION + "_bucket") if ls["target"] == "b:1"]) == N_LES
    assert value(text, m.PROBE_ATTEMPTS, target="a:1") == 1 and value(text, m.TCP_SYN_RETRANSMITS, target="a:1") == 0


def test_a_group_exists_at_0_while_one_of_its_targets_is_scheduled_and_goes_with_the_last() -> None:
    store = store_with({"a:1": m.PER_GROUP, "b:1": m.PER_GROUP})
    text = store.render().decode()
    assert samples(text, m.PHASE_DURATION + "_count") == [
        ({"module": "tcp_connect", "service": "api", "cluster": "c1", "region": "", "phase": "connect"}, 0.0)]
    store.observe(*key("a:1"), result("a:1", 0.01))
    store.sync({key("b:1"): ("connect",)}, None, {key("b:1"): m.PER_GROUP})
    assert value(store.render().decode(), m.PHASE_DURATION + "_count", phase="connect") == 1  # a's probe stays counted
    store.sync({key("b:1"): ("connect",)}, None, {key("b:1"): m.PER_TARGET})
    text = store.render().decode()
    assert [ls.get("target") for ls, _ in samples(text, m.PHASE_DURATION + "_count")] == ["b:1"]
    assert not store.groups


def test_a_reload_that_changes_the_group_labels_regroups() -> None:
    store = store_with({"a:1": m.PER_GROUP})
    store.observe(*key("a:1"), result("a:1", 0.01))
    store.set_group_labels(("cluster",))
    store.sync({key("a:1"): ("connect",)}, None, {key("a:1"): m.PER_GROUP})
    assert samples(store.render().decode(), m.PHASE_DURATION + "_count") == [
        ({"module": "tcp_connect", "cluster": "c1", "phase": "connect"}, 0.0)]


def test_10k_targets_per_group_scrape_is_a_fraction_of_per_target() -> None:
    """The issue's scale case: 10k tcp targets of 10 services."""
    sizes = {}
    for mode in (m.PER_TARGET, m.PER_GROUP, m.NO_HISTOGRAMS):
        store = SeriesStore(["cluster", "region", "service"])
        keys = [key(f"127.0.{i // 250}.{i % 250}:{9000 + i}", (("cluster", "c1"), ("region", "eu"), ("service", f"s{i % 10}")))
                for i in range(10_000)]
        store.sync(dict.fromkeys(keys, ("connect",)), None, dict.fromkeys(keys, mode))
        for k in keys:
            store.observe(*k, result(k[0], 0.01), 30.0, 30.0, 30.0)
        body = store.render()
        sizes[mode] = (len(body), sum(1 for line in body.split(b"\n") if line and not line.startswith(b"#")))
    lines = {mode: n for mode, (_, n) in sizes.items()}
    # This result's target: 2 histograms x (13 buckets + sum + count) = 30 of its 39 lines.
    assert lines[m.PER_TARGET] == 39 * 10_000
    assert lines[m.PER_GROUP] == 9 * 10_000 + 10 * 30
    assert lines[m.NO_HISTOGRAMS] == 9 * 10_000
    assert sizes[m.PER_GROUP][0] * 4 < sizes[m.PER_TARGET][0]


def test_slo_rules_compute_the_latency_sli_from_per_group_series(tmp_path: Path) -> None:
    """The generated SLO rules (examples/connhealth.yml: api, 95 % of connects <= 300 ms), run by promtool on the
    series a per_group store exposes: 3 fast connects of one target and 1 slow of another -> 25 % errors."""
    store = store_with({"a:1": m.PER_GROUP, "b:1": m.PER_GROUP})
    before = store.render().decode()
    for connect in (0.01, 0.02, 0.03):
        store.observe(*key("a:1"), result("a:1", connect))
    store.observe(*key("b:1"), result("b:1", 0.5))
    after = store.render().decode()
    series = []
    for name in (m.PHASE_DURATION + "_count", m.PHASE_DURATION + "_bucket", m.PROBE_ATTEMPTS):
        old = {tuple(sorted(ls.items())): v for ls, v in samples(before, name)}
        for labels, v in samples(after, name):
            shown = ",".join(f'{k}="{x}"' for k, x in sorted(labels.items()) if x)
            series.append({"series": f"{name}{{{shown}}}", "values": f"{old[tuple(sorted(labels.items()))]:g}x9 {v:g}x60"})
    test = {
        "rule_files": [str(REPO / "alerts" / "generated" / "connhealth-slo.rules.yml")],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": series,
            "promql_expr_test": [{
                "expr": 'connhealth_slo:error_ratio{service="api",slo="latency",window="1h"}',
                "eval_time": "60m",
                "exp_samples": [{"labels": 'connhealth_slo:error_ratio{service="api",slo="latency",window="1h"}',
                                 "value": 0.25}],
            }],
        }],
    }
    path = tmp_path / "per_group_test.yml"
    path.write_text(yaml.safe_dump(test))
    promtool = procs.require_binary("promtool", "prometheus")
    r = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=100)
    assert r.returncode == 0, r.stdout + r.stderr


def test_config_sets_the_mode_per_target_group_with_the_schedulers_as_default() -> None:
    config = parse_config("""
modules: {tcp: {prober: tcp}}
scheduler: {histograms: per_group, group_labels: [service]}
targets:
  - {target: "127.0.0.1:1", module: tcp}
  - {target: "127.0.0.1:2", module: tcp, histograms: none}
target_files:
  - {files: ["/nonexistent/*.json"], module: tcp, histograms: per_target}
""")
    assert config.scheduler.group_labels == ("service",)
    assert [t.histograms for t in config.targets] == [m.PER_GROUP, m.NO_HISTOGRAMS]
    assert config.target_files[0].histograms == m.PER_TARGET
    assert parse_config("modules: {}").scheduler.group_labels == m.DEFAULT_GROUP_LABELS


async def test_serve_exports_per_group_histograms_from_a_target_files_group(tmp_path: Path) -> None:
    """A real ``connhealth serve`` probing two loopback listeners listed in a file_sd file with ``histograms: per_group``,
    next to a static per_target target."""
    import json
    import socket

    listeners = []
    for _ in range(3):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        listeners.append(s)
    a, b, c = (f"127.0.0.1:{s.getsockname()[1]}" for s in listeners)
    (tmp_path / "targets.json").write_text(json.dumps([{"targets": [a, b], "labels": {"service": "api"}}]))
    cfg = tmp_path / "connhealth.yml"
    cfg.write_text(f"""
modules:
  tcp: {{prober: tcp, timeout: 5s, tcp: {{preferred_ip_protocol: ip4}}}}
scheduler: {{group_labels: [service]}}
targets:
  - {{target: "{c}", module: tcp, interval: 1s, labels: {{service: web}}}}
target_files:
  - {{files: ["{tmp_path / 'targets.json'}"], module: tcp, interval: 1s, histograms: per_group}}
""")
    exporter = await procs.ExporterProcess(cfg, tmp_path).start()
    try:
        text = await exporter.wait_metrics(
            lambda t: all((value(t, m.PROBE_ATTEMPTS, target=x) or 0) >= 2 for x in (a, b, c)), 20.0, "two probes of each")
        counts = {tuple(sorted(ls.items())): v for ls, v in samples(text, m.PHASE_DURATION + "_count")}
        group = (("module", "tcp"), ("phase", "connect"), ("service", "api"))
        assert set(counts) == {group, (("module", "tcp"), ("phase", "connect"), ("service", "web"), ("target", c))}
        assert counts[group] >= 4
        assert [ls for ls, _ in samples(text, m.PROBE_DURATION + "_count") if ls.get("target") in (a, b)] == []
    finally:
        await exporter.astop()
        for s in listeners:
            s.close()
