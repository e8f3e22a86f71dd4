"""Targets from Prometheus file_sd files (JSON or YAML), re-read when they change.

Reading and parsing are blocking and CPU-bound for big files (bounded by
schema.MAX_FILE_BYTES and load_yaml's limits): the server calls ``scan`` in a thread.
"""
from __future__ import annotations

import copy
import glob
import logging
import os
from typing import Any

from .config import Config, ConfigError, TargetFiles, TargetSpec, default_module_for, parse_labels
from .schema import brief, brief_key, load_data_file

log = logging.getLogger("connhealth.targets")


def _file_targets(path: str, tf: TargetFiles, config: Config) -> list[TargetSpec]:
    data = load_data_file(path, "target file", json_format=path.endswith(".json"))
    if data is None:
        return []
    if not isinstance(data, list):
        raise ConfigError(f"{path}: expected a list of {{targets, labels}} groups")
    out = []
    for i, group in enumerate(data):
        if not isinstance(group, dict) or not isinstance(group.get("targets") or [], list):
            raise ConfigError(f"{path}[{i}]: expected {{targets: [...], labels: {{...}}}}")
        unknown = set(group) - {"targets", "labels"}
        if unknown:
            raise ConfigError(f"{path}[{i}].{brief_key(sorted(unknown, key=str)[0])}: unknown field")
        if not isinstance(group.get("labels") or {}, dict):
            raise ConfigError(f"{path}[{i}].labels: expected a mapping of label names to values, got {brief(group['labels'])}")
        raw_labels = dict(group.get("labels") or {})
        # file_sd has no module field: a "module" label picks one, as __param_module would.
        module = raw_labels.pop("module", None) or tf.module
        if module is not None and not isinstance(module, str):
            raise ConfigError(f"{path}[{i}].labels.module: expected a module name, got {brief(module)}")
        labels = dict(tf.labels)
        labels.update(parse_labels(raw_labels, f"{path}[{i}].labels", keep_empty=True))
        for j, target in enumerate(group.get("targets") or []):
            if not isinstance(target, str) or not target:
                raise ConfigError(f"{path}[{i}].targets[{j}]: expected a non-empty string")
            name = module or default_module_for(target)
            if name not in config.modules:
                raise ConfigError(f"{path}[{i}]: unknown module {brief(name)}")
            out.append(TargetSpec(target, name, tf.interval, tf.timeout, tuple(sorted((k, v) for k, v in labels.items() if v)),
                                  tf.histograms))
    return out


class TargetFileWatcher:
    """Polls the globs' files by (mtime, size); a broken file keeps its last good targets."""

    def __init__(self) -> None:
        # Keyed by (the target_files entry, path): an entry with the same
        # settings after a reload keeps a broken file's last good targets.
        self._stamps: dict[tuple[TargetFiles, str], tuple[int, int]] = {}
        self._cache: dict[tuple[TargetFiles, str], list[TargetSpec]] = {}
        self.errors = 0

    def scan(self, config: Config) -> tuple[list[TargetSpec], bool]:
        """All file targets, and whether anything changed since the last scan."""
        changed = False
        seen: set[tuple[TargetFiles, str]] = set()
        targets: list[TargetSpec] = []
        for tf in config.target_files:
            for pattern in tf.files:
                for path in sorted(glob.glob(pattern)):
                    key = (tf, path)
                    seen.add(key)
                    try:
                        st = os.stat(path)
                    except OSError:
                        continue
                    stamp = (st.st_mtime_ns, st.st_size)
                    if self._stamps.get(key) != stamp:
                        self._stamps[key] = stamp
                        changed = True
                        try:
                            self._cache[key] = _file_targets(path, tf, config)
                            log.info("loaded %d targets from %s", len(self._cache[key]), path)
                        except ConfigError as exc:
                            self.errors += 1
                            log.error("target file %s: %s (keeping its previous targets)", path, exc)
                        except Exception as exc:  # noqa: BLE001 - one bad file must not stop the watcher
                            self.errors += 1
                            log.exception("target file %s: %s: %s (keeping its previous targets)", path,
                                          type(exc).__name__, str(exc)[:500])
                    targets.extend(self._cache.get(key, []))
        for key in [k for k in self._stamps.keys() | self._cache.keys() if k not in seen]:
            self._stamps.pop(key, None)
            self._cache.pop(key, None)
            changed = True
        if config.target_files and log.isEnabledFor(logging.DEBUG):
            log.debug("target files scanned", extra={"kv": {"files": len(seen), "targets": len(targets), "changed": changed}})
        return targets, changed

    def for_reload(self) -> TargetFileWatcher:
        """A copy that re-reads every file under a new config, leaving this one untouched until the
        reload commits. The last good targets stay cached, so a file that is broken at reload time
        keeps them (if its target_files entry did not change)."""
        other = copy.copy(self)
        other._stamps = {}
        other._cache = dict(self._cache)
        return other
