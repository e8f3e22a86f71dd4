"""``connhealth serve`` as a real process: endpoints, timeouts, cancellation, reload, target files, shutdown.

Each test starts the exporter with ``python -m exporter serve`` on a free
127.0.0.1 port and probes real local peers (tests/peers.py) running in the
test's own event loop.
"""
from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import pytest

try:
    from tests.procs import LOCALHOST, ExporterProcess, samples, value
    from tests.peers import HTTPServer, RawTCPServer
except ImportError:  # pragma: no cover - depends on how pytest put us on sys.path
    from procs import LOCALHOST, ExporterProcess, samples, value  # type: ignore[no-redef]
    from peers import HTTPServer, RawTCPServer  # type: ignore[no-redef]

pytestmark = pytest.mark.timeout(45)

ATTEMPTS = "connhealth_probe_attempts_total"
SECRET = "Bearer s3cr3t-t0ken-do-not-show"
# The bound on waiting for an event that takes well under a second here: it only
# decides how long a broken exporter takes to fail the test, so it is generous
# for a loaded machine. What a test distinguishes is stated by its own assertions.
WAIT = 10.0
# The exporter runs on uvloop, whose clock counts whole milliseconds and rounds a delay to one: its
# timers may fire up to 1.5 ms before the exact instant. Clock granularity, not slack.
LOOP_GRAIN = 0.002


@pytest.fixture
async def http_peer():
    async with HTTPServer() as server:
        yield server


@pytest.fixture
async def spawn(tmp_path: Path):
    """spawn(config_text or None, *args) -> a started ExporterProcess; all are stopped at teardown."""
    procs: list[ExporterProcess] = []

    async def _spawn(config_text: str | None, *args: str) -> ExporterProcess:
        workdir = tmp_path / f"exporter{len(procs)}"
        workdir.mkdir()
        config_file = None
        if config_text is not None:
            config_file = workdir / "connhealth.yml"
            config_file.write_text(config_text)
        proc = ExporterProcess(config_file, workdir, *args)
        procs.append(proc)
        return await proc.start()

    yield _spawn
    for proc in procs:
        await proc.astop()


def attempts(text: str, target: str, **labels: str) -> float | None:
    return value(text, ATTEMPTS, target=target, **labels)


def targets_in(text: str) -> set[str]:
    return {ls["target"] for ls, _ in samples(text, ATTEMPTS)}


# --- endpoints -------------------------------------------------------------------------
MODULES = f"""
modules:
  secret_web:
    prober: http
    timeout: 5s
    http:
      headers:
        Authorization: "{SECRET}"
        X-Probe: connhealth
  capped:
    prober: http
    timeout: 300ms
"""


async def test_health_ready_probe_errors_and_debug(spawn, http_peer: HTTPServer) -> None:
    exporter = await spawn(MODULES)
    assert await exporter.get("/-/healthy") == (200, "Healthy\n")
    assert (await exporter.get("/-/ready"))[0] == 200

    status, text = await exporter.get("/probe")
    assert status == 400 and "target" in text.lower(), text
    status, text = await exporter.get("/probe", params={"target": http_peer.url("/ok"), "module": "no_such_module"})
    assert status == 400 and "no_such_module" in text, text

    status, text = await exporter.get("/probe", params={"target": http_peer.url("/ok"), "module": "secret_web", "debug": "true"})
    assert status == 200, text
    assert "Logs for the probe" in text
    assert "probe succeeded" in text
    assert "probe_success 1" in text
    assert "probe_http_status_code 200" in text
    config_part = text.split("Module configuration:", 1)[1]
    assert "secret_web:" in config_part
    assert "X-Probe: connhealth" in config_part
    assert "Authorization" in config_part
    assert "s3cr3t" not in text, "the secret header leaked into the debug output"
    # Redaction is for display only: the target really got the header.
    assert any(h.get("Authorization") == SECRET for path, h in http_peer.requests if path == "/ok")

    # Without debug: plain exposition.
    status, text = await exporter.get("/probe", params={"target": http_peer.url("/ok"), "module": "secret_web"})
    assert status == 200 and value(text, "probe_success") == 1 and "Logs for the probe" not in text


