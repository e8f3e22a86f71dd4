"""connhealth: a connection-health prober and Prometheus exporter.

The public names load lazily (PEP 562), so importing a lower floor such as
``exporter.net.connection`` does not pull in the engine or the config layer.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "Certificate": "result",
    "Config": "config",
    "ConfigError": "schema",
    "Details": "result",
    "Failure": "result",
    "Hop": "result",
    "Module": "config",
    "Peer": "result",
    "Phase": "result",
    "ProbeResult": "result",
    "TCPInfo": "result",
    "TLSInfo": "result",
    "load_config": "config",
    "parse_config": "config",
    "run_probe": "engine",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
