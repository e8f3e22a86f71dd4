"""Parsing primitives every config section shares: the ground floor under config.py and probers/.

Defaults are applied while parsing, before validation; unknown keys are errors
that name their path (``modules.web.http.foo: unknown field``). Every number is
checked to be finite and in range here, so nothing downstream sees NaN or Inf.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import re
import reprlib
import stat
import subprocess
import sys
from typing import TYPE_CHECKING, Any, AnyStr

if TYPE_CHECKING:
    import yaml

# No error message grows with its input: a message quotes at most this much.
MAX_MESSAGE = 1000


class ConfigError(ValueError):
    """A config that cannot be used; the message names the offending path.

    The message is cut to MAX_MESSAGE characters: an error about a huge (or
    alias-expanded) value must not become a huge log line or response.
    """

    def __init__(self, message: str) -> None:
        if len(message) > MAX_MESSAGE:
            message = message[:MAX_MESSAGE] + f"... ({len(message) - MAX_MESSAGE} more characters)"
        super().__init__(message)


_BRIEF = reprlib.Repr()
_BRIEF.maxstring = _BRIEF.maxother = 80
_BRIEF.maxlist = _BRIEF.maxtuple = _BRIEF.maxdict = _BRIEF.maxset = 6
_BRIEF.maxlevel = 3


def brief(value: Any) -> str:
    """repr() of a config value, bounded: shows the start of long strings and lists, never all of them."""
    return _BRIEF.repr(value)


def brief_key(name: Any) -> str:
    """A mapping key as a path segment (modules.<name>), bounded like brief()."""
    text = str(name)
    return text if len(text) <= 80 else text[:77] + "..."


# --- YAML: bounded in size, nesting and alias expansion ------------------------------------
# A config or target file larger than this is refused before it is parsed.
MAX_FILE_BYTES = 16 << 20
# Nodes a document may have once every alias is expanded (a 10k-target config has ~100k).
# A "billion laughs" document of a few hundred bytes expands to billions: refused before it is built.
MAX_EXPANDED_NODES = 2_000_000
MAX_DEPTH = 100



def load_yaml(text: str | bytes, source: str) -> Any:
    """yaml.safe_load with bounds: nesting depth, alias expansion; every failure is a short ConfigError.

    Blocking and CPU-bound for big inputs: callers in the server run it in a thread.
    """
    if len(text) > MAX_FILE_BYTES:
        raise ConfigError(f"{source}: larger than {MAX_FILE_BYTES >> 20} MiB")
    import yaml  # here, not at import: the CLI's start-up must not pay for it (tests/test_cli_curl.py)

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)  # libyaml: ~10x faster than the pure-Python parser
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_nodes(node, source)
        return loader.construct_document(node)
    except ConfigError:
        raise
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {exc}") from None
    except UnicodeError as exc:
        raise ConfigError(f"{source}: not valid UTF-8 text ({exc.__class__.__name__})") from None
    except (ValueError, RecursionError, OverflowError) as exc:  # e.g. an integer of more than 4300 digits
        raise ConfigError(f"{source}: invalid YAML value: {exc}") from None
    finally:
        loader.dispose()


def _check_nodes(root: yaml.Node, source: str) -> None:
    """Refuse a node graph whose aliases expand past MAX_EXPANDED_NODES, that nests past MAX_DEPTH, or
    that refers to itself; computed on the shared graph (each node once), so a bomb costs nothing to find."""
    size: dict[int, int] = {}
    on_path: set[int] = set()
    # (node, depth, children pushed?)
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, expanded = stack.pop()
        key = id(node)
        children = _children(node)
        if expanded:
            on_path.discard(key)
            total = 1 + sum(size[id(c)] for c in children)
            if total > MAX_EXPANDED_NODES:
                raise ConfigError(f"{source}: YAML aliases expand to more than {MAX_EXPANDED_NODES} nodes "
                                  f"(an alias bomb?); refused")
            size[key] = total
            continue
        if key in size:
            continue
        if key in on_path:
            raise ConfigError(f"{source}: a YAML alias refers to a node that contains it (recursive alias); refused")
        if depth > MAX_DEPTH:
            raise ConfigError(f"{source}: nested deeper than {MAX_DEPTH} levels; refused")
        on_path.add(key)
        stack.append((node, depth, True))
        stack.extend((c, depth + 1, False) for c in children if id(c) not in size)


def _children(node: yaml.Node) -> list[yaml.Node]:
    import yaml

    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


# A file larger than this is parsed in a short-lived child process, at a lower CPU priority:
# PyYAML's node graph for a 6 MB file takes ~200 MB at its peak and CPython keeps much of that in
# its arenas afterwards (the hostile-input suite saw RSS stay 40 MB up); json.loads holds the GIL
# for its whole run. A child's memory goes back to the OS when it exits, and it never holds our GIL.
BIG_FILE = 1 << 20
CHILD_NICE = 10
# A child that has not answered by then is killed: both parsers are linear, so only a stuck machine gets here.
CHILD_TIMEOUT = 120.0


def load_data_file(path: str, what: str = "file", *, json_format: bool = False) -> Any:
    """A YAML (or JSON) file's data, with load_yaml's bounds; a big one is parsed in a child process.

    Blocking: the server calls it in a thread. Every failure is a short ConfigError naming ``path``.
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        # A FIFO would block the reading thread for good, /dev/zero would never end.
        raise ConfigError(f"{path}: not a regular file")
    if st.st_size <= BIG_FILE:
        return _parse(read_bounded(path, what), path, json_format)
    # A fresh interpreter (not a fork of a process with threads), gone afterwards: nothing stays open.
    try:
        child = subprocess.run([sys.executable, "-c", _CHILD, path, what, "json" if json_format else "yaml"],
                               capture_output=True, timeout=CHILD_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise ConfigError(f"{path}: parsing this {what} took longer than {CHILD_TIMEOUT:g}s; refused") from None
    try:
        ok, value = pickle.loads(child.stdout)
    except Exception:  # noqa: BLE001 - killed (OOM), or could not start: whatever it left is not an answer
        detail = child.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [f"exit code {child.returncode}"]
        raise ConfigError(f"{path}: the process parsing this {what} failed ({detail[0][:200]})") from None
    if not ok:
        raise ConfigError(value)
    return value


_CHILD = "import sys; from exporter.schema import _parse_in_child; _parse_in_child(*sys.argv[1:])"


def _parse(data: bytes, path: str, json_format: bool) -> Any:
    if not json_format:
        return load_yaml(data, path)
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ConfigError(f"{path}: invalid JSON: {exc}") from None


def _parse_in_child(path: str, what: str, kind: str) -> None:
    """The child's side of load_data_file: (ok, data or message), pickled, on stdout."""
    os.nice(CHILD_NICE)  # probing and serving come first
    try:
        result: tuple[bool, Any] = (True, _parse(read_bounded(path, what), path, kind == "json"))
    except ConfigError as exc:
        result = (False, str(exc))
    sys.stdout.buffer.write(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))


