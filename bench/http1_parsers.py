"""HTTP/1.1 response parsing for probes: httptools (llhttp) against h11, and ours against the old parser.

Part 1, sans-IO: parse typical probe responses from bytes (a fresh parser per
response, as a probe makes one per request; the bytes fed in 64 KiB reads, as
the connection delivers them) with

* ``httptools``: ``HttpResponseParser`` with callbacks collecting status,
  headers and body (the least a prober needs; no framing rules of ours);
* ``h11``: ``h11.Connection`` told the request (what it needs to frame a
  response), events pulled until ``EndOfMessage``;
* ``connhealth``: ``exporter.net.http1.ResponseReader`` (httptools plus the
  rules of Go's client that llhttp leaves to us), the code a probe runs.

Each (case, parser) is timed in ``--runs`` runs of about ``--run-seconds``
each, parsers alternating inside a run; reported: the median µs per response
and the ratios to httptools.

Part 2, loopback exchange: the whole client side of one probe exchange
(connect, write the request, read and parse the response, close) against a
tiny asyncio server in its own process on 127.0.0.1, once with the old
hand-written parser (a copy of ``_read_response`` from exporter/probers/http.py
before the switch, commit d55ef0c) and once with ``exporter.net.http1``. The
client's CPU time per exchange (``time.process_time``, this process only) is
the cost a probe pays; its difference between the two is the parse cost
difference. Alternated in blocks; medians over ``--runs``.

    .venv/bin/python bench/http1_parsers.py              # both parts, ≈ 1 min
    .venv/bin/python bench/http1_parsers.py --part parse --runs 9
    .venv/bin/python bench/http1_parsers.py --part exchange --uvloop
    .venv/bin/python bench/http1_parsers.py --json /tmp/http1.json

Only 127.0.0.1 is used; the server process is stopped on exit (also on
Ctrl-C), and it exits by itself when this process goes away (stdin closes).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import pickle
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import h11  # noqa: E402
import httptools  # noqa: E402

from exporter.net import http1  # noqa: E402

try:
    from exporter.net.connection import Connection
except ImportError:  # before the connection layer moved to exporter/net/
    from exporter.probers.connect import Connection  # type: ignore[no-redef,attr-defined]

READ = http1.READ_SIZE
_DATE = b"Date: Mon, 23 Nov 2026 10:00:00 GMT\r\n"


def _response(status: bytes, headers: list[bytes], body: bytes, chunked: bool = False) -> bytes:
    head = b"HTTP/1.1 " + status + b"\r\nServer: nginx/1.22.1\r\n" + _DATE + b"".join(h + b"\r\n" for h in headers)
    if chunked:
        pieces = [body[i:i + 256] for i in range(0, len(body), 256)]
        payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
        return head + b"Transfer-Encoding: chunked\r\n\r\n" + payload
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


CASES: dict[str, bytes] = {
    "small 200, Content-Length": _response(b"200 OK", [b"Content-Type: text/plain", b"Connection: close"], b"ok\n"),
    "chunked (1 KiB in 4 chunks)": _response(b"200 OK", [b"Content-Type: application/json", b"Connection: close"],
                                             b"x" * 1024, chunked=True),
    "20 headers": _response(b"200 OK", [b"X-Header-%02d: value-%02d-%s" % (i, i, b"v" * 20) for i in range(18)],
                            b"ok\n"),
    "64 KiB body": _response(b"200 OK", [b"Content-Type: application/octet-stream"], bytes(range(256)) * 256),
    "redirect 302": _response(b"302 Found", [b"Content-Type: text/html", b"Location: https://example.test/next/page",
                                             b"Connection: close"],
                              b"<html><head><title>302 Found</title></head><body><center><h1>302 Found</h1>"
                              b"</center><hr><center>nginx</center></body></html>\r\n"),
}


def _reads(data: bytes) -> list[bytes]:
    return [data[i:i + READ] for i in range(0, len(data), READ)]


class _Collect:
    __slots__ = ("status", "headers", "body", "done")

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.done = True


def parse_httptools(reads: list[bytes]) -> tuple[int, int, int]:
    sink = _Collect()
    parser = httptools.HttpResponseParser(sink)
    for data in reads:
        parser.feed_data(data)
    assert sink.done
    return parser.get_status_code(), len(sink.headers), sum(map(len, sink.body))


_H11_REQUEST = h11.Request(method="GET", target="/", headers=[("Host", "bench")])


def parse_h11(reads: list[bytes]) -> tuple[int, int, int]:
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=1 << 20)
    conn.send(_H11_REQUEST)
    status = nheaders = body = 0
    pending = iter(reads)
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(next(pending))
        elif type(event) is h11.Data:
            body += len(event.data)
        elif type(event) is h11.Response:
            status, nheaders = event.status_code, len(event.headers)
        elif type(event) is h11.EndOfMessage:
            return status, nheaders, body


def parse_connhealth(reads: list[bytes]) -> tuple[int, int, int]:
    reader = http1.ResponseReader("GET")
    status = nheaders = body = 0
    pending = iter(reads)
    while True:
        event = reader.next_event()
        if event is None:
            reader.feed(next(pending))
        elif type(event) is http1.Body:
            body += len(event.data)
        elif type(event) is http1.Head:
            status, nheaders = event.status, len(event.headers)
        elif type(event) is http1.End:
            return status, nheaders, body


PARSERS: dict[str, Callable[[list[bytes]], tuple[int, int, int]]] = {
    "httptools": parse_httptools,
    "h11": parse_h11,
    "connhealth": parse_connhealth,
}


def _time_per_call(fn: Callable[[list[bytes]], object], reads: list[bytes], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn(reads)
    return (time.perf_counter() - start) / n


def bench_parse(runs: int, run_seconds: float) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    for case, data in CASES.items():
        reads = _reads(data)
        expected = parse_httptools(reads)
        for name, fn in PARSERS.items():
            got = fn(reads)
            if got != expected:
                raise SystemExit(f"{case}: {name} parsed {got}, httptools {expected}")
        iterations = {name: max(20, int(run_seconds / _time_per_call(fn, reads, 50) / len(PARSERS)))
                      for name, fn in PARSERS.items()}
        samples: dict[str, list[float]] = {name: [] for name in PARSERS}
        order = list(PARSERS)
        for run in range(runs):
            for name in order if run % 2 == 0 else reversed(order):
                samples[name].append(_time_per_call(PARSERS[name], reads, iterations[name]))
        results[case] = {name: statistics.median(values) * 1e6 for name, values in samples.items()}
        results[case]["bytes"] = float(len(data))
    return results


# --- part 2: the client side of one exchange, old parser vs new --------------------------

_SERVER = r"""
import asyncio, pickle, sys, threading
responses = pickle.loads(sys.stdin.buffer.read(int(sys.stdin.buffer.readline())))
class Server(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buf = transport, b""
    def data_received(self, data):
        self.buf += data
        if b"\r\n\r\n" in self.buf:
            path = self.buf.split(b" ", 2)[1]
            self.transport.write(responses[path])
            self.transport.close()
async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Server, "127.0.0.1", 0, backlog=512)
    print(server.sockets[0].getsockname()[1], flush=True)
    gone = loop.create_future()
    threading.Thread(target=lambda: (sys.stdin.read(), loop.call_soon_threadsafe(gone.set_result, None)), daemon=True).start()
    await asyncio.wait_for(gone, 3600)
