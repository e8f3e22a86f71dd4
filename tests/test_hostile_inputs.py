"""Hostile inputs against one running exporter (issue 12): /probe parameters and headers, config files
(reloaded by POST and SIGHUP), target files, and check-config.

Every case expects a clear error that names the problem: a 4xx for a request, a failed reload (500,
``connhealth_config_last_reload_successful 0``) for a config, a counted and logged error for a target
file, or, for a target a prober cannot use, the probe's own ``invalid_target`` failure (blackbox
answers such a /probe with 200 and probe_success 0, so that the scrape still says "down"; never
``internal_error``, which is reserved for bugs).

Throughout, a watchdog process (tests/watchdog.py) asks ``/-/healthy`` every 20 ms: every case must
keep every answer under 100 ms. At the end the exporter is still up, no background task failed, and
its open fds and resident memory are back to their baseline.

The exporter is one process for the whole module (``serve`` as users run it); the peers are real
servers on loopback (a threaded stdlib HTTP server, so they answer without the test's event loop).
"""
from __future__ import annotations

import asyncio
import http.client
import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import pytest

try:
    from tests.procs import LOCALHOST, ExporterProcess, REPO, refused_port, samples, value
    from tests.watchdog import LoopWatchdog, describe_fds, process_fds, process_rss
except ImportError:  # pragma: no cover - depends on how pytest put us on sys.path
    from procs import LOCALHOST, ExporterProcess, REPO, refused_port, samples, value  # type: ignore[no-redef]
    from watchdog import LoopWatchdog, describe_fds, process_fds, process_rss  # type: ignore[no-redef]

pytestmark = pytest.mark.timeout(60)

WAIT = 15.0  # bound on waiting for something that takes well under a second here
MAX_MESSAGE = 1500  # no error response or log line grows with the input (ConfigError cuts at 1000 + path)
PROBE_LIMIT = 3  # --probe.concurrency

# A "billion laughs": 9^6 = 531441 leaves from a few hundred bytes; 9^9 would be 387 M.
BOMB = "".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 9) if p else ', '.join(['lol'] * 9)}]\n"
               for p, c in zip(["", "a", "b", "c", "d", "e", "f", "g", "h"], "abcdefghi"))
MERGE_BOMB = "a: &a {k0: 0, k1: 1, k2: 2, k3: 3, k4: 4, k5: 5, k6: 6, k7: 7}\n" + "".join(
    f"{c}: &{c} {{<<: [{', '.join([f'*{p}'] * 9)}]}}\n" for p, c in zip("abcdefgh", "bcdefghi"))


# --- the peer: a threaded HTTP server -----------------------------------------------------------
class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path.startswith("/slow"):
            time.sleep(2.0)
        # Backtracking bait: a's and a final '!' that makes (a|aa)+$ and ^(a+)+$ fail only after trying every split.
        body = {"/backtrack": b"a" * 40 + b"!", "/redos27": b"a" * 26 + b"!",
                "/redos-big": b"a" * (4 << 20) + b"!"}.get(self.path, b"ok")
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@dataclass
class Env:
    proc: ExporterProcess
    config_file: Path
    sd: Path
    peer: str  # http://127.0.0.1:port
    watchdog: LoopWatchdog
    good_config: str
    baseline_rss: int = 0
    baseline_fds: int = 0
    baseline_fd_kinds: str = ""

    @property
    def pid(self) -> int:
        assert self.proc.proc is not None
        return self.proc.proc.pid

    def request(self, method: str, path: str, params: dict[str, str] | None = None,
                headers: dict[str, str] | None = None, timeout: float = 10.0) -> tuple[int, str]:
        conn = http.client.HTTPConnection(LOCALHOST, self.proc.port, timeout=timeout)
        try:
            conn.request(method, path + ("?" + urlencode(params) if params else ""), headers=headers or {})
            response = conn.getresponse()
            return response.status, response.read().decode("utf-8", "replace")
        finally:
            conn.close()

    def get(self, path: str, params: dict[str, str] | None = None, headers: dict[str, str] | None = None) -> tuple[int, str]:
        return self.request("GET", path, params, headers)

    def metrics(self) -> str:
        status, text = self.get("/metrics")
        assert status == 200, text
        return text

    def metric(self, name: str, **labels: str) -> float:
        return value(self.metrics(), name, **labels) or 0.0

    def wait_metric(self, name: str, predicate: Callable[[float], bool], what: str, **labels: str) -> float:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            got = self.metric(name, **labels)
            if predicate(got):
                return got
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; {name}{labels} = {self.metric(name, **labels)}\n"
                             f"{self.proc.log_tail()}")

    def log_since(self, offset: int) -> str:
        return self.proc.log()[offset:]