def read_bounded(path: str, what: str = "file") -> bytes:
    """A file's bytes, refusing one larger than MAX_FILE_BYTES without reading it all; OSError as ConfigError."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"{path}: {what} larger than {MAX_FILE_BYTES >> 20} MiB; refused")
    return data


SECRET_MASK = "<secret>"


class Secret:
    """A config value that is never shown: str(), repr() and format() give ``<secret>``.

    Only the code that puts it on the wire calls ``reveal()``. Every output
    surface (debug output, /logs, /config, the status page, spans, logs,
    metric labels) renders the config through ``plain()``, so a secret there
    is masked by its type, not recognised by its name.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __str__(self) -> str:
        return SECRET_MASK

    __repr__ = __str__

    def __format__(self, spec: str) -> str:
        return SECRET_MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash((Secret, self._value))


def reveal(value: str | Secret) -> str:
    return value.reveal() if isinstance(value, Secret) else value


def plain(value: Any) -> Any:
    """A typed config value as YAML-able data for display: secrets masked, regexps as their pattern.

    Dataclasses become mappings, and so do tuples of (name, value) pairs (headers,
    labels, baggage, phase limits).
    """
    if isinstance(value, Secret):
        return SECRET_MASK
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value) if not f.name.startswith("_")}
    if is_regexp(value):
        pattern = value.pattern
        return pattern.decode("utf-8", "replace") if isinstance(pattern, bytes) else pattern
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list, frozenset, set)):
        items = sorted(value, key=str) if isinstance(value, (frozenset, set)) else list(value)
        if items and all(isinstance(i, tuple) and len(i) == 2 and isinstance(i[0], str) for i in items):
            return {k: plain(v) for k, v in items}
        return [plain(i) for i in items]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