asyncio.run(main())
"""

# exporter/probers/http.py _read_response + _read_chunked at commit d55ef0c (the hand-written
# parser this module replaces), with the config object and ProbeFailure taken out.
_STATUS_RE = re.compile(rb"HTTP/(\d)\.(\d) (\d{3})(?: ([^\r\n]*))?\r?\n")


class _OldResponse:
    __slots__ = ("version", "status", "headers", "body", "body_length", "content_length")

    def __init__(self, version: str, status: int, headers: list[tuple[str, str]]) -> None:
        self.version = version
        self.status = status
        self.headers = headers
        self.body = b""
        self.body_length = 0
        self.content_length: int | None = None

    def header(self, name: str) -> str | None:
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None


async def _old_read_response(conn: Connection, status_line: bytes, method: str, keep_body: bool) -> _OldResponse:
    m = _STATUS_RE.fullmatch(status_line)
    if not m:
        raise ValueError(f"malformed status line {status_line[:80]!r}")
    version = f"HTTP/{m.group(1).decode()}.{m.group(2).decode()}"
    status = int(m.group(3))
    headers: list[tuple[str, str]] = []
    while True:
        line = await conn.readuntil(b"\n")
        if line in (b"\r\n", b"\n"):
            break
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise ValueError(f"malformed header line {line[:80]!r}")
        headers.append((name.decode("latin-1"), value.strip().decode("latin-1")))
        if len(headers) > 500:
            raise ValueError("more than 500 response headers")
    response = _OldResponse(version, status, headers)
    cl = response.header("Content-Length")
    if cl is not None:
        response.content_length = int(cl)
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return response
    te = (response.header("Transfer-Encoding") or "").lower()
    chunks: list[bytes] = []
    if "chunked" in te:
        await _old_read_chunked(conn, chunks, response, keep_body)
    elif response.content_length is not None:
        remaining = response.content_length
        while remaining > 0:
            data = await conn.read(min(remaining, 65536))
            if not data:
                raise ValueError("connection closed")
            remaining -= len(data)
            _old_take(data, chunks, response, keep_body)
    else:
        while data := await conn.read(65536):
            _old_take(data, chunks, response, keep_body)
    if keep_body:
        response.body = b"".join(chunks)
    return response


def _old_take(data: bytes, chunks: list[bytes], response: _OldResponse, keep: bool) -> None:
    response.body_length += len(data)
    if keep:
        chunks.append(data)


async def _old_read_chunked(reader: Connection, chunks: list[bytes], response: _OldResponse, keep: bool) -> None:
    while True:
        size_line = await reader.readuntil(b"\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while (await reader.readuntil(b"\n")) not in (b"\r\n", b"\n"):
                pass
            return
        _old_take(await reader.readexactly(size), chunks, response, keep)
        if await reader.readuntil(b"\n") not in (b"\r\n", b"\n"):
            raise ValueError("chunk not terminated by CRLF")


async def _open(port: int) -> Connection:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(lambda: Connection(loop), "127.0.0.1", port)
    return conn


async def exchange_old(port: int, path: bytes) -> tuple[int, int]:
    conn = await _open(port)
    try:
        conn.write(http1.build_request("GET", path.decode(), "127.0.0.1", (), None, user_agent="connhealth/bench"))
        await conn.drain()
        status_line = await conn.readuntil(b"\n")
        response = await _old_read_response(conn, status_line, "GET", False)
        return response.status, response.body_length
    finally:
        conn.close()


async def exchange_new(port: int, path: bytes) -> tuple[int, int]:
    conn = await _open(port)
    try:
        conn.write(http1.build_request("GET", path.decode(), "127.0.0.1", (), None, user_agent="connhealth/bench"))
        await conn.drain()
        reader = http1.ResponseReader("GET")
        await http1.wait_first_byte(conn, reader)
        head = await http1.read_head(conn, reader)
        length, _ = await http1.read_body(conn, reader, limit=None, keep=False, keep_limit=0)
        return head.status, length
    finally:
        conn.close()


EXCHANGES = {"old (hand-written)": exchange_old, "new (exporter.net.http1)": exchange_new}


async def _measure(fn: Callable[[int, bytes], object], port: int, path: bytes, n: int) -> tuple[float, float]:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        await fn(port, path)  # type: ignore[misc]
    return (time.process_time() - cpu0) / n, (time.perf_counter() - wall0) / n


async def bench_exchange(runs: int, per_run: int) -> dict[str, dict[str, dict[str, float]]]:
    paths = {case: b"/%d" % i for i, case in enumerate(CASES)}
    server = subprocess.Popen([sys.executable, "-c", _SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              start_new_session=True)
    _SERVERS.append(server)
    try:
        assert server.stdin is not None and server.stdout is not None
        blob = pickle.dumps({paths[case]: data for case, data in CASES.items()})
        server.stdin.write(b"%d\n" % len(blob) + blob)
        server.stdin.flush()
        port = int(server.stdout.readline())
        results: dict[str, dict[str, dict[str, float]]] = {}
        for case in CASES:
            path = paths[case]
            got = {name: await fn(port, path) for name, fn in EXCHANGES.items()}
            if len(set(got.values())) != 1:
                raise SystemExit(f"{case}: the parsers disagree: {got}")
            for fn in EXCHANGES.values():  # warm-up
                await _measure(fn, port, path, per_run // 4 or 1)
            cpu: dict[str, list[float]] = {name: [] for name in EXCHANGES}
            wall: dict[str, list[float]] = {name: [] for name in EXCHANGES}
            order = list(EXCHANGES)
            for run in range(runs):
                for name in order if run % 2 == 0 else reversed(order):
                    c, w = await _measure(EXCHANGES[name], port, path, per_run)
                    cpu[name].append(c)
                    wall[name].append(w)
            results[case] = {name: {"cpu_us": statistics.median(cpu[name]) * 1e6,
                                    "wall_us": statistics.median(wall[name]) * 1e6} for name in EXCHANGES}
        return results
    finally:
        _stop(server)


_SERVERS: list[subprocess.Popen[bytes]] = []


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        try:
            if proc.stdin:
                proc.stdin.close()
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)
    if proc in _SERVERS:
        _SERVERS.remove(proc)


def _on_signal(signum: int, frame: object) -> None:
    for proc in list(_SERVERS):
        _stop(proc)
    sys.exit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=("parse", "exchange", "both"), default="both")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--run-seconds", type=float, default=0.3, help="part 1: time per run and case, all parsers")
    ap.add_argument("--exchanges", type=int, default=400, help="part 2: exchanges per run and case")
    ap.add_argument("--uvloop", action="store_true", help="part 2 on uvloop (the loop `connhealth serve` runs)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    out: dict[str, object] = {"python": sys.version.split()[0], "h11": h11.__version__, "httptools": httptools.__version__}
    if args.part in ("parse", "both"):
        parse = bench_parse(args.runs, args.run_seconds)
        out["parse"] = parse
        print(f"\nPart 1: parse one response (µs, median of {args.runs} runs; fresh parser each)\n")
        print("| response | bytes | httptools | h11 | h11 / httptools | connhealth (httptools + our rules) |")
        print("|---|---|---|---|---|---|")
        for case, p in parse.items():
            print(f"| {case} | {int(p['bytes'])} | {p['httptools']:.1f} | {p['h11']:.1f} | {p['h11'] / p['httptools']:.1f}× "
                  f"| {p['connhealth']:.1f} |")
    if args.part in ("exchange", "both"):
        if args.uvloop:
            import uvloop
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        exchange = asyncio.run(bench_exchange(args.runs, args.exchanges))
        out["exchange"] = exchange
        loop_name = "uvloop" if args.uvloop else "asyncio"
        print(f"\nPart 2: client side of one loopback exchange on {loop_name} (µs per exchange, median of {args.runs} "
              f"runs × {args.exchanges})\n")
        old, new = EXCHANGES
        print("| response | old CPU | new CPU | new − old CPU | old wall | new wall |")
        print("|---|---|---|---|---|---|")
        for case, r in exchange.items():
            print(f"| {case} | {r[old]['cpu_us']:.0f} | {r[new]['cpu_us']:.0f} | {r[new]['cpu_us'] - r[old]['cpu_us']:+.0f} "
                  f"| {r[old]['wall_us']:.0f} | {r[new]['wall_us']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
