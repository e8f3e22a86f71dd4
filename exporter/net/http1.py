"""HTTP/1.1 for probes: request bytes out, response events in, on httptools (llhttp).

Sans-IO: ``build_request`` makes the bytes to write and ``ResponseReader``
turns received bytes into events (``Informational``, ``Head``, ``Body``,
``End``); the async helpers at the bottom drive a reader from any connection
with ``read(n)`` (b"" at EOF). Framing is llhttp's: status line, header
syntax, Content-Length digits, chunk sizes and extensions, trailers, 1xx,
204/304. What llhttp does not do is here, each written as Go's net/http
client does it (blackbox_exporter is the reference): the request side
(target encoding, header and userinfo rules), HEAD, the head size limit, the
Go-accepted head forms llhttp refuses, Go's Transfer-Encoding and
Content-Length range rules, EOF, Go's ``Response.ContentLength``, and whether
the connection may be reused. Why llhttp and not h11, and what each costs:
docs/benchmarks.md, "HTTP/1.1 parser: httptools vs h11".
"""
from __future__ import annotations

import base64
import functools
import re
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import httptools

from . import codings

__all__ = [
    "DEFAULT_MAX_HEADER_BYTES", "MAX_INFORMATIONAL", "READ_SIZE",
    "ProtocolError", "HeaderTooLarge", "IncompleteResponse", "IncompleteHead", "IncompleteBody", "BodyTooLarge",
    "Informational", "Head", "Body", "End", "Event",
    "request_target", "validate_header", "basic_auth", "build_request",
    "ResponseReader", "ByteStream", "wait_first_byte", "read_head", "read_body",
]

DEFAULT_MAX_HEADER_BYTES = 1 << 20  # Go's http.DefaultMaxHeaderBytes, also its Transport default
MAX_INFORMATIONAL = 5  # Go's max1xxResponses: a sixth interim response fails the request
READ_SIZE = 65536
_MAX_CONTENT_LENGTH = (1 << 63) - 1  # Go: strconv.ParseUint(cl, 10, 63)


class ProtocolError(Exception):
    """The peer's bytes are not valid HTTP/1.x framing; the message names what was wrong."""


class HeaderTooLarge(ProtocolError):
    """A response head (status line + header fields) was larger than ``limit`` bytes."""

    def __init__(self, limit: int, message: str) -> None:
        super().__init__(message)
        self.limit = limit


class IncompleteResponse(ProtocolError):
    """The peer closed the connection before the response was complete: a hang-up, not bad framing."""


class IncompleteHead(IncompleteResponse):
    """Closed before (or while) the response head was sent."""


class IncompleteBody(IncompleteResponse):
    """Closed before the body its Content-Length or chunked framing announced was complete."""


class BodyTooLarge(Exception):
    """More body bytes arrived than ``limit``; reading stopped there."""

    def __init__(self, limit: int, message: str) -> None:
        super().__init__(message)
        self.limit = limit


Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Informational:
    """An interim (1xx) response other than 101; Go's client reads past it."""

    status: int
    headers: Headers


@dataclass(frozen=True, slots=True)
class Head:
    """The final response's status line and header fields.

    ``content_length`` is Go's ``Response.ContentLength`` (None where Go says
    -1): the declared length; None for chunked or close-delimited bodies; 0 for
    1xx/204/304 whatever the header says; for HEAD the header's value.
    Header values are UTF-8 with invalid bytes replaced, which is how Go's
    regexp sees them, without trailing blanks; obs-fold lines arrive unfolded.
    """

    version: str  # "HTTP/1.1"
    status: int
    reason: str
    headers: Headers
    content_length: int | None


@dataclass(frozen=True, slots=True)
class Body:
    data: bytes


@dataclass(frozen=True, slots=True)
class End:
    pass


Event = Informational | Head | Body | End
_END = End()

# --- the request -------------------------------------------------------------------

