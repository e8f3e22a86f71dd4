"""The status page as a browser renders it: headless Chromium against a real exporter process.

The exporter runs in continuous mode with one healthy and one failing (refused
port) target; a few /probe requests fill the recent-probes table. Chromium's
``--dump-dom`` output (the DOM after parsing) is checked, every Logs link is
followed, and a screenshot is left for humans (path printed; set
CONNHEALTH_SCREENSHOT_DIR to keep it somewhere specific).
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlparse

import pytest

try:
    from tests.procs import ExporterProcess, refused_port, value
    from tests.peers import HTTPServer
except ImportError:  # pragma: no cover - depends on how pytest put us on sys.path
    from procs import ExporterProcess, refused_port, value  # type: ignore[no-redef]
    from peers import HTTPServer

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.timeout(90),
]
BROWSER_TIMEOUT = 45.0


class Tables(HTMLParser):
    """Rows of every <table id=...>: each row is {"class", "attrs", "cells": [text], "links": [href]}."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[dict]] = {}
        self._table: str | None = None
        self._row: dict | None = None
        self._cell: list[str] | None = None
        self._in_head = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table" and a.get("id"):
            self._table = a["id"]
            self.tables[self._table] = []
        elif tag == "thead":
            self._in_head = True
        elif tag == "tr" and self._table and not self._in_head:
            self._row = {"class": a.get("class") or "", "attrs": a, "cells": [], "cell_classes": [], "links": []}
        elif tag == "td" and self._row is not None:
            self._cell = []
            self._row["cell_classes"].append(a.get("class") or "")
        elif tag == "a" and self._row is not None and a.get("href"):
            self._row["links"].append((a["href"]))

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._table = None
        elif tag == "thead":
            self._in_head = False
        elif tag == "td" and self._row is not None and self._cell is not None:
            self._row["cells"].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table:
            self.tables[self._table].append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


async def chromium(tmp_path: Path, *args: str) -> str:
    profile = tmp_path / "chromium-profile"
    profile.mkdir(exist_ok=True)
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", *args,
    ]
    proc = await asyncio.create_subprocess_exec(*cmd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), BROWSER_TIMEOUT)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"chromium did not finish within {BROWSER_TIMEOUT}s: {cmd}")
    assert proc.returncode == 0, f"chromium exited {proc.returncode}: {err.decode(errors='replace')[-2000:]}"
    return out.decode(errors="replace")