class StartupError(Exception):
    """The process cannot start (a port in use, ...): the CLI prints one line and exits 1."""


_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, "y": 31536000.0}


# No duration in a config is longer than this: anything beyond is a typo (or 1e308), and an
# event loop's timer cannot hold it (uvloop counts milliseconds in 64 bits).
MAX_DURATION = 365 * 86400.0


def parse_duration(value: Any, path: str, maximum: float = MAX_DURATION) -> float:
    """Prometheus-style duration ("5s", "1m30s", "250ms") or a number of seconds; finite, 0..maximum."""
    if isinstance(value, bool):
        raise ConfigError(f"{path}: expected a duration like 5s, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        pos, seconds = 0, 0.0
        for m in _DURATION_RE.finditer(text):
            if m.start() != pos:
                break
            seconds += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
            pos = m.end()
        if pos != len(text) or not text:
            raise ConfigError(f"{path}: invalid duration {brief(value)} (use e.g. 500ms, 5s, 1m30s)")
    else:
        raise ConfigError(f"{path}: expected a duration like 5s, got {type(value).__name__}")
    if not math.isfinite(seconds):
        raise ConfigError(f"{path}: duration must be finite, got {brief(value)}")
    if seconds < 0:
        raise ConfigError(f"{path}: duration must not be negative")
    if seconds > maximum:
        raise ConfigError(f"{path}: duration {brief(value)} is longer than the maximum {format_seconds(maximum)}")
    return seconds


def format_seconds(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


_SIZE_UNITS = {"": 1, "b": 1, "kb": 1 << 10, "kib": 1 << 10, "mb": 1 << 20, "mib": 1 << 20, "gb": 1 << 30, "gib": 1 << 30,
               "tb": 1 << 40, "tib": 1 << 40}
_SIZE_RE = re.compile(r"(\d{1,15})\s*([a-zA-Z]*)")
MAX_SIZE = 1 << 40


def parse_size(value: Any, path: str) -> int:
    """A byte count: an integer or a base-2 size like blackbox's units.Base2Bytes ("10MB" = 10 MiB, "512KiB")."""
    if isinstance(value, bool):
        raise ConfigError(f"{path}: expected a size like 10MB, got {value!r}")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (m := _SIZE_RE.fullmatch(value.strip())) and m.group(2).lower() in _SIZE_UNITS:
        size = int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
    else:
        raise ConfigError(f"{path}: invalid size {brief(value)} (use e.g. 1048576, 512KB, 10MB)")
    if size < 0:
        raise ConfigError(f"{path}: size must not be negative")
    if size > MAX_SIZE:
        raise ConfigError(f"{path}: size {brief(value)} is larger than the maximum 1TiB")
    return size


class Fields:
    """Reads a mapping field by field; whatever is left at the end is an error."""

    def __init__(self, raw: Any, path: str, unsupported: frozenset[str] = frozenset()) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(raw).__name__}")
        self.raw = dict(raw)
        self.path = path
        self.unsupported = unsupported

    def p(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        if key not in self.raw:
            return default
        value = self.raw.pop(key)
        if value is None:
            return default
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool) and bool not in _as_tuple(kind)):
            names = "/".join(k.__name__ for k in _as_tuple(kind))
            raise ConfigError(f"{self.p(key)}: expected {names}, got {type(value).__name__} {brief(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{self.p(key)}: must be a finite number, got {value!r}")
        return value

    def secret(self, key: str, secret: bool) -> str | Secret | None:
        """A string field, typed Secret when ``secret`` (the section marked it so)."""
        value = self.get(key, str, None)
        return Secret(value) if secret and value is not None else value

    def integer(self, key: str, default: int, minimum: int, maximum: int) -> int:
        value: int = self.get(key, int, default)
        if not minimum <= value <= maximum:
            raise ConfigError(f"{self.p(key)}: must be between {minimum} and {maximum}, got {brief(value)}")
        return value

    def duration(self, key: str, default: float | None, *, minimum: float = 0.0,
                 maximum: float = MAX_DURATION) -> float | None:
        if key not in self.raw or self.raw[key] is None:
            self.raw.pop(key, None)
            return default
        seconds = parse_duration(self.raw.pop(key), self.p(key), maximum)
        if seconds < minimum:
            raise ConfigError(f"{self.p(key)}: must be at least {format_seconds(minimum)}")
        return seconds

    def size(self, key: str, default: int) -> int:
        if key not in self.raw or self.raw[key] is None:
            self.raw.pop(key, None)
            return default
        return parse_size(self.raw.pop(key), self.p(key))

    def sub(self, key: str, unsupported: frozenset[str] = frozenset()) -> Fields:
        return Fields(self.raw.pop(key, None), self.p(key), unsupported)

    def list_of(self, key: str, kind: type | tuple[type, ...]) -> list[Any]:
        items = self.get(key, list, [])
        for i, item in enumerate(items):
            if not isinstance(item, kind) or isinstance(item, bool) and bool not in _as_tuple(kind):
                names = "/".join(k.__name__ for k in _as_tuple(kind))
                raise ConfigError(f"{self.p(key)}[{i}]: expected {names}, got {brief(item)}")
            if isinstance(item, float) and not math.isfinite(item):
                raise ConfigError(f"{self.p(key)}[{i}]: must be a finite number, got {item!r}")
        return items

    def regexes(self, key: str, *, capture: bool = True) -> tuple[Regexp, ...]:
        """A list of user regexps, compiled with Go's semantics (compile_regex)."""
        return tuple(compile_regex(pattern, f"{self.p(key)}[{i}]", capture=capture)
                     for i, pattern in enumerate(self.list_of(key, str)))

    def done(self) -> None:
        for key in sorted(self.raw, key=str):
            if key in self.unsupported:
                raise ConfigError(f"{self.p(str(key))}: unsupported field (valid in blackbox_exporter, not implemented by connhealth)")
            raise ConfigError(f"{self.p(brief_key(key))}: unknown field")


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


