"""Targets probed since the last scrape are rendered in between (issue 15: a 10k-target scrape ≤ 0.1 s).

``SeriesStore.refresh`` renders the series changed since their last render, a slice per turn of the event
loop; ``connhealth serve`` runs it every PRERENDER_INTERVAL for the formats scraped lately, so a scrape
finds the results of the interval already rendered. The bytes are those a scrape would have rendered.

Deterministic on a loaded machine: renders are counted, not timed; the exporter test waits for the state
it looks for (bounded), with a real scheduler probing a real listener on loopback.
"""
from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from exporter import metrics as m
from exporter import server as server_module
from exporter.config import load_config
from exporter.result import Phase, ProbeResult
from exporter.server import Exporter, ServeOptions, build_app
from exporter.sinks import store as store_module
from exporter.sinks.store import SeriesStore

try:
    from tests.peers import LOCALHOST, RawTCPServer
except ImportError:  # pragma: no cover - depends on how pytest put us on sys.path
    from peers import LOCALHOST, RawTCPServer  # type: ignore[no-redef]

pytestmark = pytest.mark.timeout(60)

N = 600
WAIT = 10.0


def _result(target: str, at: float) -> ProbeResult:
    return ProbeResult(target=target, module="tcp_connect", prober="tcp", started_at=at, duration_seconds=0.0012,
                       timeout_seconds=5.0, timeline=(Phase("connect", 0.0, 0.0012),))


def _store() -> tuple[SeriesStore, list[tuple[str, str, tuple[tuple[str, str], ...]]]]:
    store = SeriesStore(["service"])
    keys = [(f"127.0.0.{i % 250 + 1}:{9000 + i}", "tcp_connect", (("service", f"s{i % 3}"),)) for i in range(N)]
    modes = {k: (m.PER_GROUP if i % 2 else m.PER_TARGET) for i, k in enumerate(keys)}
    store.sync(dict.fromkeys(keys, ("connect",)), None, modes)
    for i, key in enumerate(keys):
        store.observe(*key, _result(key[0], 1_764_540_000.0 + i / 7), 15.0 + i / 1000, 15.0 + i / 1000, 15.0)
    return store, keys


@pytest.fixture
def renders(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Renders by kind of series (target, group), counted at the renderer."""
    counts: Counter[str] = Counter()
    for cls, kind in ((store_module.TargetSeries, "target"), (store_module._Group, "group")):
        def counting(self: store_module._Rendered, store: SeriesStore, om: bool, out: list[bytes],
                     _render=cls._render, _kind=kind) -> None:
            counts[_kind] += 1
            _render(self, store, om, out)
        monkeypatch.setattr(cls, "_render", counting)
    return counts


def test_refresh_renders_what_changed_a_slice_per_turn_and_a_scrape_then_renders_nothing(renders: Counter[str]) -> None:
    store, keys = _store()
    groups = len(store.groups)
    assert groups == 3
    per_turn = []
    before = 0
    for _ in store.refresh(chunk_targets=100):
        per_turn.append(sum(renders.values()) - before)
        before = sum(renders.values())
    assert renders == {"target": N, "group": groups}
    assert max(per_turn) == 100 and len(per_turn) >= N // 100
    renders.clear()
    body = store.render()
    assert renders == {}  # the scrape found every series rendered
    fresh, _ = _store()
    assert body == fresh.render()  # the bytes a scrape rendering them itself writes
    renders.clear()
    assert list(store.refresh()) == [] and renders == {}  # nothing changed since: nothing to do

    # Only what changed is rendered again, in the format asked for; the other stays for its own scrape.
    for key in keys[:10]:
        store.observe(*key, _result(key[0], 1_764_540_100.0), 15.0, 15.0, 15.0)
    assert store.series[keys[0]]._fragments == []  # a change drops the old lines at once (no stale copy kept)
    list(store.refresh())
    assert renders == {"target": 10, "group": 3}  # the odd ones are per_group, in s1, s0, s2, s1, s0
    renders.clear()
    b"".join(store.render_chunks(openmetrics=True))
    assert renders == {"target": N, "group": groups}  # OpenMetrics was not refreshed


async def until(predicate, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


@pytest.fixture
async def listener() -> AsyncIterator[str]:
    async with RawTCPServer("close") as peer:  # accepts: a tcp probe (connect only) succeeds
        yield f"{LOCALHOST}:{peer.port}"


async def test_serve_renders_new_results_between_scrapes_in_the_format_scraped(
        tmp_path: Path, listener: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_module, "PRERENDER_INTERVAL", 0.05)
    config = tmp_path / "connhealth.yml"
    config.write_text(f"modules: {{tcp_connect: {{prober: tcp, timeout: 2s}}}}\n"
                      f"targets: [{{target: '{listener}', module: tcp_connect, interval: 1s}}]\n")
    exporter = Exporter(ServeOptions(config_file=str(config)), load_config(config))
    async with TestClient(TestServer(build_app(exporter))) as client:
        exporter.start()
        try:
            [series] = exporter.store.series.values()
            await until(lambda: series.attempts >= 1, "the first probe")
            assert series.stale(False) and series.stale(True)  # no scrape yet: nothing is rendered ahead
            await asyncio.sleep(0.2)
            assert series.stale(False)
            resp = await client.get("/metrics")  # the text format
            assert resp.status == 200 and f'{m.PROBE_ATTEMPTS}{{target="{listener}"' in await resp.text()
            attempts = series.attempts
            # A later probe's result is rendered in the text format before any scrape asks for it ...
            await until(lambda: series.attempts > attempts and not series.stale(False), "a new result rendered ahead")
            # ... and the lines are what a scrape would render now.
            expected = f'{m.PROBE_ATTEMPTS}{{target="{listener}",module="tcp_connect"}} {series.attempts}\n'
            assert expected.encode() in b"".join(series.fragments(exporter.store))
            assert series.stale(True)  # OpenMetrics was never scraped: not rendered ahead
            assert exporter.task_failures["prerender"] == 0
        finally:
            await exporter.stop()


def test_a_render_that_raised_leaves_nothing_half_rendered(monkeypatch: pytest.MonkeyPatch) -> None:
    store, keys = _store()
    expected = _store()[0].render()
    render = store_module.TargetSeries._render

    def failing(self: store_module.TargetSeries, store: SeriesStore, om: bool, out: list[bytes]) -> None:
        out[0] = b"half\n"
        raise RuntimeError("a bug in a render")

    monkeypatch.setattr(store_module.TargetSeries, "_render", failing)
    with pytest.raises(RuntimeError):
        store.render()
    assert store.series[keys[0]].stale(False)
    monkeypatch.setattr(store_module.TargetSeries, "_render", render)
    assert store.render() == expected
