"""The continuous-mode exposition, byte for byte, against a stored expectation.

The store's renderer is tuned for speed (issue 15: a 10k-target scrape). This pins its output: a store
holding every kind of series it renders (every counter and gauge, failures with and without exemplars,
histograms per_target / per_group / none, TLS, keep-alive and resumption checks, the probers' own
counters, gauges and histograms, label values that need escaping, a label a target lacks, external and
group-only labels) must render exactly ``tests/data/exposition_golden.txt`` (text format) and
``tests/data/exposition_golden.om.txt`` (OpenMetrics, with exemplars). Both files were written by the
renderer before it was rewritten for speed, so the rewrite changed no byte.

To rewrite them after an intended change of the exposition: ``python -m tests.test_exposition_golden``
(then review the diff).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter import metrics as m
from exporter.result import Failure, KeepAlive, Phase, ProbeResult, TCPInfo, TLSInfo, TLSResumption
from exporter.sinks import store as store_module
from exporter.sinks.exposition import fmt
from exporter.sinks.store import SeriesStore

DATA = Path(__file__).resolve().parent / "data"
TEXT, OPENMETRICS = DATA / "exposition_golden.txt", DATA / "exposition_golden.om.txt"

TCP_PHASES = ("connect",)
HTTP_PHASES = ("dns", "connect", "tls", "request", "first_byte", "transfer")


def _result(target: str, module: str, prober: str, at: float, duration: float, *, phases: tuple[str, ...],
            failure: Failure | None = None, trace_id: str | None = None, tls: bool = False, rtt: float | None = 0.0004,
            retransmits: int = 0, keepalive: KeepAlive | None = None, resumption: TLSResumption | None = None) -> ProbeResult:
    step = duration / (len(phases) + 1)
    return ProbeResult(
        target=target, module=module, prober=prober, started_at=at, duration_seconds=duration, timeout_seconds=5.0,
        timeline=tuple(Phase(p, i * step, step) for i, p in enumerate(phases)), failure=failure,
        tcp=TCPInfo(rtt, rtt / 2, retransmits) if rtt is not None else None,
        tls=TLSInfo("TLS 1.3", "TLS_AES_128_GCM_SHA256", None, "example.test", "verified") if tls else None,
        keepalive=keepalive, resumption=resumption, trace_id=trace_id, sampled=trace_id is not None)


def build_store() -> SeriesStore:
    """A store with one series of every shape the renderer knows, fed through observe as the scheduler does."""
    store = SeriesStore(["cluster", "service", "team"], external_labels=(("region", "eu-1"),),
                        group_only=(("worker", "0"),))
    keys = {
        "tcp-ok": ("127.0.0.1:9000", "tcp_connect", (("cluster", "c1"), ("service", "api"))),
        "tcp-fail": ("127.0.0.2:9000", "tcp_connect", (("cluster", "c1"), ("service", "api"))),
        "tcp-group": ("127.0.0.3:9000", "tcp_connect", (("cluster", "c1"), ("service", "db"))),
        "tcp-group2": ("127.0.0.4:9000", "tcp_connect", (("cluster", "c1"), ("service", "db"))),
        "tcp-none": ("127.0.0.5:9000", "tcp_connect", (("service", 'we"ird\\na\nme'), ("region", "us"))),
        "https": ("https://example.test/", "https_2xx", (("cluster", "c2"), ("service", "web"), ("team", "t"))),
        "sse": ("https://example.test/events", "sse", (("cluster", "c2"), ("service", "web"))),
        "idle": ("127.0.0.9:9000", "tcp_connect", (("cluster", "c3"),)),
    }
    modes = {"tcp-ok": m.PER_TARGET, "tcp-fail": m.PER_TARGET, "tcp-group": m.PER_GROUP, "tcp-group2": m.PER_GROUP,
             "tcp-none": m.NO_HISTOGRAMS, "https": m.PER_TARGET, "sse": m.PER_GROUP, "idle": m.PER_TARGET}
    phases = {k: HTTP_PHASES if k in ("https", "sse") else TCP_PHASES for k in keys}
    sse_families = [m.SSE_HEARTBEAT_GAP, m.SSE_MAX_GAP, m.SSE_EVENTS, m.SSE_HEARTBEATS]
    store.sync({keys[k]: phases[k] for k in keys}, {keys["sse"]: sse_families},
               {keys[k]: modes[k] for k in keys})

    t0 = 1_764_540_000.125
    observe = store.observe
    observe(*keys["tcp-ok"], _result(keys["tcp-ok"][0], "tcp_connect", "tcp", t0, 0.000731, phases=TCP_PHASES),
            15.0, 15.0, 15.0)
    observe(*keys["tcp-ok"], _result(keys["tcp-ok"][0], "tcp_connect", "tcp", t0 + 15, 0.25, phases=TCP_PHASES,
                                     trace_id="0af7651916cd43dd8448eb211c80319c"), 15.0, 15.0, 15.0)
    for i, (reason, trace) in enumerate([("connect_refused", "4bf92f3577b34da6a3ce929d0e0e4736"),
                                         ("connect_refused", None), ("connect_timeout", None)]):
        observe(*keys["tcp-fail"], _result(keys["tcp-fail"][0], "tcp_connect", "tcp", t0 + i, 0.002 * (i + 1),
                                           phases=(), failure=Failure("connect", reason, "no"), trace_id=trace,
                                           rtt=None), 7.5, 0.0, 30.0)
    for k, d in (("tcp-group", 0.0011), ("tcp-group2", 7.0), ("tcp-group", 1e-7)):
        observe(*keys[k], _result(keys[k][0], "tcp_connect", "tcp", t0, d, phases=TCP_PHASES, retransmits=2,
                                  trace_id="00000000000000000000000000000001"), 1.0 / 3, 0.1, 60.0)
    observe(*keys["tcp-none"], _result(keys["tcp-none"][0], "tcp_connect", "tcp", t0, 0.5, phases=TCP_PHASES,
                                       rtt=1e-5), 123456789.5, 0.0, 0.5)
    observe(*keys["https"], _result(keys["https"][0], "https_2xx", "http", t0, 0.0421, phases=HTTP_PHASES, tls=True,
                                    keepalive=KeepAlive(4.0, True, "silence", 2.5),
                                    resumption=TLSResumption(True, True, 0.0123, 0.0031, "TLSv1.3")), 30.0, 30.0, 30.0)
    store.series[keys["https"]].cert_expiry = 1_800_000_000.0  # TLSInfo without a chain has no expiry
    observe(*keys["sse"], _result(keys["sse"][0], "sse", "sse", t0, 10.0, phases=HTTP_PHASES, tls=True,
                                  keepalive=KeepAlive(1.0, False, "fin", None),
                                  resumption=TLSResumption(False, False, 0.02, None)), 10.0, 10.0, 10.0)
    sse = store.series[keys["sse"]]
    sse.extra[m.SSE_MAX_GAP] = 2.75
    sse.extra[m.SSE_EVENTS] = 12.0
    assert sse.hists is not None
    sse.hists.observe_extra(store.extra_specs[m.SSE_HEARTBEAT_GAP], store.bounds, 1.5)
    sse.group.invalidate()  # type: ignore[union-attr]
    sse.invalidate()
    return store


def test_the_exposition_is_byte_identical_to_the_stored_one() -> None:
    store = build_store()
    assert store.render().decode() == TEXT.read_text()
    assert b"".join(store.render_chunks(openmetrics=True)).decode() == OPENMETRICS.read_text()


def test_a_cached_render_and_a_render_in_small_slices_and_pieces_are_the_same_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    store = build_store()
    first = store.render()
    assert store.render() == first  # every target's lines from its cache now
    assert b"".join(store.render_chunks(chunk_targets=1)) == first
    assert b"".join(store.render_chunks(chunk_targets=3, openmetrics=True)).decode() == OPENMETRICS.read_text()
    monkeypatch.setattr(store_module, "CHUNK_BYTES", 300)  # a family in several pieces, some of them empty
    pieces = list(store.render_chunks(chunk_targets=2))
    assert b"".join(pieces) == first
    first_family = -(-(len(store.series) + len(store.groups)) // 2)  # one piece per slice of 2
    assert any(p and not p.startswith(b"# HELP") for p in pieces[first_family:])  # a family's second piece


def test_a_changed_value_is_rendered_after_the_cached_render() -> None:
    store = build_store()
    store.render()
    key = ("127.0.0.1:9000", "tcp_connect", (("cluster", "c1"), ("service", "api")))
    store.observe(*key, _result(key[0], "tcp_connect", "tcp", 1_764_540_100.5, 0.001, phases=TCP_PHASES), 15.0, 15.0, 15.0)
    text = store.render().decode()
    base = 'target="127.0.0.1:9000",module="tcp_connect",cluster="c1",service="api",team="",region="eu-1"'
    assert f"{m.PROBE_ATTEMPTS}{{{base}}} 3\n" in text
    assert f"{m.LAST_PROBE}{{{base}}} 1764540100.501\n" in text
    assert f"{m.OBSERVED_SECONDS}{{{base}}} 45\n" in text


def test_lines_kept_between_renders_follow_a_change_of_their_value_or_labels() -> None:
    store = build_store()
    store.render()
    key = ("127.0.0.1:9000", "tcp_connect", (("cluster", "c1"), ("service", "api")))
    base = 'target="127.0.0.1:9000",module="tcp_connect",cluster="c1",service="api",team="",region="eu-1"'
    store.observe(*key, _result(key[0], "tcp_connect", "tcp", 1_764_540_100.5, 0.001, phases=TCP_PHASES, retransmits=3),
                  15.0, 15.0, 15.0)  # only the retransmits change among the lines kept
    text = store.render().decode()
    for line in (f"{m.PROBE_SUCCESS}{{{base}}} 1", f"{m.PROBE_INTERVAL}{{{base}}} 15", f"{m.TCP_RETRANSMITS}{{{base}}} 3",
                 f"{m.TCP_SYN_RETRANSMITS}{{{base}}} 3"):
        assert line + "\n" in text, line
    store.observe(*key, _result(key[0], "tcp_connect", "tcp", 1_764_540_115.5, 0.001, phases=(),
                                failure=Failure("connect", "connect_refused", "no"), retransmits=0), 15.0, 7.5, 20.0)
    text = store.render().decode()
    for line in (f"{m.PROBE_SUCCESS}{{{base}}} 0", f"{m.PROBE_INTERVAL}{{{base}}} 20", f"{m.TCP_RETRANSMITS}{{{base}}} 0",
                 f"{m.TCP_SYN_RETRANSMITS}{{{base}}} 3", f"{m.LAST_SUCCESS}{{{base}}} 1764540100.501"):
        assert line + "\n" in text, line
    store.set_label_names(["cluster", "service", "team", "zone"])
    text = store.render().decode()
    relabelled = base.replace(",region", ',zone="",region')
    assert f"{m.PROBE_SUCCESS}{{{relabelled}}} 0\n" in text
    assert base + "}" not in text


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.floats(allow_infinity=False), st.sampled_from([0.0, -0.0, 1e15, 1e15 - 1, 1e16, 123456789012345.0,
                                                                  float("inf"), float("nan"), 1e-7, 5e-324])))
def test_a_float_that_changes_with_every_probe_is_written_as_fmt_writes_it(value: float) -> None:
    """observed seconds, the last probe's time and the rtt skip fmt when repr already is its result."""
    store = SeriesStore()
    store.sync({("t", "m", ()): ()})
    series = store.series[("t", "m", ())]
    series.observed, series.up, series.last_probe, series.rtt = value, 0.0, value, value
    text = store.render().decode()
    for name in (m.OBSERVED_SECONDS, m.LAST_PROBE, m.TCP_RTT):
        assert f'{name}{{target="t",module="m"}} {fmt(value)}\n' in text


if __name__ == "__main__":  # rewrite the stored expectation
    DATA.mkdir(exist_ok=True)
    s = build_store()
    TEXT.write_text(s.render().decode())
    OPENMETRICS.write_text(b"".join(s.render_chunks(openmetrics=True)).decode())
    print(f"wrote {TEXT} and {OPENMETRICS}", file=sys.stderr)