async def test_scrape_timeout_header_minus_offset_and_module_cap(spawn, http_peer: HTTPServer) -> None:
    exporter = await spawn(MODULES, "--timeout-offset", "0.5")
    headers = {"X-Prometheus-Scrape-Timeout-Seconds": "1.5"}
    status, text = await exporter.get("/probe", params={"target": http_peer.url("/ok")}, headers=headers)
    assert status == 200, text
    assert value(text, "probe_timeout_seconds") == 1.0
    # A module timeout smaller than (scrape timeout - offset) wins.
    status, text = await exporter.get("/probe", params={"target": http_peer.url("/ok"), "module": "capped"}, headers=headers)
    assert status == 200, text
    assert value(text, "probe_timeout_seconds") == pytest.approx(0.3)
    # ... and it really is the deadline: a slow target (answering after 10 s) fails after 1 s, not the default 10 s.
    t0 = time.monotonic()
    status, text = await exporter.get("/probe", params={"target": http_peer.url("/slow?delay=10")}, headers=headers)
    elapsed = time.monotonic() - t0
    assert status == 200 and value(text, "probe_success") == 0, text
    assert value(text, "probe_timeout_seconds") == 1.0
    assert value(text, "probe_failure_info", phase="first_byte", reason="http_timeout_first_byte") == 1, text
    duration = value(text, "probe_duration_seconds")
    assert duration is not None and 1.0 - LOOP_GRAIN <= duration < 5.0, text  # waited the whole 1 s, and not the 10 s
    assert duration <= elapsed < 5.0  # and /probe answered when the probe ended
    # A header that is not a number is a client error.
    status, text = await exporter.get("/probe", params={"target": http_peer.url("/ok")},
                                      headers={"X-Prometheus-Scrape-Timeout-Seconds": "soon"})
    assert status == 400 and "soon" in text


async def test_client_disconnect_cancels_probe(spawn, http_peer: HTTPServer) -> None:
    exporter = await spawn(MODULES)
    in_flight = lambda t: value(t, "connhealth_probes_in_flight", mode="probe_endpoint")  # noqa: E731
    assert in_flight(await exporter.metrics()) == 0

    reader, writer = await asyncio.open_connection(LOCALHOST, exporter.port)
    from urllib.parse import quote

    # Nothing but the client leaving can end this probe while the test waits: the target answers after
    # 60 s and the scrape timeout gives the probe a 59.5 s deadline.
    target = quote(http_peer.url("/slow?delay=60"), safe="")
    writer.write(f"GET /probe?target={target} HTTP/1.1\r\nHost: {LOCALHOST}\r\n"
                 "X-Prometheus-Scrape-Timeout-Seconds: 60\r\n\r\n".encode())
    await writer.drain()
    await exporter.wait_metrics(lambda t: in_flight(t) == 1, WAIT, "the /probe request to be in flight")
    for _ in range(int(WAIT / 0.01)):  # until the probe is waiting on the target
        if any(path == "/slow" for path, _ in http_peer.requests):
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError(f"the probe's request did not reach the target within {WAIT:g}s")
    writer.close()
    await exporter.wait_metrics(lambda t: in_flight(t) == 0, WAIT, "the probe to be cancelled after the client left")
    # The exporter keeps serving.
    status, text = await exporter.get("/probe", params={"target": http_peer.url("/ok")})
    assert status == 200 and value(text, "probe_success") == 1


# --- reload ------------------------------------------------------------------------------
def _targets_config(*urls: str, extra: str = "") -> str:
    lines = ["scheduler:", "  min_interval: 100ms", "targets:"]
    for url in urls:
        lines += [f"  - target: {url}", "    interval: 200ms", "    timeout: 2s"]
    return "\n".join(lines) + "\n" + extra