async def test_status_page_in_headless_chromium(tmp_path: Path) -> None:
    async with HTTPServer() as http:
        healthy = http.url("/ok")
        failing = f"127.0.0.1:{refused_port()}"
        config = tmp_path / "connhealth.yml"
        config.write_text(f"""
scheduler:
  min_interval: 500ms
targets:
  - target: {healthy}
    interval: 1s
    labels: {{service: web}}
  - target: {failing}
    module: tcp_connect
    interval: 1s
    labels: {{service: db}}
""")
        exporter = ExporterProcess(config, tmp_path, "--history.limit", "200", "--shutdown-grace", "1")
        await exporter.start()
        try:
            # A couple of /probe requests, one ok and one failing, with a module the scheduler does not use.
            status, text = await exporter.get("/probe", params={"target": http.url("/status/200"), "module": "http_2xx"})
            assert status == 200 and value(text, "probe_success") == 1
            status, text = await exporter.get("/probe", params={"target": failing, "module": "tls_connect"})
            assert status == 200 and value(text, "probe_success") == 0
            await exporter.wait_metrics(
                lambda t: (value(t, "connhealth_probe_attempts_total", target=healthy) or 0) >= 2
                and (value(t, "connhealth_probe_attempts_total", target=failing) or 0) >= 2,
                5.0, "both scheduled targets to be probed",
            )
            url = exporter.base_url + "/"
            dom = await chromium(tmp_path, "--dump-dom", url)
            shot_dir = Path(os.environ.get("CONNHEALTH_SCREENSHOT_DIR") or tmp_path)
            shot_dir.mkdir(parents=True, exist_ok=True)
            shot = shot_dir / "status.png"
            await chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,900", "--hide-scrollbars", url)
            print(f"\nstatus page screenshot: {shot}")
            (tmp_path / "status.html").write_text(dom)

            assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            parser = Tables()
            parser.feed(dom)
            assert "<h1>connhealth</h1>" in dom
            assert set(parser.tables) >= {"recent", "targets"}, f"tables found: {list(parser.tables)}"

            # Recent probes: target, module, result, reason; the newest first, both sources present.
            recent = parser.tables["recent"]
            assert 4 <= len(recent) <= 200, f"{len(recent)} recent rows (history limit 200)"
            by_key: dict[tuple[str, str, str], dict] = {}
            for row in recent:
                _, source, target, module, result, duration, _phases, reason, _trace, _debug = row["cells"]
                assert result in ("Success", "Failure") and duration.endswith(" ms")
                assert row["class"] == ("ok" if result == "Success" else "fail")
                assert row["attrs"].get("data-target") == target
                by_key.setdefault((source, target, module), row)
                if result == "Failure":
                    assert reason, f"failing row without a reason: {row['cells']}"
                else:
                    assert reason == ""
            ok_probe = by_key[("probe", http.url("/status/200"), "http_2xx")]
            assert ok_probe["cells"][4] == "Success"
            bad_probe = by_key[("probe", failing, "tls_connect")]
            assert bad_probe["cells"][4] == "Failure" and bad_probe["cells"][7] == "connect / connect_refused"
            assert by_key[("scheduled", healthy, "http_2xx")]["cells"][4] == "Success"
            sched_fail = by_key[("scheduled", failing, "tcp_connect")]
            assert sched_fail["cells"][4] == "Failure" and sched_fail["cells"][7] == "connect / connect_refused"

            # Every recent row's Logs link works and shows that probe's logs.
            ids = set()
            for row in recent:
                target = row["cells"][2]
                (href,) = row["links"]
                link = urljoin(url, href)
                assert urlparse(link).path == "/logs"
                ids.add(parse_qs(urlparse(link).query)["id"][0])
                status, logs = await exporter.get(urlparse(link).path + "?" + urlparse(link).query)
                assert status == 200, logs
                assert logs.startswith("Logs for the probe:")
                assert f"probing {target} with module {row['cells'][3]}" in logs
                if row["cells"][4] == "Failure":
                    assert "FAILED in phase connect: connect_refused" in logs
                else:
                    assert "probe succeeded" in logs
                assert "Module configuration:" in logs
            assert len(ids) == len(recent), "two rows link to the same probe"
            status, _ = await exporter.get("/logs?id=999999")
            assert status == 404

            # Targets: state, success ratio, last failure.
            targets = {row["cells"][0]: row for row in parser.tables["targets"]}
            assert set(targets) == {healthy, failing}
            up = targets[healthy]["cells"]
            assert up[1] == "http_2xx" and up[2] == "service=web" and up[3] == "Up"
            assert up[5].startswith("100.00% (") and up[7] == "—"
            down = targets[failing]["cells"]
            assert down[1] == "tcp_connect" and down[2] == "service=db" and down[3] == "Down"
            assert down[5].startswith("0.00% (0/") and down[6] == "—"
            assert down[7] == "connect / connect_refused: the host answered the SYN with a reset"
            assert targets[failing]["class"] == "fail" and targets[healthy]["class"] == "ok"
            # "Probe now" runs a debug probe of that target.
            (probe_href,) = targets[failing]["links"]
            probe_link = urlparse(urljoin(url, probe_href))
            q = {k: v[0] for k, v in parse_qs(probe_link.query).items()}
            assert q == {"target": failing, "module": "tcp_connect", "debug": "true"}
            status, text = await exporter.get(probe_link.path, params=q)
            assert status == 200 and "Logs for the probe" in text and "probe_success 0" in text
        finally:
            await exporter.astop()


