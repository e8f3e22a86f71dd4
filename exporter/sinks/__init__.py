"""Sinks read finished ProbeResults only: continuous series, /probe text, traces, recent-probes history."""
