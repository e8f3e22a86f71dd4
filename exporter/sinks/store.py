"""Continuous-mode metrics sink: per-target counters and histograms, rendered as text.

Every counter of a target, its probe-duration histogram and the histogram of
every phase its probes go through exist at 0 from the moment the target is
scheduled (``sync``), so ``increase()`` sees its first probe; a target that
is no longer scheduled loses its series. The failure counter is the
exception: a (phase, reason) pair appears with its first failure, since
pre-creating every pair would add dozens of series per target.

A scrape of 10k targets must not rebuild 10k targets' worth of samples: each
target keeps its rendered lines per metric family and re-renders them only
after a new probe result, and ``connhealth serve`` renders those results
between scrapes (``refresh``). A scrape then joins cached bytes.

Histograms are most of a scrape (30 of a tcp target's 41 lines): each target's
``histograms`` mode (metrics.HISTOGRAM_MODES) keeps them per target, folds them
into one set per group (the module and the store's ``group_labels``) or drops
them. A group's histograms exist while one of its targets is scheduled.
"""
from __future__ import annotations

import bisect
import functools
from collections.abc import Iterable, Iterator, Mapping
from itertools import accumulate

from .. import metrics as m
from .exposition import escape, fmt
from ..probers import PROBERS, all_phases
from ..result import KeepAlive, ProbeResult, TLSResumption

# (target, module, labels): one continuously probed target.
Key = tuple[str, str, tuple[tuple[str, str], ...]]

_FAMILIES: tuple[m.MetricSpec, ...] = m.CONTINUOUS
_INDEX = {spec.name: i for i, spec in enumerate(_FAMILIES)}
# Each family's place in a target's fragments and, for the ones on every probed target, the start of its
# lines (name and "{"): module constants, as the render of every target reads them.
_ATTEMPTS, _SUCCESSES, _OBSERVED, _UP, _FAILURES, _DURATION, _PHASES, _SUCCESS, _LAST_SUCCESS, _LAST_PROBE = (
    _INDEX[n] for n in (m.PROBE_ATTEMPTS, m.PROBE_SUCCESSES, m.OBSERVED_SECONDS, m.UP_SECONDS, m.PROBE_FAILURES,
                        m.PROBE_DURATION, m.PHASE_DURATION, m.PROBE_SUCCESS, m.LAST_SUCCESS, m.LAST_PROBE))
_INTERVAL, _CERT_EXPIRY, _TLS_VERSION, _RTT, _RETRANSMITS, _SYN_RETRANSMITS = (
    _INDEX[n] for n in (m.PROBE_INTERVAL, m.CERT_EXPIRY, m.TLS_VERSION, m.TCP_RTT, m.TCP_RETRANSMITS, m.TCP_SYN_RETRANSMITS))
_KA_REUSED, _KA_CLIENT_IDLE, _KA_SERVER_IDLE, _RESUMED, _HANDSHAKE = (
    _INDEX[n] for n in (m.KEEPALIVE_REUSED, m.KEEPALIVE_CLIENT_IDLE, m.KEEPALIVE_SERVER_IDLE, m.TLS_SESSION_RESUMED,
                        m.TLS_HANDSHAKE))
_ATTEMPTS_, _SUCCESSES_, _OBSERVED_, _UP_, _SUCCESS_, _LAST_SUCCESS_, _LAST_PROBE_, _INTERVAL_ = (
    n + "{" for n in (m.PROBE_ATTEMPTS, m.PROBE_SUCCESSES, m.OBSERVED_SECONDS, m.UP_SECONDS, m.PROBE_SUCCESS,
                      m.LAST_SUCCESS, m.LAST_PROBE, m.PROBE_INTERVAL))
_CERT_EXPIRY_, _TLS_VERSION_, _RTT_, _RETRANSMITS_, _SYN_RETRANSMITS_ = (
    n + "{" for n in (m.CERT_EXPIRY, m.TLS_VERSION, m.TCP_RTT, m.TCP_RETRANSMITS, m.TCP_SYN_RETRANSMITS))


