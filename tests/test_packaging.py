"""The wheel: one top-level package, ``connhealth``, with everything a user needs, installed in a clean venv.

Builds the wheel with pip (the build backend from pyproject.toml), installs it
with ``--no-deps --no-index`` into a fresh venv whose third-party dependencies
come from this test venv's site-packages (a .pth line: no editable hooks, no
network), and runs the installed ``connhealth`` from a directory where no
checkout can be imported by accident.
"""
from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(REPO), "-w", str(out)],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (whl,) = out.glob("connhealth-*.whl")
    return whl


@pytest.fixture(scope="module")
def clean_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    before = _site_entries(py)
    proc = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    added = _site_entries(py) - before
    assert added == {"connhealth", f"connhealth-{_version()}.dist-info"}, added
    # The dependencies (aiohttp, ...) from this venv, without its .pth hooks (the editable checkout).
    site = Path(_run(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    (site / "deps-from-test-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def _version() -> str:
    from exporter import __version__

    return __version__


def _site_entries(py: Path) -> set[str]:
    site = _run(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip()
    return {p.name for p in Path(site).iterdir()} - {"__pycache__"}


def _run(*cmd: str | Path, cwd: Path | None = None) -> str:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120, cwd=cwd)
    assert proc.returncode == 0, (cmd, proc.stdout, proc.stderr)
    return proc.stdout


def test_wheel_has_one_top_level_package_and_every_module(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"connhealth", f"connhealth-{_version()}.dist-info"}
    for part in ("exporter", "dashboards", "alerts"):
        for source in (REPO / part).rglob("*.py"):
            assert f"connhealth/{source.relative_to(REPO).as_posix()}" in names, f"{source} missing from the wheel"
    for doc in ("connhealth/alerts/RUNBOOKS.md", "connhealth/alerts/alertmanager.example.yml", "connhealth/examples/connhealth.yml",
                "connhealth/dashboards/generated/slo-overview.json"):
        assert doc in names
    meta = zipfile.ZipFile(wheel).read(f"connhealth-{_version()}.dist-info/METADATA").decode()
    urls = [line for line in meta.splitlines() if line.startswith("Project-URL: ")]
    assert {u.split(":")[1].split(",")[0].strip() for u in urls} >= {"Homepage", "Source", "Issues", "Runbooks"}
    entry = zipfile.ZipFile(wheel).read(f"connhealth-{_version()}.dist-info/entry_points.txt").decode()
    assert "connhealth = connhealth.exporter.cli:main" in entry


def test_installed_wheel_imports_only_connhealth(clean_venv: Path, tmp_path: Path) -> None:
    py = clean_venv / "bin" / "python"
    out = _run(py, "-c", "import sys, connhealth, connhealth.exporter.engine, connhealth.dashboards.build, "
               "connhealth.alerts.rules, connhealth.exporter.server; "
               "print(connhealth.__version__, sorted({m.split('.')[0] for m in sys.modules} & {'exporter', 'dashboards', 'alerts'}))",
               cwd=tmp_path)
    assert out == f"{_version()} []\n"
    assert _run(clean_venv / "bin" / "connhealth", "--version", cwd=tmp_path) == f"connhealth {_version()}\n"
    # generate crosses the packages (exporter -> alerts, dashboards); check-config reads the shipped example.
    out = _run(clean_venv / "bin" / "connhealth", "generate", "--out", str(tmp_path / "gen"), cwd=tmp_path)
    assert out.startswith("wrote ") and (tmp_path / "gen" / "alerts" / "generated" / "connhealth-slo.rules.yml").is_file()
    example = _run(py, "-c", "import connhealth.examples, pathlib; print(pathlib.Path(connhealth.examples.__path__[0]) / 'connhealth.yml')",
                   cwd=tmp_path).strip()
    assert _run(clean_venv / "bin" / "connhealth", "check-config", example, cwd=tmp_path).startswith(f"{example}: OK (")


def test_dockerfile_copies_every_mapped_directory_and_has_a_healthcheck() -> None:
    import tomllib

    dockerfile = (REPO / "Dockerfile").read_text()
    mapped = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values()
    for directory in mapped:
        top = directory.split("/")[0]
        assert f"COPY {top} ./{top}" in dockerfile, f"the image build would miss {top}/"
    (health,) = [line for line in dockerfile.splitlines() if line.startswith("HEALTHCHECK")]
    assert "--interval=" in health and "--timeout=" in health
    assert "http://127.0.0.1:9115/-/healthy" in dockerfile