# --- triage: filters, sorting, refresh, phase bars, trace links (all through the DOM) ----------------
async def browser(tmp_path: Path, *args: str) -> tuple[str, str]:
    """Chromium's stdout (e.g. the dumped DOM) and its console messages (every console line is a defect here)."""
    profile = tmp_path / "chromium-profile"
    profile.mkdir(exist_ok=True)
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--enable-logging=stderr", "--v=0", f"--user-data-dir={profile}", *args]
    proc = await asyncio.create_subprocess_exec(*cmd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), BROWSER_TIMEOUT)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"chromium did not finish within {BROWSER_TIMEOUT}s: {cmd}")
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    console = [line for line in err.decode(errors="replace").splitlines() if ":CONSOLE" in line]
    return out.decode(errors="replace"), "\n".join(console)


class Rows(HTMLParser):
    """Every <tr> of every table with its attributes, cells' attributes and the tags inside its cells."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, list[dict]] = {}
        self.head: dict[str, list[dict]] = {}
        self._table: str | None = None
        self._row: dict | None = None
        self._in_head = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id")
            self.rows[self._table or ""], self.head[self._table or ""] = [], []
        elif tag == "thead":
            self._in_head = True
        elif tag == "th" and self._in_head:
            self.head[self._table or ""].append(a)
        elif tag == "tr" and not self._in_head and self._table:
            self._row = {"attrs": a, "cells": [], "tags": []}
            self.rows[self._table].append(self._row)
        elif tag == "td" and self._row is not None:
            self._row["cells"].append({"attrs": a, "text": ""})
        elif self._row is not None:
            self._row["tags"].append((tag, a))

    def handle_endtag(self, tag: str) -> None:
        if tag == "thead":
            self._in_head = False
        elif tag == "tr":
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._row is not None and self._row["cells"]:
            self._row["cells"][-1]["text"] += data


def parse_rows(dom: str) -> Rows:
    parser = Rows()
    parser.feed(dom)
    return parser


def visible(rows: list[dict]) -> list[dict]:
    return [r for r in rows if "hidden" not in r["attrs"]]


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


async def test_status_page_triage_in_chromium(tmp_path: Path) -> None:
    try:
        from tests.otlp_receiver import OTLPReceiver
    except ImportError:  # pragma: no cover
        from otlp_receiver import OTLPReceiver
    async with HTTPServer() as http, OTLPReceiver(grpc_=False) as otlp:
        healthy = http.url("/ok")
        failing = f"127.0.0.1:{refused_port()}"
        config = tmp_path / "connhealth.yml"
        config.write_text(f"""
scheduler:
  min_interval: 500ms
targets:
  - target: {healthy}
    interval: 1s
    labels: {{service: web}}
  - target: {failing}
    module: tcp_connect
    interval: 1s
    labels: {{service: db}}