Exemplar = tuple[str, float, float]  # (trace_id, value, unix time)


def exemplar_suffix(ex: Exemplar | None) -> str:
    return f' # {{trace_id="{ex[0]}"}} {fmt(ex[1])} {ex[2]:.3f}' if ex is not None else ""


class _Histogram:
    __slots__ = ("counts", "sum", "count", "exemplars")

    def __init__(self, n: int) -> None:
        self.counts = [0] * n  # per bucket, not cumulative; the last is +Inf
        self.sum = 0.0
        self.count = 0
        self.exemplars: list[Exemplar | None] | None = None  # latest sampled trace per bucket

    def observe(self, bounds: tuple[float, ...], value: float, exemplar: Exemplar | None) -> None:
        i = bisect.bisect_left(bounds, value)
        self.counts[i] += 1
        self.sum += value
        self.count += 1
        if exemplar is not None:
            if self.exemplars is None:
                self.exemplars = [None] * len(self.counts)
            self.exemplars[i] = exemplar

    def lines(self, name: str, base: str, le_strings: tuple[str, ...], openmetrics: bool) -> list[str]:
        if openmetrics and self.exemplars:
            return self._lines_with_exemplars(name, base, le_strings)
        # One %-format of a template made once per family: a third of the time of a line at a time.
        cumulative = list(accumulate(self.counts))
        args: list[object] = [base] * (2 * len(cumulative) + 4)
        args[1:2 * len(cumulative):2] = cumulative
        args[-3] = fmt(self.sum)
        args[-1] = self.count
        return [_template(name, le_strings) % tuple(args)]

    def _lines_with_exemplars(self, name: str, base: str, le_strings: tuple[str, ...]) -> list[str]:
        out = []
        cumulative = 0
        exemplars = self.exemplars or []
        for i, (le, c) in enumerate(zip(le_strings, self.counts)):
            cumulative += c
            out.append(f'{name}_bucket{{{base},le="{le}"}} {cumulative}' + exemplar_suffix(exemplars[i]))
        out.append(f"{name}_sum{{{base}}} {fmt(self.sum)}")
        out.append(f"{name}_count{{{base}}} {self.count}")
        return out


@functools.cache
def _phase_order() -> dict[str, int]:
    """Every registered phase's place in connection order (the probers are registered at import)."""
    return {spec.name: i for i, spec in enumerate(all_phases())}


@functools.lru_cache(maxsize=256)
def _template(name: str, le_strings: tuple[str, ...]) -> str:
    """A histogram's lines with %s for the labels and %d/%s for the values (no trailing newline)."""
    name = name.replace("%", "%%")
    lines = [f'{name}_bucket{{%s,le="{le.replace("%", "%%")}"}} %d' for le in le_strings]
    return "\n".join([*lines, f"{name}_sum{{%s}} %s", f"{name}_count{{%s}} %d"])


