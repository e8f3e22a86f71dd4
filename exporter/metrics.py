"""The metric contract: every name connhealth exports, written once.

``dashboards/`` and ``alerts/`` import these constants; ``docs/metrics.md``
documents them and a test keeps the two in step.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class MetricSpec:
    name: str
    type: str  # counter | gauge | histogram | info-gauge
    labels: tuple[str, ...]
    help: str


# Labels every continuous-mode series carries, before the user's target labels.
TARGET_LABELS: tuple[str, ...] = ("target", "module")

# --- continuous mode: per target ------------------------------------------------
PROBE_ATTEMPTS = "connhealth_probe_attempts_total"
PROBE_SUCCESSES = "connhealth_probe_successes_total"
PROBE_FAILURES = "connhealth_probe_failures_total"
OBSERVED_SECONDS = "connhealth_probe_observed_seconds_total"
UP_SECONDS = "connhealth_probe_up_seconds_total"
PROBE_DURATION = "connhealth_probe_duration_seconds"
PHASE_DURATION = "connhealth_probe_phase_duration_seconds"
PROBE_SUCCESS = "connhealth_probe_success"
LAST_SUCCESS = "connhealth_probe_last_success_timestamp_seconds"
LAST_PROBE = "connhealth_probe_last_timestamp_seconds"
PROBE_INTERVAL = "connhealth_probe_interval_seconds"
CERT_EXPIRY = "connhealth_tls_cert_earliest_expiry_timestamp_seconds"
TLS_VERSION = "connhealth_tls_version_info"
TCP_RTT = "connhealth_tcp_rtt_seconds"
TCP_RETRANSMITS = "connhealth_tcp_retransmits"

# --- /probe (blackbox names; connhealth additions below) ----------------------
FAILURE_INFO = "probe_failure_info"
PROBE_PHASE_SECONDS = "probe_phase_duration_seconds"
PROBE_HOP_PHASE_SECONDS = "probe_hop_phase_duration_seconds"
PROBE_TCP_RTT = "probe_tcp_rtt_seconds"
PROBE_TCP_RETRANSMITS = "probe_tcp_retransmits"

# --- the exporter itself ---------------------------------------------------------
BUILD_INFO = "connhealth_build_info"
RELOAD_SUCCESS = "connhealth_config_last_reload_successful"
RELOAD_TIMESTAMP = "connhealth_config_last_reload_success_timestamp_seconds"
RELOADS = "connhealth_config_reloads_total"
IN_FLIGHT = "connhealth_probes_in_flight"
SCHEDULER_LAG = "connhealth_scheduler_lag_seconds"
LOOP_LAG = "connhealth_event_loop_lag_seconds"
SKIPPED = "connhealth_probes_skipped_total"
SCHEDULED_TARGETS = "connhealth_scheduled_targets"
TARGET_FILE_ERRORS = "connhealth_target_file_errors_total"
TRACE_EXPORT_DROPS = "connhealth_trace_spans_dropped_total"

# Connect-latency friendly: dense below 0.5 s, includes the 0.3 s SLO threshold.
# 12 buckets: every bucket is a series per target and phase, and 10k targets x
# 7 histograms x (buckets + 3) lines is what a scrape costs.
DEFAULT_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0)

CONTINUOUS: tuple[MetricSpec, ...] = (
    MetricSpec(PROBE_ATTEMPTS, "counter", TARGET_LABELS, "Probes run against the target."),
    MetricSpec(PROBE_SUCCESSES, "counter", TARGET_LABELS, "Probes that succeeded."),
    MetricSpec(OBSERVED_SECONDS, "counter", TARGET_LABELS, "Wall time the target's probes cover: each probe adds the time since the target's previous probe (the availability SLI's denominator)."),
    MetricSpec(UP_SECONDS, "counter", TARGET_LABELS, "The part of the observed time counted as up: each gap between two probes counts half for each of them, as up when that probe succeeded (the availability SLI's numerator)."),
    MetricSpec(PROBE_FAILURES, "counter", TARGET_LABELS + ("phase", "reason"), "Probes that failed, by the phase and reason of the failure."),
    MetricSpec(PROBE_DURATION, "histogram", TARGET_LABELS, "Whole-probe duration, successful or not."),
    MetricSpec(PHASE_DURATION, "histogram", TARGET_LABELS + ("phase",), "Duration of each phase that completed (dns, connect, tls, request, first_byte, transfer); phases of every redirect hop are observed."),
    MetricSpec(PROBE_SUCCESS, "gauge", TARGET_LABELS, "1 if the last probe succeeded, else 0."),
    MetricSpec(LAST_SUCCESS, "gauge", TARGET_LABELS, "Unix time the last successful probe finished."),
    MetricSpec(LAST_PROBE, "gauge", TARGET_LABELS, "Unix time the last probe finished."),
    MetricSpec(PROBE_INTERVAL, "gauge", TARGET_LABELS, "The target's configured probe interval (staleness is judged against it)."),
    MetricSpec(CERT_EXPIRY, "gauge", TARGET_LABELS, "Earliest notAfter of the presented certificate chain (last TLS handshake that received the server's certificates, including one that failed verification)."),
    MetricSpec(TLS_VERSION, "gauge", TARGET_LABELS + ("version",), "1 for the TLS version of the last completed handshake."),
    MetricSpec(TCP_RTT, "gauge", TARGET_LABELS, "Kernel smoothed RTT (TCP_INFO tcpi_rtt) right after connect, last probe."),
    MetricSpec(TCP_RETRANSMITS, "gauge", TARGET_LABELS, "Kernel retransmit count (incl. SYN) right after connect, last probe."),
)

SELF: tuple[MetricSpec, ...] = (
    MetricSpec(BUILD_INFO, "gauge", ("version", "python"), "Always 1; labels carry the build."),
    MetricSpec(RELOAD_SUCCESS, "gauge", (), "1 if the last configuration reload succeeded."),
    MetricSpec(RELOAD_TIMESTAMP, "gauge", (), "Unix time of the last successful configuration load."),
    MetricSpec(RELOADS, "counter", ("result",), "Configuration reloads by result (success, failure)."),
    MetricSpec(IN_FLIGHT, "gauge", ("mode",), "Probes running now (mode=scheduled or probe_endpoint)."),
    MetricSpec(SCHEDULER_LAG, "histogram", (), "Actual minus planned start of scheduled probes."),
    MetricSpec(LOOP_LAG, "histogram", (), "Event-loop lag: how late a 0.25 s timer fires."),
    MetricSpec(SKIPPED, "counter", ("reason",), "Scheduled probes not run: still_running (previous probe of the target not finished), shutting_down, probe_error (the probe raised instead of returning a result: a bug, logged)."),
    MetricSpec(SCHEDULED_TARGETS, "gauge", (), "Targets the scheduler runs."),
    MetricSpec(TARGET_FILE_ERRORS, "counter", (), "Target files that could not be read or parsed."),
    MetricSpec(TRACE_EXPORT_DROPS, "counter", ("reason",), "Trace spans dropped instead of exported, by reason (queue_full, export_failed)."),
)

PROBE_ENDPOINT_EXTRA: tuple[MetricSpec, ...] = (
    MetricSpec(FAILURE_INFO, "gauge", ("phase", "reason"), "1 with the failure's phase and reason when the probe failed; absent on success."),
    MetricSpec(PROBE_PHASE_SECONDS, "gauge", ("phase",), "Phases of the probe (last hop), absent when not reached (unlike probe_http_duration_seconds, which reports 0)."),
    MetricSpec(PROBE_HOP_PHASE_SECONDS, "gauge", ("hop", "phase"), "Phases of each redirect hop (hop=0 is the first request)."),
    MetricSpec(PROBE_TCP_RTT, "gauge", (), "Kernel smoothed RTT right after connect (TCP_INFO)."),
    MetricSpec(PROBE_TCP_RETRANSMITS, "gauge", (), "Kernel retransmits right after connect (TCP_INFO)."),
)


class ProbeFamily:
    """A /probe gauge family a prober declares; its '# HELP'/'# TYPE' header is built once, not per probe."""

    __slots__ = ("name", "help", "type", "header")

    def __init__(self, name: str, help: str, type: str = "gauge") -> None:  # noqa: A002 - Prometheus' words
        self.name = name
        self.help = help
        self.type = type
        self.header = f"# HELP {name} {help}\n# TYPE {name} {type}\n"

    def __repr__(self) -> str:
        return f"ProbeFamily({self.name!r})"


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def label_text(pairs: tuple[tuple[str, str], ...]) -> str:
    """Label pairs as exposition text (``a="x",b="y"``, values escaped), without the braces."""
    return ",".join(f'{k}="{escape_label_value(v)}"' for k, v in pairs)


# A family's value as a prober hands it to the /probe exposition: one unlabelled
# value, or (labels, value) samples. Labels are pairs, or, for a label set used
# on every probe, its ``label_text`` rendered once (rendering it costs more
# than the rest of the sample).
ProbeSamples = float | list[tuple[tuple[tuple[str, str], ...] | str, float]]
