"""User regexps have Go's (RE2) syntax and meaning, as blackbox_exporter compiles them (issue 10).

Side by side with the real blackbox_exporter: tests/test_blackbox_compat_regexp.py. The ReDoS case
against a running exporter, with a watchdog on /-/healthy: tests/test_hostile_inputs.py.
"""
from __future__ import annotations

import re

import pytest

from exporter.schema import ConfigError, compile_regex, expand, go_text, plain


@pytest.mark.parametrize(("pattern", "matches", "refuses"), [
    # ^+ is a repeated ^ (an empty-width assertion may repeat in Go): "OK" at the start, never "+OK".
    ("^+OK", ["OK ready"], ["+OK ready", "x OK"]),
    (r"^\pL+$", ["h\u00e9llo", "\u0436\u0443\u043a"], ["h3llo", ""]),
    (r"^\p{Greek}+$", ["\u03b1\u03b2"], ["ab"]),
    # To Python's re, [[:alpha:]] is the set "[:alph" followed by "]".
    ("^[[:alpha:]]+$", ["hello"], ["hello1", "a]"]),
    ("^[[:^digit:]]+$", ["abc"], ["a1"]),
    (r"(?i)^ok$", ["OK"], ["okay"]),
    # No multi-line unless asked: $ is the end of the text, as in Go.
    ("ok$", ["fine ok"], ["ok\nfine"]),
    ("(?m)ok$", ["ok\nfine"], ["okay"]),
    (r"(?P<word>\w+) (?<other>\w+)", ["two words"], ["one"]),
    (r"\Qa.b\E", ["xa.by"], ["axb"]),
])
def test_go_syntax_means_what_it_means_in_go(pattern: str, matches: list[str], refuses: list[str]) -> None:
    for kind in (str, bytes):
        regexp = compile_regex(pattern if kind is str else pattern.encode(), "p")
        for text in matches:
            assert regexp.search(text if kind is str else text.encode()), (kind, pattern, text)
        for text in refuses:
            assert not regexp.search(text if kind is str else text.encode()), (kind, pattern, text)
    assert plain(compile_regex(pattern.encode(), "p")) == plain(compile_regex(pattern, "p")) == pattern


@pytest.mark.parametrize(("pattern", "message"), [
    (r"error(?!s)", "invalid perl operator: (?!"),  # look-arounds: Python and PCRE have them, Go does not
    (r"(?<=x)y", "invalid perl operator: (?<="),
    (r"\Z", r"invalid escape sequence: \Z"),
    (r"(a)\1", r"invalid escape sequence: \1"),  # no back-references
    (r"\C", r"invalid escape sequence: \C"),  # RE2 (C++) would take it as "any byte"; Go refuses it
    ("a{1001}", "invalid repetition size: {1001}"),
    ("^220(", "missing ): ^220("),
])
def test_what_go_refuses_is_a_config_error_naming_the_path(pattern: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        compile_regex(pattern, "modules.m.http.fail_if_body_matches_regexp[0]")
    assert str(info.value) == f"modules.m.http.fail_if_body_matches_regexp[0]: invalid regexp {pattern!r}: {message}"


def test_an_escaped_backslash_before_c_is_not_the_refused_escape() -> None:
    assert compile_regex(r"\\C", "p").search("a\\Cb")


def test_a_pattern_too_large_for_the_memory_budget_is_refused() -> None:
    with pytest.raises(ConfigError, match="pattern too large"):
        compile_regex("(" + "|".join(f"word{i}" for i in range(20000)) + "){1,1000}", "p")


@pytest.mark.parametrize(("template", "expanded"), [
    ("PONG ${1}", "PONG tok"),
    ("PONG $1", "PONG tok"),
    ("$who-${who}", "irc-irc"),
    ("$1x|${1}x", "|tokx"),  # $1x is the group named "1x": as long as possible, as in Go
    ("$$1", "$1"),
    ("${1", "${1"),  # malformed: the dollar stays
    ("cost $", "cost $"),
    ("$3|$9|${nope}", "||"),  # a group that did not take part, or does not exist: nothing
    ("$01", ""),  # a leading zero makes it a name, not a number
    ("${0}", "PING :tok from irc"),
])
def test_expand_is_gos_regexp_expand(template: str, expanded: str) -> None:
    pattern = r"PING :(\S+) from (?P<who>\w+)( never)?"
    match = compile_regex(pattern, "p").search("PING :tok from irc")
    assert expand(template, match) == expanded
    bmatch = compile_regex(pattern.encode(), "p").search(b"PING :tok from irc")
    assert expand(template.encode(), bmatch) == expanded.encode()


def test_expand_keeps_bytes_that_are_not_utf8() -> None:
    match = compile_regex(rb"id=(\w+)", "p").search(b"id=abc")
    assert expand(b"\x80${1}\xff", match) == b"\x80abc\xff"


def test_invalid_utf8_bytes_match_as_gos_replacement_character() -> None:
    # Go decodes an invalid byte as U+FFFD, which . and \S match; RE2 alone would match nothing there.
    latin1 = "caf\u00e9 ok".encode("latin-1")
    for pattern in (rb"^caf. ok$", rb"^\S+ ok$", rb"^caf[^x] ok$"):
        regexp = compile_regex(pattern, "p")
        assert not regexp.search(latin1) and regexp.search(go_text(latin1)), pattern
    valid = "caf\u00e9".encode()
    assert go_text(valid) is not None and go_text(valid) == valid and go_text(b"ascii") == b"ascii"


def test_a_yes_no_pattern_answers_as_the_capturing_one() -> None:
    # capture=False (the body checks): same answers, no groups.
    for pattern in ("^(a+)+$", "[[:alpha:]]+x", r"(?i)download.*here"):
        fast, full = compile_regex(pattern.encode(), "p", capture=False), compile_regex(pattern.encode(), "p")
        for body in (b"a" * 26 + b"!", b"a" * 27, b"abcx", b"DOWNLOAD it here"):
            assert bool(fast.search(body)) == bool(full.search(body)), (pattern, body)
    assert re.compile("x")  # the stdlib stays available to the code's own fixed patterns