""")
        exporter = ExporterProcess(config, tmp_path, "--shutdown-grace", "1", "--history.per-target", "4",
                                   "--web.trace-url", "http://traces.example/trace/{trace_id}",
                                   "--otlp.endpoint", otlp.http_endpoint)
        await exporter.start()
        try:
            await exporter.wait_metrics(
                lambda t: (value(t, "connhealth_probe_attempts_total", target=healthy) or 0) >= 2
                and (value(t, "connhealth_probe_attempts_total", target=failing) or 0) >= 2,
                10.0, "both scheduled targets to be probed twice",
            )
            base = exporter.base_url + "/"

            # Filtering by state and module, from the URL fragment the controls write.
            dom, console = await browser(tmp_path, "--dump-dom", base + "#state=fail&module=tcp_connect")
            assert console == ""
            page = parse_rows(dom)
            recent = page.rows["recent"]
            shown = visible(recent)
            assert shown and all(r["attrs"]["data-state"] == "fail" and r["attrs"]["data-module"] == "tcp_connect" for r in shown)
            assert len(shown) < len(recent)  # the healthy target's rows are there, hidden
            assert f'<span id="shown">{len(shown)}</span>' in dom
            assert [r["attrs"]["data-target"] for r in visible(page.rows["targets"])] == [failing]

            # Filtering by label and by free text.
            dom, console = await browser(tmp_path, "--dump-dom", base + "#label=service%3Dweb")
            assert console == ""
            assert [r["attrs"]["data-target"] for r in visible(parse_rows(dom).rows["targets"])] == [healthy]
            dom, _ = await browser(tmp_path, "--dump-dom", base + "#q=connect_refused")
            shown = visible(parse_rows(dom).rows["recent"])
            assert shown and {r["attrs"]["data-target"] for r in shown} == {failing}

            # Sorting by a column: duration, descending; the header says so.
            dom, console = await browser(tmp_path, "--dump-dom", base + "#sort:recent=5:desc")
            assert console == ""
            page = parse_rows(dom)
            durations = [float(r["cells"][5]["attrs"]["data-v"]) for r in page.rows["recent"]]
            assert len(durations) >= 4 and durations == sorted(durations, reverse=True)
            assert page.head["recent"][5].get("aria-sort") == "descending"

            # Phase bars and trace links per probe.
            ok_row = next(r for r in page.rows["recent"] if r["attrs"]["data-target"] == healthy)
            bars = [a for tag, a in ok_row["tags"] if tag == "span" and (a.get("class") or "").startswith("ph-")]
            assert {a["class"] for a in bars} >= {"ph-connect", "ph-request", "ph-first_byte", "ph-transfer"}
            assert all(re.fullmatch(r"left:[\d.]+%;width:[\d.]+%", a["style"]) for a in bars)
            bad_row = next(r for r in page.rows["recent"] if r["attrs"]["data-target"] == failing)
            failed = [a for tag, a in bad_row["tags"] if tag == "span" and a.get("class") == "failed"]
            assert len(failed) == 1 and re.fullmatch(r"TCP connect [\d.]+ ms \(failed\)", failed[0]["title"])
            links = [a["href"] for tag, a in ok_row["tags"] if tag == "a" and "traces.example" in a.get("href", "")]
            assert len(links) == 1 and re.fullmatch(r"http://traces\.example/trace/[0-9a-f]{32}", links[0])
            assert "Errno" not in dom and "Connect call failed" not in dom  # no Python internals on the page
            assert "All times UTC" in dom and "since the exporter started" in dom

            # History strip: one mark per recent probe of the target, at most --history.per-target.
            strip = [a for tag, a in next(r for r in page.rows["targets"] if r["attrs"]["data-target"] == failing)["tags"]
                     if tag == "span"]
            assert 2 <= len(strip) <= 4 and {a["class"] for a in strip} == {"fail"}

            # Auto-refresh replaces the tables in place (filters kept); a paused page does not refresh.
            dom, console = await browser(tmp_path, "--virtual-time-budget=4000", "--dump-dom",
                                         base + "?refresh=1#state=fail")
            assert console == ""
            refreshes = int(re.search(r'data-refreshes="(\d+)"', dom).group(1))
            assert refreshes >= 1
            assert all(r["attrs"]["data-state"] == "fail" for r in visible(parse_rows(dom).rows["recent"]))
            dom, _ = await browser(tmp_path, "--virtual-time-budget=4000", "--dump-dom", base + "?refresh=1#paused=1")
            assert 'data-refreshes="0"' in dom and 'aria-pressed="true"' in dom and "Resume auto-refresh" in dom

            # Laptop and narrow widths: screenshots of the real size, for a human to look at.
            shot_dir = Path(os.environ.get("CONNHEALTH_SCREENSHOT_DIR") or tmp_path)
            shot_dir.mkdir(parents=True, exist_ok=True)
            for width, height in ((1366, 768), (800, 900)):
                shot = shot_dir / f"status-{width}.png"
                _, console = await browser(tmp_path, f"--screenshot={shot}", f"--window-size={width},{height}",
                                           "--hide-scrollbars", base)
                assert console == ""
                assert png_size(shot.read_bytes()) == (width, height) and shot.stat().st_size > 10_000
                print(f"\nstatus page screenshot: {shot}")

            # Keyboard: every control is a form control or a button with a label.
            assert dom.count('<th scope="col"') == dom.count("<th ")
            for control in ("f-state", "f-module", "f-label", "f-q"):
                assert re.search(rf"<label>[^<]*<(select|input) id=\"{control}\"", dom), control
        finally:
            await exporter.astop()


# --- the same page driven like a user: typing, clicking, the keyboard (Chrome DevTools Protocol) ---------
class Browser:
    """Headless Chromium driven over the DevTools protocol (its own websocket; no driver library needed).

    ``evaluate`` runs JavaScript in the page; ``key`` sends a real key press;
    ``console`` collects every console message and uncaught exception.
    """

    def __init__(self, tmp_path: Path, width: int = 1366, height: int = 768) -> None:
        self.profile = tmp_path / "cdp-profile"
        self.size = (width, height)
        self.console: list[str] = []
        self._ids = iter(range(1, 1_000_000))
        self._pending: dict[int, asyncio.Future] = {}
        self._events: asyncio.Queue = asyncio.Queue()

    async def __aenter__(self) -> "Browser":
        import aiohttp

        self.profile.mkdir(exist_ok=True)
        self.proc = await asyncio.create_subprocess_exec(
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--remote-debugging-port=0", f"--user-data-dir={self.profile}",
            f"--window-size={self.size[0]},{self.size[1]}", "about:blank",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        active = self.profile / "DevToolsActivePort"
        for _ in range(300):  # bounded: 30 s
            if active.exists() and len(active.read_text().splitlines()) >= 2:
                break
            await asyncio.sleep(0.1)
        port = int(active.read_text().splitlines()[0])
        self.session = aiohttp.ClientSession()
        async with self.session.get(f"http://127.0.0.1:{port}/json/list") as r:
            page = next(t for t in await r.json() if t["type"] == "page")
        self.ws = await self.session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        self.reader = asyncio.create_task(self._read())
        await self.send("Runtime.enable")
        await self.send("Page.enable")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.reader.cancel()
        await self.ws.close()
        await self.session.close()
        self.proc.kill()
        await self.proc.wait()

    async def _read(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            if "id" in data:
                self._pending.pop(data["id"]).set_result(data)
            elif data.get("method") == "Runtime.consoleAPICalled":
                self.console.append(" ".join(str(a.get("value", a.get("description"))) for a in data["params"]["args"]))
            elif data.get("method") == "Runtime.exceptionThrown":
                self.console.append(data["params"]["exceptionDetails"].get("exception", {}).get("description", "exception"))
            else:
                self._events.put_nowait(data)

    async def send(self, method: str, **params: object) -> dict:
        msg_id = next(self._ids)
        self._pending[msg_id] = asyncio.get_running_loop().create_future()
        await self.ws.send_str(json.dumps({"id": msg_id, "method": method, "params": params}))
        reply = await asyncio.wait_for(self._pending[msg_id], 20)
        assert "error" not in reply, reply
        return reply["result"]

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", url=url)
        while (await asyncio.wait_for(self._events.get(), 20)).get("method") != "Page.loadEventFired":
            pass

    async def evaluate(self, expression: str) -> object:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 15.0) -> object:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {expression}"
            await asyncio.sleep(0.1)

    async def key(self, key: str, code: int, text: str = "") -> None:
        await self.send("Input.dispatchKeyEvent", type="keyDown", key=key, code=key, windowsVirtualKeyCode=code, text=text)
        await self.send("Input.dispatchKeyEvent", type="keyUp", key=key, code=key, windowsVirtualKeyCode=code)

    async def type(self, selector: str, text: str) -> None:
        await self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        for ch in text:
            await self.send("Input.dispatchKeyEvent", type="keyDown", key=ch, text=ch)
            await self.send("Input.dispatchKeyEvent", type="keyUp", key=ch)


VISIBLE = "Array.from(document.querySelectorAll('#{table} tbody tr')).filter(r => !r.hidden).map(r => r.dataset.{field})"


async def test_status_page_driven_by_a_user(tmp_path: Path) -> None:
    async with HTTPServer() as http:
        healthy = http.url("/ok")
        failing = f"127.0.0.1:{refused_port()}"
        config = tmp_path / "connhealth.yml"
        config.write_text(f"""
