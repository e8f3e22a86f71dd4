"""connhealth: connection-health prober and Prometheus exporter, its Grafana dashboards and its alert rules.

The one top-level package a wheel installs. In the repository its parts live
side by side (``exporter/``, ``dashboards/``, ``alerts/``, ``examples/``);
pyproject.toml's ``package-dir`` maps them to ``connhealth.exporter``,
``connhealth.dashboards``, ``connhealth.alerts`` and ``connhealth.examples``.
"""
from .exporter import __version__

__all__ = ["__version__"]
