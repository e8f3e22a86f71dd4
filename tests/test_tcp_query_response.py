"""tcp query_response beyond send/expect: YAML !!binary values, expect_bytes, labels, secrets; and
/probe?hostname= as blackbox reads it for tcp (the TLS server name when tls_config sets none).

Probing each shape against a real peer: tests/test_blackbox_example.py; ${1} against blackbox
itself: tests/test_blackbox_compat_regexp.py.
"""
from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from exporter.certs import CertFactory, server_context
from exporter.config import parse_config
from exporter.engine import run_probe
from exporter.schema import ConfigError, Secret, plain

try:  # works whether or not tests/ becomes a package later
    from tests import procs
    from tests.peers import HTTPServer, RawTCPServer
except ImportError:  # pragma: no cover
    import procs  # type: ignore[no-redef]
    from peers import HTTPServer, RawTCPServer  # type: ignore[no-redef]

pytestmark = pytest.mark.timeout(60)


def steps(query_response: str):
    text = f"modules:\n  m:\n    prober: tcp\n    tcp:\n      query_response:\n{query_response}"
    return parse_config(text, "t").modules["m"].settings.query_response


def test_binary_and_text_values_are_bytes_on_the_wire() -> None:
    send, expect, text = steps("        - send: !!binary AAAACATSFi8=\n        - expect_bytes: !!binary Uw==\n"
                               "        - send: caf\u00e9\n          expect_bytes: N\n")
    assert send.send == bytes.fromhex("0000000804d2162f") and send.expect is None
    assert expect.expect_bytes == b"S"
    assert (text.send, text.expect_bytes) == ("caf\u00e9".encode(), b"N")


def test_labels_keep_their_templates_and_order() -> None:
    (step,) = steps("        - expect: '^220 ([^ ]+) (?P<sw>.+)$'\n          labels:\n"
                    "            - {name: host, value: '${1}'}\n            - {name: software, value: $sw}\n")
    assert step.labels == (("host", b"${1}"), ("software", b"$sw"))


@pytest.mark.parametrize(("step", "message"), [
    ("- expect: a\n          expect_bytes: b", "query_response[0]: expect and expect_bytes are mutually exclusive"),
    ("- expect: a\n          labels: [{name: le-x, value: v}]", "query_response[0].labels[0].name: invalid label name 'le-x'"),
    ("- expect: a\n          labels: [{name: __x, value: v}]", "query_response[0].labels[0].name: invalid label name '__x'"),
    ("- expect: a\n          labels: [{name: x, value: a}, {name: x, value: b}]", "query_response[0].labels[1].name: label x given twice"),
    ("- expect: a\n          labels: [{name: x, valu: v}]", "query_response[0].labels[0].valu: unknown field"),
    ("- send_bytes: abc", "query_response[0].send_bytes: unknown field"),  # blackbox has no send_bytes either
    ("- expect: '\\Z'", "query_response[0].expect: invalid regexp '\\\\Z'"),
])
def test_bad_steps_are_named(step: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"modules.m.tcp.{message}")):
        steps(f"        {step}\n")


def test_a_secret_send_is_masked_everywhere_but_the_wire() -> None:
    (step,) = steps("        - send: AUTH PLAIN c2VjcmV0\n          secret: true\n")
    assert isinstance(step.send, Secret) and step.send.reveal().encode("latin-1") == b"AUTH PLAIN c2VjcmV0"
    assert plain(step)["send"] == "<secret>"


async def test_probe_hostname_is_the_tls_server_name(tmp_path: Path) -> None:
    certs = CertFactory(tmp_path / "certs")
    ca = certs.ca()
    config = tmp_path / "c.yml"
    config.write_text(f"""
modules:
  tls:
    prober: tcp
    timeout: 5s
    tcp:
      tls: true
      tls_config: {{ca_file: {ca.cert_file}}}
  tls_named:
    prober: tcp
    timeout: 5s
    tcp:
      tls: true
      tls_config: {{ca_file: {ca.cert_file}, server_name: other.test}}
""")
    async with HTTPServer(server_context(certs.leaf(ca, name="shop.test", sans=("shop.test",)))) as srv:
        ch = await procs.start_connhealth(config, tmp_path)
        try:
            target = f"127.0.0.1:{srv.port}"

            async def probe(module: str, **params: str) -> str:
                status, text = await ch.get("/probe", {"target": target, "module": module, **params})
                assert status == 200, text
                return text

            text = await probe("tls")
            assert procs.value(text, "probe_success") == 0.0
            assert procs.value(text, "probe_failure_info", reason="tls_hostname_mismatch") == 1.0
            assert procs.value(await probe("tls", hostname="shop.test"), "probe_success") == 1.0
            # A server_name in the module wins over the parameter, as in blackbox.
            text = await probe("tls_named", hostname="shop.test")
            assert procs.value(text, "probe_failure_info", reason="tls_hostname_mismatch") == 1.0
            # A name OpenSSL cannot send is the request's fault: 400, never an internal error.
            for bad in ("a" * 300, "shop.test\x00", "a..b", "two words"):
                status, text = await ch.get("/probe", {"target": target, "module": "tls", "hostname": bad})
                assert status == 400 and text.startswith("Invalid hostname parameter: "), (bad, text)
        finally:
            await ch.astop()


async def test_source_ip_address_is_the_probes_local_address() -> None:
    seen: list[str] = []

    async def record(reader, writer) -> None:
        seen.append(writer.get_extra_info("peername")[0])

    config = parse_config("modules:\n  m:\n    prober: tcp\n    tcp:\n      source_ip_address: 127.0.0.2\n"
                          "  qr:\n    prober: tcp\n    tcp:\n      source_ip_address: 127.0.0.3\n"
                          "      query_response: [{send: hi}]\n", "t")
    async with RawTCPServer(record) as srv:
        for module in ("m", "qr"):
            result = await run_probe(f"127.0.0.1:{srv.port}", config.modules[module], 5)
            assert result.success, result.failure
        for _ in range(100):  # the peer's handler runs after the probe's connect returned: bounded wait
            if len(seen) == 2:
                break
            await asyncio.sleep(0.02)
    assert seen == ["127.0.0.2", "127.0.0.3"]
