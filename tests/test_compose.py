"""docker-compose.yml and the config files it mounts are valid, checked with the real tools.

No Docker engine runs here, so the stack itself is not started: compose is
validated with `docker-compose config`, Prometheus' config (with the generated
rules mounted as in compose) with promtool, and the wiring between services
structurally.
"""
from __future__ import annotations

import glob
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_docker_compose_config_validates() -> None:
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose (Debian package) is installed by scripts/install-system-deps.sh"
    proc = subprocess.run([exe, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_every_mounted_host_file_exists() -> None:
    for name, service in COMPOSE["services"].items():
        for volume in service.get("volumes", []):
            host = volume.split(":", 1)[0]
            assert (ROOT / host).exists(), f"{name}: {host} does not exist"


def test_prometheus_config_with_generated_rules_passes_promtool(tmp_path: Path) -> None:
    # Lay the files out as compose mounts them: prometheus.yml beside rules/.
    shutil.copy(ROOT / "deploy" / "prometheus.yml", tmp_path / "prometheus.yml")
    shutil.copytree(ROOT / "alerts" / "generated", tmp_path / "rules")
    proc = subprocess.run(["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rule_files = sorted(glob.glob(str(ROOT / "alerts" / "generated" / "*.rules.yml")))
    assert rule_files and "SUCCESS" in proc.stdout
    for path in rule_files:
        assert Path(path).name in proc.stdout


def test_alertmanager_example_passes_amtool() -> None:
    proc = subprocess.run(["amtool", "check-config", str(ROOT / "alerts" / "alertmanager.example.yml")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_traces_flow_exporter_to_collector_to_trace_store() -> None:
    command = COMPOSE["services"]["connhealth"]["command"]
    endpoint = command[command.index("--otlp.endpoint") + 1]
    assert endpoint == "http://otel-collector:4318"
    collector = yaml.safe_load((ROOT / "deploy" / "otel-collector.yml").read_text())
    assert collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")
    pipeline = collector["service"]["pipelines"]["traces"]
    for receiver in pipeline["receivers"]:
        assert receiver in collector["receivers"]
    for exporter in pipeline["exporters"]:
        assert exporter in collector["exporters"]
        assert collector["exporters"][exporter]["endpoint"].split(":")[0] in COMPOSE["services"]


def test_compose_datasources_are_what_generate_writes_for_the_stack() -> None:
    from exporter.generate import COMPOSE_LINKS, datasources

    text = (ROOT / "deploy" / "grafana-datasources.yml").read_text()
    assert text.split("\n", 3)[3] == datasources(COMPOSE_LINKS), "regenerate deploy/grafana-datasources.yml"
    volumes = COMPOSE["services"]["grafana"]["volumes"]
    assert "./deploy/grafana-datasources.yml:/etc/grafana/provisioning/datasources/connhealth.yml:ro" in volumes


def test_grafana_exemplars_point_at_the_provisioned_trace_store() -> None:
    provisioning = yaml.safe_load((ROOT / "deploy/grafana-datasources.yml").read_text())
    by_uid = {ds["uid"]: ds for ds in provisioning["datasources"]}
    prometheus = next(ds for ds in provisioning["datasources"] if ds["type"] == "prometheus")
    for dest in prometheus["jsonData"]["exemplarTraceIdDestinations"]:
        assert dest["name"] == "trace_id"  # the exemplar label connhealth writes
        assert dest["datasourceUid"] in by_uid
    assert by_uid[prometheus["jsonData"]["exemplarTraceIdDestinations"][0]["datasourceUid"]]["url"].startswith("http://jaeger:")
    assert prometheus["url"] == "http://prometheus:9090"
    assert "prometheus" in COMPOSE["services"] and "jaeger" in COMPOSE["services"]


@pytest.mark.parametrize("name", ["slo-overview", "failure-attribution", "target-detail", "exporter"])
def test_grafana_mounts_each_provisioned_dashboard(name: str) -> None:
    volumes = COMPOSE["services"]["grafana"]["volumes"]
    assert any(v.startswith(f"./dashboards/generated/{name}.json:") for v in volumes)
