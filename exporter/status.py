"""Server-rendered status page to triage from: targets with their recent history, recent probes with phase bars.

Plain HTML, inline CSS and a little inline JavaScript (no framework, no build
step, no internet): filtering, sorting and auto-refresh work on the rendered
rows, and their state lives in the URL fragment, so a link or a reload keeps
it. Every control is a real form control or button: keyboard accessible.
"""
from __future__ import annotations

import time
from html import escape
from typing import TYPE_CHECKING
from urllib.parse import quote

from . import __version__
from .failures import REASONS
from .probers import phase_label
from .result import ProbeResult

if TYPE_CHECKING:
    from .server import Exporter

MAX_RECENT_ROWS = 500  # the overall ring plus every target's own can be large; the page stays small
REFRESH_SECONDS = 10

_CSS = """
body{font-family:system-ui,sans-serif;margin:1em 1.5em;color:#222}
h1{margin:.2em 0}h2{margin:1em 0 .3em}
.bar{display:flex;flex-wrap:wrap;gap:.4em 1em;align-items:center;margin:.5em 0}
table{border-collapse:collapse;margin-bottom:1.5em;font-size:13px;width:100%}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f0f0f0;white-space:nowrap}
th button{font:inherit;font-weight:bold;background:none;border:0;padding:0;cursor:pointer}
th[aria-sort=ascending] button::after{content:" ▲"}th[aria-sort=descending] button::after{content:" ▼"}
tr.fail td{background:#fdecea}
tr.ok td.state{color:#1a7f37;font-weight:bold}
tr.fail td.state{color:#b42318;font-weight:bold}
td.target{overflow-wrap:anywhere;min-width:9em;max-width:28em}
.scroll{overflow-x:auto;margin-bottom:1.5em}.scroll table{margin-bottom:0}
.wf{position:relative;width:160px;height:12px;background:#f4f4f4;border:1px solid #ddd}
.wf span{position:absolute;top:0;height:100%;min-width:1px}
.ph-dns{background:#8e6bbf}.ph-connect{background:#3b7dd8}.ph-tls{background:#2a9d8f}.ph-request{background:#e9c46a}
.ph-first_byte{background:#f4a261}.ph-transfer{background:#6c757d}
.wf span.failed{background:repeating-linear-gradient(45deg,#b42318 0 3px,#f3a59c 3px 6px)}
.strip{display:flex;gap:1px}.strip span{width:7px;height:14px;display:inline-block}
.strip .ok{background:#2da44e}.strip .fail{background:#cf222e}
code{font-size:12px}
:focus-visible{outline:2px solid #0969da;outline-offset:1px}
@media (max-width:900px){.phases,.source{display:none}body{margin:.5em}table{font-size:12px}}
"""

