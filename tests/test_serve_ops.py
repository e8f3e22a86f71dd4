"""`connhealth serve` for an operator: one-line start-up errors, logs in logfmt and JSON, /config, no _created noise,
and recent probes kept per target so one failing target cannot flush the others' logs."""
from __future__ import annotations

import asyncio
import json
import re
import socket
import sys

import pytest
import yaml

from exporter.result import Failure, ProbeResult
from exporter.sinks.history import History

try:
    from tests.procs import LOCALHOST, ExporterProcess, run_command, value
except ImportError:  # pragma: no cover
    from procs import LOCALHOST, ExporterProcess, run_command, value  # type: ignore[no-redef]

pytestmark = pytest.mark.timeout(60)


async def run_serve(*args: str, timeout: float = 20) -> tuple[int, str, str]:
    return await run_command([sys.executable, "-m", "exporter", "serve", *args], timeout=timeout)


async def test_port_in_use_is_one_line_exit_1():
    with socket.socket() as taken:
        taken.bind((LOCALHOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = await run_serve("--web.listen-address", f"{LOCALHOST}:{port}")
    assert code == 1
    assert err == f"connhealth: cannot listen on {LOCALHOST}:{port}: address already in use\n"


async def test_bad_config_file_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("modules:\n  web:\n    prober: http\n    http:\n      foo: 1\n")
    code, out, err = await run_serve("--config.file", str(bad), "--web.listen-address", f"{LOCALHOST}:0")
    assert (code, err) == (2, "connhealth: modules.web.http.foo: unknown field\n")


SECRET_CONFIG = """
modules:
  api:
    prober: http
    http:
      headers:
        Authorization: Bearer s3cr3t-token
        X-Team: sre
"""


@pytest.mark.parametrize("fmt", ["logfmt", "json"])
async def test_serve_logs_config_and_metrics(tmp_path, fmt):
    config = tmp_path / "c.yml"
    config.write_text(SECRET_CONFIG)
    exporter = ExporterProcess(config, tmp_path, "--log.level", "debug", "--log.format", fmt)
    await exporter.start()
    try:
        # /config: the running modules, secrets redacted.
        status, text = await exporter.get("/config")
        assert status == 200
        modules = yaml.safe_load(text)["modules"]
        assert modules["api"]["http"]["headers"] == {"Authorization": "<secret>", "X-Team": "sre"}
        # Built-ins too, with their defaults filled in (blackbox's /config).
        assert modules["tcp_connect"]["prober"] == "tcp" and modules["tcp_connect"]["tcp"]["preferred_ip_protocol"] == "ip6"
        assert "s3cr3t" not in text
        # /metrics: no _created series unless asked for.
        metrics = await exporter.metrics()
        assert "connhealth_config_reloads_total" in metrics or "_total" in metrics
        assert "_created" not in metrics
        # A /probe leaves debug lines for its start and end; a reload logs its steps.
        status, _ = await exporter.get("/probe", params={"target": f"{LOCALHOST}:1", "module": "tcp_connect"})
        assert status == 200
        status, _ = await exporter.post("/-/reload")
        assert status == 200
        await asyncio.sleep(0.2)
    finally:
        await exporter.astop()
    lines = [line for line in exporter.log().splitlines() if line.strip()]
    if fmt == "json":
        records = [json.loads(line) for line in lines]
    else:
        records = [dict((k, json.loads(v) if v.startswith('"') else v)
                        for k, v in re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', line)) for line in lines]
        assert all(line.startswith("ts=") for line in lines), lines
    by_msg = {r["msg"]: r for r in records}
    listening = next(r for r in records if r["msg"].startswith("connhealth 0.1.0 listening on"))
    assert listening["level"] == "info" and listening["logger"] == "connhealth.server"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", listening["ts"])
    finished = by_msg["probe finished"]
    assert finished["level"] == "debug" and finished["reason"] == "connect_refused"
    assert str(finished["success"]).lower() == "false" and finished["target"] == f"{LOCALHOST}:1"
    assert "reload: reading config" in by_msg and by_msg["reload: reading config"]["file"] == str(config)
    assert "s3cr3t" not in exporter.log()


async def test_ipv6_listen_address_is_bracketed(tmp_path):
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
            port = probe.getsockname()[1]
    except OSError:
        pytest.skip("::1 is not configured here")
    exporter = ExporterProcess(None, tmp_path, "--web.listen-address", f"[::1]:{port}")
    await exporter.start()
    try:
        assert re.search(rf"listening on 127\.0\.0\.1:\d+, \[::1\]:{port}", exporter.log()), exporter.log()
    finally:
        await exporter.astop()


def _result(target: str, ok: bool) -> ProbeResult:
    return ProbeResult(target=target, module="tcp_connect", prober="tcp", started_at=0.0, duration_seconds=0.001,
                       timeout_seconds=1.0, failure=None if ok else Failure("connect", "connect_refused", "refused"))


def test_history_keeps_each_targets_last_probes():
    history = History(limit=5, per_target=3)
    quiet = [history.add("scheduled", _result("quiet:1", True)) for _ in range(2)]
    for _ in range(50):  # one failing target, re-probed often
        history.add("scheduled", _result("noisy:1", False))
    recent = history.recent()
    assert [e.id for e in recent if e.result.target == "quiet:1"] == [quiet[1].id, quiet[0].id]
    assert len([e for e in recent if e.result.target == "noisy:1"]) == 5  # the overall ring
    assert history.get(quiet[0].id) is quiet[0]  # its /logs link still works
    assert [e.id for e in history.of_target("scheduled", "quiet:1", "tcp_connect")] == [quiet[0].id, quiet[1].id]


def test_history_bounds_the_number_of_targets():
    history = History(limit=2, per_target=2, max_targets=3)
    first = history.add("probe", _result("t0:1", True))
    for i in range(1, 10):
        history.add("probe", _result(f"t{i}:1", True))
    assert history.get(first.id) is None
    assert history.of_target("probe", "t0:1", "tcp_connect") == []
    assert len(history.recent()) == 3  # at most max_targets * per_target + limit, here the last 3 targets


async def test_debug_log_names_target_file_scans(tmp_path):
    targets = tmp_path / "targets.yml"
    targets.write_text(f"- targets: [\"{LOCALHOST}:1\", \"{LOCALHOST}:2\"]\n")
    config = tmp_path / "c.yml"
    config.write_text(f"scheduler:\n  file_refresh_interval: 200ms\ntarget_files:\n  - files: [{targets}]\n    interval: 1m\n")
    exporter = ExporterProcess(config, tmp_path, "--log.level", "debug", "--log.format", "json")
    await exporter.start()
    try:
        for _ in range(100):  # bounded: the first scans happen at start-up
            scans = [json.loads(line) for line in exporter.log().splitlines() if '"target files scanned"' in line]
            if len(scans) >= 2:
                break
            await asyncio.sleep(0.05)
    finally:
        await exporter.astop()
    assert scans[0]["files"] == 1 and scans[0]["targets"] == 2 and scans[0]["changed"] is True
    assert scans[-1]["changed"] is False


async def test_probe_logs_bracket_ipv6(tmp_path):
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
            port = probe.getsockname()[1]  # closed again: refused
    except OSError:
        pytest.skip("::1 is not configured here")
    exporter = ExporterProcess(None, tmp_path)
    await exporter.start()
    try:
        status, text = await exporter.get("/probe", params={"target": f"[::1]:{port}", "module": "tcp_connect", "debug": "true"})
    finally:
        await exporter.astop()
    assert status == 200
    assert f"connecting to [::1]:{port}\n" in text, text


async def test_status_page_and_logs_hide_url_passwords(tmp_path):
    config = tmp_path / "c.yml"
    config.write_text(f"targets:\n  - target: http://ops:pa55word@{LOCALHOST}:1/\n    interval: 1s\n")
    exporter = ExporterProcess(config, tmp_path)
    await exporter.start()
    try:
        # Series exist at 0 from the first schedule: wait for a probe that finished.
        await exporter.wait_metrics(lambda t: re.search(r"^connhealth_probe_attempts_total\{.*\} [1-9]", t, re.M) is not None,
                                    10.0, "the target to be probed")
        status, page = await exporter.get("/")
        assert status == 200 and f"http://REDACTED:REDACTED@{LOCALHOST}:1/" in page
        logs_id = re.search(r"/logs\?id=(\d+)", page).group(1)
        status, logs = await exporter.get(f"/logs?id={logs_id}")
        assert status == 200 and f"probing http://REDACTED:REDACTED@{LOCALHOST}:1/ with module http_2xx" in logs
    finally:
        await exporter.astop()
    assert "pa55word" not in page and "pa55word" not in logs
