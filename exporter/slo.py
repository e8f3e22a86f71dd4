"""SLO spec: the ``slos:`` section of the config, parsed strictly.

One spec drives both the Prometheus rules (``alerts/rules.py``) and the
Grafana dashboards (``dashboards/``)::

    slos:
      grafana_url: https://grafana.example.com   # base of dashboard links in alerts (unset: relative, check-config says so)
      runbook_url: https://runbooks.example.com/connhealth   # where alerts/RUNBOOKS.md is served; "#<alert>" is appended
                                                            # (unset: alerts carry no runbook_url, check-config says so)
      exporter_job: connhealth                    # Prometheus job scraping the exporter (ConnhealthExporterDown)
      stale_intervals: 3                          # a target is stale after this many of its intervals without a probe ...
      stale_after: 1m                             # ... and never sooner than this
      objectives:
        - service: api                  # value of the `service` label on every recorded series
          selector: {service: api}      # label equalities picking the probe series (default {service: <service>})
          period: 30d                   # 30d, 28d or 7d
          min_probes: 20                # burn alerts stay silent below this many probes in either of their windows
          windows:                      # optional, for low-rate SLOs: the four (long, short) window pairs of the
            - {long: 1d, short: 6h}     # burn factors 14.4, 6, 3, 1 (default: 1h/5m, 6h/30m, 1d/2h, 3d/6h
            - {long: 2d, short: 12h}    # scaled to the period)
            - {long: 3d, short: 1d}
            - {long: 7d, short: 2d}
          availability:
            objective: 99.9             # percent of the observed time the target was up (time-weighted, docs/metrics.md)
            sli_floor: {objective: 99.5, for: 2h}   # optional: alert when the 5m SLI stays below 99.5 % for 2 h
          latency:
            objective: 95               # percent of connects at or under threshold ("P95 connect <= 300 ms")
            threshold: 300ms            # must be a histogram bucket boundary
            phase: connect              # phase histogram used (default connect)
            sli_floor: {objective: 90, for: 1h}     # optional, as for availability

Unknown keys are errors naming their path, as in the rest of the config.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from . import metrics as m
from .probers import all_phases
from .schema import ConfigError, Fields, parse_duration

PERIODS = {"7d": 7 * 86400.0, "28d": 28 * 86400.0, "30d": 30 * 86400.0}
# Burn windows are built from 5-minute increases: a window is a whole number of them.
WINDOW_STEP = 300.0
N_BURN_WINDOWS = 4
_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
_LABEL_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# Labels the selector may not use: they are connhealth's own dimensions or are set by the rules.
_SELECTOR_RESERVED = frozenset({"phase", "reason", "le", "slo", "window", "__name__"})


@dataclass(frozen=True, slots=True)
class SLIFloor:
    """Alert when the SLI (its 5m window) stays below ``objective`` for ``for_`` (seeds 002/003)."""

    objective: float  # fraction, e.g. 0.995
    for_seconds: float

    @property
    def for_(self) -> str:
        """The duration as Prometheus writes it (7200 -> "2h")."""
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
            if self.for_seconds % size == 0:
                return f"{int(self.for_seconds // size)}{unit}"
        return f"{self.for_seconds:g}s"


@dataclass(frozen=True, slots=True)
class Availability:
    objective: float  # fraction, e.g. 0.999
    sli_floor: SLIFloor | None = None


@dataclass(frozen=True, slots=True)
class Latency:
    objective: float  # fraction of observations at or under threshold, e.g. 0.95
    threshold: float  # seconds, a bucket boundary
    phase: str = "connect"
    sli_floor: SLIFloor | None = None

    @property
    def le(self) -> str:
        return le_string(self.threshold)


@dataclass(frozen=True, slots=True)
class Objective:
    service: str
    selector: tuple[tuple[str, str], ...]
    period: str  # "30d" | "28d" | "7d"
    min_probes: int = 0
    availability: Availability | None = None
    latency: Latency | None = None
    runbook_url: str | None = None  # overrides the spec-wide base for this SLO's alerts
    # (long, short) seconds for the four burn factors; empty: the defaults scaled to the period
    windows: tuple[tuple[float, float], ...] = ()

    @property
    def period_seconds(self) -> float:
        return PERIODS[self.period]

    def matchers(self, **extra: str) -> str:
        """PromQL label matchers for this SLO's probe series, e.g. ``service="api",phase="connect"``."""
        pairs = list(self.selector) + sorted(extra.items())
        return ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)