@pytest.mark.parametrize("how", ["post", "sighup"])
async def test_reload_adds_and_removes_targets_keeping_others(spawn, http_peer: HTTPServer, how: str) -> None:
    kept, removed, added = http_peer.url("/ok"), http_peer.url("/status/200"), http_peer.url("/redirect/1")
    exporter = await spawn(_targets_config(kept, removed))
    text = await exporter.wait_metrics(
        lambda t: (attempts(t, kept) or 0) >= 5 and (attempts(t, removed) or 0) >= 1, WAIT, "both targets to be probed a few times"
    )
    before = attempts(text, kept)
    assert added not in targets_in(text)

    assert exporter.config_file is not None
    exporter.config_file.write_text(_targets_config(kept, added))
    if how == "post":
        status, body = await exporter.post("/-/reload")
        assert status == 200, body
    else:
        exporter.send_signal(signal.SIGHUP)
        await exporter.wait_metrics(lambda t: value(t, "connhealth_config_reloads_total", result="success") == 1, WAIT,
                                    "the SIGHUP reload")
    text = await exporter.metrics()
    assert attempts(text, kept) >= before, "the kept target's counters were reset by the reload"
    assert removed not in targets_in(text), "the removed target's series are still exported"
    assert not [ls for ls, _ in samples(text, "connhealth_probe_duration_seconds_count") if ls["target"] == removed]
    assert value(text, "connhealth_config_last_reload_successful") == 1
    assert value(text, "connhealth_config_reloads_total", result="success") == 1

    text = await exporter.wait_metrics(
        lambda t: (attempts(t, added) or 0) >= 1 and attempts(t, kept) > before + 2, WAIT,
        "the new target to be probed and the kept one to keep going",
    )
    assert removed not in targets_in(text)
    assert value(text, "connhealth_scheduled_targets") == 2
    assert value(text, "connhealth_probe_successes_total", target=kept) > before


@pytest.mark.parametrize("bad", [
    pytest.param("targets: [unclosed\n  - {", id="invalid-yaml"),
    pytest.param("targets:\n  - target: http://127.0.0.1:1/\n    bogus_field: 1\n", id="unknown-field"),
])
async def test_bad_reload_keeps_old_config(spawn, http_peer: HTTPServer, bad: str) -> None:
    kept = http_peer.url("/ok")
    exporter = await spawn(_targets_config(kept))
    await exporter.wait_metrics(lambda t: (attempts(t, kept) or 0) >= 2, WAIT, "the target to be probed")
    assert exporter.config_file is not None
    exporter.config_file.write_text(bad)
    status, body = await exporter.post("/-/reload")
    assert status == 500, body
    if "bogus" in bad:
        assert "bogus_field" in body and "unknown field" in body, body
    else:
        assert "YAML" in body, body
    text = await exporter.metrics()
    assert value(text, "connhealth_config_last_reload_successful") == 0
    assert value(text, "connhealth_config_reloads_total", result="failure") == 1
    after = attempts(text, kept)
    # The old config keeps running.
    await exporter.wait_metrics(lambda t: attempts(t, kept) >= after + 2, WAIT, "probes to continue after the bad reload")
    status, text = await exporter.get("/probe", params={"target": kept})
    assert status == 200 and value(text, "probe_success") == 1
    # A second bad reload counts again; a good one recovers the gauge.
    assert (await exporter.post("/-/reload"))[0] == 500
    exporter.config_file.write_text(_targets_config(kept))
    assert (await exporter.post("/-/reload"))[0] == 200
    text = await exporter.metrics()
    assert value(text, "connhealth_config_reloads_total", result="failure") == 2
    assert value(text, "connhealth_config_reloads_total", result="success") == 1
    assert value(text, "connhealth_config_last_reload_successful") == 1


