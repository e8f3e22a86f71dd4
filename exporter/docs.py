"""The README's tables, generated from the prober registry: `python -m exporter.docs README.md` rewrites them.

A test fails when the README's tables differ from what this module generates,
so a prober's phases and reasons are documented where they are declared.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

from .failures import REASONS
from .probers import PROBERS


def phase_table() -> str:
    lines = ["| prober | phase | waterfall label | from → to |", "|---|---|---|---|"]
    for prober in PROBERS.values():
        for spec in prober.phases:
            lines.append(f"| `{prober.name}` | `{spec.name}` | {spec.label} | {spec.description} |")
    return "\n".join(lines)


def reason_table() -> str:
    owner = {name: prober.name for prober in PROBERS.values() for name in prober.reasons}
    lines = ["| phase | reason | prober | what it means | typical cause |", "|---|---|---|---|---|"]
    for name, reason in REASONS.items():
        phase = "any" if reason.phase == "any" else f"`{reason.phase}`"
        lines.append(f"| {phase} | `{name}` | {owner.get(name, 'all')} | {reason.meaning} | {reason.typical_cause} |")
    return "\n".join(lines)


TABLES = {"phases": phase_table, "reasons": reason_table}


def render(text: str) -> str:
    """``text`` with every ``<!-- generated:NAME -->…<!-- end:NAME -->`` block regenerated."""
    for name, make in TABLES.items():
        pattern = re.compile(rf"(<!-- generated:{name} -->\n)(?:.*?\n)?(<!-- end:{name} -->)", re.S)
        if not pattern.search(text):
            raise ValueError(f"no generated:{name} block")
        table = make()
        text = pattern.sub(lambda m: m.group(1) + table + "\n" + m.group(2), text)
    return text


def main(argv: list[str]) -> int:
    for path in argv or ["README.md"]:
        p = Path(path)
        p.write_text(render(p.read_text()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