_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token (tchar+)
_ALNUM = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Go's shouldEscape(c, encodePath) is false for exactly these.
_PATH_KEEP = frozenset(_ALNUM + b"-_.~$&+,/:;=@")
# Go's validEncoded(s, encodePath): a raw path made only of these is sent as it is.
_PATH_VALID_ENCODED = _PATH_KEEP | frozenset(b"!'()*[]%")
# Go's validUserinfo.
_USERINFO_VALID = frozenset(_ALNUM.decode() + "-._:~!$&'()*+,;=%@")
_HEXDIGITS = frozenset(b"0123456789abcdefABCDEF")
_CTL_RE = re.compile(r"[\x00-\x1f\x7f]")
_VALUE_CTL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # HTAB is allowed in a field value


def _unescape(raw: bytes, what: str) -> bytes:
    """Go's url.unescape in path/userinfo mode: %XX decoded, a malformed escape is an error ('+' stays)."""
    if b"%" not in raw:
        return raw
    out = bytearray()
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c == 0x25:  # %
            if i + 2 >= n or raw[i + 1] not in _HEXDIGITS or raw[i + 2] not in _HEXDIGITS:
                raise ValueError(f"invalid URL escape {raw[i:i + 3].decode('utf-8', 'replace')!r} in the {what}")
            out.append(int(raw[i + 1:i + 3], 16))
            i += 3
        else:
            out.append(c)
            i += 1
    return bytes(out)


@functools.lru_cache(maxsize=4096)  # targets repeat every probe
def request_target(path: str, query: str) -> str:
    """The request-target for an origin server, as Go's ``url.URL.RequestURI()``.

    The path is sent as written when it is validly encoded (so ``%2F`` stays
    ``%2F``); otherwise it is decoded and re-encoded (a space becomes ``%20``,
    non-ASCII its UTF-8 bytes, each ``%XX``). Go sends the query as written; a
    raw space or non-ASCII byte there would break or smuggle into the request
    line, so those two are percent-encoded and nothing else is touched.
    ValueError for a control character anywhere or a malformed %-escape in the
    path: Go's url.Parse refuses both.
    """
    for part, what in ((path, "path"), (query, "query")):
        ctl = _CTL_RE.search(part)
        if ctl:
            raise ValueError(f"control character {ctl.group()!r} in the URL {what}")
    raw = path.encode("utf-8")
    decoded = _unescape(raw, "path")  # also validates, as Go's setPath does
    if all(c in _PATH_VALID_ENCODED for c in raw):
        escaped = raw
    else:
        escaped = b"".join(bytes((c,)) if c in _PATH_KEEP else b"%%%02X" % c for c in decoded)
    target = escaped.decode("ascii") or "/"
    if query:
        if " " in query or not query.isascii():
            query = "".join(ch if ch.isascii() and ch != " " else "".join(f"%{b:02X}" for b in ch.encode("utf-8"))
                            for ch in query)
        target += "?" + query
    return target


def validate_header(name: str, value: str) -> None:
    """ValueError naming the header if it may not be sent: the name is not a token, or the value has a control character.

    As Go's Transport (httpguts.ValidHeaderFieldName/Value): every control
    character but HTAB is refused in a value, CR, LF and NUL among them, so
    a config value can never add a header line or end the head. The value
    itself is not quoted in the message: it may be a secret.
    """
    if not _is_token(name):
        raise ValueError(f"header name {name!r} is not a valid HTTP token")
    if value.isascii() and value.isprintable():
        return  # the common case, without a regexp scan: printable ASCII has no control character
    ctl = _VALUE_CTL_RE.search(value)
    if ctl:
        raise ValueError(f"header {name!r}: value contains the control character {ctl.group()!r}")


@functools.lru_cache(maxsize=1024)  # header names repeat every probe
def _is_token(name: str) -> bool:
    return _TOKEN_RE.fullmatch(name) is not None


