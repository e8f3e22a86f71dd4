"""Top-level configuration: modules (each prober parses its own section), targets, scheduler, SLOs.

Defaults are applied while parsing, before validation; unknown keys are errors
that name their path (``modules.web.http.foo: unknown field``). A module's
prober section is parsed by that prober (``probers.base.Prober.parse``).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

# Loaded with the config module, not on the first parse: an import can fail later (EMFILE).
import yaml  # noqa: F401

from . import filerefs
from .net.guard import DEFAULT_DENY, DEFAULT_GUARD, ProbeGuard, parse_rules
from .probers import BLACKBOX_ONLY, PROBERS
from .probers.base import ResolverConfig, TLSResumptionConfig, TracingConfig
from .schema import (ConfigError, Fields, brief, brief_key, load_data_file, load_yaml, parse_duration, plain,
                     split_host_port)
from .metrics import DEFAULT_GROUP_LABELS, HISTOGRAM_MODES, NO_HISTOGRAMS, PER_GROUP, PER_TARGET
from .slo import parse_slos

T = TypeVar("T")

__all__ = ["Config", "ConfigError", "Module", "ResolverConfig", "SchedulerConfig", "TargetFiles", "TargetSpec", "TracingConfig",
           "builtin_modules", "default_module_for", "load_config", "load_config_or_builtins", "parse_config", "parse_duration",
           "parse_module", "split_host_port"]


# Sane ranges (issue 12): a probe deadline beyond an hour, or probing more often than every
# 10 ms, is a typo, and 0/NaN/Inf would stall or kill the scheduler. (Fast re-checks of a
# failing target, e.g. min_interval 25ms in tests/test_slo_live.py, stay possible.)
MAX_TIMEOUT = 3600.0
MIN_INTERVAL = 0.01
MAX_INTERVAL = 86400.0
MAX_CONCURRENCY = 100_000
MAX_GROUP_LABELS = 16


@dataclass(frozen=True, slots=True)
class Module:
    name: str
    prober: str
    settings: Any = None  # the prober's own typed section (e.g. probers.http.HTTPProbeConfig)
    timeout: float | None = None  # None: the caller's (scrape or CLI) timeout
    # connhealth extensions
    phase_timeouts: tuple[tuple[str, float], ...] = ()
    resolver: ResolverConfig = field(default_factory=ResolverConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)
    tls_resumption: TLSResumptionConfig = field(default_factory=TLSResumptionConfig)

    def phase_timeout(self, phase: str) -> float | None:
        return dict(self.phase_timeouts).get(phase)


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """One continuously probed target."""

    target: str
    module: str
    interval: float
    timeout: float | None
    labels: tuple[tuple[str, str], ...] = ()
    histograms: str = PER_TARGET  # metrics.HISTOGRAM_MODES: where its histograms are kept

    @property
    def key(self) -> tuple[str, str, tuple[tuple[str, str], ...]]:
        return (self.target, self.module, self.labels)


@dataclass(frozen=True, slots=True)
class TargetFiles:
    files: tuple[str, ...]
    module: str | None  # None: http_2xx for URLs, tcp_connect otherwise
    interval: float
    timeout: float | None
    labels: tuple[tuple[str, str], ...] = ()
    histograms: str = PER_TARGET


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    concurrency: int = 256
    default_interval: float = 30.0
    min_interval: float = 1.0  # adaptive re-probing of failing targets never goes below this
    file_refresh_interval: float = 5.0
    buckets: tuple[float, ...] = ()  # empty: metrics.DEFAULT_BUCKETS
    histograms: str = PER_TARGET  # the target groups' default (their own ``histograms:`` overrides it)
    group_labels: tuple[str, ...] = DEFAULT_GROUP_LABELS  # what per_group histograms are summed by (and module)


@dataclass(frozen=True, slots=True)
class Config:
    modules: dict[str, Module]
    source: str | None = None
    targets: tuple[TargetSpec, ...] = ()
    target_files: tuple[TargetFiles, ...] = ()
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    slos: Any = None  # exporter.slo.SLOSpec | None: the `slos:` section (used by `connhealth generate`)
    probe_guard: ProbeGuard = DEFAULT_GUARD
    # The modules as the file writes them (YAML data, secrets in the clear): only to re-parse a
    # module with command-line options (`connhealth probe -H ...`). Never shown: /config and
    # every other surface render the typed modules (config_view).
    raw_modules: dict[str, Any] = field(default_factory=dict, repr=False)
    # Labels on every /metrics series of this process (the prober's region, say): `serve --prober` adds one.
    external_labels: tuple[tuple[str, str], ...] = ()


def _parse_resolver(f: Fields) -> ResolverConfig:
    servers = []
    for i, item in enumerate(f.list_of("nameservers", str)):
        try:
            servers.append(split_host_port(item, default_port=53))
        except ValueError as exc:
            raise ConfigError(f"{f.path}.nameservers[{i}]: {exc}") from None
    cfg = ResolverConfig(nameservers=tuple(servers), timeout=f.duration("timeout", None, maximum=MAX_TIMEOUT))
    f.done()
    return cfg


_BAGGAGE_KEY_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _parse_tracing(f: Fields, module: str) -> TracingConfig:
    inject = f.get("inject", bool, True)
    baggage = {"synthetic": "true", "probe.module": module}
    for key, value in f.get("baggage", dict, {}).items():
        if not isinstance(key, str) or not _BAGGAGE_KEY_RE.fullmatch(key):
            raise ConfigError(f"{f.path}.baggage.{brief_key(key)}: invalid baggage key")
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{f.path}.baggage.{key}: value must be a string")
        baggage[key] = str(value)
    f.done()
    return TracingConfig(inject=inject, baggage=tuple(baggage.items()))


def _attempt(errors: list[str] | None, parse: Callable[[], T], default: T) -> T:
    """``parse()``; with ``errors`` (check-config), a ConfigError is recorded there and ``default``
    stands in, so one run lists every error of a file instead of stopping at the first."""
    if errors is None:
        return parse()
    try:
        return parse()
    except ConfigError as exc:
        errors.append(str(exc))
        return default


def parse_module(name: str, raw: Any, path: str, errors: list[str] | None = None) -> Module:
    """A module; with ``errors``, each prober section's error is recorded there (see _attempt) and,
    if any was, the module's own first error is raised after all sections were read."""
    own: list[str] | None = [] if errors is not None else None
    module = _parse_module(name, raw, path, own)
    if own:
        assert errors is not None
        errors.extend(own[1:])
        raise ConfigError(own[0])
    return module


