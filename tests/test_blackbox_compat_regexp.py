"""User regexps and tcp query_response, side by side with the real blackbox_exporter (Debian's 0.23).

Both exporters get the same file and probe the same local peers; each case first checks that
blackbox gives the expected answer (so the scenario is what we think it is), then that connhealth
gives the same probe_success and probe_failed_due_to_regex.

The cases are Go's regexp semantics that Python's ``re`` got wrong (issue 10): ``^+OK`` (the
stock pop3s_banner: a repeated ``^``, so it matches "OK" at the start, not "+OK"), ``\\pL``,
``[[:alpha:]]`` (to ``re`` a set of ``[:alph`` followed by ``]``), ``$`` after a line whose
``\\r\\n`` Go's line scanner strips, the backtracking ``^(a+)+$`` (linear in RE2), and the stock
irc_banner's ``PONG ${1}``, which the peer checks it received expanded.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import pytest_asyncio

try:  # works whether or not tests/ becomes a package later
    from tests import procs
    from tests.dialogue_peers import IRCPeer
    from tests.peers import RawTCPServer
except ImportError:  # pragma: no cover
    import procs  # type: ignore[no-redef]
    from dialogue_peers import IRCPeer  # type: ignore[no-redef]
    from peers import RawTCPServer  # type: ignore[no-redef]

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90)]

BODIES = {
    "/hello": b"hello",
    "/hello1": b"hello1",
    "/accented": "h\u00e9llo".encode(),
    "/digits": b"h3llo",
    "/redos": b"a" * 26 + b"!",
    "/latin1": "caf\u00e9 ok".encode("latin-1"),  # not UTF-8: Go reads the \xe9 as U+FFFD  # 27 bytes: ^(a+)+$ took a backtracking engine 4.4 s
}

CONFIG = r"""
modules:
  body_alpha:
    prober: http
    timeout: 5s
    http:
      preferred_ip_protocol: ip4
      fail_if_body_not_matches_regexp: ["^[[:alpha:]]+$"]
  body_letters:
    prober: http
    timeout: 5s
    http:
      preferred_ip_protocol: ip4
      fail_if_body_not_matches_regexp: ['^\pL+$']
  body_any_char:
    prober: http
    timeout: 5s
    http:
      preferred_ip_protocol: ip4
      fail_if_body_not_matches_regexp: ['^caf. ok$']
  body_redos:
    prober: http
    timeout: 5s
    http:
      preferred_ip_protocol: ip4
      fail_if_body_matches_regexp: ["^(a+)+$"]
  header_digits:
    prober: http
    timeout: 5s
    http:
      preferred_ip_protocol: ip4
      fail_if_header_not_matches:
        - header: X-Count
          regexp: '^[[:digit:]]+$'
  pop3_banner:
    prober: tcp
    timeout: 5s
    tcp:
      preferred_ip_protocol: ip4
      query_response:
        - expect: "^+OK"
  smtp_crlf:
    prober: tcp
    timeout: 5s
    tcp:
      preferred_ip_protocol: ip4
      query_response:
        - expect: "^220 ready$"
        - send: "QUIT"
  irc_banner:
    prober: tcp
    timeout: 5s
    tcp:
      preferred_ip_protocol: ip4
      query_response:
        - send: "NICK prober"
        - send: "USER prober prober prober :prober"
        - expect: "PING :([^ ]+)"
          send: "PONG ${1}"
        - expect: "^:[^ ]+ 001"
"""


class Env:
    def __init__(self, **kw: object) -> None:
        self.__dict__.update(kw)


async def _http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    path = head.split(b" ", 2)[1].decode()
    body = BODIES.get(path, b"not found")
    count = b"12" if path == "/hello" else b"12a"
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\nX-Count: " + count +
                 b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    await writer.drain()


def _banner(line: bytes, *, hang_up: bool = False):
    """Send ``line``; then hang up (a line that did not match is then final: the regexp failed), or
    wait for the prober to answer or close."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(line)
        await writer.drain()
        if not hang_up:
            await asyncio.wait_for(reader.read(100), 5)

    return handler


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory):
    work: Path = tmp_path_factory.mktemp("bbregexp")
    config = work / "blackbox.yml"
    config.write_text(CONFIG)
    irc = IRCPeer()
    peers = {"http": RawTCPServer(_http), "plus_ok": RawTCPServer(_banner(b"+OK POP3 ready\r\n", hang_up=True)),
             "ok": RawTCPServer(_banner(b"OK POP3 ready\r\n", hang_up=True)), "crlf": RawTCPServer(_banner(b"220 ready\r\n")),
             "irc": RawTCPServer(irc)}
    started: list[RawTCPServer] = []
    bb = ch = None
    try:
        for peer in peers.values():
            await peer.start()
            started.append(peer)
        bb = await procs.start_blackbox(config, work)
        ch = await procs.start_connhealth(config, work)
        yield Env(bb=bb, ch=ch, irc_peer=irc, **{k: f"127.0.0.1:{p.port}" for k, p in peers.items()})
    finally:
        for p in (ch, bb):
            if p is not None:
                await p.astop()
        for peer in reversed(started):
            await peer.stop()


# (id, module, target, expected probe_success, expected probe_failed_due_to_regex) — blackbox's answers.
CASES = [
    ("posix_class_matches", "body_alpha", lambda e: f"http://{e.http}/hello", 1, 0),
    ("posix_class_refuses_digit", "body_alpha", lambda e: f"http://{e.http}/hello1", 0, 1),
    ("unicode_letters_match", "body_letters", lambda e: f"http://{e.http}/accented", 1, 0),
    ("unicode_letters_refuse_digit", "body_letters", lambda e: f"http://{e.http}/digits", 0, 1),
    ("invalid_utf8_byte_is_a_character", "body_any_char", lambda e: f"http://{e.http}/latin1", 1, 0),
    ("redos_pattern_linear", "body_redos", lambda e: f"http://{e.http}/redos", 1, 0),
    ("header_posix_digits", "header_digits", lambda e: f"http://{e.http}/hello", 1, 0),
    ("header_posix_digits_refused", "header_digits", lambda e: f"http://{e.http}/digits", 0, 1),
    ("repeated_caret_not_plus_ok", "pop3_banner", lambda e: e.plus_ok, 0, 1),
    ("repeated_caret_ok", "pop3_banner", lambda e: e.ok, 1, 0),
    ("line_end_crlf_stripped", "smtp_crlf", lambda e: e.crlf, 1, 0),
    ("irc_pong_expanded", "irc_banner", lambda e: e.irc, 1, 0),
]


async def _scrape(proc: procs.ManagedProcess, target: str, module: str) -> tuple[float | None, float | None]:
    status, text, _ = await procs.get_text(proc.base_url + "/probe", params={"target": target, "module": module})
    assert status == 200, f"{proc.name}: {status} {text}"
    return procs.value(text, "probe_success"), procs.value(text, "probe_failed_due_to_regex")


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
async def test_regexp_semantics_match_blackbox(env, case) -> None:
    _, module, make_target, success, due_to_regex = case
    target = make_target(env)
    assert await _scrape(env.bb, target, module) == (success, due_to_regex), "scenario check on blackbox"
    assert await _scrape(env.ch, target, module) == (success, due_to_regex)


async def test_irc_send_is_expanded_from_the_expect_groups(env) -> None:
    env.irc_peer.received.clear()
    for proc in (env.bb, env.ch):
        assert (await _scrape(proc, env.irc, "irc_banner"))[0] == 1, proc.name
    assert env.irc_peer.received == [[b"NICK prober", b"USER prober prober prober :prober", b"PONG tok-7f3a"]] * 2