@dataclass(frozen=True, slots=True)
class SLOSpec:
    objectives: tuple[Objective, ...] = ()
    grafana_url: str = ""
    runbook_url: str = ""  # no default: only the user knows where alerts/RUNBOOKS.md is served
    stale_after: float = 60.0  # floor of the stale threshold
    stale_intervals: float = 3.0  # a target is stale after this many of its own intervals without a probe
    exporter_job: str = "connhealth"
    buckets: tuple[float, ...] = field(default=m.DEFAULT_BUCKETS)

    def warnings(self) -> list[str]:
        """What works but not as a user would expect: links in alerts that will not lead anywhere."""
        out = []
        if not self.grafana_url:
            out.append("slos.grafana_url is not set: the dashboard links in alert annotations are relative "
                       "(/d/...) and work only where Grafana's own address is prefixed")
        if not self.runbook_url:
            out.append("slos.runbook_url is not set: alerts carry no runbook_url annotation "
                       "(point it at where alerts/RUNBOOKS.md is served)")
        return out


def le_string(bound: float) -> str:
    """The ``le`` label value the exporter writes for a bucket bound (0.3 -> "0.3", 1 -> "1.0")."""
    return repr(float(bound))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _percent(f: Fields, key: str) -> float:
    value = f.get(key, (int, float), None)
    if value is None:
        raise ConfigError(f"{f.path}.{key}: required (a percentage, e.g. 99.9)")
    value = float(value)
    if not 0 < value < 100:
        raise ConfigError(f"{f.path}.{key}: must be a percentage strictly between 0 and 100, got {value:g}")
    return round(value / 100.0, 10)


def _parse_floor(f: Fields, objective: float) -> SLIFloor | None:
    """The optional ``sli_floor: {objective: 99.5, for: 2h}`` of an SLO section."""
    if "sli_floor" not in f.raw:
        return None
    ff = f.sub("sli_floor")
    floor = _percent(ff, "objective")
    if floor > objective:
        raise ConfigError(f"{ff.path}.objective: {floor * 100:g} is above the SLO's own objective ({objective * 100:g})")
    if "for" not in ff.raw:
        raise ConfigError(f"{ff.path}.for: required (how long the SLI must stay below the floor, e.g. 2h)")
    seconds = parse_duration(ff.raw.pop("for"), f"{ff.path}.for")
    if not 60 <= seconds <= 7 * 86400 or seconds % 1:
        raise ConfigError(f"{ff.path}.for: must be whole seconds between 1m and 7d, got {seconds:g}s")
    ff.done()
    return SLIFloor(objective=floor, for_seconds=seconds)


def _parse_windows(f: Fields, period: float) -> tuple[tuple[float, float], ...]:
    raw = f.get("windows", list, None)
    if raw is None:
        return ()
    path = f"{f.path}.windows"
    if len(raw) != N_BURN_WINDOWS:
        raise ConfigError(f"{path}: needs exactly {N_BURN_WINDOWS} {{long, short}} pairs, one per burn factor "
                          f"(14.4, 6, 3, 1), got {len(raw)}")
    out = []
    for i, item in enumerate(raw):
        wf = Fields(item, f"{path}[{i}]")
        pair = []
        for key in ("long", "short"):
            if key not in wf.raw:
                raise ConfigError(f"{wf.path}.{key}: required (a duration, e.g. 6h)")
            value = parse_duration(wf.raw.pop(key), f"{wf.path}.{key}")
            if value < WINDOW_STEP or value % WINDOW_STEP:
                raise ConfigError(f"{wf.path}.{key}: must be a multiple of 5m (the burn rates are built from "
                                  f"5-minute increases), got {value:g}s")
            if value > period:
                raise ConfigError(f"{wf.path}.{key}: must not exceed the SLO period ({value:g}s > {period:g}s)")
            pair.append(value)
        wf.done()
        if pair[1] >= pair[0]:
            raise ConfigError(f"{wf.path}: short ({pair[1]:g}s) must be shorter than long ({pair[0]:g}s)")
        out.append((pair[0], pair[1]))
    return tuple(out)


