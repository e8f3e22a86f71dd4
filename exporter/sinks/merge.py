"""Exposition text, rewritten: labels added to every sample, and several processes' expositions merged into one.

``serve --workers N``: each worker renders its own /metrics (its shard of the
targets, plus its self-metrics with a ``worker`` label); the parent merges
them family by family, so every family is one group with one HELP and TYPE,
as the text format and OpenMetrics require. The workers' series are disjoint;
an identical line (``connhealth_build_info``, the same in every worker) is
kept once.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

from ..metrics import label_text

_NAME = re.compile(rb"[a-zA-Z_:][a-zA-Z0-9_:]*")
EOF = b"# EOF\n"


def add_labels(text: bytes, pairs: tuple[tuple[str, str], ...], skip: Iterable[str] = ()) -> bytes:
    """``text`` with ``pairs`` added to every sample's labels (first), except the samples of the families in ``skip``."""
    if not pairs:
        return text
    extra = label_text(pairs).encode()
    skipped = {name.encode() for name in skip}
    out = []
    family = b""
    for line in text.splitlines(keepends=True):
        if line.startswith(b"#"):
            parts = line.split(b" ", 3)
            if len(parts) >= 3 and parts[1] in (b"HELP", b"TYPE"):
                family = parts[2]
            out.append(line)
            continue
        match = _NAME.match(line)
        if match is None or family in skipped:
            out.append(line)
            continue
        end = match.end()
        if line[end:end + 1] == b"{":
            inner = b"," if line[end + 1:end + 2] != b"}" else b""
            out.append(line[:end + 1] + extra + inner + line[end + 1:])
        else:
            out.append(line[:end] + b"{" + extra + b"}" + line[end:])
    return b"".join(out)


def merge(texts: Iterable[bytes], openmetrics: bool = False) -> bytes:
    """One exposition from several: each family once, in first-seen order, with every distinct sample of it."""
    headers: dict[bytes, list[bytes]] = {}
    samples: dict[bytes, dict[bytes, None]] = {}
    for text in texts:
        family = b""
        for line in text.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                line += b"\n"
            if line == EOF:
                continue
            if line.startswith(b"#"):
                parts = line.split(b" ", 3)
                if len(parts) >= 3 and parts[1] in (b"HELP", b"TYPE", b"UNIT"):
                    family = parts[2]
                    lines = headers.setdefault(family, [])
                    samples.setdefault(family, {})
                    if not any(h.split(b" ", 3)[1] == parts[1] for h in lines):
                        lines.append(line)
                continue
            samples.setdefault(family, {})[line] = None
            headers.setdefault(family, [])
    out = []
    for family, head in headers.items():
        out.extend(head)
        out.extend(samples[family])
    if openmetrics:
        out.append(EOF)
    return b"".join(out)