class _Histograms:
    """The histograms a target's probes fill: whole-probe duration, each phase, the probers' own.
    One target's (per_target) or shared by a group's targets (per_group)."""

    __slots__ = ("duration", "phases", "extra")

    def __init__(self, n_buckets: int) -> None:
        self.duration = _Histogram(n_buckets)
        # The prober's phases exist at 0 before the first probe reaches them (add).
        self.phases: dict[str, _Histogram] = {}
        self.extra: dict[str, _Histogram] = {}  # the probers' own histogram families, by name

    def _add_phase(self, phase: str, n_buckets: int) -> _Histogram:
        """A new phase's histogram; ``phases`` stays in render order: registered phases in connection
        order, then any other a prober reported (sorted once here, not at every render)."""
        hist = self.phases[phase] = _Histogram(n_buckets)
        order = _phase_order()
        self.phases = dict(sorted(self.phases.items(), key=lambda item: (order.get(item[0], len(order)), item[0])))
        return hist

    def add(self, store: SeriesStore, phases: Iterable[str], families: Iterable[str]) -> bool:
        """Histograms at 0 for ``phases`` and the histograms among ``families``; whether any was new."""
        added = False
        for phase in phases:
            if phase not in self.phases:
                self._add_phase(phase, len(store.bounds) + 1)
                added = True
        for name in families:
            spec = store.extra_specs.get(name)
            if spec is not None and spec.type == "histogram" and name not in self.extra:
                self.extra[name] = _Histogram(len(spec.buckets or store.bounds) + 1)
                added = True
        return added

    def observe(self, result: ProbeResult, bounds: tuple[float, ...], trace_id: str | None, finished_at: float) -> None:
        self.duration.observe(bounds, result.duration_seconds, (trace_id, result.duration_seconds, finished_at) if trace_id else None)
        for hop in range(max(len(result.hops), 1)):
            for phase, seconds in (result.hop_phases(hop) if result.hops else result.total_phases()).items():
                hist = self.phases.get(phase)
                if hist is None:
                    hist = self._add_phase(phase, len(bounds) + 1)
                hist.observe(bounds, seconds, (trace_id, seconds, finished_at) if trace_id else None)

    def observe_extra(self, spec: m.MetricSpec, bounds: tuple[float, ...], value: float) -> None:
        hist = self.extra.get(spec.name)
        if hist is None:
            hist = self.extra[spec.name] = _Histogram(len(bounds) + 1)
        hist.observe(bounds, value, None)

    def render(self, out: list[bytes], b: str, store: SeriesStore, om: bool) -> None:
        """Set the families of every histogram in ``out`` (one piece per family) to their lines, labelled ``b``."""
        les = store.le_strings
        out[_DURATION] = _encoded(self.duration.lines(m.PROBE_DURATION, b, les, om))
        if self.phases:
            out[_PHASES] = _encoded([line for phase, hist in self.phases.items()
                                     for line in hist.lines(m.PHASE_DURATION, f'{b},phase="{escape(phase)}"', les, om)])
        if self.extra:
            for i, spec in enumerate(store.extra, len(_FAMILIES)):
                extra = self.extra.get(spec.name)
                if extra is not None:
                    out[i] = _encoded(extra.lines(spec.name, b, store.extra_les[spec.name], om))