def _parse_objective(raw: Any, path: str, buckets: tuple[float, ...]) -> Objective:
    f = Fields(raw, path)
    service = f.get("service", str, None)
    if not service or not _NAME_RE.fullmatch(service):
        raise ConfigError(f"{path}.service: required, letters, digits, '_', '-', '.' (got {service!r})")
    selector_raw = f.get("selector", dict, None)
    if selector_raw is None:
        selector: tuple[tuple[str, str], ...] = (("service", service),)
    else:
        if not selector_raw:
            raise ConfigError(f"{path}.selector: must name at least one label")
        pairs = []
        for name, value in selector_raw.items():
            if not isinstance(name, str) or not _LABEL_RE.fullmatch(name) or name in _SELECTOR_RESERVED:
                raise ConfigError(f"{path}.selector.{name}: invalid or reserved label name")
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ConfigError(f"{path}.selector.{name}: label value must be a string")
            pairs.append((name, str(value)))
        selector = tuple(sorted(pairs))
    period = f.get("period", str, "30d")
    if period not in PERIODS:
        raise ConfigError(f"{path}.period: unsupported period {period!r} (one of {', '.join(PERIODS)})")
    min_probes = f.get("min_probes", int, 0)
    if min_probes < 0:
        raise ConfigError(f"{path}.min_probes: must not be negative")
    runbook = f.get("runbook_url", str, None)
    windows = _parse_windows(f, PERIODS[period])

    availability = None
    if "availability" in f.raw:
        af = f.sub("availability")
        objective = _percent(af, "objective")
        availability = Availability(objective=objective, sli_floor=_parse_floor(af, objective))
        af.done()
    latency = None
    if "latency" in f.raw:
        lf = f.sub("latency")
        objective = _percent(lf, "objective")
        if "threshold" not in lf.raw:
            raise ConfigError(f"{lf.path}.threshold: required (a duration that is a histogram bucket boundary, e.g. 300ms)")
        threshold = parse_duration(lf.raw.pop("threshold"), f"{lf.path}.threshold")
        phase = lf.get("phase", str, "connect")
        floor = _parse_floor(lf, objective)
        phases = [p.name for p in all_phases()]
        if phase not in phases:
            raise ConfigError(f"{lf.path}.phase: unknown phase {phase!r} (one of {', '.join(phases)})")
        lf.done()
        match = [b for b in buckets if abs(b - threshold) < 1e-9]
        if not match:
            names = ", ".join(f"{b:g}" for b in buckets)
            raise ConfigError(
                f"{lf.path}.threshold: {threshold:g}s is not a histogram bucket boundary; "
                f"the share of observations under it cannot be measured exactly. Buckets (seconds): {names}"
            )
        latency = Latency(objective=objective, threshold=match[0], phase=phase, sli_floor=floor)
    f.done()
    if availability is None and latency is None:
        raise ConfigError(f"{path}: needs an availability and/or a latency objective")
    return Objective(service=service, selector=selector, period=period, min_probes=min_probes,
                     availability=availability, latency=latency, runbook_url=runbook, windows=windows)


def parse_slos(raw: Any, buckets: tuple[float, ...] = (), path: str = "slos") -> SLOSpec | None:
    """Parse the ``slos:`` section; ``buckets`` are the scheduler's histogram buckets (empty: the default)."""
    if raw is None:
        return None
    buckets = tuple(buckets) or m.DEFAULT_BUCKETS
    f = Fields(raw, path)
    defaults = SLOSpec()
    grafana_url = f.get("grafana_url", str, "").rstrip("/")
    runbook_url = f.get("runbook_url", str, defaults.runbook_url)
    stale_after = f.duration("stale_after", defaults.stale_after) or defaults.stale_after
    stale_intervals = f.get("stale_intervals", (int, float), defaults.stale_intervals)
    if isinstance(stale_intervals, bool) or not 1 <= stale_intervals <= 1000:
        raise ConfigError(f"{path}.stale_intervals: must be a number from 1 to 1000, got {stale_intervals!r}")
    exporter_job = f.get("exporter_job", str, defaults.exporter_job)
    if not exporter_job or "\n" in exporter_job:
        raise ConfigError(f"{path}.exporter_job: must be a non-empty job name, got {exporter_job!r}")
    objectives = tuple(
        _parse_objective(item, f"{path}.objectives[{i}]", buckets) for i, item in enumerate(f.get("objectives", list, []))
    )
    f.done()
    seen: set[str] = set()
    for i, o in enumerate(objectives):
        if o.service in seen:
            raise ConfigError(f"{path}.objectives[{i}].service: duplicate service {o.service!r} (one entry per service)")
        seen.add(o.service)
    return SLOSpec(objectives=objectives, grafana_url=grafana_url, runbook_url=runbook_url,
                   stale_after=stale_after, stale_intervals=float(stale_intervals), exporter_job=exporter_job,
                   buckets=buckets)