_JS = """
(function(){
const $=s=>document.querySelector(s), $$=s=>Array.from(document.querySelectorAll(s));
const params=new URLSearchParams(location.search);
const every=Math.max(1,Number(params.get('refresh'))||REFRESH);
function state(){return new URLSearchParams(location.hash.slice(1));}
function save(s){history.replaceState(null,'','#'+s.toString());}
function apply(){
  const s=state();
  for(const k of ['state','module','label','q']){const el=$('#f-'+k); if(el&&document.activeElement!==el) el.value=s.get(k)||'';}
  const want={state:s.get('state')||'',module:s.get('module')||'',label:(s.get('label')||'').toLowerCase(),q:(s.get('q')||'').toLowerCase()};
  for(const tr of $$('tbody tr')){
    const d=tr.dataset;
    const show=(!want.state||d.state===want.state)&&(!want.module||d.module===want.module)
      &&(!want.label||(d.labels||'').toLowerCase().includes(want.label))
      &&(!want.q||tr.textContent.toLowerCase().includes(want.q));
    tr.hidden=!show;
  }
  for(const t of $$('table.sortable')){
    const [col,dir]=(s.get('sort:'+t.id)||'').split(':');
    t.querySelectorAll('th').forEach((th,i)=>{th.removeAttribute('aria-sort'); if(String(i)===col) th.setAttribute('aria-sort',dir==='desc'?'descending':'ascending');});
    if(col==='') continue;
    const body=t.tBodies[0], rows=Array.from(body.rows);
    const key=r=>{const c=r.cells[Number(col)]; const v=c?(c.dataset.v??c.textContent.trim()):''; const n=Number(v); return v!==''&&!isNaN(n)?n:v.toLowerCase();};
    rows.sort((a,b)=>{const x=key(a),y=key(b); const r=x<y?-1:x>y?1:0; return dir==='desc'?-r:r;});
    rows.forEach(r=>body.appendChild(r));
  }
  const shown=$$('#recent tbody tr').filter(r=>!r.hidden).length;
  if($('#shown')) $('#shown').textContent=shown;
  $('#pause').textContent=s.get('paused')?'Resume auto-refresh':'Pause auto-refresh';
  $('#pause').setAttribute('aria-pressed',s.get('paused')?'true':'false');
}
function set(k,v){const s=state(); if(v) s.set(k,v); else s.delete(k); save(s); apply();}
document.addEventListener('input',e=>{const id=e.target.id||''; if(id.startsWith('f-')) set(id.slice(2),e.target.value);});
document.addEventListener('click',e=>{
  const b=e.target.closest('th button'); if(!b) return;
  const t=b.closest('table'), i=String(b.closest('th').cellIndex), s=state();
  const [col,dir]=(s.get('sort:'+t.id)||'').split(':');
  set('sort:'+t.id, i+':'+(col===i&&dir!=='desc'?'desc':'asc'));
});
$('#pause').addEventListener('click',()=>set('paused',state().get('paused')?'':'1'));
$('#clear').addEventListener('click',()=>{const s=state(); for(const k of ['state','module','label','q']) s.delete(k); save(s); apply();});
async function refresh(){
  if(state().get('paused')) return;
  try{
    const r=await fetch(location.pathname+location.search,{cache:'no-store'});
    if(!r.ok) throw new Error('HTTP '+r.status);
    const doc=new DOMParser().parseFromString(await r.text(),'text/html');
    $('#content').replaceWith(doc.querySelector('#content'));
    $('#updated').textContent=doc.querySelector('#updated').textContent;
    document.body.dataset.refreshes=String(Number(document.body.dataset.refreshes||0)+1);
    $('#refresh-error').textContent='';
    apply();
  }catch(err){$('#refresh-error').textContent='refresh failed: '+err.message;}
}
setInterval(refresh,every*1000);
$('#every').textContent=every;
window.addEventListener('hashchange',apply);
apply();
})();
"""


def _ts(unix: float | None) -> str:
    if unix is None:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(unix))


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def phase_bars(result: ProbeResult) -> str:
    """The probe's phases as inline bars on its own time axis; the failed phase hatched."""
    span = result.duration_seconds
    if span <= 0:
        return '<div class="wf"></div>'
    parts = []
    described = []
    for p in result.timeline:
        left, width = p.start / span * 100, p.duration / span * 100
        title = f"{phase_label(p.name)} {_ms(p.duration)}"
        described.append(title)
        parts.append(f'<span class="ph-{escape(p.name)}" style="left:{left:.2f}%;width:{width:.2f}%" title="{escape(title)}"></span>')
    f = result.failure
    if f is not None and result.failed_phase_start is not None:
        spent = span - result.failed_phase_start
        title = f"{phase_label(f.phase)} {_ms(spent)} (failed)"
        described.append(title)
        parts.append(f'<span class="failed" style="left:{result.failed_phase_start / span * 100:.2f}%;'
                     f'width:{spent / span * 100:.2f}%" title="{escape(title)}"></span>')
    label = "; ".join(described) or "no phase completed"
    return f'<div class="wf" role="img" aria-label="{escape(label)}">{"".join(parts)}</div>'