def basic_auth(userinfo_user: str, password: str | None) -> str:
    """The Authorization value Go's client sends for URL userinfo: ``Basic base64(user:password)``.

    ``userinfo_user`` and ``password`` are as written in the URL (urlsplit's
    ``username``/``password``): percent-decoded here, strictly, as Go's
    url.User; characters Go's url.Parse refuses in userinfo are a ValueError.
    No password gives ``user:`` as in Go.
    """
    parts = [userinfo_user] if password is None else [userinfo_user, password]
    decoded = []
    for part in parts:
        bad = next((ch for ch in part if ch not in _USERINFO_VALID), None)
        if bad is not None:
            raise ValueError(f"invalid character {bad!r} in the URL userinfo")
        decoded.append(_unescape(part.encode("ascii"), "userinfo"))
    credentials = decoded[0] + b":" + (decoded[1] if len(decoded) > 1 else b"")
    return "Basic " + base64.b64encode(credentials).decode("ascii")


# Framing is ours to write, as Go ignores these in Request.Header (reqWriteExcludeHeader).
_DROPPED_HEADERS = frozenset({"content-length", "transfer-encoding", "trailer"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def build_request(method: str, target: str, host_header: str, headers: Sequence[tuple[str, str]], body: bytes | None,
                  *, user_agent: str, keep_alive: bool = False, extra: Sequence[tuple[str, str]] = ()) -> bytes:
    """The bytes of one HTTP/1.1 request.

    Order: request line, Host (a given Host header replaces ``host_header``),
    User-Agent ``user_agent`` and ``Accept: */*`` unless given, the given
    headers in order, then ``extra``, Content-Length when there is a body or
    the method is POST/PUT/PATCH (as Go), ``Connection: close`` unless
    ``keep_alive`` (or a given Connection header already says close). Given
    Content-Length, Transfer-Encoding and Trailer headers are dropped: the
    framing is ours, as in Go. A given User-Agent with an empty value sends
    none (Go). Every header is validated (``validate_header``); values are
    trimmed of surrounding blanks and sent as UTF-8.

    ``extra`` is for fields that change with every request (traceparent):
    validated and sent as they are, without the rules above. Everything else
    is built once per distinct request and cached: probes repeat.
    """
    head, tail = _request_head(method, target, host_header, tuple(headers), len(body) if body else 0, user_agent,
                               keep_alive)
    if not extra:
        return head + tail + (body or b"")
    lines = []
    for name, value in extra:
        validate_header(name, value)
        value = value.strip(" \t")
        lines.append(f"{name}: {value}\r\n")
    return head + "".join(lines).encode("utf-8") + tail + (body or b"")


@functools.lru_cache(maxsize=1024)
def _request_head(method: str, target: str, host_header: str, headers: tuple[tuple[str, str], ...], body_length: int,
                  user_agent: str, keep_alive: bool) -> tuple[bytes, bytes]:
    """(request line and fields up to the given headers, the rest of the head) for ``build_request``."""
    if not _TOKEN_RE.fullmatch(method):
        raise ValueError(f"method {method!r} is not a valid HTTP token")
    if not target or _CTL_RE.search(target) or " " in target or not target.isascii():
        raise ValueError(f"request target {target!r} must be percent-encoded (see request_target)")
    host = host_header
    given: list[tuple[str, str]] = []
    has = set()
    for name, value in headers:
        validate_header(name, value)
        lname = name.lower()
        value = value.strip(" \t")
        if lname == "host":
            if "host" not in has:
                host = value
            has.add(lname)
            continue
        if lname in _DROPPED_HEADERS:
            continue
        has.add(lname)
        if lname == "user-agent" and not value:
            continue
        given.append((name, value))
    if not host or _CTL_RE.search(host) or " " in host:
        raise ValueError(f"invalid Host header {host!r}")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    if "user-agent" not in has:
        lines.append(f"User-Agent: {user_agent}")
    if "accept" not in has:
        lines.append("Accept: */*")
    lines.extend(f"{name}: {value}" for name, value in given)
    tail = []
    if body_length or method in _BODY_METHODS:
        tail.append(f"Content-Length: {body_length}")
    if not keep_alive and not any(n.lower() == "connection" and _has_token(v, "close") for n, v in given):
        tail.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8"), "".join(f"{line}\r\n" for line in tail).encode("utf-8") + b"\r\n"


def _has_token(value: str, token: str) -> bool:
    return any(part.strip(" \t").lower() == token for part in value.split(","))


# --- the response ------------------------------------------------------------------

class _Stop(Exception):
    """Raised from a parser callback to stop llhttp where the response ends for us."""


_HEAD, _BODY, _DONE = 0, 1, 2
_HEAD_END_RE = re.compile(rb"\n\r?\n")
_STATUS_RE = re.compile(rb"HTTP/[0-9]\.[0-9] ([0-9]{3})")
_BARE_LF_RE = re.compile(rb"(?<!\r)\n")
_CONTENT_LENGTH_LINE_RE = re.compile(rb"\ncontent-length[ \t]*:", re.IGNORECASE)
_DIGITS_RE = re.compile(r"[0-9]+")
_MAX_MESSAGE = 200


class _Callbacks:
    """What httptools calls, forwarding to one reader through a weak reference.

    A strong one would make reader -> parser -> callbacks -> reader a cycle per
    response: only the cyclic GC could free it, and at thousands of probes a
    second those collections cost more than the parsing (docs/benchmarks.md).
    No ``on_status``/``on_header``: a Python call per header field cost more
    than the rest of the parse; the reader splits the head llhttp accepted.
    """

    __slots__ = ("_reader",)

    def __init__(self, reader: ResponseReader) -> None:
        self._reader = weakref.ref(reader)

    def on_message_begin(self) -> None:
        self._reader()._on_message_begin()  # type: ignore[union-attr]

    def on_headers_complete(self) -> None:
        self._reader()._on_headers_complete()  # type: ignore[union-attr]

    def on_body(self, body: bytes) -> None:
        self._reader()._on_body(body)  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        self._reader()._on_message_complete()  # type: ignore[union-attr]


class ResponseReader:
    """Bytes in, events out, for the response to one request (a new reader per request).

    ``feed`` what arrived (``eof()`` once the peer closed), then call
    ``next_event`` until it returns None (it needs more bytes) or ``End``.
    Errors come from ``next_event``: ``HeaderTooLarge``;
    ``IncompleteHead``/``IncompleteBody`` after ``eof``; ``ProtocolError``
    for anything else that breaks framing. Memory: body bytes come out as
    they are parsed, whatever a chunk size announces; the heads (interim and
    final together) are parsed only up to ``max_header_bytes``, and the reads
    that carried them are held until the final head is parsed (for a rewrite
    and to quote values in errors). Bytes are parsed when ``next_event``
    runs, so feed one read at a time.

    Parsing is llhttp's (httptools), strict, with two leniencies that make it
    read what Go reads: Transfer-Encoding with Content-Length (chunked wins)
    and blanks after a chunk size, plus any HTTP/x.y version. Three head
    forms that Go accepts and llhttp always refuses are rewritten, only after
    llhttp refused the head: obs-fold lines unfolded, equal duplicate
    Content-Length lines merged (different ones are an error), bare-LF line
    ends made CRLF. The rewritten head is parsed by llhttp again. Rules of
    Go that llhttp does not apply are checked here: only a single
    ``Transfer-Encoding: chunked``, Content-Length below 2**63, at most 5
    interim responses; a response to HEAD (and a 2xx to CONNECT) ends after
    its head; 101 is a final response.
    """

    __slots__ = ("_method", "_keep_alive", "_limit", "_parser", "_events", "_pending", "_state", "_fed",
                 "_head_bytes", "_retained", "_normalising", "_normalised", "_parse_error", "_informational",
                 "_skip_informational", "_in_informational", "_scan", "_eof", "_switched",
                 "_close_delimited", "_unsolicited", "_body_bytes", "_head", "_error", "_callback_error", "reusable",
                 "__weakref__")

    def __init__(self, method: str, *, keep_alive: bool = False, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES) -> None:
        self._method = method
        self._keep_alive = keep_alive  # whether our request let the connection stay open
        self._limit = max_header_bytes
        self._parser = self._new_parser()
        self._events: deque[Event] = deque()
        self._pending: list[bytes] = []  # fed, not parsed yet
        self._state = _HEAD
        self._fed = 0
        self._head_bytes = 0  # bytes parsed before the final head was complete
        self._retained: list[bytes] = []  # those bytes, kept for a rewrite and to quote values in errors
        self._normalising = False  # llhttp refused a head that a rewrite may fix: collecting it whole
        self._normalised = False
        self._parse_error = ""
        self._informational = 0
        self._skip_informational = 0  # interim responses already reported before a head was parsed again
        self._in_informational = False
        self._scan = 0  # where the next head starts in the retained bytes
        self._eof = False
        self._switched = False
        self._close_delimited = False
        self._unsolicited = False
        self._body_bytes = 0
        self._head: Head | None = None
        self._error: ProtocolError | None = None
        self._callback_error: Exception | None = None
        #: After End: whether the connection may carry another request, by
        #: Go's rules: not after Connection: close on either side, an HTTP/1.0
        #: answer without keep-alive, a body delimited by close, a 101, or
        #: bytes the server sent beyond the response.
        self.reusable = False

    def _new_parser(self) -> httptools.HttpResponseParser:
        parser = httptools.HttpResponseParser(_Callbacks(self))
        parser.set_dangerous_leniencies(lenient_chunked_length=True, lenient_spaces_after_chunk_size=True,
                                        lenient_version=True)
        return parser

    @property
    def bytes_received(self) -> int:
        return self._fed

    @property
    def body_bytes(self) -> int:
        """Body bytes parsed so far (what a truncated body reached)."""
        return self._body_bytes

    @property
    def done(self) -> bool:
        return self._state == _DONE and not self._events

    def feed(self, data: bytes) -> None:
        if self._eof:
            raise RuntimeError("feed() after eof()")
        if data:
            self._fed += len(data)
            self._pending.append(data)

    def eof(self) -> None:
        """The peer closed: a body delimited by close ends here; an unfinished head or body is an error."""
        self._eof = True

    def next_event(self) -> Event | None:
        events = self._events
        while not events:
            if self._error is not None:
                raise self._error
            if self._pending:
                data = self._pending.pop(0)
                if self._state == _DONE:
                    self._unsolicited = True
                    continue
                try:
                    self._parse(data)
                except ProtocolError as exc:
                    # Events parsed before the error come out first: the status is known
                    # even when the body breaks off (Go reports it too).
                    self._error = exc
            elif self._state == _DONE:
                raise RuntimeError("the response is complete; use a new ResponseReader for the next one")
            elif self._eof:
                self._at_eof()
            else:
                return None
        event = events.popleft()
        if event is _END:
            self._finish()
        return event

    # --- parsing -----------------------------------------------------------------
    def _parse(self, data: bytes) -> None:
        if self._state != _HEAD:
            self._run(data)
            return
        if self._normalising:
            self._retained.append(data)
            self._head_bytes += len(data)
            self._renormalise()
            return
        allowance = self._limit - self._head_bytes
        if len(data) > allowance:
            # Parse no more than the heads may still use: a head that is not
            # complete by then is too large, however the bytes were split.
            head, rest = data[:allowance], data[allowance:]
            if head:
                self._parse(head)
            if self._state == _HEAD and not self._normalising:
                raise HeaderTooLarge(self._limit, f"response head larger than {self._limit} bytes")
            self._pending.insert(0, rest)
            return
        self._retained.append(data)
        self._head_bytes += len(data)
        self._run(data)

    def _run(self, data: bytes) -> None:
        message = None
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            return  # a 101: llhttp stopped after it; the End is queued, what follows is not HTTP
        except httptools.HttpParserCallbackError:
            error, self._callback_error = self._callback_error, None
            if isinstance(error, _Stop):
                return
            if error is None:
                raise
            raise error from None
        except httptools.HttpParserError as exc:
            message = str(exc)
        if message is not None:  # handled outside the except clause: a re-parse may follow
            if self._state == _DONE:
                self._unsolicited = True  # llhttp refused what followed the response
                return
            self._parser_error(message)

    def _fail(self, error: Exception) -> Exception:
        """Remember what a callback raises: httptools reports it only as a callback error."""
        self._callback_error = error
        return error

    def _parser_error(self, message: str) -> None:
        if self._state == _HEAD and not self._normalised:
            buf = b"".join(self._retained)
            if _STATUS_RE.match(buf) and (b"\n " in buf or b"\n\t" in buf or _BARE_LF_RE.search(buf)
                                          or len(_CONTENT_LENGTH_LINE_RE.findall(buf)) > 1):
                self._normalising = True
                self._parse_error = message
                self._renormalise()
                return
        raise ProtocolError(self._explain(message))

    def _renormalise(self) -> None:
        """Once the heads up to the final one are all here, rewrite them and parse them again."""
        buf = b"".join(self._retained)
        rewritten = _normalise_heads(buf, self._limit)
        if rewritten is None:
            if len(buf) >= self._limit:
                raise HeaderTooLarge(self._limit, f"response head larger than {self._limit} bytes")
            return  # the final head is not complete yet
        if rewritten == buf:
            raise ProtocolError(self._explain(self._parse_error))
        self._normalising = False
        self._normalised = True
        self._skip_informational, self._informational = self._informational, 0
        self._retained = [rewritten]
        self._scan = 0
        self._parser = self._new_parser()
        self._run(rewritten)
        if self._state == _HEAD:  # pragma: no cover - the rewrite holds the whole final head
            raise ProtocolError(self._explain(self._parse_error))

    def _at_eof(self) -> None:
        if self._state == _HEAD:
            if not self._fed:
                raise IncompleteHead("peer closed the connection without sending a response")
            raise IncompleteHead(f"peer closed the connection after {self._head_bytes} bytes of an incomplete response head")
        if self._close_delimited:
            self._events.append(_END)
            return
        head = self._head
        assert head is not None
        if head.content_length is not None:
            raise IncompleteBody(f"peer closed the connection after {self._body_bytes} of {head.content_length} body bytes")
        raise IncompleteBody(f"peer closed the connection in the middle of a chunked body (after {self._body_bytes} body bytes)")

    def _finish(self) -> None:
        head = self._head
        assert head is not None
        self._state = _DONE
        self.reusable = (self._keep_alive and not self._switched and not self._close_delimited and not self._eof
                         and not self._unsolicited and not self._pending and _may_keep_alive(head))

    # --- llhttp callbacks ----------------------------------------------------------
    def _on_message_begin(self) -> None:
        if self._state == _DONE:
            self._unsolicited = True
            raise self._fail(_Stop())

    def _on_headers_complete(self) -> None:
        # Only a head's fields are read: trailers are skipped, as Go's client does for the body's reader.
        parser = self._parser
        status = parser.get_status_code()
        retained = self._retained
        buf = retained[0] if len(retained) == 1 else b"".join(retained)
        start = self._scan
        end = _HEAD_END_RE.search(buf, start)
        assert end is not None  # llhttp accepted a complete head, so the bytes it read hold its empty line
        self._scan = end.end()
        reason, headers = _split_head(buf[start:end.end()])
        if 100 <= status < 200 and status != 101:
            self._in_informational = True
            self._informational += 1
            if self._informational > MAX_INFORMATIONAL:
                raise self._fail(ProtocolError(
                    f"more than {MAX_INFORMATIONAL} informational (1xx) responses before the final response"))
            if self._skip_informational:
                self._skip_informational -= 1
            else:
                self._events.append(Informational(status, headers))
            return
        chunked = False
        declared: int | None = None
        for name, value in headers:
            size = len(name)  # a cheap filter before lower(): most names are neither
            if size == 14 and name.lower() == "content-length":
                declared = int(value)  # llhttp let only digits through, and only one such header
                if declared > _MAX_CONTENT_LENGTH:
                    raise self._fail(ProtocolError(f"invalid Content-Length {value}: out of range"))
            elif size == 17 and name.lower() == "transfer-encoding":
                # Go accepts exactly one Transfer-Encoding header, saying chunked; llhttp more.
                if chunked:
                    raise self._fail(ProtocolError("multiple Transfer-Encoding headers"))
                coding = value
                if coding.lower() != "chunked":
                    raise self._fail(ProtocolError(f"unsupported Transfer-Encoding {coding!r} (only chunked)"))
                chunked = True
        method = self._method
        headers_only = method == "HEAD" or (method == "CONNECT" and 200 <= status < 300)
        if status < 200 or status in (204, 304):
            content_length: int | None = 0
        elif method == "HEAD":
            content_length = declared
        elif chunked:
            content_length = None
        else:
            content_length = declared
        self._close_delimited = not headers_only and status >= 200 and status not in (204, 304) and not chunked \
            and declared is None
        self._switched = status == 101 or (method == "CONNECT" and 200 <= status < 300)
        self._head = Head(f"HTTP/{parser.get_http_version()}", status, reason, headers, content_length)
        self._events.append(self._head)
        self._state = _BODY
        if headers_only:
            self._unsolicited = self._scan < len(buf)
            self._retained = []
            self._state = _DONE
            self._events.append(_END)
            raise self._fail(_Stop())  # llhttp would read a body the Content-Length announces
        self._retained = []

    def _on_body(self, data: bytes) -> None:
        self._body_bytes += len(data)
        self._events.append(Body(data))

    def _on_message_complete(self) -> None:
        if self._in_informational:
            self._in_informational = False
            return
        self._state = _DONE
        self._events.append(_END)

    # --- messages ---------------------------------------------------------------------
    def _explain(self, message: str) -> str:
        """llhttp's message, with the offending value quoted where it helps."""
        if "Content-Length" in message and "Transfer-Encoding" not in message:
            values = _field_values(b"".join(self._retained), "content-length")
            bad = [v for v in values if not _DIGITS_RE.fullmatch(v)]
            if bad:
                message = f"invalid Content-Length {_show(bad[0])}"
            elif values and "overflow" in message:
                message = f"invalid Content-Length {values[0]}: out of range"
        if len(message) > _MAX_MESSAGE:
            message = message[:_MAX_MESSAGE] + "…"
        return message


def _split_head(head: bytes) -> tuple[str, Headers]:
    """(reason phrase, header fields) of one head llhttp accepted: token names, no folds, lines ending in CRLF.

    Values are UTF-8 with invalid bytes replaced, without surrounding blanks
    (RFC 9110 OWS, as Go). One decode of the whole head gives the same text
    as one per value: a line end is ASCII, so no sequence spans two lines.
    """
    lines = head.decode("utf-8", "replace").split("\r\n")
    status_line = lines[0].split(" ", 2)
    fields = []
    for line in lines[1:]:
        if not line:
            break
        name, _, value = line.partition(":")
        fields.append((name, value.strip(" \t")))
    return (status_line[2] if len(status_line) > 2 else ""), tuple(fields)


def _normalise_heads(buf: bytes, limit: int) -> bytes | None:
    """The heads in ``buf`` up to the final one, rewritten as Go reads them; None while the final one is incomplete."""
    out: list[bytes] = []
    pos = 0
    while True:
        end = _HEAD_END_RE.search(buf, pos)
        if end is None or end.end() > limit:
            return None
        head = buf[pos:end.end()]
        status = _STATUS_RE.match(head)
        if status is None:
            return buf  # not a head a rewrite can help
        out.append(_normalise_head(head))
        pos = end.end()
        code = int(status.group(1))
        if not (100 <= code < 200 and code != 101):
            return b"".join(out) + buf[pos:]


def _normalise_head(head: bytes) -> bytes:
    """One head with obs-fold unfolded, equal Content-Lengths merged and CRLF line ends (Go's textproto reading)."""
    lines = [line[:-1] if line.endswith(b"\r") else line for line in head.split(b"\n")]
    fields: list[bytes] = []
    for line in lines[1:lines.index(b"", 1)]:
        if line[:1] in (b" ", b"\t"):
            if not fields:
                raise ProtocolError("continuation line at start of headers")
            fields[-1] = fields[-1].rstrip(b" \t") + b" " + line.strip(b" \t")
        else:
            fields.append(line)
    lengths = [(i, f.partition(b":")[2].strip(b" \t")) for i, f in enumerate(fields)
               if f.partition(b":")[0].lower() == b"content-length"]
    if len(lengths) > 1:
        values = dict.fromkeys(v.decode("latin-1") for _, v in lengths)
        if len(values) > 1:
            raise ProtocolError(f"conflicting Content-Length headers {' and '.join(map(_show, values))}")
        duplicates = {i for i, _ in lengths[1:]}
        fields = [f for i, f in enumerate(fields) if i not in duplicates]
    return b"\r\n".join([lines[0], *fields]) + b"\r\n\r\n"


def _field_values(head: bytes, name: str) -> list[str]:
    pattern = re.compile(rb"^" + name.encode() + rb"[ \t]*:[ \t]*([^\r\n]*?)[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)
    return [match.group(1).decode("latin-1") for match in pattern.finditer(head)]


def _show(value: str) -> str:
    """A field value in a message: digits as they are, anything else quoted (an empty value stays visible)."""
    return value if _DIGITS_RE.fullmatch(value) else repr(value)


def _may_keep_alive(head: Head) -> bool:
    """Go's shouldClose, inverted: HTTP/1.1 unless Connection: close; HTTP/1.0 only with Connection: keep-alive."""
    connection = [v for k, v in head.headers if k.lower() == "connection"]
    if any(_has_token(v, "close") for v in connection):
        return False
    if head.version == "HTTP/1.1":
        return True
    return head.version == "HTTP/1.0" and any(_has_token(v, "keep-alive") for v in connection)


# --- async helpers -------------------------------------------------------------------

class ByteStream(Protocol):
    """What the helpers need of a connection (exporter's Connection has it): asyncio stream semantics."""

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    async def read(self, n: int) -> bytes: ...


async def _fill(conn: ByteStream, reader: ResponseReader) -> None:
    data = await conn.read(READ_SIZE)
    if data:
        reader.feed(data)
    else:
        reader.eof()


async def wait_first_byte(conn: ByteStream, reader: ResponseReader) -> None:
    """Return once at least one byte of the response has arrived (and was fed to ``reader``).

    Everything read is in the reader, so read_head continues where this
    stopped. IncompleteHead if the peer closes without sending anything.
    """
    if reader.bytes_received:
        return
    await _fill(conn, reader)
    if not reader.bytes_received:
        raise IncompleteHead("peer closed the connection without sending a response")


async def read_head(conn: ByteStream, reader: ResponseReader) -> Head:
    """The final response's head; interim 1xx responses (100 Continue, 103 Early Hints) are skipped, as in Go."""
    while True:
        event = reader.next_event()
        if event is None:
            await _fill(conn, reader)
        elif type(event) is Head:
            return event
        elif type(event) is not Informational:
            raise RuntimeError(f"read_head: {type(event).__name__} before the head")  # pragma: no cover


async def read_body(conn: ByteStream, reader: ResponseReader, *, limit: int | None, keep: bool,
                    keep_limit: int, decoder: codings.Decoder | None = None) -> tuple[int, bytes]:
    """Read the body to its end: (body bytes read, the body if ``keep`` else b"").

    BodyTooLarge as soon as more than ``limit`` bytes arrived (None: no limit),
    and when ``keep`` and the kept body would pass ``keep_limit``: memory stays
    bounded whatever the peer sends. With a ``decoder`` (the module's
    ``compression``) the limits and the count apply to the decoded bytes.
    """
    body = codings.BodyReader(limit=limit, keep=keep, keep_limit=keep_limit, too_large=BodyTooLarge, decoder=decoder)
    while True:
        event = reader.next_event()
        if event is None:
            await _fill(conn, reader)
            continue
        if type(event) is Body:
            await body.add(event.data)
        elif type(event) is End:
            return body.end()
        else:
            raise RuntimeError(f"read_body: {type(event).__name__} in the body")  # pragma: no cover