def _parse_module(name: str, raw: Any, path: str, errors: list[str] | None) -> Module:
    f = Fields(raw, path)
    prober_name = f.get("prober", str, None)
    supported = ", ".join(PROBERS)
    if prober_name is None:
        raise ConfigError(f"{path}.prober: required (one of {supported})")
    if prober_name not in PROBERS:
        if prober_name in BLACKBOX_ONLY:
            raise ConfigError(f"{path}.prober: prober {prober_name!r} is not supported by connhealth (supported: {supported})")
        raise ConfigError(f"{path}.prober: unknown prober {brief(prober_name)} (supported: {supported})")
    prober = PROBERS[prober_name]
    timeout = f.duration("timeout", None, maximum=MAX_TIMEOUT)
    if timeout == 0:
        timeout = None
    # As blackbox: every prober's section is parsed and validated, the module's own is kept.
    settings = None
    for other in PROBERS.values():
        sub = f.sub(other.section, other.unsupported)
        parsed = _attempt(errors, lambda: other.parse(sub, name), None)  # noqa: B023 - called at once
        if other is prober:
            settings = parsed
    limitable = [p.name for p in prober.phases if p.limitable]
    pf = f.sub("phase_timeouts")
    phase_timeouts = []
    for phase in limitable:
        seconds = pf.duration(phase, None, maximum=MAX_TIMEOUT)
        if seconds is not None:
            phase_timeouts.append((phase, seconds))
    for key in pf.raw:
        raise ConfigError(f"{pf.path}.{brief_key(key)}: prober {prober_name} has no phase {brief(key)} with its own limit "
                          f"(one of {', '.join(limitable)})")
    resolver = _parse_resolver(f.sub("resolver"))
    tracing = _parse_tracing(f.sub("tracing"), name)
    rf = f.sub("tls_resumption")
    require = rf.get("require", bool, False)
    tls_resumption = TLSResumptionConfig(check=rf.get("check", bool, False) or require, require=require)
    rf.done()
    if tls_resumption.check and not prober.resumable:
        raise ConfigError(f"{rf.path}: prober {prober_name} has no TLS handshake to resume (tcp and http do)")
    for other_name in BLACKBOX_ONLY:
        if other_name in f.raw:
            raise ConfigError(f"{path}.{other_name}: unsupported field (prober {other_name!r} is not supported by connhealth)")
    f.done()
    return Module(name=name, prober=prober_name, settings=settings, timeout=timeout, phase_timeouts=tuple(phase_timeouts),
                  resolver=resolver, tracing=tracing, tls_resumption=tls_resumption)


