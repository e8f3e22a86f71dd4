"""exporter.net.http1: the request bytes, the response framing (Go's client rules) and the async helpers.

Pure tests feed bytes and compare events; the async ones run raw asyncio
servers on 127.0.0.1 and read through the prober's Connection. Memory
tests sample this process's VmRSS while a peer streams without end.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from exporter.net import http1
from exporter.net.http1 import (
    Body,
    BodyTooLarge,
    End,
    Head,
    HeaderTooLarge,
    IncompleteBody,
    IncompleteHead,
    IncompleteResponse,
    Informational,
    ProtocolError,
    ResponseReader,
)

try:
    from exporter.net.connection import Connection
except ImportError:  # before the connection layer moved to exporter/net/
    from exporter.probers.connect import Connection  # type: ignore[no-redef,attr-defined]

MiB = 1 << 20


# --- helpers -------------------------------------------------------------------------

@dataclass
class Parsed:
    informational: list[Informational] = field(default_factory=list)
    head: Head | None = None
    body: bytes = b""
    ended: bool = False
    reusable: bool = False


def parse(*pieces: bytes, method: str = "GET", keep_alive: bool = False, eof: bool = True,
          max_header_bytes: int = http1.DEFAULT_MAX_HEADER_BYTES) -> Parsed:
    """Feed ``pieces`` one by one (each followed by draining events), then EOF unless told not to."""
    reader = ResponseReader(method, keep_alive=keep_alive, max_header_bytes=max_header_bytes)
    out = Parsed()
    body = []
    queue = list(pieces)
    closed = False
    while True:
        event = reader.next_event()
        if event is None:
            if queue:
                reader.feed(queue.pop(0))
                continue
            if eof and not closed:
                reader.eof()
                closed = True
                continue
            break
        if isinstance(event, Informational):
            out.informational.append(event)
        elif isinstance(event, Head):
            assert out.head is None
            out.head = event
        elif isinstance(event, Body):
            assert out.head is not None and not out.ended
            body.append(event.data)
        else:
            assert isinstance(event, End)
            out.ended = True
            break
    out.body = b"".join(body)
    out.reusable = reader.reusable
    return out


def events_of(data: bytes, *, method: str = "GET") -> list[object]:
    """Every event of a complete response, bodies merged, for comparing feeds split differently."""
    out = parse(data, method=method)
    return [out.informational, out.head, out.body, out.ended]


def splits(data: bytes) -> list[list[bytes]]:
    """The response in two pieces at every boundary, and byte by byte."""
    return [[data[:i], data[i:]] for i in range(1, len(data))] + [[data[i:i + 1] for i in range(len(data))]]


OK_2 = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"


# --- request_target --------------------------------------------------------------------

def test_request_target_is_slash_for_an_empty_path() -> None:
    assert http1.request_target("", "") == "/"


def test_request_target_keeps_a_plain_path_and_query() -> None:
    assert http1.request_target("/a/b.html", "x=1&y=2") == "/a/b.html?x=1&y=2"


def test_request_target_encodes_a_space_in_the_path_as_percent_20() -> None:
    assert http1.request_target("/a b", "") == "/a%20b"


def test_request_target_encodes_unicode_as_utf8_percent_escapes() -> None:
    assert http1.request_target("/é/ü", "") == "/%C3%A9/%C3%BC"


def test_request_target_keeps_valid_percent_escapes_as_written() -> None:
    assert http1.request_target("/a%2Fb/%7e%20", "") == "/a%2Fb/%7e%20"


def test_request_target_re_encodes_the_decoded_path_when_the_raw_one_is_not_valid_as_go() -> None:
    # Go's EscapedPath: RawPath "/a%2Fb c" is not validly encoded, so Path "/a/b c" is escaped.
    assert http1.request_target("/a%2Fb c", "") == "/a/b%20c"


def test_request_target_keeps_sub_delimiters_go_leaves_alone() -> None:
    assert http1.request_target("/a;b,c=d:e@f!$&'()*+[]", "") == "/a;b,c=d:e@f!$&'()*+[]"


def test_request_target_escapes_characters_go_escapes_in_a_path() -> None:
    assert http1.request_target('/a?b"c<d>e\\f^g`h{i|j}k', "") == "/a%3Fb%22c%3Cd%3Ee%5Cf%5Eg%60h%7Bi%7Cj%7Dk"


def test_request_target_keeps_the_query_as_written_but_for_spaces_and_non_ascii() -> None:
    assert http1.request_target("/", "a=%zz&b=1+2&c=<>") == "/?a=%zz&b=1+2&c=<>"
    assert http1.request_target("/", "q=a b&r=é") == "/?q=a%20b&r=%C3%A9"


@pytest.mark.parametrize("char", ["\x00", "\x0b", "\r", "\n", "\x7f"])
def test_request_target_refuses_control_characters_in_path_and_query(char: str) -> None:
    with pytest.raises(ValueError, match="control character .* in the URL path"):
        http1.request_target(f"/a{char}b", "")
    with pytest.raises(ValueError, match="control character .* in the URL query"):
        http1.request_target("/", f"a={char}")


@pytest.mark.parametrize("path", ["/a%zz", "/a%2", "/%"])
def test_request_target_refuses_a_malformed_escape_in_the_path_as_go(path: str) -> None:
    with pytest.raises(ValueError, match="invalid URL escape"):
        http1.request_target(path, "")


# --- validate_header ---------------------------------------------------------------------

def test_validate_header_accepts_tokens_tabs_and_non_ascii_values() -> None:
    http1.validate_header("X-Custom_Header.1~", "a\tb é ")


@pytest.mark.parametrize("name", ["", "Bad Name", "Bad:Name", "Bäd", "Bad\r\nX-Injected"])
def test_validate_header_refuses_a_name_that_is_not_a_token(name: str) -> None:
    with pytest.raises(ValueError, match="is not a valid HTTP token") as info:
        http1.validate_header(name, "v")
    assert repr(name) in str(info.value)


@pytest.mark.parametrize("char", ["\r", "\n", "\x00", "\x0b", "\x7f"])
def test_validate_header_refuses_control_characters_in_a_value_and_names_the_header(char: str) -> None:
    with pytest.raises(ValueError) as info:
        http1.validate_header("X-Secret", f"s3cr3t{char}X-Injected: 1")
    message = str(info.value)
    assert "'X-Secret'" in message and repr(char) in message
    assert "s3cr3t" not in message  # a value may be a secret


# --- basic_auth --------------------------------------------------------------------------

def _decoded(value: str) -> bytes:
    scheme, _, encoded = value.partition(" ")
    assert scheme == "Basic"
    return base64.b64decode(encoded)


def test_basic_auth_encodes_user_and_password() -> None:
    assert http1.basic_auth("user", "pass") == "Basic dXNlcjpwYXNz"


def test_basic_auth_without_a_password_sends_user_and_colon_as_go() -> None:
    assert _decoded(http1.basic_auth("user", None)) == b"user:"
    assert _decoded(http1.basic_auth("user", "")) == b"user:"


def test_basic_auth_percent_decodes_userinfo_as_go_url_user() -> None:
    assert _decoded(http1.basic_auth("us%40er", "p%3Ass+word")) == b"us@er:p:ss+word"
    assert _decoded(http1.basic_auth("u", "%C3%A9%FF")) == b"u:\xc3\xa9\xff"


@pytest.mark.parametrize(("user", "password", "message"), [
    ("us%zzer", None, "invalid URL escape"),
    ("user", "pa%4", "invalid URL escape"),
    ("us er", None, "invalid character ' '"),
    ("user", "pässword", "invalid character 'ä'"),
])
def test_basic_auth_refuses_userinfo_go_refuses(user: str, password: str | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        http1.basic_auth(user, password)


# --- build_request ---------------------------------------------------------------------

UA = "connhealth/1.2.3"


def test_build_request_default_get() -> None:
    assert http1.build_request("GET", "/p?q=1", "example.test:8080", (), None, user_agent=UA) == (
        b"GET /p?q=1 HTTP/1.1\r\nHost: example.test:8080\r\nUser-Agent: connhealth/1.2.3\r\nAccept: */*\r\n"
        b"Connection: close\r\n\r\n"
    )


def test_build_request_post_with_body_sends_content_length_and_body() -> None:
    assert http1.build_request("POST", "/", "h", [("Content-Type", "application/json")], b'{"a":1}',
                               user_agent=UA) == (
        b"POST / HTTP/1.1\r\nHost: h\r\nUser-Agent: connhealth/1.2.3\r\nAccept: */*\r\n"
        b"Content-Type: application/json\r\nContent-Length: 7\r\nConnection: close\r\n\r\n{\"a\":1}"
    )


def test_build_request_extra_fields_follow_the_given_ones_and_vary_per_call() -> None:
    """The cached part of the head never carries one request's traceparent into the next."""
    def request(trace: str) -> bytes:
        return http1.build_request("POST", "/", "h", [("X-A", "1")], b"hi", user_agent=UA,
                                   extra=[("traceparent", trace), ("tracestate", " a=b ")])
    first, second = request("00-1-2-01"), request("00-3-4-01")
    assert first == (b"POST / HTTP/1.1\r\nHost: h\r\nUser-Agent: connhealth/1.2.3\r\nAccept: */*\r\nX-A: 1\r\n"
                     b"traceparent: 00-1-2-01\r\ntracestate: a=b\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
    assert second == first.replace(b"00-1-2-01", b"00-3-4-01")


@pytest.mark.parametrize("value", ["a\r\nX-Smuggled: 1", "a\nb", "a\x00"])
def test_build_request_refuses_control_characters_in_extra_fields(value: str) -> None:
    with pytest.raises(ValueError, match="'tracestate': value contains the control character"):
        http1.build_request("GET", "/", "h", (), None, user_agent=UA, extra=[("tracestate", value)])


@pytest.mark.parametrize(("method", "body", "line"), [
    ("PUT", None, b"Content-Length: 0\r\n"),
    ("PATCH", b"", b"Content-Length: 0\r\n"),
    ("POST", None, b"Content-Length: 0\r\n"),
    ("GET", b"x", b"Content-Length: 1\r\n"),
    ("GET", b"", None),
    ("DELETE", None, None),
])
def test_build_request_content_length_as_go(method: str, body: bytes | None, line: bytes | None) -> None:
    request = http1.build_request(method, "/", "h", (), body, user_agent=UA)
    if line is None:
        assert b"Content-Length" not in request
    else:
        assert request.count(b"Content-Length") == 1 and line in request


def test_build_request_given_headers_replace_defaults_and_keep_their_order() -> None:
    request = http1.build_request(
        "GET", "/", "h", [("X-B", "2"), ("accept", "text/html"), ("host", "virtual.test"), ("User-Agent", "probe/9"),
                          ("X-A", "1")], None, user_agent=UA)
    assert request == (b"GET / HTTP/1.1\r\nHost: virtual.test\r\nX-B: 2\r\naccept: text/html\r\nUser-Agent: probe/9\r\n"
                       b"X-A: 1\r\nConnection: close\r\n\r\n")


def test_build_request_drops_framing_headers_from_config_as_go() -> None:
    request = http1.build_request("POST", "/", "h", [("Content-Length", "99"), ("Transfer-Encoding", "chunked"),
                                                     ("Trailer", "X")], b"ab", user_agent=UA)
    assert b"99" not in request and b"Transfer-Encoding" not in request and b"Trailer" not in request
    assert request.endswith(b"Content-Length: 2\r\nConnection: close\r\n\r\nab")


def test_build_request_keep_alive_sends_no_connection_close() -> None:
    request = http1.build_request("GET", "/", "h", (), None, user_agent=UA, keep_alive=True)
    assert b"Connection" not in request


def test_build_request_does_not_repeat_a_given_connection_close() -> None:
    request = http1.build_request("GET", "/", "h", [("Connection", "Close")], None, user_agent=UA)
    assert request.count(b"onnection") == 1


def test_build_request_empty_user_agent_sends_none_as_go() -> None:
    assert b"User-Agent" not in http1.build_request("GET", "/", "h", [("User-Agent", "")], None, user_agent=UA)


def test_build_request_trims_values_and_sends_utf8() -> None:
    request = http1.build_request("GET", "/", "h", [("X-A", "  é \t")], None, user_agent=UA)
    assert b"\r\nX-A: \xc3\xa9\r\n" in request


@pytest.mark.parametrize(("headers", "message"), [
    ([("X-A", "v\r\nX-Injected: 1")], "'X-A': value contains"),
    ([("X-A", "v\nGET / HTTP/1.1")], "'X-A': value contains"),
    ([("X-A", "v\x00")], "'X-A': value contains"),
    ([("Bad Name", "v")], "not a valid HTTP token"),
])
def test_build_request_refuses_headers_that_would_change_the_framing(headers: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        http1.build_request("GET", "/", "h", headers, None, user_agent=UA)


@pytest.mark.parametrize(("method", "target", "host", "message"), [
    ("GE T", "/", "h", "method"),
    ("GET", "/a b", "h", "request target"),
    ("GET", "/a\r\n", "h", "request target"),
    ("GET", "/é", "h", "request target"),
    ("GET", "/", "h\r\nX: 1", "Host"),
    ("GET", "/", "", "Host"),
])
def test_build_request_refuses_a_bad_request_line_or_host(method: str, target: str, host: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        http1.build_request(method, target, host, (), None, user_agent=UA)


# --- the response: basics ----------------------------------------------------------

def test_reads_status_headers_and_body() -> None:
    out = parse(b"HTTP/1.1 200 Fine Thanks\r\nServer: x\r\nX-Multi: 1\r\nx-multi: 2\r\nContent-Length: 5\r\n\r\nhello")
    assert out.head == Head("HTTP/1.1", 200, "Fine Thanks",
                            (("Server", "x"), ("X-Multi", "1"), ("x-multi", "2"), ("Content-Length", "5")), 5)
    assert (out.body, out.ended) == (b"hello", True)


def test_status_line_without_reason() -> None:
    out = parse(b"HTTP/1.1 204\r\n\r\n")
    assert out.head is not None and (out.head.status, out.head.reason) == (204, "")


def test_header_values_are_utf8_without_trailing_blanks() -> None:
    out = parse(b"HTTP/1.1 200 OK\r\nX-A: caf\xc3\xa9 \t\r\nX-B: \xff\r\nContent-Length: 0\r\n\r\n")
    assert out.head is not None and out.head.headers[:2] == (("X-A", "café"), ("X-B", "\ufffd"))


@pytest.mark.parametrize("data", [b"SSH-2.0-OpenSSH_9.2\r\n", b"HTTP/1.1 2000 OK\r\n\r\n", b"http/1.1 200 OK\r\n\r\n",
                                  b"HTTP/1.1 200 OK\r\nNo colon here\r\n\r\n", b"HTTP/1.1 200 OK\r\nX-A : 1\r\n\r\n"])
def test_malformed_heads_are_protocol_errors_at_once(data: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        parse(data, eof=False)  # not waiting for more bytes: the error is known now
    assert not isinstance(info.value, IncompleteResponse)


# --- 1xx ------------------------------------------------------------------------------

def test_interim_100_and_103_come_before_the_final_response() -> None:
    out = parse(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n" + OK_2)
    assert out.informational == [Informational(100, ()), Informational(103, (("Link", "</a.css>; rel=preload"),))]
    assert out.head is not None and out.head.status == 200 and out.body == b"hi"


def test_interim_response_headers_with_content_length_have_no_body() -> None:
    out = parse(b"HTTP/1.1 103 Early\r\nContent-Length: 5\r\n\r\n" + OK_2)
    assert out.head is not None and out.head.status == 200 and out.body == b"hi"


def test_five_interim_responses_are_accepted_a_sixth_is_an_error_as_go() -> None:
    five = b"HTTP/1.1 100 Continue\r\n\r\n" * 5
    assert len(parse(five + OK_2).informational) == 5
    with pytest.raises(ProtocolError, match="more than 5 informational"):
        parse(five + b"HTTP/1.1 100 Continue\r\n\r\n" + OK_2)


def test_101_is_a_final_response_without_body_and_ends_the_connection() -> None:
    out = parse(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x00",
                keep_alive=True)
    assert out.head is not None and (out.head.status, out.head.content_length) == (101, 0)
    assert (out.body, out.ended, out.reusable) == (b"", True, False)


# --- Content-Length ----------------------------------------------------------------------

@pytest.mark.parametrize(("value", "shown"), [
    (b"-5", "'-5'"), (b"1_0", "'1_0'"), (b"+5", "'+5'"), (b" 5 x", "'5 x'"), (b"0x5", "'0x5'"), (b"", "''"),
    (b"5, 5", "'5, 5'"),  # Go: strconv.ParseUint("5, 5") fails; RFC 9110 lets a recipient reject it
])
def test_content_length_must_be_digits_only(value: bytes, shown: str) -> None:
    with pytest.raises(ProtocolError, match=f"^{re.escape(f'invalid Content-Length {shown}')}$"):
        parse(b"HTTP/1.1 200 OK\r\nContent-Length: " + value + b"\r\n\r\nhello")


def test_content_length_with_blanks_around_it_is_accepted() -> None:
    out = parse(b"HTTP/1.1 200 OK\r\nContent-Length:   2 \t\r\n\r\nhi")
    assert out.head is not None and out.head.content_length == 2 and out.body == b"hi"


def test_several_equal_content_lengths_are_one() -> None:
    out = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX: y\r\ncontent-length:  2 \r\n\r\nhi")
    assert out.head is not None and out.head.content_length == 2 and out.body == b"hi"
    assert out.head.headers == (("Content-Length", "2"), ("X", "y"))


@pytest.mark.parametrize(("second", "message"), [
    (b"6", "conflicting Content-Length headers 5 and 6"),
    (b"05", "conflicting Content-Length headers 5 and 05"),  # Go compares the strings
    (b"", "conflicting Content-Length headers 5 and ''"),
])
def test_different_content_lengths_are_an_error(second: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=f"^{re.escape(message)}$"):
        parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: " + second + b"\r\n\r\nhello")


def test_content_length_up_to_2_63_minus_1_is_accepted_above_is_an_error() -> None:
    out = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 9223372036854775807\r\n\r\n", eof=False)
    assert out.head is not None and out.head.content_length == 2**63 - 1 and not out.ended
    for value in (b"9223372036854775808", b"18446744073709551616"):
        with pytest.raises(ProtocolError, match=f"invalid Content-Length {value.decode()}: out of range"):
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: " + value + b"\r\n\r\n")


def test_a_body_longer_than_content_length_is_cut_there_and_the_rest_is_unsolicited() -> None:
    out = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiEXTRA", keep_alive=True, eof=False)
    assert (out.body, out.ended, out.reusable) == (b"hi", True, False)


# --- Transfer-Encoding ---------------------------------------------------------------

def test_chunked_wins_over_content_length() -> None:
    out = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n")
    assert out.head is not None and out.head.content_length is None and (out.body, out.ended) == (b"hi", True)


def test_chunked_is_case_insensitive_and_may_have_blanks() -> None:
    out = parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding:  Chunked \r\n\r\n2\r\nhi\r\n0\r\n\r\n")
    assert out.body == b"hi" and out.ended


@pytest.mark.parametrize(("headers", "message"), [
    (b"Transfer-Encoding: gzip, chunked\r\n", "unsupported Transfer-Encoding 'gzip, chunked' (only chunked)"),
    (b"Transfer-Encoding: identity\r\nContent-Length: 2\r\n", "unsupported Transfer-Encoding 'identity' (only chunked)"),
    (b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", "multiple Transfer-Encoding headers"),
])
def test_transfer_encodings_go_refuses(headers: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=f"^{re.escape(message)}$"):
        parse(b"HTTP/1.1 200 OK\r\n" + headers + b"\r\n2\r\nhi\r\n0\r\n\r\n")


def test_chunked_with_an_invalid_content_length_is_an_error() -> None:
    # RFC 9112 6.3: such a message "ought to be handled as an error" (Go 1.19 ignored the Content-Length).
    with pytest.raises(ProtocolError, match="^invalid Content-Length 'x'$"):
        parse(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n")


# --- chunks ------------------------------------------------------------------------------

CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


def test_chunks_are_joined_and_extensions_and_trailers_skipped() -> None:
    out = parse(CHUNKED + b"5;name=value;x\r\nhello\r\nA\r\n0123456789\r\na\r\nabcdefghij\r\n0;last\r\nX-Trailer: t\r\n\r\n")
    assert out.body == b"hello0123456789abcdefghij" and out.ended
    assert out.head is not None and out.head.headers == (("Transfer-Encoding", "chunked"),)


def test_chunk_size_may_be_followed_by_blanks_as_go() -> None:
    assert parse(CHUNKED + b"2 \r\nhi\r\n2\t\r\nho\r\n0\r\n\r\n").body == b"hiho"


@pytest.mark.parametrize("line", [b"zz", b"-2", b"0x2", b"+2", b"", b"2 ; a=b"])
def test_chunk_size_must_be_hex(line: bytes) -> None:
    with pytest.raises(ProtocolError, match="chunk"):
        parse(CHUNKED + line + b"\r\nhi\r\n0\r\n\r\n")


def test_chunk_size_beyond_64_bits_is_an_error() -> None:
    with pytest.raises(ProtocolError, match="Chunk size overflow"):
        parse(CHUNKED + b"1" + b"0" * 16 + b"\r\nhi")


def test_chunk_data_must_end_with_crlf() -> None:
    with pytest.raises(ProtocolError, match="after chunk data"):
        parse(CHUNKED + b"2\r\nhiXX0\r\n\r\n")
    with pytest.raises(ProtocolError, match="after chunk data"):
        parse(CHUNKED + b"2\r\nhi\n0\r\n\r\n")


def test_a_huge_chunk_size_is_streamed_not_allocated() -> None:
    reader = ResponseReader("GET")
    reader.feed(CHUNKED + b"FFFFFFFFFF\r\n")
    head = reader.next_event()
    assert isinstance(head, Head) and reader.next_event() is None
    piece = b"x" * 65536
    for _ in range(16):
        reader.feed(piece)
        assert reader.next_event() == Body(piece)
        assert reader.next_event() is None
    assert reader.body_bytes == 16 * 65536 and not reader.done


# --- obs-fold and line ends ----------------------------------------------------------

def test_obs_fold_lines_are_unfolded_as_go() -> None:
    out = parse(b"HTTP/1.1 200 OK\r\nX-A: a \r\n  b\r\n\tc\r\nX-Empty:\r\n value\r\nContent-Length: 2\r\n\r\nhi")
    assert out.head is not None
    assert out.head.headers == (("X-A", "a b c"), ("X-Empty", "value"), ("Content-Length", "2"))
    assert out.body == b"hi"


def test_a_folded_content_length_counts() -> None:
    out = parse(b"HTTP/1.1 200 OK\r\nContent-Length:\r\n 2\r\n\r\nhiXX", eof=False)
    assert out.head is not None and out.head.content_length == 2 and out.body == b"hi"


def test_a_continuation_line_before_any_header_is_an_error() -> None:
    with pytest.raises(ProtocolError, match="^continuation line at start of headers$"):
        parse(b"HTTP/1.1 200 OK\r\n X-A: a\r\nContent-Length: 2\r\n\r\nhi")


def test_bare_lf_line_ends_are_accepted_as_go() -> None:
    out = parse(b"HTTP/1.1 200 OK\nContent-Length: 2\nX-A: 1\r\n\nhi")
    assert out.head is not None and out.head.headers == (("Content-Length", "2"), ("X-A", "1"))
    assert out.body == b"hi"


def test_rewritten_heads_after_interim_responses_report_each_interim_response_once() -> None:
    out = parse(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early\r\nLink: a\r\n\r\n"
                b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nhi")
    assert [i.status for i in out.informational] == [100, 103]
    assert out.head is not None and out.head.headers == (("X", "a b"), ("Content-Length", "2")) and out.body == b"hi"


# --- no body -----------------------------------------------------------------------------

def test_head_response_has_no_body_and_keeps_its_content_length() -> None:
    out = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", method="HEAD", keep_alive=True, eof=False)
    assert out.head is not None and out.head.content_length == 5
    assert (out.body, out.ended, out.reusable) == (b"", True, True)


def test_head_response_chunked_has_no_body() -> None:
    out = parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", method="HEAD", eof=False)
    assert out.head is not None and out.head.content_length is None and out.ended


def test_head_response_followed_by_bytes_is_not_reusable() -> None:
    out = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", method="HEAD", keep_alive=True, eof=False)
    assert (out.body, out.ended, out.reusable) == (b"", True, False)


@pytest.mark.parametrize("status", [204, 304])
def test_204_and_304_have_no_body_and_content_length_0_as_go(status: int) -> None:
    out = parse(b"HTTP/1.1 %d X\r\nContent-Length: 5\r\n\r\n" % status, keep_alive=True, eof=False)
    assert out.head is not None and out.head.content_length == 0
    assert (out.body, out.ended, out.reusable) == (b"", True, True)


def test_content_length_is_none_for_chunked_and_close_delimited_bodies() -> None:
    chunked = parse(CHUNKED + b"0\r\n\r\n")
    close = parse(b"HTTP/1.1 200 OK\r\n\r\nuntil close")
    assert chunked.head is not None and chunked.head.content_length is None
    assert close.head is not None and close.head.content_length is None and close.body == b"until close"


# --- EOF ---------------------------------------------------------------------------------

def test_a_body_delimited_by_close_ends_at_eof_and_is_not_reusable() -> None:
    out = parse(b"HTTP/1.1 200 OK\r\n\r\nhel", b"lo", keep_alive=True)
    assert (out.body, out.ended, out.reusable) == (b"hello", True, False)


def test_eof_before_anything_is_an_incomplete_head() -> None:
    with pytest.raises(IncompleteHead, match="^peer closed the connection without sending a response$"):
        parse()


def test_eof_in_the_head_is_an_incomplete_head() -> None:
    with pytest.raises(IncompleteHead, match="after 26 bytes of an incomplete response head"):
        parse(b"HTTP/1.1 200 OK\r\nServer: x")


def test_eof_in_a_content_length_body_is_an_incomplete_body() -> None:
    with pytest.raises(IncompleteBody, match="^peer closed the connection after 2 of 5 body bytes$"):
        parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhi")


@pytest.mark.parametrize("tail", [b"5\r\nhi", b"2\r\nhi\r\n", b"2\r\nhi\r\n0\r\n", b"2\r\nhi\r\n0\r\nX: 1\r\n"])
def test_eof_in_a_chunked_body_is_an_incomplete_body(tail: bytes) -> None:
    with pytest.raises(IncompleteBody, match=r"in the middle of a chunked body \(after 2 body bytes\)"):
        parse(CHUNKED + tail)


def test_events_before_an_error_are_delivered_first() -> None:
    reader = ResponseReader("GET")
    reader.feed(CHUNKED + b"2\r\nhi\r\nzz\r\n")
    head = reader.next_event()
    assert isinstance(head, Head) and head.status == 200
    assert reader.next_event() == Body(b"hi")
    with pytest.raises(ProtocolError, match="Invalid character in chunk size"):
        reader.next_event()
    with pytest.raises(ProtocolError, match="Invalid character in chunk size"):
        reader.next_event()  # and it stays failed


# --- head size limit ---------------------------------------------------------------------

def _head_of(size: int) -> bytes:
    prefix = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Pad: "
    return prefix + b"p" * (size - len(prefix) - 4) + b"\r\n\r\n"


@pytest.mark.parametrize("pieces", [1, 3, 0])
def test_a_head_of_exactly_the_limit_passes_one_byte_more_fails(pieces: int) -> None:
    for size, ok in ((200, True), (201, False)):
        data = _head_of(size) + b"hi"
        chunks = [data] if pieces == 1 else [data[i:i + 1] for i in range(len(data))] if pieces == 0 else \
            [data[:70], data[70:140], data[140:]]
        if ok:
            out = parse(*chunks, max_header_bytes=200)
            assert out.body == b"hi" and out.ended
        else:
            with pytest.raises(HeaderTooLarge, match="^response head larger than 200 bytes$") as info:
                parse(*chunks, max_header_bytes=200)
            assert info.value.limit == 200


def test_interim_and_final_heads_count_together_against_the_limit() -> None:
    interim = b"HTTP/1.1 103 Early\r\nLink: " + b"l" * 100 + b"\r\n\r\n"
    final = _head_of(100)
    assert parse(interim + final + b"hi", max_header_bytes=len(interim) + 100).ended
    with pytest.raises(HeaderTooLarge):
        parse(interim + final + b"hi", max_header_bytes=len(interim) + 99)


def test_a_rewritten_head_over_the_limit_is_too_large() -> None:
    data = b"HTTP/1.1 200 OK\r\nX-A: a\r\n " + b"b" * 300 + b"\r\nContent-Length: 0\r\n\r\n"
    with pytest.raises(HeaderTooLarge):
        parse(data, max_header_bytes=200)
    assert parse(data, max_header_bytes=len(data)).ended


def test_header_limit_holds_for_a_head_that_never_ends() -> None:
    reader = ResponseReader("GET", max_header_bytes=MiB)
    reader.feed(b"HTTP/1.1 200 OK\r\n")
    assert reader.next_event() is None
    piece = b"X-Big: " + b"a" * 65536
    with pytest.raises(HeaderTooLarge):
        for _ in range(100):
            reader.feed(piece)
            assert reader.next_event() is None
    assert reader.bytes_received <= MiB + len(piece)


# --- keep-alive ----------------------------------------------------------------------

@pytest.mark.parametrize(("response", "keep_alive", "reusable"), [
    (OK_2, True, True),
    (OK_2, False, False),  # our request said Connection: close
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi", True, False),
    (b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 2\r\n\r\nhi", True, False),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi", True, False),
    (b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\nhi", True, True),
    (CHUNKED + b"2\r\nhi\r\n0\r\n\r\n", True, True),
])
def test_reusable_follows_go(response: bytes, keep_alive: bool, reusable: bool) -> None:
    out = parse(response, keep_alive=keep_alive, eof=False)
    assert out.ended and out.reusable is reusable


def test_a_finished_reader_refuses_more_events() -> None:
    reader = ResponseReader("GET")
    reader.feed(OK_2)
    while not isinstance(reader.next_event(), End):
        pass
    assert reader.done
    with pytest.raises(RuntimeError, match="new ResponseReader"):
        reader.next_event()


# --- split feeds -------------------------------------------------------------------------

SPLIT_CASES = {
    "1xx, chunked with extension and trailer": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"
                                               b"Transfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\n",
    "obs-fold and equal Content-Lengths": b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 3\r\n"
                                          b"Content-Length: 3\r\n\r\nabc",
    "bare LF": b"HTTP/1.1 302 Found\nLocation: /next\nContent-Length: 3\n\nabc",
    "redirect": b"HTTP/1.1 302 Found\r\nLocation: https://example.test/\r\nContent-Length: 3\r\n\r\nabc",
}


@pytest.mark.parametrize("name", list(SPLIT_CASES))
def test_split_feeds_at_every_byte_boundary_give_the_same_events(name: str) -> None:
    data = SPLIT_CASES[name]
    expected = events_of(data)
    assert expected[2] == b"abc" and expected[3] is True
    for pieces in splits(data):
        out = parse(*pieces)
        assert [out.informational, out.head, out.body, out.ended] == expected, pieces


def test_split_feeds_report_the_same_conflict() -> None:
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello"
    for pieces in splits(data):
        with pytest.raises(ProtocolError, match="^conflicting Content-Length headers 5 and 6$"):
            parse(*pieces)


# --- async helpers over real sockets ------------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[int]:
    """A raw TCP server on 127.0.0.1; each connection runs ``handler`` (peer hang-ups are its end)."""
    tasks: set[asyncio.Task[None]] = set()

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            tasks.discard(task)

    server = await asyncio.start_server(run, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        # Handlers end when the client has gone; cancelling is for one that did not notice.
        if tasks:
            await asyncio.wait(set(tasks), timeout=10)
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


async def open_conn(port: int) -> Connection:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(lambda: Connection(loop), "127.0.0.1", port)
    return conn


async def read_request(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")  # pragma: no cover


RSS_MARGIN = 50 * MiB


async def with_peak_rss_growth(coro: Awaitable[object]) -> tuple[BaseException | None, int]:
    """Run ``coro`` while sampling VmRSS every 5 ms: (what it raised, peak growth over the start).

    A run whose memory passes twice the margin is cancelled there, so a
    regression fails the assertion instead of exhausting the machine.
    """
    baseline = rss_bytes()
    task = asyncio.ensure_future(coro)
    peak = 0
    deadline = asyncio.get_running_loop().time() + 60
    while not task.done():
        peak = max(peak, rss_bytes() - baseline)
        if peak > 2 * RSS_MARGIN or asyncio.get_running_loop().time() > deadline:
            task.cancel()
            break
        await asyncio.wait({task}, timeout=0.005)
    await asyncio.wait({task})
    peak = max(peak, rss_bytes() - baseline)
    return (None if task.cancelled() else task.exception()), peak


async def exchange(port: int, *, method: str = "GET", limit: int | None = None, keep: bool = False,
                   keep_limit: int = MiB) -> tuple[Head, int, bytes]:
    conn = await open_conn(port)
    try:
        conn.write(http1.build_request(method, "/", f"127.0.0.1:{port}", (), None, user_agent=UA))
        await conn.drain()
        reader = ResponseReader(method)
        await http1.wait_first_byte(conn, reader)
        head = await http1.read_head(conn, reader)
        length, body = await http1.read_body(conn, reader, limit=limit, keep=keep, keep_limit=keep_limit)
        return head, length, body
    finally:
        conn.close()


async def test_100_and_103_before_200_over_tcp_are_skipped() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        for part in (b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n",
                     b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"):
            writer.write(part)
            await writer.drain()

    async with serve(handler) as port:
        head, length, body = await asyncio.wait_for(exchange(port, keep=True), 10)
    assert (head.status, length, body) == (200, 5, b"hello")


async def test_wait_first_byte_then_read_head_loses_no_byte() -> None:
    first_byte_seen = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"H")
        await writer.drain()
        await first_byte_seen.wait()
        writer.write(b"TTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
        await writer.drain()

    async with serve(handler) as port:
        conn = await open_conn(port)
        try:
            conn.write(http1.build_request("GET", "/", "h", (), None, user_agent=UA))
            reader = ResponseReader("GET")
            await asyncio.wait_for(http1.wait_first_byte(conn, reader), 10)
            assert reader.bytes_received == 1
            first_byte_seen.set()
            head = await asyncio.wait_for(http1.read_head(conn, reader), 10)
            assert (head.status, await http1.read_body(conn, reader, limit=None, keep=True, keep_limit=10)) == \
                (200, (2, b"hi"))
        finally:
            conn.close()


async def test_peer_closing_without_a_response_fails_the_first_byte_wait() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    async with serve(handler) as port:
        conn = await open_conn(port)
        try:
            conn.write(http1.build_request("GET", "/", "h", (), None, user_agent=UA))
            with pytest.raises(IncompleteHead, match="without sending a response"):
                await asyncio.wait_for(http1.wait_first_byte(conn, ResponseReader("GET")), 10)
        finally:
            conn.close()


async def test_truncated_body_over_tcp_is_an_incomplete_body() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
        await writer.drain()

    async with serve(handler) as port:
        with pytest.raises(IncompleteBody, match="after 5 of 10 body bytes"):
            await asyncio.wait_for(exchange(port), 10)


async def test_body_limit_is_exact() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"b" * 1000)
        await writer.drain()

    async with serve(handler) as port:
        assert (await asyncio.wait_for(exchange(port, limit=1000), 10))[1] == 1000
        with pytest.raises(BodyTooLarge, match="larger than the limit of 999 bytes") as info:
            await asyncio.wait_for(exchange(port, limit=999), 10)
        assert info.value.limit == 999


async def _endless(writer: asyncio.StreamWriter, head: bytes, piece: bytes, stop: asyncio.Event) -> None:
    writer.write(head)
    while not stop.is_set():
        writer.write(piece)
        await writer.drain()


async def test_chunk_size_ffffffffff_with_an_endless_stream_ends_at_the_limit_without_memory_growth() -> None:
    stop = asyncio.Event()
    limit = 200 * MiB  # a parser that buffers the announced chunk would exceed the RSS margin 4 times

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await _endless(writer, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFF\r\n", b"z" * 65536, stop)

    async with serve(handler) as port:
        error, growth = await with_peak_rss_growth(exchange(port, limit=limit))
        stop.set()
    assert growth < RSS_MARGIN, f"RSS grew by {growth / MiB:.0f} MiB"
    assert isinstance(error, BodyTooLarge) and error.limit == limit


async def test_endless_body_kept_for_matching_stops_at_the_keep_limit() -> None:
    stop = asyncio.Event()
    keep_limit = 4 * MiB

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await _endless(writer, b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n", b"line\n" * 13107, stop)

    async with serve(handler) as port:
        error, growth = await with_peak_rss_growth(exchange(port, limit=None, keep=True, keep_limit=keep_limit))
        stop.set()
    assert growth < RSS_MARGIN, f"RSS grew by {growth / MiB:.0f} MiB"
    assert isinstance(error, BodyTooLarge) and error.limit == keep_limit
    assert str(error) == f"response body larger than the {keep_limit} bytes kept for matching"


async def test_500_headers_of_1_mib_fail_as_header_too_large_with_bounded_memory() -> None:
    big = b"a" * MiB
    sent = [0]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n")
        for i in range(500):
            writer.write(b"X-Big-%d: " % i + big + b"\r\n")
            await writer.drain()
            sent[0] += 1
        writer.write(b"\r\n")

    async with serve(handler) as port:
        error, growth = await with_peak_rss_growth(exchange(port))
    assert growth < RSS_MARGIN, f"RSS grew by {growth / MiB:.0f} MiB"
    assert isinstance(error, HeaderTooLarge) and str(error) == "response head larger than 1048576 bytes"
    assert sent[0] < 500  # it gave up long before the server was done


async def test_keep_alive_carries_two_responses_on_one_connection() -> None:
    connections = []
    requests: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        for response in (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst",
                         b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nsecond\r\n0\r\n\r\n"):
            requests.append(await read_request(reader))
            writer.write(response)
            await writer.drain()

    async with serve(handler) as port:
        conn = await open_conn(port)
        try:
            results = []
            for path in ("/1", "/2"):
                conn.write(http1.build_request("GET", path, "h", (), None, user_agent=UA, keep_alive=True))
                await conn.drain()
                reader = ResponseReader("GET", keep_alive=True)
                await asyncio.wait_for(http1.wait_first_byte(conn, reader), 10)
                head = await asyncio.wait_for(http1.read_head(conn, reader), 10)
                _, body = await asyncio.wait_for(http1.read_body(conn, reader, limit=None, keep=True, keep_limit=100), 10)
                results.append((head.status, body, reader.reusable))
        finally:
            conn.close()
    assert results == [(200, b"first", True), (201, b"second", True)]
    assert len(connections) == 1
    assert [r.split(b" ")[1] for r in requests] == [b"/1", b"/2"]
    assert all(b"Connection" not in r for r in requests)


def test_a_close_delimited_response_is_done_after_its_end() -> None:
    reader = ResponseReader("GET")
    reader.feed(b"HTTP/1.1 200 OK\r\n\r\nbody")
    reader.eof()
    assert [type(reader.next_event()) for _ in range(3)] == [Head, Body, End]
    assert reader.done
    with pytest.raises(RuntimeError, match="new ResponseReader"):
        reader.next_event()