def _failure_text(result: ProbeResult) -> tuple[str, str]:
    """(phase / reason, the reason's meaning) — never Python's exception text (that stays in /logs)."""
    f = result.failure
    if f is None:
        return "", ""
    reason = REASONS.get(f.reason)
    return f"{f.phase} / {f.reason}", reason.meaning if reason else ""


def _trace_cell(result: ProbeResult, template: str | None) -> str:
    if not result.trace_id:
        return "<td></td>"
    short = escape(result.trace_id[:16]) + "…"
    title = escape(result.trace_id) + ("" if result.sampled else " (not sampled: no span exported)")
    if template and result.sampled:
        href = escape(template.replace("{trace_id}", quote(result.trace_id, safe="")))
        return f'<td class="trace"><a href="{href}" title="{title}"><code>{short}</code></a></td>'
    return f'<td class="trace" title="{title}"><code>{short}</code></td>'


def _recent_rows(exporter: Exporter, prefix: str) -> list[str]:
    rows = []
    for entry in exporter.history.recent(MAX_RECENT_ROWS):
        r = entry.result
        css = "ok" if r.success else "fail"
        reason, meaning = _failure_text(r)
        finished = r.started_at + r.duration_seconds
        target = escape(r.target)  # already shown: the prober masked its secrets (display_target)
        rows.append(
            f'<tr class="{css}" data-state="{css}" data-module="{escape(r.module)}" data-target="{target}">'
            f'<td data-v="{finished:.3f}">{_ts(finished)}</td><td class="source">{escape(entry.source)}</td>'
            f'<td class="target">{target}</td><td>{escape(r.module)}</td>'
            f'<td class="state">{"Success" if r.success else "Failure"}</td>'
            f'<td data-v="{r.duration_seconds:.6f}">{_ms(r.duration_seconds)}</td>'
            f'<td class="phases">{phase_bars(r)}</td>'
            f'<td class="reason" title="{escape(meaning)}">{escape(reason)}</td>'
            f"{_trace_cell(r, exporter.options.trace_url)}"
            f'<td><a href="{prefix}/logs?id={entry.id}">Logs</a></td></tr>'
        )
    return rows


def _strip(exporter: Exporter, target: str, module: str) -> str:
    entries = exporter.history.of_target("scheduled", target, module)
    spans = "".join(
        f'<span class="{"ok" if e.result.success else "fail"}" '
        f'title="{_ts(e.result.started_at)} {"ok" if e.result.success else escape(_failure_text(e.result)[0])}"></span>'
        for e in entries
    )
    ok = sum(e.result.success for e in entries)
    return (f'<td class="history" data-v="{ok / len(entries) if entries else 0:.4f}">'
            f'<div class="strip" role="img" aria-label="{ok} of the last {len(entries)} probes succeeded">{spans}</div></td>')


def _target_rows(exporter: Exporter, prefix: str) -> list[str]:
    rows = []
    for (target, module, labels), series in sorted(exporter.store.series.items()):
        if series.attempts == 0:
            continue
        # Time-weighted like the SLI (docs/metrics.md): re-checks of a failing target do not weigh it down.
        ratio = series.up / series.observed if series.observed else series.successes / series.attempts
        css = "ok" if series.success else "fail"
        last = series.last_failure
        if last:
            meaning = REASONS[last[1]].meaning if last[1] in REASONS else ""
            last_text = f"{escape(last[0])} / {escape(last[1])}" + (f": {escape(meaning)}" if meaning else "")
        else:
            last_text = "—"
        label_text = ", ".join(f"{escape(k)}={escape(v)}" for k, v in labels)
        shown = escape(target)  # the store's key is the target as shown: its secrets are masked
        probe_link = f'{prefix}/probe?target={quote(target, safe="")}&amp;module={quote(module, safe="")}&amp;debug=true'
        probe_now = f'<a href="{probe_link}">Probe now</a>'
        rows.append(
            f'<tr class="{css}" data-state="{css}" data-module="{escape(module)}" data-labels="{label_text}" '
            f'data-target="{shown}"><td class="target">{shown}</td><td>{escape(module)}</td><td>{label_text}</td>'
            f'<td class="state">{"Up" if series.success else "Down"}</td>'
            f"{_strip(exporter, target, module)}"
            f'<td data-v="{ratio:.6f}">{ratio * 100:.2f}% ({series.successes}/{series.attempts})</td>'
            f'<td data-v="{series.last_success or 0}">{_ts(series.last_success)}</td>'
            f'<td class="last-failure">{last_text}</td><td>{probe_now}</td></tr>'
        )
    return rows