# --- user regexps: RE2, as blackbox_exporter's Go regexp ----------------------------------
# A compiled google-re2 pattern (re2._Regexp; the package has no type hints). Its search()
# takes str or bytes like re's, and runs in time linear in the input: a pattern such as
# ``^(a+)+$`` cannot backtrack, so no body or line a target sends can stall the loop.
Regexp = Any
# RE2's memory budget per pattern (its DFA cache and the compiled program; RE2's own default).
# A pattern whose program does not fit is refused at load ("pattern too large"); a search whose
# DFA cache fills falls back to the NFA, slower but still linear.
REGEX_MAX_MEM = 8 << 20
_RE2_OPTIONS: dict[bool, Any] = {}


def compile_regex(pattern: str | bytes, path: str, *, capture: bool = True) -> Regexp:
    """A user-supplied regexp with Go's (RE2) syntax and meaning, as blackbox_exporter compiles it.

    ``^+OK``, ``\\pL`` and ``[[:alpha:]]`` mean what they mean in Go; ``\\Z`` and
    look-arounds are refused as Go refuses them. A str pattern matches str, a bytes
    pattern bytes (UTF-8, as Go). ``capture=False`` for a yes/no check: with no groups
    to extract RE2 answers from its DFA alone, ~15x faster on a large body.
    """
    import re2  # here, not at import: `connhealth --help` must not pay for it

    options = _RE2_OPTIONS.get(capture)
    if options is None:
        options = re2.Options()
        options.log_errors = False  # an invalid pattern is our ConfigError, not a line on stderr
        options.max_mem = REGEX_MAX_MEM
        options.never_capture = not capture
        _RE2_OPTIONS[capture] = options
    text = pattern.decode("utf-8", "replace") if isinstance(pattern, bytes) else pattern
    if "\\C" in text.replace("\\\\", ""):
        # RE2 (C++) takes \C as "any byte"; Go refuses it.
        raise ConfigError(f"{path}: invalid regexp {brief(text)}: invalid escape sequence: \\C")
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        detail = exc.args[0] if exc.args else exc
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        raise ConfigError(f"{path}: invalid regexp {brief(text)}: {detail}") from None


def go_text(data: bytes) -> bytes:
    """``data`` as Go's regexp reads bytes: an invalid UTF-8 byte is U+FFFD (so ``.`` and ``\\S`` match
    it). RE2 matches no invalid byte at all; valid UTF-8 (ASCII first: a fast check) comes back as is."""
    return data if data.isascii() else data.decode("utf-8", "replace").encode()


_TEMPLATE_NAME = re.compile(r"\w+")


