"""Recent probes, for the status page and /logs (blackbox's 'recent probes').

Kept twice: the last ``limit`` probes overall, and the last ``per_target`` of
each (source, target, module), so one failing target probed every second
cannot flush every other target's logs. The per-target rings are bounded too:
at most ``max_targets`` of them, the least recently updated dropped first
(/probe targets come from requests, not from the config).
"""
from __future__ import annotations

import itertools
from collections import OrderedDict, deque
from dataclasses import dataclass

from ..result import ProbeResult, fast_init

Key = tuple[str, str, str]  # (source, target, module)


@fast_init
@dataclass(frozen=True, slots=True)
class HistoryEntry:
    id: int
    source: str  # "probe" (the /probe endpoint) or "scheduled"
    result: ProbeResult

    @property
    def key(self) -> Key:
        return (self.source, self.result.target, self.result.module)


class History:
    def __init__(self, limit: int = 100, per_target: int = 10, max_targets: int = 1000) -> None:
        self._entries: deque[HistoryEntry] = deque(maxlen=max(1, limit))
        self.per_target = max(1, per_target)
        self.max_targets = max(1, max_targets)
        self._by_target: OrderedDict[Key, deque[HistoryEntry]] = OrderedDict()
        self._ids = itertools.count(1)

    def add(self, source: str, result: ProbeResult) -> HistoryEntry:
        entry = HistoryEntry(next(self._ids), source, result)
        self._entries.append(entry)
        key = (source, result.target, result.module)
        by_target = self._by_target
        ring = by_target.get(key)
        if ring is None:
            ring = by_target[key] = deque(maxlen=self.per_target)
            while len(by_target) > self.max_targets:
                by_target.popitem(last=False)
        else:
            by_target.move_to_end(key)
        ring.append(entry)
        return entry

    def get(self, entry_id: int) -> HistoryEntry | None:
        for entry in self._entries:
            if entry.id == entry_id:
                return entry
        for ring in self._by_target.values():
            if ring and ring[0].id <= entry_id <= ring[-1].id:
                for entry in ring:
                    if entry.id == entry_id:
                        return entry
        return None

    def recent(self, limit: int | None = None) -> list[HistoryEntry]:
        """Newest first: the overall ring plus every target's own, without duplicates."""
        seen = {e.id: e for e in self._entries}
        for ring in self._by_target.values():
            seen.update((e.id, e) for e in ring)
        return [seen[i] for i in sorted(seen, reverse=True)[:limit]]

    def of_target(self, source: str, target: str, module: str) -> list[HistoryEntry]:
        """That target's last probes, oldest first."""
        return list(self._by_target.get((source, target, module), ()))
