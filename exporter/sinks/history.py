"""Recent probes, for the status page and /logs (blackbox's 'recent probes')."""
from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass

from ..result import ProbeResult


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    id: int
    source: str  # "probe" (the /probe endpoint) or "scheduled"
    result: ProbeResult


class History:
    def __init__(self, limit: int = 100) -> None:
        self._entries: deque[HistoryEntry] = deque(maxlen=max(1, limit))
        self._ids = itertools.count(1)

    def add(self, source: str, result: ProbeResult) -> HistoryEntry:
        entry = HistoryEntry(next(self._ids), source, result)
        self._entries.append(entry)
        return entry

    def get(self, entry_id: int) -> HistoryEntry | None:
        for entry in self._entries:
            if entry.id == entry_id:
                return entry
        return None

    def recent(self) -> list[HistoryEntry]:
        return list(reversed(self._entries))