BUILTIN_MODULES_YAML = """
modules:
  http_2xx:
    prober: http
  http_post_2xx:
    prober: http
    http:
      method: POST
  tcp_connect:
    prober: tcp
  tls_connect:
    prober: tcp
    tcp:
      tls: true
"""


def parse_config(text: str | bytes, source: str | None = None, *, with_builtins: bool = True) -> Config:
    """A config from YAML text. Blocking and CPU-bound for big inputs (bounded: schema.load_yaml);
    the server runs it in a thread."""
    return config_from_data(load_yaml(text, source or "config"), source, with_builtins=with_builtins)


def config_from_data(raw: Any, source: str | None = None, *, with_builtins: bool = True,
                     errors: list[str] | None = None) -> Config:
    """With ``errors`` (check-config), every error is recorded there before the first is raised."""
    f = Fields(raw, "")
    modules: dict[str, Module] = {}
    if with_builtins:
        modules.update(builtin_modules())
    raw_modules = f.get("modules", dict, {})
    for name, module_raw in raw_modules.items():
        if not isinstance(name, str) or not name:
            raise ConfigError(f"modules: module names must be non-empty strings, got {brief(name)}")
        # A module in error stands in as a placeholder: targets naming it are not errors of their own.
        modules[name] = _attempt(errors, lambda: parse_module(name, module_raw, f"modules.{name}", errors),  # noqa: B023
                                 Module(name=name, prober=""))
    scheduler = _attempt(errors, lambda: _parse_scheduler(f.sub("scheduler")), SchedulerConfig())
    targets = tuple(
        _attempt(errors, lambda: _parse_target(raw_t, f"targets[{i}]", modules, scheduler), None)  # noqa: B023
        for i, raw_t in enumerate(_attempt(errors, lambda: f.get("targets", list, []), list[Any]()))
    )
    files = tuple(
        _attempt(errors, lambda: _parse_target_files(raw_f, f"target_files[{i}]", modules, scheduler), None)  # noqa: B023
        for i, raw_f in enumerate(_attempt(errors, lambda: f.get("target_files", list, []), list[Any]()))
    )
    slos = _attempt(errors, lambda: parse_slos(f.raw.pop("slos", None), scheduler.buckets), None)
    guard = _attempt(errors, lambda: _parse_probe_guard(f.sub("probe_guard")), DEFAULT_GUARD)
    no_labels: tuple[tuple[str, str], ...] = ()
    external = _attempt(errors, lambda: _parse_external_labels(f, targets), no_labels)
    _attempt(errors, f.done, None)
    valid_targets = tuple(t for t in targets if t is not None)
    valid_files = tuple(t for t in files if t is not None)
    _attempt(errors, lambda: _check_histograms_serve_slos(slos, scheduler, valid_targets, valid_files), None)
    if errors:
        raise ConfigError(errors[0])
    return Config(modules=modules, source=source, targets=valid_targets, target_files=valid_files, scheduler=scheduler,
                  slos=slos, probe_guard=guard, raw_modules=raw_modules, external_labels=external)


