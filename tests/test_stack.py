"""`make stack` (scripts/stack.py): the real exporter, Prometheus and Alertmanager with the repository's files,
no Docker. The demo's expired certificate alert reaches the stack's webhook receiver; Ctrl-C stops everything."""
from __future__ import annotations

import asyncio
import signal
import socket
import sys

import pytest

try:
    from tests.procs import LOCALHOST, REPO, free_port, require_binary
except ImportError:  # pragma: no cover
    from procs import LOCALHOST, REPO, free_port, require_binary  # type: ignore[no-redef]

pytestmark = pytest.mark.timeout(180)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((LOCALHOST, port)) == 0


async def test_the_demo_alert_reaches_the_webhook_and_ctrl_c_stops_everything() -> None:
    require_binary("prometheus")
    require_binary("prometheus-alertmanager")
    ports = {name: free_port() for name in ("exporter", "prometheus", "alertmanager", "webhook")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(REPO / "scripts" / "stack.py"), *(f"--{k}-port={v}" for k, v in ports.items()),
        "--interval=1s", cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(120):
            while True:
                raw = await proc.stdout.readline()
                assert raw, "stack exited early:\n" + "".join(lines)
                lines.append(raw.decode())
                if lines[-1].startswith("webhook /page: FIRING ConnhealthCertificateExpired "):
                    break
        alert = lines[-1]
        assert "severity=critical" in alert and "module=demo_https" in alert and "job=connhealth" in alert, alert
        assert f"instance=127.0.0.1:{ports['exporter']}" in alert, alert
        # The URLs it printed first.
        assert f"Prometheus:   http://127.0.0.1:{ports['prometheus']}/alerts" in "".join(lines)
        assert f"Alertmanager: http://127.0.0.1:{ports['alertmanager']}/" in "".join(lines)
        assert all(_listening(p) for p in ports.values())
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, "".join(lines) + out.decode()
        assert out.decode().endswith("stack: stopped\n")
        assert not any(_listening(p) for p in ports.values()), ports
    finally:
        if proc.returncode is None:  # a failed assertion: stop the stack the way a user would, then for sure
            proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(proc.communicate(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
