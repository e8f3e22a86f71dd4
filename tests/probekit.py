"""Helpers shared by the probe-engine tests (test_probe_*.py, test_cli.py).

Not a conftest: fixtures here are imported explicitly by the test files that
use them, so each test file says where its fixtures come from.
"""
from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from exporter.certs import CertFactory, Issued
from exporter.config import Module, parse_config
from exporter.result import ProbeResult
from exporter.schema import plain

try:  # works whether or not tests/ becomes a package later
    from tests.peers import BlackholeNet
except ImportError:  # pragma: no cover - depends on how pytest put us on sys.path
    from peers import BlackholeNet

# Exact reasons need exact setups; a hung peer must fail the test, not the suite.
PER_TEST_TIMEOUT = 30

_bh_ok, _bh_why = BlackholeNet.available()
# `make test` installs every peer and runs as root: a missing one is a failure, never a skip.
needs_netns = pytest.mark.netns


def surfaces_showing(secret: str, result: ProbeResult, module: Module) -> list[str]:
    """The outputs of one probe that contain ``secret``: its JSON (hops, details), its log lines, its
    /probe text and the module's config as /config shows it. A secret belongs in none of them."""
    from exporter.sinks.exposition import probe_text

    shown = {"json": json.dumps(result.to_dict()), "logs": "\n".join(result.logs), "/probe": probe_text(result),
             "config": json.dumps(plain(module.settings))}
    return [name for name, text in shown.items() if secret in text]


def mod(prober: str = "http", /, **fields: Any) -> Module:
    """A module parsed from YAML text, exactly as a user's config would be."""
    text = yaml.safe_dump({"modules": {"m": {"prober": prober, **fields}}})
    return parse_config(text, "test").modules["m"]


def https_mod(ca: Issued, **http: Any) -> Module:
    """An http module trusting ``ca`` (merged into any given tls_config)."""
    tls = {"ca_file": ca.cert_file, **http.pop("tls_config", {})}
    return mod("http", http={**http, "tls_config": tls})


def resolver_for(dns_server: Any) -> dict[str, Any]:
    return {"nameservers": [f"{dns_server.host}:{dns_server.port}"]}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertFactory:
    return CertFactory(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def ca(certs: CertFactory) -> Issued:
    return certs.ca("connhealth probe-test CA")


@pytest.fixture(scope="module")
def leaf(certs: CertFactory, ca: Issued) -> Issued:
    return certs.leaf(ca)


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A 127.0.0.1 port that is bound (so nobody else gets it) but not listening:
    a SYN to it is answered with RST, every time."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@pytest.fixture(scope="module")
def blackhole() -> Iterator[BlackholeNet]:
    if not _bh_ok:
        pytest.fail(f"BlackholeNet unavailable (make test runs as root with iproute2): {_bh_why}")
    with BlackholeNet() as net:
        yield net