def _parse_external_labels(f: Fields, targets: Iterable[TargetSpec | None]) -> tuple[tuple[str, str], ...]:
    external = parse_labels(f.raw.pop("external_labels", None), "external_labels")
    clash = sorted({name for t in targets if t is not None for name, _ in t.labels} & {name for name, _ in external})
    if clash:
        raise ConfigError(f"external_labels.{clash[0]}: also a target label; a series cannot carry it twice")
    return external


def _parse_probe_guard(f: Fields) -> ProbeGuard:
    """``probe_guard``: allow/deny rules (CIDRs, :ports, host patterns); deny defaults to DEFAULT_DENY."""
    sets = {}
    for key, default in (("allow", []), ("deny", list(DEFAULT_DENY))):
        rules = f.list_of(key, str) if key in f.raw and f.raw[key] is not None else default
        try:
            sets[key] = parse_rules(rules)
        except ValueError as exc:
            raise ConfigError(f"{f.p(key)}{exc}") from None
    guard = ProbeGuard(allow=sets["allow"], deny=sets["deny"], apply_to_targets=f.get("apply_to_targets", bool, False))
    f.done()
    return guard


_LABEL_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
RESERVED_LABELS = frozenset({"target", "module", "phase", "reason", "le", "version", "job", "instance", "hop", "quantile"})


def parse_labels(raw: Any, path: str, *, keep_empty: bool = False) -> tuple[tuple[str, str], ...]:
    """Validated labels, sorted. As in Prometheus, an empty label is no label ({a: ""} and {} are one
    series); ``keep_empty`` keeps them so that a file_sd group's empty label can remove an inherited one."""
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of label names to values")
    out = []
    for name, value in raw.items():
        if not isinstance(name, str) or not _LABEL_RE.fullmatch(name) or name.startswith("__"):
            raise ConfigError(f"{path}.{brief_key(name)}: invalid label name (must match [a-zA-Z_][a-zA-Z0-9_]* and not start with __)")
        if name in RESERVED_LABELS:
            raise ConfigError(f"{path}.{name}: label name is reserved by connhealth")
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{path}.{name}: label value must be a string")
        if str(value) or keep_empty:
            out.append((name, str(value)))
    return tuple(sorted(out))


def _parse_histograms(f: Fields, default: str) -> str:
    mode = f.get("histograms", str, default)
    if mode not in HISTOGRAM_MODES:
        raise ConfigError(f"{f.p('histograms')}: must be one of {', '.join(HISTOGRAM_MODES)}, got {brief(mode)}")
    return mode


def _parse_group_labels(f: Fields) -> tuple[str, ...]:
    if "group_labels" not in f.raw:
        return DEFAULT_GROUP_LABELS
    names = f.list_of("group_labels", str)
    path = f.p("group_labels")
    if len(names) > MAX_GROUP_LABELS:
        raise ConfigError(f"{path}: at most {MAX_GROUP_LABELS} labels, got {len(names)}")
    for i, name in enumerate(names):
        if not _LABEL_RE.fullmatch(name) or name.startswith("__") or name in RESERVED_LABELS:
            why = "is connhealth's own (module is always kept)" if name in RESERVED_LABELS else "is not a valid label name"
            raise ConfigError(f"{path}[{i}]: {brief(name)} {why}")
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: a label is listed twice")
    return tuple(names)