def expand(template: AnyStr, match: Any) -> AnyStr:
    """Go's Regexp.Expand, as blackbox fills ``send`` and label values from an ``expect`` match.

    ``$1`` / ``${1}`` a group by number, ``$name`` / ``${name}`` by name (``$1x`` is the
    group named ``1x``: the name is as long as possible), ``$$`` a dollar; a group that does
    not exist or did not take part expands to nothing, a malformed ``$`` stays as it is.
    """
    binary = isinstance(template, bytes)
    # latin-1 maps bytes 1:1 to code points: one implementation for both kinds.
    text: str = template.decode("latin-1") if isinstance(template, bytes) else template
    regexp = match.re
    names = {(k.decode("latin-1") if isinstance(k, bytes) else k): v for k, v in regexp.groupindex.items()}
    out: list[str] = []
    pos = 0
    while (dollar := text.find("$", pos)) >= 0:
        out.append(text[pos:dollar])
        pos = dollar + 1
        if text.startswith("$", pos):
            out.append("$")
            pos += 1
            continue
        brace = text.startswith("{", pos)
        name = _TEMPLATE_NAME.match(text, pos + brace)
        if name is None or brace and not text.startswith("}", name.end()):
            out.append("$")  # malformed: Go copies the dollar and goes on
            continue
        pos = name.end() + brace
        key = name.group()
        if key.isascii() and key.isdigit() and (key == "0" or not key.startswith("0")) and len(key) <= 8:
            index: int | None = int(key)
        else:
            index = names.get(key)
        value = match.group(index) if index is not None and index <= regexp.groups else None
        if value is not None:
            out.append(value.decode("latin-1") if isinstance(value, bytes) else value)
    out.append(text[pos:])
    joined = "".join(out)
    return joined.encode("latin-1") if binary else joined  # type: ignore[return-value]


def is_regexp(value: Any) -> bool:
    return isinstance(value, re.Pattern) or type(value).__module__ == "re2"


def split_host_port(target: str, default_port: int | None = None) -> tuple[str, int]:
    """'host:port', '[v6]:port', 'v4:port' -> (host, port)."""
    if target.startswith("["):
        host, sep, rest = target[1:].partition("]")
        if not sep or rest and not rest.startswith(":"):
            raise ValueError(f"{brief(target)} has an unclosed or misplaced ']' (expected [v6]:port)")
        port_text = rest[1:]
    else:
        host, sep, port_text = target.rpartition(":")
        if not sep or ":" in host:  # no port, or a bare IPv6 literal
            host, port_text = target, ""
    if not port_text:
        if default_port is None:
            raise ValueError(f"{brief(target)} has no port (expected host:port)")
        return host, default_port
    # Digits only: int() would also take " 80", "+80" and "8_0".
    if not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5):
        raise ValueError(f"{brief(target)} has an invalid port {brief(port_text)}")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"{brief(target)}: port {port} out of range")
    return host, port


def ipv6_hint(text: str) -> str:
    """For an error about ``text``: how to write the IPv6 address in it ("" when there is none)."""
    host = text.split("://", 1)[-1].split("/", 1)[0]
    if host.count(":") >= 2 and not host.startswith("["):
        head, _, port = host.rpartition(":")
        if port.isdigit() and _looks_like_ipv6(head):
            return f"; put an IPv6 address in brackets: {text.replace(host, f'[{head}]:{port}', 1)}"
        return "; put an IPv6 address in brackets, e.g. [::1]:9115"
    return ""


def _looks_like_ipv6(text: str) -> bool:
    # "::1" of "::1:9115"; not ":" of a bare "::1", nor "2001:db8:" of a bare "2001:db8::1".
    return text.count(":") >= 2 and not text.endswith(":") and set(text.lower()) <= set("0123456789abcdef:.")


def join_host_port(host: str, port: int) -> str:
    """host:port for messages, an IPv6 address in brackets ([::1]:9115), as split_host_port reads it back."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_ip_protocol(f: Fields) -> tuple[str, bool]:
    """blackbox's preferred_ip_protocol / ip_protocol_fallback pair."""
    proto = f.get("preferred_ip_protocol", str, "ip6")
    if proto not in ("ip4", "ip6"):
        raise ConfigError(f"{f.path}.preferred_ip_protocol: must be ip4 or ip6, got {brief(proto)}")
    return proto, f.get("ip_protocol_fallback", bool, True)
