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
    buckets: tuple[float, ...] = ()  # a histogram's own bounds (empty: the store's, DEFAULT_BUCKETS by default)


# The label naming the prober (its region or location) on every series of a process: serve --prober NAME,
# or external_labels: {prober: NAME}. Rules and dashboards aggregate across it and break down by it.
PROBER_LABEL = "prober"

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
TCP_SYN_RETRANSMITS = "connhealth_tcp_syn_retransmits_total"
KEEPALIVE_REUSED = "connhealth_keepalive_reused"
KEEPALIVE_SERVER_IDLE = "connhealth_keepalive_server_idle_seconds"
KEEPALIVE_CLIENT_IDLE = "connhealth_keepalive_client_idle_seconds"
TLS_SESSION_RESUMED = "connhealth_tls_session_resumed"
TLS_HANDSHAKE = "connhealth_tls_handshake_seconds"

# Families a prober declares itself (Prober.metrics), named here so dashboards and alerts share the names.
SSE_HEARTBEAT_GAP = "connhealth_sse_heartbeat_gap_seconds"
SSE_MAX_GAP = "connhealth_sse_max_gap_seconds"
SSE_EVENTS = "connhealth_sse_events_total"
SSE_HEARTBEATS = "connhealth_sse_heartbeats_total"
WS_PING_RTT = "connhealth_websocket_ping_rtt_seconds"
WS_PINGS = "connhealth_websocket_pings_total"

# --- /probe (blackbox names; connhealth additions below) ----------------------
FAILURE_INFO = "probe_failure_info"
PROBE_PHASE_SECONDS = "probe_phase_duration_seconds"
PROBE_HOP_PHASE_SECONDS = "probe_hop_phase_duration_seconds"
PROBE_TCP_RTT = "probe_tcp_rtt_seconds"
PROBE_TCP_RETRANSMITS = "probe_tcp_retransmits"
PROBE_KEEPALIVE_REUSED = "probe_keepalive_reused"
PROBE_KEEPALIVE_SERVER_IDLE = "probe_keepalive_server_idle_seconds"
PROBE_TLS_SESSION_RESUMED = "probe_tls_session_resumed"
PROBE_TLS_HANDSHAKE = "probe_tls_handshake_seconds"

# --- the exporter itself ---------------------------------------------------------
BUILD_INFO = "connhealth_build_info"
RELOAD_SUCCESS = "connhealth_config_last_reload_successful"
RELOAD_TIMESTAMP = "connhealth_config_last_reload_success_timestamp_seconds"
RELOADS = "connhealth_config_reloads_total"
# blackbox_exporter's own names, set beside ours: its users' alerts read them (awesome-prometheus-alerts'
# BlackboxConfigurationReloadFailure: blackbox_exporter_config_last_reload_successful != 1).
BB_RELOAD_SUCCESS = "blackbox_exporter_config_last_reload_successful"
BB_RELOAD_TIMESTAMP = "blackbox_exporter_config_last_reload_success_timestamp_seconds"
BB_MODULE_UNKNOWN = "blackbox_module_unknown_total"
IN_FLIGHT = "connhealth_probes_in_flight"
SCHEDULER_LAG = "connhealth_scheduler_lag_seconds"
LOOP_LAG = "connhealth_event_loop_lag_seconds"
SELF_DELAY = "connhealth_probe_self_delay_seconds"
SKIPPED = "connhealth_probes_skipped_total"
SCHEDULED_TARGETS = "connhealth_scheduled_targets"
TARGET_FILE_ERRORS = "connhealth_target_file_errors_total"
TRACE_EXPORT_DROPS = "connhealth_trace_spans_dropped_total"
BACKGROUND_FAILURES = "connhealth_background_task_failures_total"
PROBE_REJECTED = "connhealth_probe_requests_rejected_total"
# serve --workers: the parent's own series.
WORKERS_CONFIGURED = "connhealth_workers"
WORKERS_READY = "connhealth_workers_ready"
WORKER_RESTARTS = "connhealth_worker_restarts_total"
# The supervised background tasks, as the task label names them.
BACKGROUND_TASKS: tuple[str, ...] = ("scheduler", "file_watcher", "loop_lag", "trace_export", "prerender")

# Where a target's histograms (probe duration, phases, the probers' own) are kept
# (``histograms:`` of a target group): per target, summed per group (the module and
# the scheduler's ``group_labels``), or not at all. The counters and gauges stay per target.
PER_TARGET, PER_GROUP, NO_HISTOGRAMS = "per_target", "per_group", "none"
HISTOGRAM_MODES: tuple[str, ...] = (PER_TARGET, PER_GROUP, NO_HISTOGRAMS)
DEFAULT_GROUP_LABELS: tuple[str, ...] = ("service", "region", "cluster")

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
    MetricSpec(TCP_SYN_RETRANSMITS, "counter", TARGET_LABELS, "SYN retransmits: TCP_INFO total retransmits read right after connect, summed over probes."),
    MetricSpec(KEEPALIVE_REUSED, "gauge", TARGET_LABELS, "1 if the last keep-alive check reused its connection after keepalive.idle, else 0 (http keepalive)."),
    MetricSpec(KEEPALIVE_SERVER_IDLE, "gauge", TARGET_LABELS, "Seconds after response 1 that the server closed the idle connection (or the bound search: true found); absent when it did not close."),
    MetricSpec(KEEPALIVE_CLIENT_IDLE, "gauge", TARGET_LABELS, "The configured keepalive.idle: the client idle the server idle is compared with."),
    MetricSpec(TLS_SESSION_RESUMED, "gauge", TARGET_LABELS, "1 if the last resumption check's second handshake resumed the session, else 0 (tls_resumption)."),
    MetricSpec(TLS_HANDSHAKE, "gauge", TARGET_LABELS + ("kind",), "The last resumption check's handshakes: kind=full (the first) and kind=resumed (the second, resumed or not)."),
)

