"""blackbox_exporter's own files, as the Debian package installs them, load unchanged.

The paths are read from the package's file list at test time (``dpkg -L``), not copied into the
repository.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from exporter.config import check_config, config_from_data
from exporter.schema import load_data_file

PACKAGE = "prometheus-blackbox-exporter"
FIXTURES = Path(__file__).parent / "fixtures" / "blackbox_example"


def installed(name: str) -> str:
    try:
        listing = subprocess.run(["dpkg", "-L", PACKAGE], capture_output=True, text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.fail(f"{PACKAGE} is not installed (scripts/install-system-deps.sh installs it): {exc}")
    paths = [p for p in listing.splitlines() if p.endswith("/" + name)]
    assert paths, f"{PACKAGE} installs no {name}"
    return paths[0]


def test_debian_blackbox_yml_loads_unchanged() -> None:
    config, errors, warnings = check_config(installed("blackbox.yml"))  # /etc/prometheus/blackbox.yml
    assert (errors, warnings) == ([], [])
    assert config is not None and set(load_data_file(installed("blackbox.yml"))["modules"]) <= set(config.modules)


def test_debian_example_yml_loads_unchanged() -> None:
    """Every module loads; the one CA file that exists only on the author's machine is a warning, as in blackbox
    (which reads it when a probe uses it)."""
    config, errors, warnings = check_config(installed("example.yml"))
    assert errors == []
    assert warnings == ["modules.http_custom_ca_example.http.tls_config.ca_file /certs/my_cert.crt: No such file or "
                        "directory (probes using it will fail with config_file_missing)"]
    assert config is not None and set(load_data_file(installed("example.yml"))["modules"]) <= set(config.modules)


def test_stock_modules_mean_what_they_mean_in_blackbox() -> None:
    config = config_from_data(load_data_file(installed("blackbox.yml")))
    assert {"http_2xx", "http_post_2xx", "tcp_connect", "pop3s_banner", "ssh_banner", "irc_banner"} <= set(config.modules)
    pop3 = config.modules["pop3s_banner"].settings
    assert pop3.tls and pop3.query_response[0].expect.search(b"OK ready")
    assert not pop3.query_response[0].expect.search(b"+OK ready")  # ^+ is a repeated ^ in Go: "+OK" never matches
    assert config.modules["irc_banner"].settings.query_response[2].send == b"PONG ${1}"  # expanded per probe


def test_our_example_fixture_loads_as_one_file(tmp_path) -> None:
    """The three fragments of tests/fixtures/blackbox_example (each probed against its peers by its own test:
    test_blackbox_example.py, test_blackbox_example_http.py, test_blackbox_example_probers.py) are one
    blackbox.yml between them: every module shape of blackbox's latest example.yml, loading together."""
    modules: dict = {}
    fragments = sorted(FIXTURES.glob("*.yml"))
    assert [p.name for p in fragments] == ["core.yml", "http.yml", "probers.yml"]
    for fragment in fragments:
        part = load_data_file(str(fragment))["modules"]
        assert not set(part) & set(modules), f"{fragment.name} redefines a module"
        modules.update(part)
    whole = tmp_path / "blackbox.yml"
    whole.write_text(yaml.safe_dump({"modules": modules}))
    config, errors, _ = check_config(str(whole))
    assert errors == []
    assert config is not None and set(modules) <= set(config.modules)
    assert {m.prober for name, m in config.modules.items() if name in modules} == {"http", "tcp", "dns", "icmp", "grpc", "unix"}