def _encoded(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode()


class _Rendered:
    """Rendered lines per metric family, cached until the next change (``invalidate``)."""

    __slots__ = ("_fragments", "_om_fragments")

    def __init__(self) -> None:
        # Per format: empty until rendered, and again after a change.
        self._fragments: list[bytes] = []
        self._om_fragments: list[bytes] = []

    def invalidate(self) -> None:
        # The old lines go now, not at the next render: a format no longer scraped keeps no stale copy.
        self._fragments.clear()
        self._om_fragments.clear()

    def fragments(self, store: SeriesStore, openmetrics: bool = False) -> list[bytes]:
        """One piece per family (``store.blank``'s length): b"" or its lines, each ending with a newline.

        A new render refills the same list: a 10k-target scrape then allocates no container per target,
        which kept the garbage collector busy for a tenth of it.
        """
        fragments = self._om_fragments if openmetrics else self._fragments
        if not fragments:
            fragments += store.blank
            try:
                self._render(store, openmetrics, fragments)
            except BaseException:
                fragments.clear()  # not half rendered: the next scrape tries again
                raise
        return fragments

    def stale(self, openmetrics: bool) -> bool:
        """Changed since its last render in this format (or never rendered in it)."""
        return not (self._om_fragments if openmetrics else self._fragments)

    def _render(self, store: SeriesStore, om: bool, out: list[bytes]) -> None:
        """Set the families this series has in ``out`` (all b"" when called) to their lines."""
        raise NotImplementedError


class _Group(_Rendered):
    """The histograms of the per_group targets with one module and the same values of the group labels."""

    __slots__ = ("base", "hists")

    def __init__(self, base: str, n_buckets: int) -> None:
        super().__init__()
        self.base = base
        self.hists = _Histograms(n_buckets)

    def _render(self, store: SeriesStore, om: bool, out: list[bytes]) -> None:
        self.hists.render(out, self.base, store, om)


class TargetSeries(_Rendered):
    """Everything one (target, module, labels) has accumulated."""

    __slots__ = (
        "base", "attempts", "successes", "observed", "up", "failures", "hists", "group", "last_success", "last_probe",
        "success", "cert_expiry", "tls_version", "rtt", "retransmits",
        "last_failure", "failure_exemplars", "extra", "syn_retransmits", "keepalive", "resumption", "interval",
        "_stable", "_stable_lines",
    )

    def __init__(self, base: str) -> None:
        super().__init__()
        self.base = base  # rendered label pairs, computed once
        self.attempts = 0
        self.successes = 0
        self.observed = 0.0  # seconds (scheduler.Coverage)
        self.up = 0.0
        self.failures: dict[tuple[str, str], int] = {}
        # per_target: its own; per_group: its group's (shared, rendered by the group); none: None.
        self.hists: _Histograms | None = None
        self.group: _Group | None = None
        self.last_success: float | None = None
        self.last_probe: float | None = None
        self.interval: float | None = None
        self.success: bool | None = None
        self.cert_expiry: float | None = None
        self.tls_version: str | None = None
        self.rtt: float | None = None
        self.retransmits: int | None = None
        self.last_failure: tuple[str, str, str] | None = None
        self.failure_exemplars: dict[tuple[str, str], Exemplar] = {}
        self.syn_retransmits = 0
        self.keepalive: KeepAlive | None = None  # the last keep-alive check
        self.resumption: TLSResumption | None = None  # the last resumption check
        self.extra: dict[str, float] = {}  # the probers' own counters and gauges (store.extra), by name
        self._stable: tuple[object, ...] = ()  # rendering: what _stable_lines show
        self._stable_lines: tuple[bytes, ...] = ()

    def _render(self, store: SeriesStore, om: bool, out: list[bytes]) -> None:
        # Runs once per probe result: one f-string per line straight into its family's slot, no list per
        # family, no float formatted twice (last_success is last_probe, and up is observed while the target
        # is up). The floats that change with every probe are formatted inline: repr is fmt's result unless
        # the value is integral or not finite (fmt's exceptions), which the end of repr's text tells.
        b = self.base
        out[_ATTEMPTS] = f"{_ATTEMPTS_}{b}}} {self.attempts}\n".encode()
        out[_SUCCESSES] = f"{_SUCCESSES_}{b}}} {self.successes}\n".encode()
        observed = repr(self.observed)
        if observed[-2:] == ".0" or observed[-1] > "9":
            observed = fmt(self.observed)
        out[_OBSERVED] = f"{_OBSERVED_}{b}}} {observed}\n".encode()
        out[_UP] = f"{_UP_}{b}}} {observed if self.up == self.observed else fmt(self.up)}\n".encode()
        if self.failures:
            ex = self.failure_exemplars if om else {}
            out[_FAILURES] = "".join([
                f'{m.PROBE_FAILURES}{{{b},phase="{phase}",reason="{reason}"}} {n}{exemplar_suffix(ex.get((phase, reason)))}\n'
                for (phase, reason), n in self.failures.items()]).encode()
        if self.hists is not None and self.group is None:
            self.hists.render(out, b, store, om)
        # The lines that seldom change are kept with what they show, and reused while it stays the same.
        stable = (b, self.success, self.interval, self.retransmits, self.syn_retransmits)
        if stable == self._stable:
            out[_SUCCESS], out[_INTERVAL], out[_RETRANSMITS], out[_SYN_RETRANSMITS] = self._stable_lines
        else:
            if self.success is not None:
                out[_SUCCESS] = f"{_SUCCESS_}{b}}} {1 if self.success else 0}\n".encode()
            if self.interval is not None:
                out[_INTERVAL] = f"{_INTERVAL_}{b}}} {fmt(self.interval)}\n".encode()
            if self.retransmits is not None:
                out[_RETRANSMITS] = f"{_RETRANSMITS_}{b}}} {self.retransmits}\n".encode()
            # A counter: at 0 from the series' creation, so increase() counts the first probe's retransmits.
            out[_SYN_RETRANSMITS] = f"{_SYN_RETRANSMITS_}{b}}} {self.syn_retransmits}\n".encode()
            self._stable, self._stable_lines = stable, (out[_SUCCESS], out[_INTERVAL], out[_RETRANSMITS], out[_SYN_RETRANSMITS])
        last_probe = self.last_probe
        probed = repr(last_probe)
        if probed[-2:] == ".0" or probed[-1] > "9":
            probed = fmt(last_probe) if last_probe is not None else ""
        if self.last_success is not None:
            out[_LAST_SUCCESS] = f"{_LAST_SUCCESS_}{b}}} {probed if self.last_success == last_probe else fmt(self.last_success)}\n".encode()
        if last_probe is not None:
            out[_LAST_PROBE] = f"{_LAST_PROBE_}{b}}} {probed}\n".encode()
        if self.cert_expiry is not None:
            out[_CERT_EXPIRY] = f"{_CERT_EXPIRY_}{b}}} {fmt(self.cert_expiry)}\n".encode()
        if self.tls_version is not None:
            out[_TLS_VERSION] = f'{_TLS_VERSION_}{b},version="{escape(self.tls_version)}"}} 1\n'.encode()
        rtt = self.rtt
        if rtt is not None:
            text = repr(rtt)
            if text[-2:] == ".0" or text[-1] > "9":
                text = fmt(rtt)
            out[_RTT] = f"{_RTT_}{b}}} {text}\n".encode()
        ka = self.keepalive
        if ka is not None:
            out[_KA_REUSED] = f"{m.KEEPALIVE_REUSED}{{{b}}} {1 if ka.reused else 0}\n".encode()
            out[_KA_CLIENT_IDLE] = f"{m.KEEPALIVE_CLIENT_IDLE}{{{b}}} {fmt(ka.idle_seconds)}\n".encode()
            if ka.server_idle_seconds is not None:
                out[_KA_SERVER_IDLE] = f"{m.KEEPALIVE_SERVER_IDLE}{{{b}}} {fmt(ka.server_idle_seconds)}\n".encode()
        r = self.resumption
        if r is not None:
            out[_RESUMED] = f"{m.TLS_SESSION_RESUMED}{{{b}}} {1 if r.resumed else 0}\n".encode()
            out[_HANDSHAKE] = (f'{m.TLS_HANDSHAKE}{{{b},kind="full"}} {fmt(r.full_seconds)}\n' + (
                f'{m.TLS_HANDSHAKE}{{{b},kind="resumed"}} {fmt(r.resumed_seconds)}\n' if r.resumed_seconds is not None else "")).encode()
        if self.extra:
            for i, spec in enumerate(store.extra, len(_FAMILIES)):
                value = self.extra.get(spec.name)
                if value is not None:
                    out[i] = f"{spec.name}{{{b}}} {fmt(value)}\n".encode()

    def observe_extra(self, result: ProbeResult, store: SeriesStore) -> None:
        prober = PROBERS.get(result.prober)
        if prober is None:
            return
        for name, value in prober.observations(result):
            spec = store.extra_specs.get(name)
            if spec is None:
                continue
            if spec.type == "histogram":
                if self.hists is not None:
                    self.hists.observe_extra(spec, spec.buckets or store.bounds, value)
            elif spec.type == "counter":
                self.extra[name] = self.extra.get(name, 0.0) + value
            else:
                self.extra[name] = value

    def observe(self, result: ProbeResult, bounds: tuple[float, ...], seconds: float = 0.0, up_seconds: float = 0.0) -> None:
        """Count ``result``; it stands for ``seconds`` of wall time, ``up_seconds`` of them up (scheduler.Coverage)."""
        finished_at = result.started_at + result.duration_seconds
        self.attempts += 1
        self.observed += seconds
        self.up += up_seconds
        self.last_probe = finished_at
        self.success = result.success
        # No exemplar for an unsampled trace: nothing to click through to.
        trace_id = result.trace_id if result.sampled else None
        if result.failure is None:
            self.successes += 1
            self.last_success = finished_at
        else:
            key = (result.failure.phase, result.failure.reason)
            self.failures[key] = self.failures.get(key, 0) + 1
            self.last_failure = (result.failure.phase, result.failure.reason, result.failure.message)
            if trace_id:
                self.failure_exemplars[key] = (trace_id, 1.0, finished_at)
        if self.hists is not None:
            self.hists.observe(result, bounds, trace_id, finished_at)
            if self.group is not None:
                self.group.invalidate()
        if result.tls is not None:
            # Also from a failed verification: an expired certificate must show its expiry (blackbox #1119).
            if result.tls.earliest_expiry is not None:
                self.cert_expiry = result.tls.earliest_expiry
            if result.tls.version is not None:
                self.tls_version = result.tls.version
        if result.tcp is not None:
            self.rtt = result.tcp.rtt_seconds
            self.retransmits = result.tcp.retransmits
            self.syn_retransmits += result.tcp.retransmits
        if result.keepalive is not None:
            self.keepalive = result.keepalive
        if result.resumption is not None:
            self.resumption = result.resumption
        self.invalidate()


def _le_strings(bounds: tuple[float, ...]) -> tuple[str, ...]:
    return tuple(fmt(b) if b != int(b) else f"{b:.1f}" for b in bounds) + ("+Inf",)


GroupKey = tuple[str, tuple[str, ...]]  # (module, the group labels' values)
# Targets rendered between two turns of the event loop, by a scrape (server.handle_metrics yields
# after each piece) or refresh(): a tcp target takes about 5 us to render on this 2-core machine,
# 16 us with per-target histograms (docs/benchmarks.md), so a slice holds the loop for 1-4 ms,
# well under the 20 ms bound of issue 15.
RENDER_SLICE = 256
# Series refresh() checks between two turns of the event loop (a check is an attribute read).
REFRESH_LOOKS = 4096
# The size of the pieces a scrape writes once every target is rendered.
CHUNK_BYTES = 1 << 20


class SeriesStore:
    def __init__(self, label_names: Iterable[str] = (), buckets: tuple[float, ...] = m.DEFAULT_BUCKETS,
                 group_labels: Iterable[str] = m.DEFAULT_GROUP_LABELS,
                 external_labels: tuple[tuple[str, str], ...] = (), group_only: tuple[tuple[str, str], ...] = ()) -> None:
        # On every series, after the target's own labels; a target label of the same name gives way.
        self.external_labels = external_labels
        # On per_group series only: a worker's ("worker", i), so that the groups its shard of the targets
        # shares with other workers stay series of their own in the merged /metrics.
        self.group_only = group_only
        self.bounds = tuple(buckets)
        self.le_strings = _le_strings(self.bounds)
        self.label_names = tuple(sorted(label_names))
        self.group_labels = tuple(group_labels)
        # The probers' own families, after the shared ones (a name declared by two probers is one family).
        self.extra_specs = {spec.name: spec for p in PROBERS.values() for spec in p.metrics}
        self.extra = tuple(self.extra_specs.values())
        self.blank = [b""] * (len(_FAMILIES) + len(self.extra))  # a target's fragments (one per family) before a render
        self.extra_les = {spec.name: _le_strings(spec.buckets or self.bounds) for spec in self.extra}
        self.series: dict[Key, TargetSeries] = {}
        self.groups: dict[GroupKey, _Group] = {}
        self._headers = [f"# HELP {s.name} {s.help}\n# TYPE {s.name} {s.type}\n".encode() for s in _FAMILIES + self.extra]
        # OpenMetrics names a counter family without its _total suffix.
        self._om_headers = [
            f"# HELP {n} {s.help}\n# TYPE {n} {s.type}\n".encode()
            for s in _FAMILIES + self.extra
            for n in [s.name.removesuffix("_total") if s.type == "counter" else s.name]
        ]

    def set_label_names(self, names: Iterable[str]) -> None:
        """A reload may add label names: every series then carries them (empty when unset)."""
        new = tuple(sorted(names))
        if new == self.label_names:
            return
        self.label_names = new
        for (target, module, labels), series in self.series.items():
            series.base = self._base(target, module, labels)
            series.invalidate()

    def set_group_labels(self, names: Iterable[str]) -> None:
        """A reload may regroup: the per_group targets' histograms start again in their new groups."""
        new = tuple(names)
        if new == self.group_labels:
            return
        self.group_labels = new
        self.groups.clear()
        for series in self.series.values():
            if series.group is not None:
                series.group = series.hists = None  # sync puts them into their new groups

    def _base(self, target: str, module: str, labels: tuple[tuple[str, str], ...]) -> str:
        given = dict(labels)
        external = dict(self.external_labels)
        pairs = ([("target", target), ("module", module)] + [(n, given.get(n, "")) for n in self.label_names if n not in external]
                 + list(self.external_labels))
        return ",".join(f'{k}="{escape(v)}"' for k, v in pairs)

    def _group(self, module: str, labels: tuple[tuple[str, str], ...]) -> _Group:
        given = dict(labels)
        key = (module, tuple(given.get(n, "") for n in self.group_labels))
        group = self.groups.get(key)
        if group is None:
            external = dict(self.external_labels)
            pairs = ([("module", module)] + [(n, v) for n, v in zip(self.group_labels, key[1]) if n not in external]
                     + list(self.group_only) + list(self.external_labels))
            base = ",".join(f'{k}="{escape(v)}"' for k, v in pairs)
            group = self.groups[key] = _Group(base, len(self.bounds) + 1)
        return group

    def get(self, target: str, module: str, labels: tuple[tuple[str, str], ...], phases: Iterable[str] = (),
            families: Iterable[str] = (), histograms: str = m.PER_TARGET) -> TargetSeries:
        """The target's series; a new one has ``phases``' histograms and the counters and histograms among the
        prober's own ``families`` (MetricSpec names) at 0 (a gauge has no value before a probe sets it).
        ``histograms`` (metrics.HISTOGRAM_MODES) says where its histograms are kept; a change moves them
        (the target's own start again at 0 when it returns to per_target)."""
        key = (target, module, labels)
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = TargetSeries(self._base(target, module, labels))
        if histograms == m.PER_GROUP:
            group = self._group(module, labels)
            if series.group is not group:
                series.group, series.hists = group, group.hists
                series.invalidate()
            if group.hists.add(self, phases, families):
                group.invalidate()
        elif histograms == m.PER_TARGET:
            if series.hists is None or series.group is not None:
                series.group, series.hists = None, _Histograms(len(self.bounds) + 1)
                series.invalidate()
            if series.hists.add(self, phases, families):
                series.invalidate()
        elif series.hists is not None:  # none
            series.group = series.hists = None
            series.invalidate()
        for name in families:
            spec = self.extra_specs.get(name)
            if spec is not None and spec.type == "counter" and name not in series.extra:
                series.extra[name] = 0.0
        return series

    def observe(self, target: str, module: str, labels: tuple[tuple[str, str], ...], result: ProbeResult,
                seconds: float = 0.0, up_seconds: float = 0.0, interval: float | None = None) -> None:
        key = (target, module, labels)
        series = self.series.get(key) or self.get(target, module, labels)
        series.interval = interval
        series.observe_extra(result, self)
        series.observe(result, self.bounds, seconds, up_seconds)

    def sync(self, targets: Mapping[Key, Iterable[str]], families: Mapping[Key, Iterable[str]] | None = None,
             histograms: Mapping[Key, str] | None = None) -> None:
        """Exactly the scheduled targets have series: a new one gets its counters and the histograms
        of the phases its probes go through (``targets[key]``, Prober.expected_phases) at 0 now,
        before its first probe, and so do its prober's own counters and histograms (``families[key]``,
        Prober.metrics); a target no longer scheduled loses its series. ``histograms[key]`` is the
        target's histogram mode (per_target when absent); a group no target uses any more is removed.
        """
        for _ in self.sync_steps(targets, families, histograms):
            pass

    def sync_steps(self, targets: Mapping[Key, Iterable[str]], families: Mapping[Key, Iterable[str]] | None = None,
                   histograms: Mapping[Key, str] | None = None, slice_size: int = 0) -> Iterator[None]:
        """``sync`` in steps: yields after every ``slice_size`` targets (0: never), for a caller on the loop."""
        for key in [k for k in self.series if k not in targets]:
            del self.series[key]
        for i, (key, phases) in enumerate(targets.items(), 1):
            self.get(*key, phases=phases, families=families.get(key, ()) if families else (),
                     histograms=histograms.get(key, m.PER_TARGET) if histograms else m.PER_TARGET)
            if slice_size and i % slice_size == 0:
                yield
        used = {id(s.group) for s in self.series.values() if s.group is not None}
        for gkey in [k for k, g in self.groups.items() if id(g) not in used]:
            del self.groups[gkey]

    def render_chunks(self, chunk_targets: int = RENDER_SLICE, openmetrics: bool = False) -> Iterator[bytes]:
        """The exposition in pieces, rendering at most ``chunk_targets`` targets per piece.

        Dirty targets render lazily, slice by slice, while the first family is
        yielded, so the caller can yield to the event loop between pieces. The
        fragments taken then are reused for every family: one consistent
        snapshot per target even if it is probed again mid-scrape. The other
        families are rendered by then: they go in pieces of about CHUNK_BYTES,
        which keeps a 10k-target scrape from allocating (and page-faulting) one
        buffer of hundreds of MB, in a few dozen writes instead of one per
        slice and family.
        """
        series: list[_Rendered] = [*self.series.values(), *self.groups.values()]
        headers = self._om_headers if openmetrics else self._headers
        # Per slice, its targets' fragments by family (zip transposes them in C: a generator
        # picking one family's fragment from each target took a fifth of a scrape). References only:
        # joining every slice's families here would hold a second copy of the body until its end.
        columns: list[list[tuple[bytes, ...]]] = []
        started = False
        for start in range(0, len(series), chunk_targets):
            column = list(zip(*[s.fragments(self, openmetrics) for s in series[start:start + chunk_targets]]))
            columns.append(column)
            body = b"".join(column[0])
            if body and not started:
                body, started = headers[0] + body, True
            yield body  # also b"": the caller gives the loop a turn after every slice
        # The other families, rendered by now: pieces of about CHUNK_BYTES, each one join.
        for i, header in enumerate(headers[1:], 1):
            pending, size = [header], 0  # a family with no samples has no header
            for n, column in enumerate(columns, 1):
                fragments = column[i]
                pending += fragments
                # An estimate that reads one target's fragment, exact when that one lacks the family.
                size += len(fragments[0]) * len(fragments) or sum(map(len, fragments))
                if size >= CHUNK_BYTES or n == len(columns):
                    text = b"".join(pending)
                    if len(text) > (len(header) if pending[0] is header else 0):
                        yield text
                        pending, size = [], 0

    def refresh(self, openmetrics: bool = False, chunk_targets: int = RENDER_SLICE) -> Iterator[None]:
        """Render the series changed since their last render (in the text format, or OpenMetrics), ahead of
        the next scrape, which then finds them rendered; yields after every ``chunk_targets`` rendered
        (and every REFRESH_LOOKS looked at), so the caller can give the event loop a turn.

        A scrape would render them anyway (the same bytes: a render reads only the series' state, and any
        change of it invalidates the render): done in between, a scrape of 10k targets probed since the
        last one takes about a quarter of the time (docs/benchmarks.md). A result is rendered once either
        way unless a newer one replaces it before the next scrape.
        """
        rendered = looked = 0
        for series in [*self.series.values(), *self.groups.values()]:
            looked += 1
            if series.stale(openmetrics):
                series.fragments(self, openmetrics)
                rendered += 1
            if rendered >= chunk_targets or looked >= REFRESH_LOOKS:
                yield
                rendered = looked = 0

    def render(self) -> bytes:
        return b"".join(self.render_chunks())
