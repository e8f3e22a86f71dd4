"""SYN retransmits through a TUN relay that drops the first SYN: connect takes ~1 s (Linux's initial RTO), retransmits = 1."""
from __future__ import annotations

import pytest

from exporter.engine import run_probe
from exporter.render import render
from exporter.sinks.store import SeriesStore

try:
    from tests.probekit import PER_TEST_TIMEOUT, mod, needs_netns
    from tests.tunrelay import TunRelay, is_first_syn
except ImportError:  # pragma: no cover
    from probekit import PER_TEST_TIMEOUT, mod, needs_netns
    from tunrelay import TunRelay, is_first_syn

pytestmark = pytest.mark.timeout(PER_TEST_TIMEOUT)


@needs_netns
async def test_a_dropped_first_syn_shows_as_one_retransmit_and_a_1s_connect() -> None:
    with TunRelay(drop_first_syns=1) as net:
        result = await run_probe(f"{net.server_ip}:{net.port}", mod("tcp", timeout="5s"))
        assert net.dropped == 1
    assert result.success, result.failure
    assert result.tcp is not None and result.tcp.retransmits == 1
    assert 0.9 <= result.phases["connect"] < 2.5, result.phases
    assert result.to_dict()["tcp"]["retransmits"] == 1
    assert "retransmits 1 (SYN retransmits" in render(result)
    store = SeriesStore()
    store.observe("t", "m", (), result)
    store.observe("t", "m", (), result)
    assert 'connhealth_tcp_syn_retransmits_total{target="t",module="m"} 2' in store.render().decode()


@needs_netns
async def test_without_drops_the_relay_connects_at_once_with_no_retransmit() -> None:
    with TunRelay() as net:
        result = await run_probe(f"{net.server_ip}:{net.port}", mod("tcp", timeout="5s"))
        assert net.dropped == 0 and net.relayed >= 2
    assert result.success and result.tcp is not None and result.tcp.retransmits == 0
    assert result.phases["connect"] < 0.5


def test_first_syn_detection() -> None:
    syn = bytes([0x45, 0, 0, 40] + [0] * 5 + [6] + [0] * 10) + bytes(13) + bytes([0x02]) + bytes(6)
    syn_ack = syn[:33] + bytes([0x12]) + syn[34:]
    assert is_first_syn(syn) and not is_first_syn(syn_ack) and not is_first_syn(b"\x60" + syn[1:])
