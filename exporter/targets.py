"""Targets from Prometheus file_sd files (JSON or YAML), re-read when they change."""
from __future__ import annotations

import glob
import json
import logging
import os
from typing import Any

import yaml

from .config import Config, ConfigError, TargetFiles, TargetSpec, default_module_for, parse_labels

log = logging.getLogger("connhealth.targets")


def _file_targets(path: str, tf: TargetFiles, config: Config) -> list[TargetSpec]:
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    try:
        data: Any = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot parse: {exc}") from exc
    if data is None:
        return []
    if not isinstance(data, list):
        raise ConfigError(f"{path}: expected a list of {{targets, labels}} groups")
    out = []
    for i, group in enumerate(data):
        if not isinstance(group, dict) or not isinstance(group.get("targets", []), list):
            raise ConfigError(f"{path}[{i}]: expected {{targets: [...], labels: {{...}}}}")
        unknown = set(group) - {"targets", "labels"}
        if unknown:
            raise ConfigError(f"{path}[{i}].{sorted(unknown)[0]}: unknown field")
        raw_labels = dict(group.get("labels") or {})
        # file_sd has no module field: a "module" label picks one, as __param_module would.
        module = raw_labels.pop("module", None) or tf.module
        labels = dict(tf.labels)
        labels.update(parse_labels(raw_labels, f"{path}[{i}].labels"))
        for j, target in enumerate(group.get("targets") or []):
            if not isinstance(target, str) or not target:
                raise ConfigError(f"{path}[{i}].targets[{j}]: expected a non-empty string")
            name = module or default_module_for(target)
            if name not in config.modules:
                raise ConfigError(f"{path}[{i}]: unknown module {name!r}")
            out.append(TargetSpec(target, name, tf.interval, tf.timeout, tuple(sorted(labels.items()))))
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
                        except (OSError, ConfigError) as exc:
                            self.errors += 1
                            log.error("target file %s: %s (keeping its previous targets)", path, exc)
                    targets.extend(self._cache.get(key, []))
        for key in [k for k in self._stamps.keys() | self._cache.keys() if k not in seen]:
            self._stamps.pop(key, None)
            self._cache.pop(key, None)
            changed = True
        if config.target_files and log.isEnabledFor(logging.DEBUG):
            log.debug("target files scanned", extra={"kv": {"files": len(seen), "targets": len(targets), "changed": changed}})
        return targets, changed

    def reset(self) -> None:
        """After a config reload: re-read every file under the new settings.

        The last good targets stay cached, so a file that is broken at reload
        time keeps them (if its target_files entry did not change).
        """
        self._stamps.clear()
