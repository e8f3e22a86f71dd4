"""The sse prober against real event-stream servers (aiohttp): heartbeats, silence, buffering, closes, resume."""
from __future__ import annotations

import uuid

import pytest

from exporter.engine import expected_phases, run_probe
from exporter.probers.sse import SSEDetails, SSEParser
from exporter.schema import ConfigError, Secret
from exporter.sinks.store import SeriesStore

try:
    from tests.probekit import PER_TEST_TIMEOUT, mod, surfaces_showing
    from tests.streampeers import SSEServer
except ImportError:  # pragma: no cover
    from probekit import PER_TEST_TIMEOUT, mod, surfaces_showing
    from streampeers import SSEServer

pytestmark = pytest.mark.timeout(PER_TEST_TIMEOUT)


def sse(**fields: object):  # type: ignore[no-untyped-def]
    return mod("sse", timeout="15s", sse=fields)


def details(result) -> SSEDetails:  # type: ignore[no-untyped-def]
    assert isinstance(result.details, SSEDetails), result
    return result.details


async def test_a_live_stream_held_for_hold_passes_and_reports_its_gaps() -> None:
    async with SSEServer(interval=0.2, retry=3000) as server:
        result = await run_probe(server.url, sse(hold="1s", heartbeat_interval="0.5s"))
    assert result.success, result.failure
    d = details(result)
    assert d.status == 200 and d.content_type == "text/event-stream"
    # One ping and one event every 0.2 s for 1 s.
    assert 8 <= d.events + d.heartbeats <= 14 and abs(d.events - d.heartbeats) <= 1
    assert d.retry_ms == 3000 and not d.retry_out_of_range
    assert d.last_event_id == str(d.events - 1)
    assert d.max_gap_seconds is not None and 0.1 < d.max_gap_seconds < 1.5
    assert len(d.gaps) == d.events + d.heartbeats - 1
    assert d.first_event_seconds is not None and d.first_comment_seconds is not None
    assert [p.name for p in result.timeline] == ["connect", "request", "first_byte", "first_event", "stream"]
    stream = result.phases["stream"] + result.phases["first_event"]
    assert 0.9 <= stream <= 1.5, result.timeline


async def test_heartbeats_that_stop_fail_as_heartbeat_missed_with_the_gap() -> None:
    # Heartbeats every 1 s that stop after 3 s; the limit is 1 s × (2 + 1) = 3 s.
    async with SSEServer(interval=1.0, stop_after=3.0) as server:
        result = await run_probe(server.url, sse(hold="10s", heartbeat_interval="1s", missed_heartbeats=2))
    assert result.failure is not None and result.failure.reason == "sse_heartbeat_missed", result.failure
    assert result.failure.phase == "stream"
    d = details(result)
    assert d.max_gap_seconds is not None and 3.0 <= d.max_gap_seconds < 3.6
    assert f"no event or comment for {d.max_gap_seconds:.3f}s (limit 3s" in result.failure.message
    assert d.events >= 3


async def test_a_stream_that_never_sends_fails_as_no_event() -> None:
    async with SSEServer(silent=True) as server:
        result = await run_probe(server.url, sse(hold="5s", first_event_timeout="0.5s"))
    assert result.failure is not None
    assert (result.failure.phase, result.failure.reason) == ("first_event", "sse_no_event")
    assert details(result).events == 0 and details(result).heartbeats == 0


async def test_a_stream_closed_before_hold_fails_as_stream_closed() -> None:
    async with SSEServer(interval=0.5, close_after=2.0) as server:
        result = await run_probe(server.url, sse(hold="5s", heartbeat_interval="1s"))
    assert result.failure is not None
    assert (result.failure.phase, result.failure.reason) == ("stream", "sse_stream_closed"), result.failure
    assert "ended the stream after 2." in result.failure.message and "(hold 5s)" in result.failure.message


async def test_a_server_that_honours_last_event_id_resumes() -> None:
    async with SSEServer(interval=0.1, resume=True) as server:
        result = await run_probe(server.url, sse(hold="0.5s", heartbeat_interval="0.5s", resume=True))
        ids = list(server.last_event_ids)
    assert result.success, result.failure
    d = details(result)
    assert d.resumed is True and ids == [None, d.last_event_id]
    assert d.resume_first_id == str(int(d.last_event_id or "0") + 1)
    assert len(result.hops) == 2 and [p.hop for p in result.timeline if p.name == "stream"] == [0, 1]


async def test_a_server_that_restarts_from_zero_fails_as_resume_failed() -> None:
    async with SSEServer(interval=0.1, resume=False) as server:
        result = await run_probe(server.url, sse(hold="0.5s", heartbeat_interval="0.5s", resume=True))
    assert result.failure is not None and result.failure.reason == "sse_resume_failed", result.failure
    d = details(result)
    assert d.resumed is False and d.resume_first_id == "0"
    assert f"Last-Event-ID {d.last_event_id!r}, the first event id was '0'" in result.failure.message