SELF: tuple[MetricSpec, ...] = (
    MetricSpec(BUILD_INFO, "gauge", ("version", "python"), "Always 1; labels carry the build."),
    MetricSpec(RELOAD_SUCCESS, "gauge", (), "1 if the last configuration reload succeeded."),
    MetricSpec(RELOAD_TIMESTAMP, "gauge", (), "Unix time of the last successful configuration load."),
    MetricSpec(RELOADS, "counter", ("result",), "Configuration reloads by result (success, failure)."),
    # blackbox_exporter's help texts, word for word.
    MetricSpec(BB_RELOAD_SUCCESS, "gauge", (), "Blackbox exporter config loaded successfully."),
    MetricSpec(BB_RELOAD_TIMESTAMP, "gauge", (), "Timestamp of the last successful configuration reload."),
    MetricSpec(BB_MODULE_UNKNOWN, "counter", (), "Count of unknown modules requested by probes"),
    MetricSpec(IN_FLIGHT, "gauge", ("mode",), "Probes running now (mode=scheduled or probe_endpoint)."),
    MetricSpec(SCHEDULER_LAG, "histogram", (), "Actual minus planned start of scheduled probes."),
    MetricSpec(LOOP_LAG, "histogram", (), "Event-loop lag: how late a 0.25 s timer fires."),
    MetricSpec(SELF_DELAY, "histogram", ("mode",), "The exporter's own delay per probe (mode=scheduled or probe_endpoint): the event loop's clock minus the kernel's timestamps over the kernel-timed phases (connect, tls, first_byte, transfer), i.e. how late the loop saw what the kernel had received; the phases themselves exclude it."),
    MetricSpec(SKIPPED, "counter", ("reason",), "Scheduled probes not run: still_running (previous probe of the target not finished), shutting_down, probe_error (the probe raised instead of returning a result: a bug, logged)."),
    MetricSpec(SCHEDULED_TARGETS, "gauge", (), "Targets the scheduler runs."),
    MetricSpec(TARGET_FILE_ERRORS, "counter", (), "Target files that could not be read or parsed."),
    MetricSpec(TRACE_EXPORT_DROPS, "counter", ("reason",), "Trace spans dropped instead of exported, by reason (queue_full, export_failed)."),
    MetricSpec(BACKGROUND_FAILURES, "counter", ("task",), "Failures of a background task (scheduler, file_watcher, loop_lag, trace_export, prerender); each is logged and the task restarts with backoff."),
    MetricSpec(PROBE_REJECTED, "counter", (), "/probe requests answered 503 because --probe.concurrency requests were already running."),
)

# Only with serve --workers N (N > 1): the parent's series. The workers' own SELF series then carry a
# worker label (all but connhealth_build_info, the same in every worker).
WORKERS: tuple[MetricSpec, ...] = (
    MetricSpec(WORKERS_CONFIGURED, "gauge", (), "Worker processes configured (serve --workers)."),
    MetricSpec(WORKERS_READY, "gauge", (), "Worker processes running and ready."),
    MetricSpec(WORKER_RESTARTS, "counter", ("worker",), "Worker processes started again after they exited unasked."),
)

PROBE_ENDPOINT_EXTRA: tuple[MetricSpec, ...] = (
    MetricSpec(FAILURE_INFO, "gauge", ("phase", "reason"), "1 with the failure's phase and reason when the probe failed; absent on success."),
    MetricSpec(PROBE_PHASE_SECONDS, "gauge", ("phase",), "Phases of the probe (last hop), absent when not reached (unlike probe_http_duration_seconds, which reports 0)."),
    MetricSpec(PROBE_HOP_PHASE_SECONDS, "gauge", ("hop", "phase"), "Phases of each redirect hop (hop=0 is the first request)."),
    MetricSpec(PROBE_TCP_RTT, "gauge", (), "Kernel smoothed RTT right after connect (TCP_INFO)."),
    MetricSpec(PROBE_TCP_RETRANSMITS, "gauge", (), "Kernel retransmits right after connect (TCP_INFO)."),
    MetricSpec(PROBE_KEEPALIVE_REUSED, "gauge", (), "1 if the keep-alive check reused its connection after keepalive.idle."),
    MetricSpec(PROBE_KEEPALIVE_SERVER_IDLE, "gauge", (), "Seconds after response 1 that the server closed the idle connection (absent: it did not)."),
    MetricSpec(PROBE_TLS_SESSION_RESUMED, "gauge", (), "1 if the resumption check's second handshake resumed the session."),
    MetricSpec(PROBE_TLS_HANDSHAKE, "gauge", ("kind",), "The resumption check's handshakes: kind=full and kind=resumed."),
)


class ProbeFamily:
    """A /probe gauge family a prober declares; its '# HELP'/'# TYPE' header is built once, not per probe."""

    __slots__ = ("name", "help", "type", "header", "unlabelled")

    def __init__(self, name: str, help: str, type: str = "gauge") -> None:  # noqa: A002 - Prometheus' words
        self.name = name
        self.help = help
        self.type = type
        self.header = f"# HELP {name} {help}\n# TYPE {name} {type}\n"
        self.unlabelled = f"{self.header}{name} "  # the family with one unlabelled sample, up to its value

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
