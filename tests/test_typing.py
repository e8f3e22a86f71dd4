"""The package type-checks: mypy over exporter/, dashboards/ and alerts/ (config in pyproject.toml)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_reports_no_errors() -> None:
    proc = subprocess.run([sys.executable, "-m", "mypy", "exporter", "dashboards", "alerts"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
