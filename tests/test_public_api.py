"""The public API is exactly what exporter.__all__ says; changing it is a deliberate act."""
from __future__ import annotations

import inspect
import re
from pathlib import Path

import exporter
from exporter import config, engine, result

EXPECTED_ALL = [
    "__version__",
    "Certificate",
    "Config",
    "ConfigError",
    "Details",
    "Failure",
    "Hop",
    "Module",
    "Peer",
    "Phase",
    "ProbeResult",
    "TCPInfo",
    "TLSInfo",
    "load_config",
    "parse_config",
    "run_probe",
]


def test_all_is_pinned():
    assert exporter.__all__ == EXPECTED_ALL


def test_every_name_resolves_to_its_home():
    homes = {
        "Config": config, "ConfigError": config, "Module": config, "load_config": config, "parse_config": config,
        "run_probe": engine,
        "Certificate": result, "Details": result, "Failure": result, "Hop": result, "Peer": result, "Phase": result,
        "ProbeResult": result, "TCPInfo": result, "TLSInfo": result,
    }
    for name in EXPECTED_ALL:
        assert hasattr(exporter, name), name
    for name, module in homes.items():
        assert getattr(exporter, name) is getattr(module, name), name


def test_star_import_exports_exactly_all():
    namespace: dict = {}
    exec("from exporter import *", namespace)
    assert {k for k in namespace if k != "__builtins__"} == set(EXPECTED_ALL)


def test_version_matches_pyproject():
    pyproject = (Path(__file__).parent.parent / "pyproject.toml").read_text()
    assert re.search(r'^version = "([^"]+)"', pyproject, re.M).group(1) == exporter.__version__


def test_run_probe_signature():
    sig = inspect.signature(exporter.run_probe)
    params = list(sig.parameters.values())
    assert [p.name for p in params[:3]] == ["target", "module", "timeout"]
    assert sig.parameters["timeout"].default is None
    # anything added later must be optional, so existing callers keep working
    assert all(p.default is not inspect.Parameter.empty for p in params[2:])
    assert inspect.iscoroutinefunction(exporter.run_probe)


def test_config_error_is_a_value_error():
    assert issubclass(exporter.ConfigError, ValueError)