# --- target files --------------------------------------------------------------------------
async def test_target_files_follow_changes_and_survive_broken_files(spawn, http_peer: HTTPServer, tmp_path: Path) -> None:
    sd = tmp_path / "sd"
    sd.mkdir()
    a, b = http_peer.url("/ok"), http_peer.url("/status/204")
    c = http_peer.url("/redirect/0")
    yml = sd / "web.yml"
    yml.write_text(f"- targets: ['{a}']\n  labels: {{env: blue}}\n")
    (sd / "ignored.txt").write_text(f"- targets: ['{http_peer.url('/status/500')}']\n")
    config = f"""
scheduler:
  file_refresh_interval: 500ms
target_files:
  - files: ["{sd}/*.yml", "{sd}/*.json"]
    interval: 200ms
    labels: {{team: core}}
"""
    exporter = await spawn(config)
    text = await exporter.wait_metrics(lambda t: (attempts(t, a, env="blue", team="core") or 0) >= 1, WAIT, "the file target")
    assert targets_in(text) == {a}, "a file not matched by the globs was read"

    # Change labels and add a target in the YAML file, add a JSON file: the periodic refresh picks them up.
    yml.write_text(f"- targets: ['{a}', '{b}']\n  labels: {{env: green}}\n")
    (sd / "more.json").write_text(json.dumps([{"targets": [c], "labels": {"env": "json", "module": "http_2xx"}}]))
    text = await exporter.wait_metrics(
        lambda t: attempts(t, a, env="green") is not None and attempts(t, b, env="green") is not None
        and attempts(t, c, env="json") is not None and attempts(t, a, env="blue") is None,
        WAIT, "the changed target file to show up",
    )
    assert value(text, "connhealth_target_file_errors_total") == 0
    assert value(text, "connhealth_scheduled_targets") == 3

    # A broken file keeps its previous targets and is counted.
    yml.write_text("- targets: ['unterminated\n  labels: {env: [\n")
    text = await exporter.wait_metrics(lambda t: value(t, "connhealth_target_file_errors_total") == 1, WAIT,
                                       "the broken file to be counted")
    before = attempts(text, b, env="green")
    text = await exporter.wait_metrics(lambda t: attempts(t, b, env="green") >= before + 2, WAIT,
                                       "the broken file's previous targets to keep being probed")
    assert attempts(text, a, env="green") is not None and attempts(text, c, env="json") is not None
    assert value(text, "connhealth_scheduled_targets") == 3
    assert "web.yml" in exporter.log()

    # A config reload re-reads the files: the still-broken one is counted again and still keeps its targets.
    status, body = await exporter.post("/-/reload")
    assert status == 200, body
    text = await exporter.metrics()
    assert value(text, "connhealth_target_file_errors_total") == 2
    assert value(text, "connhealth_scheduled_targets") == 3
    before = attempts(text, b, env="green")
    assert before is not None, "the broken file's targets were dropped by the reload"
    await exporter.wait_metrics(lambda t: (attempts(t, b, env="green") or 0) >= before + 2, WAIT,
                                "the broken file's targets to keep being probed after a reload")

    # Fixing it is picked up again.
    yml.write_text(f"- targets: ['{a}']\n  labels: {{env: fixed}}\n")
    text = await exporter.wait_metrics(
        lambda t: attempts(t, a, env="fixed") is not None and b not in targets_in(t), WAIT, "the fixed file to be re-read"
    )
    assert value(text, "connhealth_target_file_errors_total") == 2


# --- shutdown --------------------------------------------------------------------------------
async def _wait_refused(port: int) -> None:
    """Until a connect to ``port`` is refused (the listener is closed); fails after WAIT."""
    for _ in range(int(WAIT / 0.02)):
        try:
            _, w = await asyncio.wait_for(asyncio.open_connection(LOCALHOST, port), 1.0)
        except ConnectionRefusedError:
            return
        w.close()
        await asyncio.sleep(0.02)
    raise AssertionError(f"127.0.0.1:{port} still accepts connections after {WAIT:g}s")


async def test_sigterm_lets_in_flight_probe_finish_and_exits_0(spawn) -> None:
    # The target answers only when released: the order of events is fixed by the test, not by timing.
    release = asyncio.Event()

    async def answer_when_released(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await release.wait()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()

    grace = 30.0  # far beyond WAIT: an exporter that sat out its grace instead of exiting when drained fails
    async with RawTCPServer(answer_when_released) as target:
        url = f"http://{LOCALHOST}:{target.port}"
        exporter = await spawn(_targets_config(f"{url}/scheduled"), "--shutdown-grace", f"{grace:g}")
        in_flight = lambda t, mode: value(t, "connhealth_probes_in_flight", mode=mode)  # noqa: E731
        # A scrape timeout longer than the test: the /probe can only end by being answered.
        probe = asyncio.ensure_future(exporter.get("/probe", params={"target": f"{url}/probe"},
                                                   headers={"X-Prometheus-Scrape-Timeout-Seconds": "40"}, timeout=45))
        await exporter.wait_metrics(lambda t: in_flight(t, "probe_endpoint") == 1 and in_flight(t, "scheduled") == 1, WAIT,
                                    "a /probe and a scheduled probe to be in flight")
        exporter.send_signal(signal.SIGTERM)
        # It stops accepting while the probes are still running (the target holds them).
        await _wait_refused(exporter.port)
        assert not probe.done()
        assert exporter.proc is not None and exporter.proc.poll() is None, "exited without letting the probes finish"
        release.set()
        status, text = await asyncio.wait_for(probe, WAIT)
        assert status == 200, text
        assert value(text, "probe_success") == 1, text
        # Exits once drained: well before the grace would run out.
        code = await exporter.wait_exit(WAIT)
        assert code == 0, exporter.log()
        assert "Traceback" not in exporter.log()
