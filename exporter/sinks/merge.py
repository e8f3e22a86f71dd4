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
    """One exposition from several: each family once (its header from the first text that has it, in first-seen
    order), followed by its samples from every text; a family's samples identical to ones already taken (the same
    ``connhealth_build_info`` in every worker) are taken once.

    Works on whole families, not lines (a 10k-target exposition is half a million lines): every producer here
    starts a family with its ``# HELP`` line.
    """
    families: dict[bytes, tuple[bytes, list[bytes]]] = {}
    for text in texts:
        if text.endswith(EOF):
            text = text[:-len(EOF)]
        for i, block in enumerate(text.split(b"\n# HELP ")):  # bytes.split: a C scan, 100x the regex's speed
            if i:
                block = b"# HELP " + block
            if not block:
                continue
            if not block.endswith(b"\n"):
                block += b"\n"  # the split took the newline that ended the previous family
            name = block.split(b" ", 3)[2] if block.startswith(b"# HELP ") else b""
            head_end = 0
            while block.startswith(b"#", head_end):  # the family's # HELP, # TYPE and # UNIT lines
                newline = block.find(b"\n", head_end)
                head_end = len(block) if newline < 0 else newline + 1
            head, body = block[:head_end], block[head_end:]
            if name not in families:
                families[name] = (head, [])
            bodies = families[name][1]
            if body and body not in bodies:
                bodies.append(body)
    out = [piece for head, bodies in families.values() for piece in (head, *bodies)]
    if openmetrics:
        out.append(EOF)
    return b"".join(out)
