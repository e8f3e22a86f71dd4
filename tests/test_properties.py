"""Property tests (hypothesis) for the config loader, the target parsers and the exposition output.

Whatever the input, the config loader returns a Config whose numbers are all finite and in range,
or raises a short ConfigError; a target parser accepts a target or says invalid_target; the
exposition always parses as Prometheus text (and OpenMetrics) and says what the result says.

Time-bounded in ``make test`` (profile "ci": few examples, no database writes in CI); ``make fuzz``
runs the same properties with profile "fuzz" (many more examples).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from exporter.config import (
    MAX_INTERVAL, MAX_TIMEOUT, MIN_INTERVAL, Config, TargetFiles, builtin_modules, config_from_data, parse_config,
    parse_labels,
)
from exporter.failures import REASONS, ProbeFailure
from exporter.probers import PROBERS
from exporter.result import Failure, Phase, ProbeResult
from exporter.schema import MAX_MESSAGE, ConfigError, split_host_port
from exporter.sinks.exposition import probe_text
from exporter.sinks.store import SeriesStore
from exporter.targets import _file_targets

settings.register_profile("ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                          database=None)
settings.register_profile("fuzz", max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

pytestmark = pytest.mark.timeout(int(os.environ.get("HYPOTHESIS_TIMEOUT", "120")))

# --- config --------------------------------------------------------------------------------------
# Keys the schema knows, so generated documents get past the first "unknown field" and deep into it.
KEYS = ["modules", "scheduler", "targets", "target_files", "prober", "http", "tcp", "timeout", "interval",
        "min_interval", "default_interval", "file_refresh_interval", "concurrency", "buckets", "phase_timeouts",
        "connect", "dns", "tls", "first_byte", "resolver", "nameservers", "labels", "target", "module", "files",
        "valid_status_codes", "body_size_limit", "headers", "method", "fail_if_body_matches_regexp",
        "query_response", "expect", "send", "tracing", "baggage", "preferred_ip_protocol", "m", "web"]
NUMBERS = st.one_of(st.integers(-10**6, 10**12), st.floats(allow_nan=True, allow_infinity=True))
DURATIONS = st.one_of(st.sampled_from(["5s", "100ms", "1m30s", "0s", "1y", "9999999999999d", "-1s", "1e308", ".5s", ""]),
                      st.from_regex(r"\d{1,12}(ms|s|m|h|d|w|y)", fullmatch=True))
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, DURATIONS, st.text(max_size=12),
                    st.sampled_from(["http", "tcp", "http_2xx", "tcp_connect", "127.0.0.1:1", "http://127.0.0.1:1/"]))
DOCS = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=6)), inner, max_size=5)),
    max_leaves=30,
)


def _check_config(config: Config) -> None:
    s = config.scheduler
    assert 1 <= s.concurrency <= 100_000
    for interval in (s.default_interval, s.min_interval, s.file_refresh_interval):
        assert MIN_INTERVAL <= interval <= MAX_INTERVAL
    assert all(math.isfinite(b) and 0 < b <= MAX_TIMEOUT for b in s.buckets)
    for t in list(config.targets) + list(config.target_files):
        assert MIN_INTERVAL <= t.interval <= MAX_INTERVAL
        assert t.timeout is None or 0 <= t.timeout <= MAX_TIMEOUT
    for module in config.modules.values():
        assert module.timeout is None or 0 < module.timeout <= MAX_TIMEOUT
        assert all(0 <= v <= MAX_TIMEOUT for _, v in module.phase_timeouts)


def _load(data: Any) -> None:
    try:
        config = config_from_data(data, "generated")
    except ConfigError as exc:
        assert len(str(exc)) <= MAX_MESSAGE + 60
        return
    _check_config(config)


@given(DOCS)
def test_config_from_any_document_is_valid_or_a_short_config_error(data: Any) -> None:
    _load(data)


@given(st.dictionaries(st.sampled_from(["modules", "scheduler", "targets"]), DOCS, min_size=1))
def test_config_from_any_top_level_mapping_is_valid_or_a_short_config_error(data: dict[str, Any]) -> None:
    _load(data)


@given(st.fixed_dictionaries({"scheduler": st.dictionaries(
    st.sampled_from(["min_interval", "default_interval", "file_refresh_interval", "concurrency", "buckets"]),
    st.one_of(NUMBERS, DURATIONS, st.lists(NUMBERS, max_size=4)))}))
def test_scheduler_numbers_are_finite_and_in_range_or_refused(data: dict[str, Any]) -> None:
    _load(data)


@given(st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))))
def test_config_from_any_text_is_valid_or_a_short_config_error(text: str) -> None:
    try:
        config = parse_config(text, "generated")
    except ConfigError as exc:
        assert len(str(exc)) <= MAX_MESSAGE + 60
        return
    _check_config(config)


# --- target parsers ------------------------------------------------------------------------------
TARGET_TEXT = st.one_of(
    st.text(max_size=60),
    st.builds(lambda scheme, host, port, path: f"{scheme}{host}{port}{path}",
              st.sampled_from(["http://", "https://", "ftp://", "", "HTTP://", "http:"]),
              st.one_of(st.text(max_size=70), st.sampled_from(["127.0.0.1", "[::1]", "[fe80::1%25lo]", "a" * 64, "xn--"])),
              st.one_of(st.just(""), st.text(max_size=7).map(lambda t: ":" + t), st.integers(-5, 70000).map(lambda i: f":{i}")),
              st.text(max_size=20)),
)


@given(TARGET_TEXT, st.sampled_from(sorted(PROBERS)))
def test_a_target_is_accepted_or_invalid_target(target: str, prober: str) -> None:
    try:
        PROBERS[prober].check_target(target)
    except ProbeFailure as exc:
        assert exc.reason == "invalid_target"
        assert len(exc.message) < 1000


@given(st.text(max_size=60), st.one_of(st.none(), st.integers(1, 65535)))
def test_split_host_port_gives_a_valid_port_or_a_value_error(target: str, default: int | None) -> None:
    try:
        host, port = split_host_port(target, default)
    except ValueError as exc:
        assert len(str(exc)) < 400
        return
    assert 0 < port < 65536


FILE_SD = st.lists(st.fixed_dictionaries({}, optional={
    "targets": st.one_of(st.lists(st.one_of(TARGET_TEXT, NUMBERS, st.none()), max_size=4), SCALARS),
    "labels": st.one_of(st.dictionaries(st.one_of(st.text(max_size=8), st.sampled_from(["module", "env", "__x"])),
                                        st.one_of(SCALARS, st.lists(SCALARS, max_size=2)), max_size=3), SCALARS),
}), max_size=4)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.one_of(FILE_SD, DOCS), st.sampled_from(["yml", "json"]), st.booleans())
def test_a_target_file_gives_targets_or_a_config_error(tmp_path: Path, data: Any, ext: str, raw: bool) -> None:
    path = tmp_path / f"sd.{ext}"
    if raw:
        text = yaml.safe_dump(data) if ext == "yml" else json.dumps(data, allow_nan=True)
    else:
        text = json.dumps(data) if ext == "json" else yaml.safe_dump(data, default_flow_style=True)
    path.write_text(text)
    tf = TargetFiles(files=(str(path),), module=None, interval=30.0, timeout=None)
    config = Config(modules=builtin_modules(), target_files=(tf,))
    try:
        targets = _file_targets(str(path), tf, config)
    except ConfigError as exc:
        assert len(str(exc)) <= MAX_MESSAGE + 60
        return
    for t in targets:
        assert isinstance(t.target, str) and t.target and t.module in config.modules
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in t.labels)


# --- exposition ------------------------------------------------------------------------------------
FINITE = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)
PHASES = st.sampled_from(["dns", "connect", "tls", "request", "first_byte", "transfer"])
RESULTS = st.builds(
    lambda target, module, prober, duration, timeout, phases, failure, regex: ProbeResult(
        target=target, module=module, prober=prober, started_at=1.7e9, duration_seconds=duration,
        timeout_seconds=timeout, timeline=tuple(Phase(name, start, d) for name, start, d in phases),
        failure=failure, failed_due_to_regex=regex),
    st.text(max_size=40), st.text(max_size=12), st.sampled_from(sorted(PROBERS)), FINITE, FINITE,
    st.lists(st.tuples(PHASES, FINITE, FINITE), max_size=6),
    st.one_of(st.none(), st.builds(Failure, st.one_of(PHASES, st.just("probe")), st.sampled_from(sorted(REASONS)),
                                   st.text(max_size=40))),
    st.booleans(),
)


@given(RESULTS)
def test_probe_exposition_always_parses_and_says_what_the_result_says(result: ProbeResult) -> None:
    text = probe_text(result)
    families = {f.name: f for f in parse_text(text)}
    success = [s.value for s in families["probe_success"].samples]
    assert success == [1.0 if result.success else 0.0]
    failure_info = families.get("probe_failure_info")
    if result.failure is None:
        assert failure_info is None or not failure_info.samples
    else:
        assert [(s.labels, s.value) for s in failure_info.samples] == [
            ({"phase": result.failure.phase, "reason": result.failure.reason}, 1.0)]


LABEL_VALUES = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=20)


@given(st.lists(st.tuples(st.text(min_size=1, max_size=30), st.dictionaries(
    st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True).filter(lambda n: n not in ("target", "module", "phase", "reason", "le")),
    LABEL_VALUES, max_size=2), RESULTS), min_size=1, max_size=4), st.booleans())
def test_continuous_exposition_always_parses_and_keeps_every_label_value(
        series: list[tuple[str, dict[str, str], ProbeResult]], openmetrics: bool) -> None:
    # Labels as the config hands them over (an empty one is no label).
    series = [(t, dict(parse_labels(labels, "labels")), r) for t, labels, r in series]
    names = {n for _, labels, _ in series for n in labels}
    store = SeriesStore(names)
    for target, labels, result in series:
        store.observe(target, "m", tuple(sorted(labels.items())), result)
    body = b"".join(store.render_chunks(openmetrics=openmetrics)).decode()
    if openmetrics:
        families = list(parse_openmetrics(body + "# EOF\n"))
    else:
        families = list(parse_text(body))
    attempts = [s for f in families for s in f.samples if s.name == "connhealth_probe_attempts_total"]
    seen = {(s.labels["target"], tuple(sorted((k, v) for k, v in s.labels.items() if k not in ("target", "module") and v)))
            for s in attempts}
    assert seen == {(t, tuple(sorted((k, v) for k, v in labels.items() if v))) for t, labels, _ in series}