targets:
  - target: {healthy}
    interval: 1s
    labels: {{service: web}}
  - target: {failing}
    module: tcp_connect
    interval: 1s
    labels: {{service: db}}
""")
        exporter = ExporterProcess(config, tmp_path, "--shutdown-grace", "1")
        await exporter.start()
        try:
            await exporter.wait_metrics(
                lambda t: (value(t, "connhealth_probe_attempts_total", target=healthy) or 0) >= 2
                and (value(t, "connhealth_probe_attempts_total", target=failing) or 0) >= 2,
                10.0, "both scheduled targets to be probed twice")
            async with Browser(tmp_path) as browser:
                await browser.goto(exporter.base_url + "/?refresh=1")
                # Typing in the text filter hides the other target's rows and writes the URL fragment.
                await browser.type("#f-q", "connect_refused")
                assert set(await browser.evaluate(VISIBLE.format(table="recent", field="target"))) == {failing}
                assert "q=connect_refused" in await browser.evaluate("location.hash")
                # Choosing a state in the select (a change made the way a user's would be).
                await browser.evaluate("const s = document.querySelector('#f-state'); s.value = 'ok';"
                                       "s.dispatchEvent(new Event('input', {bubbles: true}))")
                assert await browser.evaluate(VISIBLE.format(table="recent", field="target")) == []  # ok AND refused
                await browser.evaluate("document.querySelector('#clear').click()")
                assert len(set(await browser.evaluate(VISIBLE.format(table="recent", field="target")))) == 2
                # Keyboard only: focus the Duration header's button, press Enter twice: ascending, then descending.
                await browser.evaluate("document.querySelectorAll('#recent th button')[5].focus()")
                await browser.key("Enter", 13, "\r")
                assert await browser.evaluate("document.querySelectorAll('#recent th')[5].getAttribute('aria-sort')") == "ascending"
                await browser.key("Enter", 13, "\r")
                durations = await browser.evaluate(
                    "Array.from(document.querySelectorAll('#recent tbody tr')).map(r => Number(r.cells[5].dataset.v))")
                assert durations == sorted(durations, reverse=True) and len(durations) >= 4
                # Auto-refresh (every second here) brings new rows and keeps the sort; the pause button stops it.
                await browser.wait_for("Number(document.body.dataset.refreshes) >= 2")
                await browser.wait_for(f"document.querySelectorAll('#recent tbody tr').length > {len(durations)}")
                assert await browser.evaluate("document.querySelectorAll('#recent th')[5].getAttribute('aria-sort')") == "descending"
                await browser.evaluate("document.querySelector('#pause').click()")
                paused_at = await browser.evaluate("Number(document.body.dataset.refreshes)")
                await asyncio.sleep(2.5)  # more than two refresh periods
                assert await browser.evaluate("Number(document.body.dataset.refreshes)") == paused_at
                assert await browser.evaluate("document.querySelector('#pause').getAttribute('aria-pressed')") == "true"
                assert browser.console == []
        finally:
            await exporter.astop()