def _check_histograms_serve_slos(slos: Any, scheduler: SchedulerConfig, targets: tuple[TargetSpec, ...],
                                 files: tuple[TargetFiles, ...]) -> None:
    """A latency SLO reads the phase histograms by its selector: per_group histograms must keep the
    selector's labels, and targets the config itself labels into the SLO must keep histograms."""
    if slos is None:
        return
    groups: list[tuple[str, str, tuple[tuple[str, str], ...]]] = [
        (f"targets[{i}]", t.histograms, t.labels) for i, t in enumerate(targets)]
    groups += [(f"target_files[{i}]", tf.histograms, tf.labels) for i, tf in enumerate(files)]
    modes = {scheduler.histograms} | {mode for _, mode, _ in groups}
    for i, o in enumerate(slos.objectives):
        if o.latency is None:
            continue
        path = f"slos.objectives[{i}].selector"
        if PER_GROUP in modes:
            missing = [name for name, _ in o.selector if name != "module" and name not in scheduler.group_labels]
            if missing:
                raise ConfigError(f"{path}: label {missing[0]!r} is not in scheduler.group_labels "
                                  f"({', '.join(scheduler.group_labels) or 'none'}): per_group histograms drop it, "
                                  f"so the latency SLO of {o.service!r} would not see them")
        for where, mode, labels in groups:
            if mode == NO_HISTOGRAMS and set(o.selector) <= set(labels):
                raise ConfigError(f"{where}.histograms: none, but its targets are in the latency SLO of "
                                  f"{o.service!r}, which needs their phase histograms (use per_group)")


def _parse_scheduler(f: Fields) -> SchedulerConfig:
    buckets = tuple(float(b) for b in f.list_of("buckets", (int, float)))
    if list(buckets) != sorted(set(buckets)) or any(b <= 0 for b in buckets):
        raise ConfigError(f"{f.path}.buckets: must be positive and strictly increasing")
    if len(buckets) > 100 or buckets and buckets[-1] > MAX_TIMEOUT:
        raise ConfigError(f"{f.path}.buckets: at most 100 buckets, none above {MAX_TIMEOUT:g}s")
    cfg = SchedulerConfig(
        concurrency=f.integer("concurrency", 256, 1, MAX_CONCURRENCY),
        default_interval=_positive(f, "default_interval", 30.0),
        min_interval=_positive(f, "min_interval", 1.0),
        file_refresh_interval=_positive(f, "file_refresh_interval", 5.0),
        buckets=buckets,
        histograms=_parse_histograms(f, PER_TARGET),
        group_labels=_parse_group_labels(f),
    )
    f.done()
    return cfg


def _positive(f: Fields, key: str, default: float) -> float:
    """An interval: 0 (or absent) means the default; otherwise MIN_INTERVAL..MAX_INTERVAL."""
    seconds = f.duration(key, default, maximum=MAX_INTERVAL) or default
    if seconds < MIN_INTERVAL:
        raise ConfigError(f"{f.p(key)}: must be at least 10ms")
    return seconds


def _check_module(name: str | None, path: str, modules: dict[str, Module]) -> None:
    if name is not None and name not in modules:
        raise ConfigError(f"{path}: unknown module {brief(name)} (known: {brief(', '.join(sorted(modules)))})")


def _interval(f: Fields, scheduler: SchedulerConfig) -> tuple[float, float | None]:
    interval = _positive(f, "interval", scheduler.default_interval)
    timeout = f.duration("timeout", None, maximum=MAX_TIMEOUT)
    return interval, timeout


def _parse_target(raw: Any, path: str, modules: dict[str, Module], scheduler: SchedulerConfig) -> TargetSpec:
    if isinstance(raw, str):
        raw = {"target": raw}
    f = Fields(raw, path)
    target = f.get("target", str, None)
    if not target:
        raise ConfigError(f"{path}.target: required")
    module = f.get("module", str, None) or default_module_for(target)
    _check_module(module, f"{path}.module", modules)
    interval, timeout = _interval(f, scheduler)
    labels = parse_labels(f.raw.pop("labels", None), f"{path}.labels")
    histograms = _parse_histograms(f, scheduler.histograms)
    f.done()
    return TargetSpec(target=target, module=module, interval=interval, timeout=timeout, labels=labels, histograms=histograms)


