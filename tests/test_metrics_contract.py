"""The metric contract module and docs/metrics.md stay in step."""
from pathlib import Path

from exporter import metrics as m
from exporter.probers import PROBERS

DOC = (Path(__file__).parent.parent / "docs" / "metrics.md").read_text()


def test_every_contract_metric_is_documented_with_its_type_and_labels() -> None:
    for spec in m.CONTINUOUS + m.SELF + m.WORKERS + m.PROBE_ENDPOINT_EXTRA:
        labels = ", ".join(f"`{label}`" for label in spec.labels) or "—"
        assert f"| `{spec.name}` | {spec.type} | {labels} |" in DOC, spec.name


def test_metric_names_are_unique_and_well_formed() -> None:
    names = [s.name for s in m.CONTINUOUS + m.SELF + m.WORKERS + m.PROBE_ENDPOINT_EXTRA]
    assert len(names) == len(set(names))
    for spec in m.CONTINUOUS + m.SELF + m.WORKERS + m.PROBE_ENDPOINT_EXTRA:
        if spec.type == "counter":
            assert spec.name.endswith("_total"), spec.name
        if spec.type == "histogram":
            assert spec.name.endswith("_seconds"), spec.name


def test_default_buckets_contain_the_300ms_slo_threshold() -> None:
    assert 0.3 in m.DEFAULT_BUCKETS
    assert list(m.DEFAULT_BUCKETS) == sorted(set(m.DEFAULT_BUCKETS))


def test_docs_state_the_default_buckets_of_the_code() -> None:
    listed = ", ".join(str(b) for b in m.DEFAULT_BUCKETS)
    assert f"`{listed}`" in DOC


def test_every_probers_own_family_is_documented_and_well_formed() -> None:
    specs = [spec for prober in PROBERS.values() for spec in prober.metrics]
    assert specs, "no prober declares families of its own"
    contract = {s.name for s in m.CONTINUOUS + m.SELF + m.PROBE_ENDPOINT_EXTRA}
    for spec in specs:
        labels = ", ".join(f"`{label}`" for label in spec.labels)
        assert f"| `{spec.name}` | {spec.type} | {labels} | {spec.help} |" in DOC, spec.name
        assert spec.name not in contract and spec.labels == m.TARGET_LABELS
        assert spec.name.endswith("_total") == (spec.type == "counter"), spec.name
        if spec.type == "histogram":
            assert spec.name.endswith("_seconds") and list(spec.buckets) == sorted(set(spec.buckets))
            assert f"`{', '.join(str(b) for b in spec.buckets)}`" in DOC
