"""The metric contract module and docs/metrics.md stay in step."""
from pathlib import Path

from exporter import metrics as m

DOC = (Path(__file__).parent.parent / "docs" / "metrics.md").read_text()


def test_every_contract_metric_is_documented_with_its_type_and_labels() -> None:
    for spec in m.CONTINUOUS + m.SELF + m.PROBE_ENDPOINT_EXTRA:
        labels = ", ".join(f"`{label}`" for label in spec.labels) or "—"
        assert f"| `{spec.name}` | {spec.type} | {labels} |" in DOC, spec.name


def test_metric_names_are_unique_and_well_formed() -> None:
    names = [s.name for s in m.CONTINUOUS + m.SELF + m.PROBE_ENDPOINT_EXTRA]
    assert len(names) == len(set(names))
    for spec in m.CONTINUOUS + m.SELF + m.PROBE_ENDPOINT_EXTRA:
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