def _parse_target_files(raw: Any, path: str, modules: dict[str, Module], scheduler: SchedulerConfig) -> TargetFiles:
    if isinstance(raw, str):
        raw = {"files": [raw]}
    f = Fields(raw, path)
    files = tuple(f.list_of("files", str))
    if not files:
        raise ConfigError(f"{path}.files: at least one glob is required")
    module = f.get("module", str, None)
    _check_module(module, f"{path}.module", modules)
    interval, timeout = _interval(f, scheduler)
    labels = parse_labels(f.raw.pop("labels", None), f"{path}.labels")
    histograms = _parse_histograms(f, scheduler.histograms)
    f.done()
    return TargetFiles(files=files, module=module, interval=interval, timeout=timeout, labels=labels, histograms=histograms)


def shown_target(target: str, module: Module) -> str:
    """The target as outputs show it (labels, pages, spans): the module's prober masks its secrets."""
    return PROBERS[module.prober].display_target(target, module.settings)


def module_view(module: Module) -> dict[str, Any]:
    """A module as debug output and /config show it: defaults filled in, every Secret as <secret> (by its type)."""
    view: dict[str, Any] = {"prober": module.prober, "timeout": module.timeout,
                            PROBERS[module.prober].section: plain(module.settings)}
    if module.phase_timeouts:
        view["phase_timeouts"] = plain(module.phase_timeouts)
    view["resolver"] = plain(module.resolver)
    view["tracing"] = plain(module.tracing)
    return view


def config_view(config: Config) -> dict[str, Any]:
    """The whole running config for /config, secrets masked as in module_view."""
    targets = []
    for t in config.targets:
        module = config.modules.get(t.module)
        targets.append({**plain(t), "target": shown_target(t.target, module) if module else t.target})
    return {
        "modules": {name: module_view(m) for name, m in config.modules.items()},
        "targets": targets,
        "target_files": plain(config.target_files),
        "scheduler": plain(config.scheduler),
        "probe_guard": plain(config.probe_guard),
    }


def load_config(path: str | Path) -> Config:
    """Read and parse a config file (at most schema.MAX_FILE_BYTES). Blocking: the server calls it in a thread."""
    return config_from_data(load_data_file(str(path), "config"), str(path))


def check_config(path: str | Path) -> tuple[Config | None, list[str], list[str]]:
    """check-config: (the config or None, every error each with its path, warnings).

    Warnings name the files modules reference that cannot be read now: the config loads,
    and probes using them fail with config_file_missing until the file is there.
    """
    errors: list[str] = []
    try:
        config = config_from_data(load_data_file(str(path), "config"), str(path), errors=errors)
    except ConfigError as exc:
        return None, errors or [str(exc)], []
    warnings = []
    for name in config.raw_modules:
        module = config.modules[name]
        prober = PROBERS[module.prober]
        for where, file in prober.referenced_files(module.settings):
            warning = filerefs.exists_warning(file, f"modules.{name}.{prober.section}.{where}")
            if warning:
                warnings.append(warning)
    return config, [], warnings


def load_config_or_builtins(path: str | Path | None) -> Config:
    """The config file, or with none given just the built-in modules."""
    return load_config(path) if path is not None else Config(modules=builtin_modules())


_BUILTINS: dict[str, Module] | None = None


def builtin_modules() -> dict[str, Module]:
    global _BUILTINS
    if _BUILTINS is None:
        _BUILTINS = parse_config(BUILTIN_MODULES_YAML, "builtin", with_builtins=False).modules
    return dict(_BUILTINS)


def default_module_for(target: str) -> str:
    """The built-in module a bare target implies: http_2xx for URLs, tcp_connect otherwise."""
    lowered = target.lower()
    return "http_2xx" if lowered.startswith(("http://", "https://")) else "tcp_connect"
