"""connhealth: a connection-health prober and Prometheus exporter."""
from __future__ import annotations

__version__ = "0.1.0"

from .config import Config, ConfigError, Module, load_config, parse_config  # noqa: E402
from .engine import run_probe  # noqa: E402
from .result import Certificate, Failure, Hop, HTTPInfo, Peer, ProbeResult, TCPInfo, TLSInfo  # noqa: E402

__all__ = [
    "__version__",
    "Certificate",
    "Config",
    "ConfigError",
    "Failure",
    "HTTPInfo",
    "Hop",
    "Module",
    "Peer",
    "ProbeResult",
    "TCPInfo",
    "TLSInfo",
    "load_config",
    "parse_config",
    "run_probe",
]
