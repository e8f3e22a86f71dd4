"""blackbox_exporter's own files, as the Debian package installs them, load unchanged.

The paths are read from the package's file list at test time (``dpkg -L``), not copied into the
repository. Until the dns/icmp/grpc/unix probers and the remaining HTTP options are registered
(they arrive with their own changes of issue 10), the only errors allowed are exactly those, and
the test is an expected failure that names them; once they exist, the whole file must load.
"""
from __future__ import annotations

import re
import subprocess

import pytest

from exporter.config import check_config, config_from_data
from exporter.schema import load_data_file
from exporter.probers import PROBERS

PACKAGE = "prometheus-blackbox-exporter"
_NOT_YET_PROBER = re.compile(r"modules\.[^.]+\.prober: prober '(\w+)' is not supported by connhealth")
_NOT_YET_FIELD = re.compile(r"modules\.[^.]+\.http\.(\w+): unsupported field \(valid in blackbox_exporter")
# HTTP options that come with their own change (issue 10): compression, proxy, auth, ...
HTTP_OPTIONS_TO_COME = {"basic_auth", "bearer_token", "bearer_token_file", "authorization", "oauth2", "proxy_url",
                        "no_proxy", "proxy_from_environment", "proxy_connect_header", "skip_resolve_phase_with_proxy",
                        "compression", "body_file", "http_headers", "no_follow_redirects",
                        "fail_if_body_json_matches_cel", "fail_if_body_json_not_matches_cel"}


def installed(name: str) -> str:
    try:
        listing = subprocess.run(["dpkg", "-L", PACKAGE], capture_output=True, text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.fail(f"{PACKAGE} is not installed (scripts/install-system-deps.sh installs it): {exc}")
    paths = [p for p in listing.splitlines() if p.endswith("/" + name)]
    assert paths, f"{PACKAGE} installs no {name}"
    return paths[0]


def load_or_name_what_is_missing(path: str) -> None:
    config, errors, warnings = check_config(path)
    if config is not None:
        assert warnings == []
        return
    waiting = set()
    for error in errors:
        if (m := _NOT_YET_PROBER.match(error)) and m.group(1) not in PROBERS:
            waiting.add(f"prober {m.group(1)}")
        elif (m := _NOT_YET_FIELD.match(error)) and m.group(1) in HTTP_OPTIONS_TO_COME:
            waiting.add(f"http.{m.group(1)}")
        else:
            pytest.fail(f"{path}: {error}")  # anything else is a real refusal
    pytest.xfail(f"{path}: waits for {', '.join(sorted(waiting))} ({len(errors)} modules)")


def test_debian_blackbox_yml_loads_unchanged() -> None:
    load_or_name_what_is_missing(installed("blackbox.yml"))  # /etc/prometheus/blackbox.yml


def test_debian_example_yml_loads_unchanged() -> None:
    load_or_name_what_is_missing(installed("example.yml"))


def test_tcp_and_http_modules_of_the_stock_files_load_today() -> None:
    """Whatever waits for other changes, the tcp and http modules of both files load now."""
    for name in ("blackbox.yml", "example.yml"):
        _, errors, _ = check_config(installed(name))
        assert [e for e in errors if not _NOT_YET_PROBER.match(e) and not _NOT_YET_FIELD.match(e)] == []
    # The modules of blackbox.yml whose prober exists, as blackbox reads them.
    raw = load_data_file(installed("blackbox.yml"))
    raw["modules"] = {k: v for k, v in raw["modules"].items() if v["prober"] in PROBERS}
    config = config_from_data(raw)
    assert {"http_2xx", "http_post_2xx", "tcp_connect", "pop3s_banner", "ssh_banner", "irc_banner"} <= set(config.modules)
    pop3 = config.modules["pop3s_banner"].settings
    assert pop3.tls and pop3.query_response[0].expect.search(b"OK ready")
    assert not pop3.query_response[0].expect.search(b"+OK ready")  # ^+ is a repeated ^ in Go: "+OK" never matches
    assert config.modules["irc_banner"].settings.query_response[2].send == b"PONG ${1}"  # expanded per probe
