"""One module per protocol behind one contract (``base.Prober``); importing this package registers them.

``PROBERS`` maps a prober's name to its instance; config, failures, exposition,
store, render and the CLI read it instead of naming probers.
"""
from __future__ import annotations

from . import http, sse, tcp, websocket  # noqa: F401  (registration)
# The drop-in probers after the connection-oriented ones: their own phases come last in the phase order.
from . import dns, grpc, icmp, unix  # noqa: F401,E402  (registration)
from .base import BLACKBOX_ONLY, PROBERS, ProbeContext, Prober, all_phases, phase_label, register

__all__ = ["BLACKBOX_ONLY", "PROBERS", "ProbeContext", "Prober", "all_phases", "phase_label", "register"]
