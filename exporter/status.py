"""Server-rendered status page: recent probes and, in continuous mode, the targets.

Plain HTML with inline CSS: it must work with no internet.
"""
from __future__ import annotations

import time
from html import escape
from typing import TYPE_CHECKING
from urllib.parse import quote

from . import __version__

if TYPE_CHECKING:
    from .server import Exporter

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin-bottom:2em;font-size:14px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:left}
th{background:#f0f0f0}
tr.fail td{background:#fdecea}
tr.ok td.state{color:#1a7f37;font-weight:bold}
tr.fail td.state{color:#b42318;font-weight:bold}
code{font-size:13px}
"""


def _ts(unix: float | None) -> str:
    if unix is None:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(unix))


def render_status(exporter: Exporter, prefix: str) -> str:
    rows = []
    for entry in exporter.history.recent():
        r = entry.result
        failure = r.failure
        css = "ok" if r.success else "fail"
        reason = f"{escape(failure.phase)} / {escape(failure.reason)}" if failure else ""
        rows.append(
            f'<tr class="{css}" data-target="{escape(r.target)}">'
            f"<td>{_ts(r.started_at)}</td><td>{escape(entry.source)}</td><td>{escape(r.target)}</td><td>{escape(r.module)}</td>"
            f'<td class="state">{"Success" if r.success else "Failure"}</td><td>{r.duration_seconds * 1000:.1f} ms</td>'
            f'<td class="reason">{reason}</td><td><a href="{prefix}/logs?id={entry.id}">Logs</a></td></tr>'
        )
    target_rows = []
    for (target, module, labels), series in sorted(exporter.store.series.items()):
        if series.attempts == 0:
            continue
        # Time-weighted like the SLI (docs/metrics.md): re-checks of a failing target do not weigh it down.
        ratio = series.up / series.observed if series.observed else series.successes / series.attempts
        css = "ok" if series.success else "fail"
        last = series.last_failure
        last_text = f"{escape(last[0])} / {escape(last[1])}: {escape(last[2])}" if last else "—"
        label_text = ", ".join(f"{escape(k)}={escape(v)}" for k, v in labels)
        probe_link = f'{prefix}/probe?target={quote(target, safe="")}&amp;module={quote(module, safe="")}&amp;debug=true'
        target_rows.append(
            f'<tr class="{css}" data-target="{escape(target)}"><td>{escape(target)}</td><td>{escape(module)}</td><td>{label_text}</td>'
            f'<td class="state">{"Up" if series.success else "Down"}</td>'
            f"<td>{ratio * 100:.2f}% ({series.successes}/{series.attempts} probes)</td><td>{_ts(series.last_success)}</td>"
            f'<td class="last-failure">{last_text}</td><td><a href="{probe_link}">Probe now</a></td></tr>'
        )
    targets_html = ""
    if exporter.scheduler.entries:
        targets_html = (
            "<h2>Targets</h2><table id=\"targets\"><thead><tr><th>Target</th><th>Module</th><th>Labels</th><th>State</th>"
            "<th>Availability (time-weighted)</th><th>Last success</th><th>Last failure</th><th></th></tr></thead><tbody>"
            + "".join(target_rows) + "</tbody></table>"
        )
    modules = "".join(f'<option value="{escape(name)}">{escape(name)}</option>' for name in sorted(exporter.config.modules))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>connhealth</title><style>{_CSS}</style></head>
<body>
<h1>connhealth</h1>
<p>Version {escape(__version__)} · <a href="{prefix}/metrics">Metrics</a> · <a href="{prefix}/config">Configuration</a></p>
<form action="{prefix}/probe" method="get" id="probe-form">Probe now (debug output):
<input name="target" placeholder="https://host/path or host:port" size="40" required>
<select name="module">{modules}</select><input type="hidden" name="debug" value="true"> <button type="submit">Probe</button></form>
{targets_html}
<h2>Recent probes</h2>
<table id="recent"><thead><tr><th>Time</th><th>Source</th><th>Target</th><th>Module</th><th>Result</th><th>Duration</th><th>Failure (phase / reason)</th><th>Debug</th></tr></thead>
<tbody>{"".join(rows)}</tbody></table>
</body></html>
"""
