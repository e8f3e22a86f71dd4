"""deploy/kubernetes/: valid for Kubernetes and the Prometheus Operator, in step with the generated rules and
dashboards, and running connhealth the way the issue asks (probes on /-/healthy and /-/ready, resources,
non-root, read-only root filesystem, shards from the StatefulSet ordinal).

Core kinds are checked with kubernetes-validate (Kubernetes' own OpenAPI schemas, strict: unknown fields are
errors). Probe, ServiceMonitor and PrometheusRule are checked with the Prometheus Operator's schemas as the
npm package @kubernetes-models/prometheus-operator ships them (generated from the operator's API types;
`make node-deps` installs it under tests/k8s/); node runs tests/k8s/validate.mjs.
"""
from __future__ import annotations

import json

import pytest
import yaml
from kubernetes_validate import validate as k8s_validate
from kubernetes_validate.utils import latest_version

from alerts.rules import rule_files
from exporter.config import load_config, parse_config
from exporter.generate import dashboard_configmaps, prometheus_rule

try:
    from tests.procs import REPO, require_binary, run_command
except ImportError:  # pragma: no cover
    from procs import REPO, require_binary, run_command  # type: ignore[no-redef]

pytestmark = pytest.mark.timeout(120)

K8S = REPO / "deploy" / "kubernetes"
EXAMPLE = REPO / "examples" / "connhealth.yml"
NODE_DIR = REPO / "tests" / "k8s"
OPERATOR_KINDS = {"Probe", "ServiceMonitor", "PrometheusRule"}


def documents() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                out.append((str(path.relative_to(K8S)), doc))
    return out


def by_kind(kind: str) -> list[dict]:
    return [d for _, d in documents() if d["kind"] == kind]


async def operator_errors(docs: list[dict]) -> tuple[list[str], list[str]]:
    node = require_binary("node", "nodejs")
    if not (NODE_DIR / "node_modules" / "@kubernetes-models" / "prometheus-operator").is_dir():
        pytest.fail("the Prometheus Operator schemas are not installed: run `make node-deps`")
    code, out, err = await run_command([node, str(NODE_DIR / "validate.mjs")], stdin=json.dumps(docs).encode(), timeout=60)
    assert code == 0, err
    result = json.loads(out)
    return result["checked"], result["errors"]


def test_core_kinds_are_valid_for_kubernetes() -> None:
    version = latest_version()
    core = [(path, d) for path, d in documents() if d["kind"] not in OPERATOR_KINDS]
    assert sorted({d["kind"] for _, d in core}) == ["ConfigMap", "Deployment", "Service", "StatefulSet"]
    for path, doc in core:
        k8s_validate(doc, version, strict=True)  # raises with the path of the first violation


async def test_operator_kinds_are_valid_for_the_prometheus_operator() -> None:
    docs = [d for _, d in documents() if d["kind"] in OPERATOR_KINDS]
    checked, errors = await operator_errors(docs)
    assert errors == []
    assert sorted(checked) == ["Probe/connhealth-websites", "PrometheusRule/connhealth", "ServiceMonitor/connhealth"]


async def test_the_validators_catch_violations() -> None:
    deployment = by_kind("Deployment")[0]
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}  # misspelt field
    with pytest.raises(Exception, match="'livenessprobe' was unexpected"):
        k8s_validate(deployment, latest_version(), strict=True)
    probe = by_kind("Probe")[0]
    probe["spec"]["interval"] = 30  # not a duration string
    rule = by_kind("PrometheusRule")[0]
    rule["spec"]["groups"][0]["rules"][0]["expr"] = ["not", "a", "string"]
    checked, errors = await operator_errors([probe, rule])
    assert checked == []
    assert errors[0].startswith("Probe/connhealth-websites: data/spec/interval must be string"), errors
    assert errors[1].startswith("PrometheusRule/connhealth: data/spec/groups/0/rules/0/expr must be"), errors


def test_prometheusrule_groups_equal_the_generated_rule_files() -> None:
    config = load_config(EXAMPLE)
    [rule] = by_kind("PrometheusRule")
    generated = [group for content in rule_files(config.slos).values() for group in content["groups"]]
    assert rule["spec"]["groups"] == generated
    committed = {p.name: yaml.safe_load(p.read_text()) for p in (REPO / "alerts" / "generated").glob("*.rules.yml")}
    assert rule["spec"]["groups"] == [g for name in rule_files(config.slos) for g in committed[name]["groups"]]
    # the committed file is exactly what `connhealth generate --format prometheusrule` writes
    assert (K8S / "common" / "prometheusrule.yaml").read_text() == prometheus_rule(config)


def test_dashboards_are_configmaps_for_grafanas_sidecar() -> None:
    assert (K8S / "common" / "dashboards.yaml").read_text() == dashboard_configmaps(load_config(EXAMPLE))
    maps = [d for d in by_kind("ConfigMap") if d["metadata"]["name"].startswith("connhealth-dashboard-")]
    generated = sorted((REPO / "dashboards" / "generated").glob("*.json"))
    assert len(maps) == len(generated) == 4
    for cm, path in zip(sorted(maps, key=lambda d: d["metadata"]["name"]), generated):
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["data"] == {f"connhealth-{path.stem}.json": path.read_text()}


@pytest.mark.parametrize("kind", ["Deployment", "StatefulSet"])
def test_pods_are_probed_bounded_and_locked_down(kind: str) -> None:
    [workload] = by_kind(kind)
    pod = workload["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/-/healthy", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/-/ready", "port": "http"}
    assert set(container["resources"]["requests"]) == {"cpu", "memory"}
    assert set(container["resources"]["limits"]) == {"cpu", "memory"}
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {"/etc/connhealth", "/tmp"}  # the config, and a writable /tmp for --workers' sockets
    assert container["args"][0] == "serve" and "--config.file=/etc/connhealth/connhealth.yml" in container["args"]
    selector = workload["spec"]["selector"]["matchLabels"]
    [service] = [s for s in by_kind("Service") if s["metadata"]["name"] == "connhealth"]
    assert service["spec"]["selector"] == selector == workload["spec"]["template"]["metadata"]["labels"]


def test_statefulset_shards_follow_the_replica_count() -> None:
    [sts] = by_kind("StatefulSet")
    env = {e["name"]: e["value"] for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["CONNHEALTH_SHARD"] == f"ordinal/{sts['spec']['replicas']}"
    [headless] = [s for s in by_kind("Service") if s["metadata"]["name"] == sts["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"


async def test_the_configmaps_config_is_valid_and_the_probe_uses_its_modules() -> None:
    [cm] = [d for d in by_kind("ConfigMap") if d["metadata"]["name"] == "connhealth-config"]
    config = parse_config(cm["data"]["connhealth.yml"])
    assert config.targets and dict(config.external_labels) == {"cluster": "prod-1"}
    [probe] = by_kind("Probe")
    assert probe["spec"]["module"] in config.modules
    assert probe["spec"]["prober"] == {"url": "connhealth:9115", "path": "/probe"}