# Columns a narrow screen can do without (hidden below 900 px).
_COLUMN_CLASS = {"Phases": ' class="phases"', "Source": ' class="source"'}


def _head(table: str, columns: list[str]) -> str:
    cells = "".join(
        f'<th scope="col"{_COLUMN_CLASS.get(c, "")}>' + (f'<button type="button">{c}</button>' if c else "") + "</th>"
        for c in columns
    )
    return f'<div class="scroll"><table id="{table}" class="sortable"><thead><tr>{cells}</tr></thead>'


def render_status(exporter: Exporter, prefix: str) -> str:
    recent = _recent_rows(exporter, prefix)
    targets_html = ""
    if exporter.scheduler.entries:
        k = exporter.history.per_target
        targets_html = (
            f"<h2>Targets</h2><p>Availability (time-weighted, as the SLI: re-checks of a failing target do not weigh it down) since the exporter started ({_ts(exporter.started_at)}); "
            f"history: the last {k} probes of each target.</p>"
            + _head("targets", ["Target", "Module", "Labels", "State", f"Last {k}", "Availability (time-weighted)", "Last success (UTC)",
                                "Last failure", ""])
            + "<tbody>" + "".join(_target_rows(exporter, prefix)) + "</tbody></table></div>"
        )
    modules = sorted(exporter.config.modules)
    probe_options = "".join(f'<option value="{escape(n)}">{escape(n)}</option>' for n in modules)
    filter_options = '<option value="">any</option>' + probe_options
    limit, per_target = exporter.options.history_limit, exporter.history.per_target
    js = _JS.replace("REFRESH", str(REFRESH_SECONDS))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>connhealth</title><style>{_CSS}</style></head>
<body data-refreshes="0">
<header>
<h1>connhealth</h1>
<p>Version {escape(__version__)} · <a href="{prefix}/metrics">Metrics</a> · <a href="{prefix}/config">Configuration</a> ·
All times UTC · updated <span id="updated">{_ts(time.time())}</span> ·
auto-refresh every <span id="every">{REFRESH_SECONDS}</span> s
<button type="button" id="pause" aria-pressed="false">Pause auto-refresh</button> <span id="refresh-error" role="status"></span></p>
<form action="{prefix}/probe" method="get" id="probe-form" class="bar"><label>Probe now (debug output):
<input name="target" placeholder="https://host/path or host:port" size="40" required></label>
<select name="module" aria-label="module">{probe_options}</select><input type="hidden" name="debug" value="true">
<button type="submit">Probe</button></form>
<div class="bar" role="search">
<label>State <select id="f-state"><option value="">any</option><option value="ok">ok</option><option value="fail">failing</option></select></label>
<label>Module <select id="f-module">{filter_options}</select></label>
<label>Label <input id="f-label" placeholder="service=web" size="14"></label>
<label>Text <input id="f-q" type="search" placeholder="target, reason…" size="18"></label>
<button type="button" id="clear">Clear filters</button>
</div>
</header>
<main id="content">
{targets_html}
<h2>Recent probes</h2>
<p><span id="shown">{len(recent)}</span> shown of {len(recent)}: the last {limit} overall and the last {per_target} of each target,
newest first by finish time.</p>
{_head("recent", ["Finished (UTC)", "Source", "Target", "Module", "Result", "Duration", "Phases", "Failure (phase / reason)", "Trace", "Debug"])}
<tbody>{"".join(recent)}</tbody></table></div>
</main>
<script>{js}</script>
</body></html>
"""