async def test_wrong_content_type_fails_as_bad_content_type() -> None:
    async with SSEServer(content_type="text/html") as server:
        result = await run_probe(server.url, sse(hold="1s"))
    assert result.failure is not None
    assert (result.failure.phase, result.failure.reason) == ("first_byte", "sse_bad_content_type")
    assert "'text/html'" in result.failure.message


async def test_a_burst_after_more_than_one_heartbeat_interval_is_a_buffering_proxy() -> None:
    async with SSEServer(burst_after=1.2) as server:
        result = await run_probe(server.url, sse(hold="3s", heartbeat_interval="1s", first_event_timeout="2s"))
    assert result.failure is not None and result.failure.reason == "sse_buffered", result.failure
    assert "3 events/comments arrived together after 1.2" in result.failure.message


async def test_retry_outside_1_to_30_seconds_is_flagged() -> None:
    async with SSEServer(interval=0.1, retry=100) as server:
        result = await run_probe(server.url, sse(hold="0.3s", heartbeat_interval="1s"))
    assert result.success and details(result).retry_ms == 100 and details(result).retry_out_of_range


async def test_continuous_metrics_carry_the_gap_histogram_and_counts() -> None:
    async with SSEServer(interval=0.2) as server:
        result = await run_probe(server.url, sse(hold="0.6s", heartbeat_interval="1s"))
    assert result.success
    store = SeriesStore()
    store.observe(server.url, "m", (), result)
    store.observe(server.url, "m", (), result)
    text = store.render().decode()
    d = details(result)
    base = f'target="{server.url}",module="m"'
    assert f"connhealth_sse_events_total{{{base}}} {2 * d.events}" in text
    assert f"connhealth_sse_heartbeats_total{{{base}}} {2 * d.heartbeats}" in text
    assert f'connhealth_sse_heartbeat_gap_seconds_count{{{base}}} {2 * len(d.gaps)}' in text
    assert f'connhealth_sse_heartbeat_gap_seconds_bucket{{{base},le="120.0"}} {2 * len(d.gaps)}' in text
    assert "# TYPE connhealth_sse_heartbeat_gap_seconds histogram" in text


def test_parser_handles_crlf_cr_lf_split_across_reads_and_comments() -> None:
    p = SSEParser()
    items = p.feed(b": hi\r")
    items += p.feed(b"\nid: 7\rdata: x\r\n\r")
    items += p.feed(b"\nretry: 1500\n")
    assert [(i.kind, i.id) for i in items] == [("comment", None), ("event", "7")]
    assert p.retry == 1500 and p.last_id == "7"


def test_parser_bounds_a_line_without_an_end() -> None:
    p = SSEParser()
    with pytest.raises(Exception, match="longer than 65536 bytes"):
        p.feed(b"data: " + b"x" * 70000)


@pytest.mark.parametrize(("fields", "error"), [
    ({"hold": "0s"}, "modules.m.sse.hold: must be greater than 0"),
    ({"missed_heartbeats": -1}, "modules.m.sse.missed_heartbeats: must be between 0 and 1000"),
    ({"heartbeat_interval": "soon"}, "modules.m.sse.heartbeat_interval: invalid duration"),
    ({"headers": {"X-A": "a\nb"}}, "modules.m.sse.headers.X-A"),
    ({"holdd": "1s"}, "modules.m.sse.holdd: unknown field"),
])
def test_bad_sse_sections_are_named(fields: dict[str, object], error: str) -> None:
    with pytest.raises(ConfigError, match=error.replace(".", r"\.")):
        mod("sse", sse=fields)


async def test_a_non_url_target_is_invalid() -> None:
    result = await run_probe("127.0.0.1:80", sse())
    assert result.failure is not None and result.failure.reason == "invalid_target"


async def test_secret_headers_are_typed_at_parse_and_revealed_only_on_the_wire() -> None:
    canary = f"cnry{uuid.uuid4().hex}"
    module = mod("sse", timeout="5s", sse={"hold": "300ms", "secret_headers": ["X-Key"],
                                           "headers": {"Authorization": f"Bearer {canary}", "X-Key": canary, "X-Team": "core"}})
    headers = dict(module.settings.headers)
    assert [k for k, v in headers.items() if isinstance(v, Secret)] == ["Authorization", "X-Key"] and headers["X-Team"] == "core"
    async with SSEServer() as server:
        result = await run_probe(f"{server.url}?token={canary}", module)
    assert result.success, result.failure
    sent = server.headers[0]
    assert (sent["Authorization"], sent["X-Key"], sent["X-Team"]) == (f"Bearer {canary}", canary, "core")
    assert result.target == f"{server.url}?token=REDACTED" and result.hops[0].url == result.target
    assert surfaces_showing(canary, result, module) == []
    # The phases its series were created for at schedule time are the ones it went through.
    assert set(expected_phases(server.url, module)) == set(result.total_phases())