def write_atomic(path: Path, content: str | bytes) -> None:
    """Write beside the glob's reach, then rename: the watcher never reads a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(content if isinstance(content, bytes) else content.encode())
    os.replace(tmp, path)


GOOD_CONFIG = """
scheduler:
  file_refresh_interval: 100ms
modules:
  backtrack:
    prober: http
    timeout: 1s
    http:
      fail_if_body_matches_regexp: ["(a|aa)+$", "^(a+)+$"]
targets:
  - target: 127.0.0.1:{refused}
    module: tcp_connect
    interval: 1h
target_files:
  - files: ["{sd}/*.yml", "{sd}/*.json"]
    module: tcp_connect
    interval: 1h
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    workdir = tmp_path_factory.mktemp("hostile")
    sd = workdir / "sd"
    sd.mkdir()
    server = http.server.ThreadingHTTPServer((LOCALHOST, 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    config_file = workdir / "connhealth.yml"
    good = GOOD_CONFIG.format(refused=refused_port(), sd=sd)
    config_file.write_text(good)
    proc = ExporterProcess(config_file, workdir, "--probe.concurrency", str(PROBE_LIMIT))
    asyncio.run(proc.start())
    try:
        assert proc.proc is not None
        with LoopWatchdog(LOCALHOST, proc.port, pid=proc.proc.pid) as watchdog:
            e = Env(proc, config_file, sd, f"http://{LOCALHOST}:{server.server_address[1]}", watchdog, good)
            # Warm up every path the cases take (lazy imports, first thread-pool threads), then measure.
            assert e.get("/probe", {"target": e.peer + "/ok"})[0] == 200
            assert e.request("POST", "/-/reload")[0] == 200
            write_atomic(sd / "warm.yml", "- targets: ['127.0.0.1:1']\n")
            e.wait_metric("connhealth_scheduled_targets", lambda v: v == 2, "the warm-up target file")
            (sd / "warm.yml").unlink()
            e.wait_metric("connhealth_scheduled_targets", lambda v: v == 1, "the warm-up file's removal")
            e.metrics()
            e.baseline_rss, e.baseline_fds = process_rss(e.pid), process_fds(e.pid)
            e.baseline_fd_kinds = describe_fds(e.pid)
            yield e
    finally:
        proc.stop()
        server.shutdown()
        server.server_close()


# --- /probe parameters and headers --------------------------------------------------------------
TIMEOUT = "X-Prometheus-Scrape-Timeout-Seconds"


@dataclass(frozen=True)
class ProbeCase:
    id: str
    params: dict[str, str]
    headers: dict[str, str]
    status: int
    expect: tuple[str, ...]  # substrings of the response body (regexps when they start with ^)


def _p(id: str, status: int, *expect: str, headers: dict[str, str] | None = None, **params: str) -> ProbeCase:  # noqa: A002
    return ProbeCase(id, params, headers or {}, status, expect)


def _invalid(id: str, target: str, module: str = "http_2xx", *expect: str) -> ProbeCase:  # noqa: A002
    # debug=true: the response carries the probe's log, where the failure's message names the problem.
    return ProbeCase(id, {"target": target, "module": module, "debug": "true"}, {}, 200,
                     ('probe_failure_info{phase="probe",reason="invalid_target"} 1', "probe_success 0", *expect))


REFUSED = "http://127.0.0.1:1/"
PROBE_CASES = [
    _p("target-missing", 400, "Target parameter is missing"),
    _p("target-empty", 400, "Target parameter is missing", target=""),
    _p("module-unknown", 400, "Unknown module 'nope'", target=REFUSED, module="nope"),
    _p("module-path-traversal", 400, "Unknown module '../../etc/passwd'", target=REFUSED, module="../../etc/passwd"),
    _p("module-name-5000-chars", 400, "Unknown module 'mmmm", target=REFUSED, module="m" * 5000),
    _p("timeout-header-nan", 400, "'NaN' (expected a positive number of seconds)", target=REFUSED, headers={TIMEOUT: "NaN"}),
    _p("timeout-header-inf", 400, "'inf'", target=REFUSED, headers={TIMEOUT: "inf"}),
    _p("timeout-header-minus-inf", 400, "'-inf'", target=REFUSED, headers={TIMEOUT: "-inf"}),
    _p("timeout-header-negative", 400, "'-5'", target=REFUSED, headers={TIMEOUT: "-5"}),
    _p("timeout-header-zero", 400, "'0'", target=REFUSED, headers={TIMEOUT: "0"}),
    _p("timeout-header-text", 400, "'soon'", target=REFUSED, headers={TIMEOUT: "soon"}),
    _p("timeout-header-empty", 400, "''", target=REFUSED, headers={TIMEOUT: ""}),
    _p("timeout-header-hex", 400, "'0x10'", target=REFUSED, headers={TIMEOUT: "0x10"}),
    _p("timeout-header-400-digits", 400, "'9999", target=REFUSED, headers={TIMEOUT: "9" * 400}),
    # Far too long but finite: clamped to the longest deadline a config may give (1 h).
    _p("timeout-header-1e308-clamped", 200, "probe_timeout_seconds 3600", "connect_refused", target=REFUSED,
       headers={TIMEOUT: "1e308"}),
    _p("timeout-header-tiny-clamped", 200, "probe_timeout_seconds 0.001", "probe_success 0", target=REFUSED,
       headers={TIMEOUT: "1e-9"}),
    _p("traceparent-garbage", 200, "connect_refused", target=REFUSED, headers={"traceparent": "zz-" + "f" * 500}),
    _p("request-line-over-8k", 400, target="http://127.0.0.1:1/" + "a" * 9000),
    _p("header-over-8k", 400, target=REFUSED, headers={"X-Big": "b" * 9000}),
    _p("target-6000-chars", 200, "connect_refused", target="http://127.0.0.1:1/" + "a" * 6000),
    _invalid("http-idna-label-over-63", "http://" + "a" * 64 + ".example/", "http_2xx", "not a valid (IDNA) host name"),
    _invalid("http-host-over-253", "http://" + ".".join(["a" * 60] * 5) + "/", "http_2xx", "longer than 253"),
    _invalid("http-ipv6-zone", "http://[fe80::1%25lo]/", "http_2xx", "zone identifiers"),
    _invalid("http-port-out-of-range", "http://127.0.0.1:99999/", "http_2xx", "Port out of range"),
    _invalid("http-port-not-a-number", "http://127.0.0.1:abc/", "http_2xx"),
    _invalid("http-scheme-ftp", "ftp://127.0.0.1/", "http_2xx", "is not an http:// or https:// URL"),
    _invalid("http-no-host", "http:///path", "http_2xx", "is not an http:// or https:// URL"),
    _invalid("http-bad-percent-escape", "http://127.0.0.1:1/%zz", "http_2xx"),
    _invalid("http-nul-in-path", "http://127.0.0.1:1/a\x00b", "http_2xx"),
    _invalid("tcp-no-port", "127.0.0.1", "tcp_connect", "has no port"),
    _invalid("tcp-unclosed-bracket", "[::1:80", "tcp_connect", "unclosed or misplaced ']'"),
    _invalid("tcp-port-with-plus", "127.0.0.1:+80", "tcp_connect", "invalid port '+80'"),
    _invalid("tcp-port-underscore", "127.0.0.1:8_0", "tcp_connect", "invalid port '8_0'"),
    _invalid("tcp-port-zero", "127.0.0.1:0", "tcp_connect", "out of range"),
    _invalid("tcp-ipv6-zone", "[fe80::1%lo]:80", "tcp_connect", "zone identifiers"),
    _invalid("tcp-idna-label-over-63", "a" * 64 + ".example:80", "tcp_connect", "not a valid (IDNA) host name"),
    _invalid("tcp-empty-host", ":80", "tcp_connect", "has no host"),
]


@pytest.mark.parametrize("case", PROBE_CASES, ids=[c.id for c in PROBE_CASES])
def test_probe_request(env: Env, case: ProbeCase) -> None:
    with env.watchdog.watching(case.id):
        status, body = env.get("/probe", case.params, case.headers)
    assert status == case.status, body[:2000]
    for part in case.expect:
        assert part in body, f"{part!r} not in:\n{body[:3000]}"
    assert "internal_error" not in body
    if status >= 400:
        assert len(body) < MAX_MESSAGE, f"a {len(body)}-character error response"


def test_probe_non_ascii_path_is_sent_not_an_error(env: Env) -> None:
    # A user's fault once gave internal_error; Go percent-encodes it and so do we.
    with env.watchdog.watching("non-ascii-path"):
        status, body = env.get("/probe", {"target": env.peer + "/caf\u00e9/\u20ac"})
    assert status == 200 and "probe_success 1" in body, body


@pytest.mark.parametrize("path", ["/backtrack", "/redos27", "/redos-big"])
def test_probe_backtracking_body_regexp_runs_in_linear_time(env: Env, path: str) -> None:
    # (a|aa)+$ and ^(a+)+$ against a's and a '!' backtrack for minutes in a backtracking engine
    # (Python's re froze the exporter 4.4 s on the 27-byte body). RE2 answers in linear time: the
    # patterns do not match, the probe succeeds within its 1 s timeout, and the watchdog's
    # /-/healthy answers stay under 100 ms throughout (a 4 MiB body is searched off the loop).
    with env.watchdog.watching(f"backtracking-body-regexp {path}"):
        status, body = env.get("/probe", {"target": env.peer + path, "module": "backtrack"})
    assert status == 200, body
    assert "probe_success 1" in body and "probe_failed_due_to_regex 0" in body, body


def test_probe_concurrency_limit_answers_503_and_counts(env: Env) -> None:
    before = env.metric("connhealth_probe_requests_rejected_total")
    results: list[int] = []
    # PROBE_LIMIT probes that each take 2 s (the peer sleeps), from threads: they hold every slot.
    threads = [threading.Thread(target=lambda: results.append(env.get("/probe", {"target": env.peer + "/slow"})[0]))
               for _ in range(PROBE_LIMIT)]
    with env.watchdog.watching("probe-concurrency"):
        for t in threads:
            t.start()
        env.wait_metric("connhealth_probes_in_flight", lambda v: v == PROBE_LIMIT, "every slot busy", mode="probe_endpoint")
        status, body = env.get("/probe", {"target": REFUSED})
        for t in threads:
            t.join(WAIT)
    assert status == 503, body
    assert body == f"Too many concurrent /probe requests: {PROBE_LIMIT} are running (--probe.concurrency); try again later\n"
    assert results == [200] * PROBE_LIMIT
    assert env.metric("connhealth_probe_requests_rejected_total") == before + 1
    # Once they are done, /probe answers again.
    assert env.get("/probe", {"target": REFUSED})[0] == 200


@pytest.mark.parametrize(("case", "query"), [
    ("logs-id-not-a-number", "id=abc"),
    ("logs-id-negative", "id=-1"),
    ("logs-id-5000-digits", "id=" + "9" * 5000),
    ("logs-id-missing", ""),
])
def test_logs_bad_id_is_404(env: Env, case: str, query: str) -> None:
    with env.watchdog.watching(case):
        status, body = env.get("/logs?" + query)
    assert status == 404 and body == "Probe not found (it may have left the history)\n"


# --- config files: reload by POST ---------------------------------------------------------------
@dataclass(frozen=True)
class ConfigCase:
    id: str
    text: str | bytes
    expect: str  # substring of the error


def _c(id: str, text: str | bytes, expect: str) -> ConfigCase:  # noqa: A002
    return ConfigCase(id, text, expect)


def _nested(depth: int) -> str:
    return "x: " + "[" * depth + "]" * depth + "\n"


CONFIG_CASES = [
    _c("scheduler-min-interval-nan", "scheduler: {min_interval: .nan}", "scheduler.min_interval: duration must be finite, got nan"),
    _c("scheduler-file-refresh-nan", "scheduler: {file_refresh_interval: .nan}", "scheduler.file_refresh_interval: duration must be finite"),
    _c("scheduler-default-interval-inf", "scheduler: {default_interval: .inf}", "scheduler.default_interval: duration must be finite, got inf"),
    _c("scheduler-min-interval-1ms", "scheduler: {min_interval: 1ms}", "scheduler.min_interval: must be at least 10ms"),
    _c("scheduler-buckets-inf", "scheduler: {buckets: [0.1, .inf]}", "scheduler.buckets[1]: must be a finite number, got inf"),
    _c("scheduler-buckets-negative", "scheduler: {buckets: [-1]}", "scheduler.buckets: must be positive and strictly increasing"),
    _c("scheduler-buckets-200", "scheduler: {buckets: [" + ", ".join(str(i) for i in range(1, 201)) + "]}",
       "scheduler.buckets: at most 100 buckets"),
    _c("scheduler-concurrency-zero", "scheduler: {concurrency: 0}", "scheduler.concurrency: must be between 1 and 100000, got 0"),
    _c("scheduler-concurrency-1e12", "scheduler: {concurrency: 1000000000000}", "scheduler.concurrency: must be between 1 and 100000"),
    _c("scheduler-concurrency-text", "scheduler: {concurrency: many}", "scheduler.concurrency: expected int, got str 'many'"),
    _c("integer-5000-digits", "scheduler: {concurrency: " + "9" * 5000 + "}", "invalid YAML value: Exceeds the limit (4300 digits)"),
    _c("module-timeout-nan", "modules: {m: {prober: http, timeout: .nan}}", "modules.m.timeout: duration must be finite"),
    _c("module-timeout-2h", "modules: {m: {prober: http, timeout: 2h}}", "modules.m.timeout: duration '2h' is longer than the maximum 1h"),
    _c("phase-timeout-nan", "modules: {m: {prober: http, phase_timeouts: {connect: .nan}}}",
       "modules.m.phase_timeouts.connect: duration must be finite"),
    _c("resolver-timeout-negative", "modules: {m: {prober: tcp, resolver: {timeout: -1}}}",
       "modules.m.resolver.timeout: duration must not be negative"),
    _c("target-interval-1e308", "targets: [{target: 'http://127.0.0.1:1/', interval: 1.0e+308}]",
       "targets[0].interval: duration 1e+308 is longer than the maximum 1d"),
    _c("target-interval-400-digits", "targets: [{target: 'http://127.0.0.1:1/', interval: '" + "9" * 400 + "s'}]",
       "targets[0].interval: duration must be finite"),
    _c("body-size-limit-5000-digits", "modules: {m: {prober: http, http: {body_size_limit: '" + "9" * 5000 + "'}}}",
       "modules.m.http.body_size_limit: invalid size '9999"),
    _c("body-size-limit-1PB", "modules: {m: {prober: http, http: {body_size_limit: 1000TB}}}",
       "modules.m.http.body_size_limit: size '1000TB' is larger than the maximum 1TiB"),
    _c("status-code-inf", "modules: {m: {prober: http, http: {valid_status_codes: [.inf]}}}",
       "modules.m.http.valid_status_codes[0]: expected int, got inf"),
    _c("header-crlf", "modules: {m: {prober: http, http: {headers: {X-A: \"a\\r\\nInjected: 1\"}}}}", "modules.m.http.headers.X-A:"),
    _c("regexp-invalid", "modules: {m: {prober: http, http: {fail_if_body_matches_regexp: ['(']}}}",
       "modules.m.http.fail_if_body_matches_regexp[0]: invalid regexp '('"),
    _c("label-value-list", "targets: [{target: '127.0.0.1:1', labels: {a: [1, 2]}}]", "targets[0].labels.a: label value must be a string"),
    _c("alias-bomb", BOMB, "YAML aliases expand to more than 2000000 nodes (an alias bomb?); refused"),
    _c("alias-bomb-in-a-value-error", BOMB + "scheduler: {concurrency: *i}\n", "an alias bomb?"),
    _c("merge-key-bomb", MERGE_BOMB, "an alias bomb?"),
    _c("recursive-alias", "a: &a [*a]\n", "recursive alias"),
    _c("nested-150-deep", _nested(150), "nested deeper than 100 levels"),
    _c("binary", bytes(range(256)) * 64, "invalid YAML"),
    _c("over-16MiB", "# " + "x" * (16 << 20) + "\n", "config larger than 16 MiB; refused"),
    _c("python-object-tag", "a: !!python/object/apply:os.system ['true']\n", "could not determine a constructor"),
    _c("undefined-alias", "a: *nope\n", "found undefined alias"),
    _c("not-a-mapping", "- a\n- b\n", ": expected a mapping, got list"),
    # An explicit key ("? "): a plain one is limited to 1024 characters by YAML itself.
    _c("unknown-key-5000-chars", "? " + "k" * 5000 + "\n: 1\n", "kkkk...: unknown field"),
]


def _reload_fails(env: Env, text: str | bytes, expect: str) -> str:
    failures = env.metric("connhealth_config_reloads_total", result="failure")
    if isinstance(text, bytes):
        env.config_file.write_bytes(text)
    else:
        env.config_file.write_text(text)
    t0 = time.monotonic()
    status, body = env.request("POST", "/-/reload")
    elapsed = time.monotonic() - t0
    assert status == 500, body[:2000]
    assert expect in body, f"{expect!r} not in {body[:2000]!r}"
    assert len(body) < MAX_MESSAGE, f"a {len(body)}-character reload error"
    assert elapsed < 5.0, f"the reload took {elapsed:.1f}s to fail"
    text_m = env.metrics()
    assert value(text_m, "connhealth_config_last_reload_successful") == 0
    assert value(text_m, "connhealth_config_reloads_total", result="failure") == failures + 1
    assert value(text_m, "connhealth_scheduled_targets") == 1, "the failed reload changed the running targets"
    return body


def _restore(env: Env) -> None:
    env.config_file.write_text(env.good_config)
    status, body = env.request("POST", "/-/reload")
    assert status == 200, body
    assert env.metric("connhealth_config_last_reload_successful") == 1


@pytest.mark.parametrize("case", CONFIG_CASES, ids=[c.id for c in CONFIG_CASES])
def test_config_reload(env: Env, case: ConfigCase) -> None:
    log_offset = len(env.proc.log())
    try:
        with env.watchdog.watching(case.id):
            _reload_fails(env, case.text, case.expect)
    finally:
        _restore(env)
    log = env.log_since(log_offset)
    assert "config reload failed, keeping the previous config" in log
    assert "Traceback" not in log
    assert max(len(line) for line in log.splitlines()) < MAX_MESSAGE + 200


def test_config_reload_by_sighup_of_a_binary_file_is_a_counted_failure(env: Env) -> None:
    log_offset = len(env.proc.log())
    failures = env.metric("connhealth_config_reloads_total", result="failure")
    env.config_file.write_bytes(b"\xff\xfe\x00" * 1000)
    try:
        with env.watchdog.watching("sighup-binary"):
            env.proc.send_signal(signal.SIGHUP)
            env.wait_metric("connhealth_config_reloads_total", lambda v: v == failures + 1, "the failed SIGHUP reload",
                            result="failure")
        assert env.metric("connhealth_config_last_reload_successful") == 0
    finally:
        _restore(env)
    log = env.log_since(log_offset)
    assert "config reload failed" in log and "Exception in callback" not in log and "Traceback" not in log


# --- check-config on the command line -----------------------------------------------------------
@pytest.mark.parametrize(("case", "text", "expect"), [
    ("alias-bomb", BOMB, "an alias bomb?"),
    ("merge-key-bomb", MERGE_BOMB, "an alias bomb?"),
    ("min-interval-nan", "scheduler: {min_interval: .nan}", "scheduler.min_interval: duration must be finite"),
    ("binary", bytes(range(256)), "invalid YAML"),
])
def test_check_config_refuses_fast_with_a_short_message(tmp_path: Path, case: str, text: str | bytes, expect: str) -> None:
    path = tmp_path / "bad.yml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "exporter", "check-config", str(path)], capture_output=True, text=True,
                          cwd=REPO, timeout=30)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert expect in proc.stderr and len(proc.stderr) < MAX_MESSAGE, proc.stderr[:2000]
    assert elapsed < 10.0, f"check-config took {elapsed:.1f}s (the bomb took more than 30 s before)"


# --- target files ---------------------------------------------------------------------------------
def _big_broken_yaml() -> str:
    """~6 MB of valid groups, broken at the very end: all of it is parsed before the error."""
    group = "- targets: [" + ", ".join(f"'host{i}.example:80'" for i in range(1000)) + "]\n"
    text = group * (6_000_000 // len(group))
    return text + "- targets: ['unterminated\n"


TARGET_FILE_CASES: list[tuple[str, str, str | bytes, str]] = [
    ("binary-yaml", "bin.yml", bytes(range(256)) * 64, "invalid YAML"),
    ("binary-json", "bin.json", bytes(range(256)) * 64, "invalid JSON"),
    ("labels-a-list", "labels.yml", "- targets: ['127.0.0.1:1']\n  labels: [1, 2]\n", "[0].labels: expected a mapping"),
    ("targets-not-a-list", "t.yml", "- targets: 5\n", "[0]: expected {targets: [...], labels: {...}}"),
    ("target-not-a-string", "t.yml", "- targets: [1]\n", "[0].targets[0]: expected a non-empty string"),
    ("top-level-mapping", "t.yml", "targets: ['127.0.0.1:1']\n", "expected a list of {targets, labels} groups"),
    ("unknown-group-field", "t.yml", "- targets: ['127.0.0.1:1']\n  bogus: 1\n", "[0].bogus: unknown field"),
    ("label-name-invalid", "t.yml", "- targets: ['127.0.0.1:1']\n  labels: {bad-name: x}\n", "labels.bad-name: invalid label name"),
    ("module-label-unknown", "t.yml", "- targets: ['127.0.0.1:1']\n  labels: {module: nope}\n", "unknown module 'nope'"),
    ("module-label-a-list", "t.yml", "- targets: ['127.0.0.1:1']\n  labels: {module: [1]}\n", "labels.module: expected a module name"),
    ("alias-bomb", "bomb.yml", BOMB, "an alias bomb?"),
    ("json-nested-100k", "deep.json", "[" * 100_000 + "]" * 100_000, "invalid JSON"),
    ("json-label-value-object", "obj.json", '[{"targets": ["127.0.0.1:1"], "labels": {"a": {"b": 1}}}]',
     "labels.a: label value must be a string"),
    ("over-16MiB", "big.yml", "# " + "x" * (16 << 20) + "\n", "target file larger than 16 MiB; refused"),
    ("6MB-broken-at-the-end", "six.yml", _big_broken_yaml(), "invalid YAML"),
]


@pytest.mark.parametrize(("case", "name", "content", "expect"), TARGET_FILE_CASES, ids=[c[0] for c in TARGET_FILE_CASES])
def test_target_file(env: Env, case: str, name: str, content: str | bytes, expect: str) -> None:
    errors = env.metric("connhealth_target_file_errors_total")
    log_offset = len(env.proc.log())
    path = env.sd / name
    try:
        with env.watchdog.watching(case):
            write_atomic(path, content)
            env.wait_metric("connhealth_target_file_errors_total", lambda v: v >= errors + 1, f"the {case} file to be refused")
    finally:
        path.unlink()
    lines = [line for line in env.log_since(log_offset).splitlines() if str(path) in line]
    assert any(expect in line for line in lines), f"{expect!r} not logged for {path}:\n" + "\n".join(lines)[:3000]
    assert max(len(line) for line in lines) < MAX_MESSAGE + 300
    assert env.metric("connhealth_scheduled_targets") == 1
    assert env.metric("connhealth_background_task_failures_total", task="file_watcher") == 0


def test_target_file_fifo_is_refused_without_blocking_the_watcher(env: Env) -> None:
    errors = env.metric("connhealth_target_file_errors_total")
    path = env.sd / "pipe.yml"
    os.mkfifo(path)
    try:
        with env.watchdog.watching("fifo"):
            env.wait_metric("connhealth_target_file_errors_total", lambda v: v >= errors + 1, "the FIFO to be refused")
            # The watcher is still alive: a good file written now is picked up.
            write_atomic(env.sd / "after.yml", "- targets: ['127.0.0.1:2']\n")
            env.wait_metric("connhealth_scheduled_targets", lambda v: v == 2, "a good file after the FIFO")
    finally:
        path.unlink()
        (env.sd / "after.yml").unlink(missing_ok=True)
    env.wait_metric("connhealth_scheduled_targets", lambda v: v == 1, "the good file's removal")
    assert "not a regular file" in env.proc.log()


def test_target_files_after_a_broken_one_new_files_load_and_deleted_files_targets_go(env: Env) -> None:
    broken, good = env.sd / "broken.yml", env.sd / "good.json"
    errors = env.metric("connhealth_target_file_errors_total")
    try:
        with env.watchdog.watching("watcher-keeps-going"):
            write_atomic(broken, b"\x80\x81 not text")
            env.wait_metric("connhealth_target_file_errors_total", lambda v: v >= errors + 1, "the broken file")
            write_atomic(good, json.dumps([{"targets": ["127.0.0.1:3", "127.0.0.1:4"]}]))
            env.wait_metric("connhealth_scheduled_targets", lambda v: v == 3, "the new file after the broken one")
            good.unlink()
            env.wait_metric("connhealth_scheduled_targets", lambda v: v == 1, "the deleted file's targets to go")
            # A reload while a file is broken is still a successful reload (the file keeps its last good targets).
            assert env.request("POST", "/-/reload")[0] == 200
    finally:
        broken.unlink(missing_ok=True)
        good.unlink(missing_ok=True)


# --- after all of the above --------------------------------------------------------------------------
def test_zz_exporter_still_up_no_task_failed_fds_and_rss_back_to_baseline(env: Env) -> None:
    """Runs last in this module (pytest keeps the file's order): the sum of every case above."""
    assert env.proc.proc is not None and env.proc.proc.poll() is None, "the exporter died"
    assert env.get("/-/healthy") == (200, "Healthy\n")
    text = env.metrics()
    for task in ("scheduler", "file_watcher", "loop_lag", "trace_export", "prerender"):
        assert value(text, "connhealth_background_task_failures_total", task=task) == 0, task
    assert not [ls for ls, _ in samples(text, "connhealth_probe_failures_total") if ls.get("reason") == "internal_error"]
    # Let connections of the cases above close, then compare with the baseline.
    deadline = time.monotonic() + WAIT
    while process_fds(env.pid) > env.baseline_fds and time.monotonic() < deadline:
        time.sleep(0.1)
    fds, rss = process_fds(env.pid), process_rss(env.pid)
    assert fds <= env.baseline_fds, f"open fds {env.baseline_fds} -> {fds}: {describe_fds(env.pid)}\nat baseline: {env.baseline_fd_kinds}"
    assert rss < env.baseline_rss * 1.10 + (4 << 20), f"RSS {env.baseline_rss >> 20} MiB -> {rss >> 20} MiB"
    env.watchdog.check()
    lat = env.watchdog.max_latency()
    raw = max(s.latency or 0.0 for s in env.watchdog.snapshot())
    print(f"hostile suite: {len(env.watchdog.snapshot())} watchdog samples, worst /-/healthy {lat * 1000:.1f} ms "
          f"(raw, run-queue time included: {raw * 1000:.1f} ms); "
          f"RSS {env.baseline_rss >> 20} -> {rss >> 20} MiB; fds {env.baseline_fds} -> {fds}")
