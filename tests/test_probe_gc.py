"""A probe leaves no reference cycles behind: everything it allocates is freed by refcounting.

At thousands of probes a second, one cycle per probe (a parser holding its
reader's bound methods, a stored exception whose traceback holds the
connection) made the cyclic GC run hundreds of times per thousand probes and
cost ~20 % of /probe throughput (docs/benchmarks.md). Each case runs real
probes against real loopback peers with the collector off and DEBUG_SAVEALL,
then asserts the collector found nothing.
"""
from __future__ import annotations

import gc

import pytest
import uvloop

from exporter.certs import server_context
from exporter.engine import run_probe
from exporter.sinks.exposition import probe_text

try:
    from tests.peers import HTTPServer
    from tests.probekit import ca, certs, closed_port, https_mod, leaf, mod  # noqa: F401 - fixtures
except ImportError:  # pragma: no cover - depends on how pytest put us on sys.path
    from peers import HTTPServer  # type: ignore[no-redef]
    from probekit import ca, certs, closed_port, https_mod, leaf, mod  # type: ignore[no-redef]  # noqa: F401

pytestmark = pytest.mark.timeout(30)
PROBES = 30


async def _garbage_after(target: str, module) -> tuple[list[str], object]:  # type: ignore[no-untyped-def]
    for _ in range(3):  # first use builds contexts and caches
        probe_text(await run_probe(target, module, 5))
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(PROBES):
            result = await run_probe(target, module, 5)
            probe_text(result)
        gc.collect()
        found = sorted({type(o).__qualname__ for o in gc.garbage if _ours(o)})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    return found, result


def _ours(obj: object) -> bool:
    """Garbage that connhealth's code made: its own types, its parsers' and TLS objects, its frames.

    The test's in-process servers make garbage of their own, which is not counted.
    """
    module = type(obj).__module__ or ""
    if module.startswith(("exporter", "httptools", "h2", "hpack")) or type(obj).__name__ in ("MemoryBIO", "_SSLSocket"):
        return True
    frame = obj.tb_frame if hasattr(obj, "tb_frame") else obj if hasattr(obj, "f_code") else None
    return frame is not None and "/exporter/" in frame.f_code.co_filename  # type: ignore[attr-defined]


@pytest.mark.parametrize("case", ["http_ok", "https_ok", "https_untrusted", "tcp_tls", "refused"])
def test_probes_leave_no_reference_cycles(case: str, ca, leaf, closed_port) -> None:  # type: ignore[no-untyped-def]
    async def body() -> tuple[list[str], object]:
        async with HTTPServer(server_context(leaf)) as secure, HTTPServer() as plain:
            target, module = {
                "http_ok": (plain.url("/ok"), mod("http")),
                "https_ok": (secure.url("/ok"), https_mod(ca)),
                "https_untrusted": (secure.url("/ok"), mod("http")),
                "tcp_tls": (f"127.0.0.1:{secure.port}", mod("tcp", tcp={"tls": True, "tls_config": {"ca_file": ca.cert_file}})),
                "refused": (f"http://127.0.0.1:{closed_port}/", mod("http")),
            }[case]
            return await _garbage_after(target, module)

    # On uvloop, as `connhealth serve` runs: the stdlib loop's transports hold cycles of their own.
    found, result = uvloop.run(body())
    reason = {"https_untrusted": "tls_cert_untrusted", "refused": "connect_refused"}.get(case)
    assert (result.failure.reason if result.failure else None) == reason  # type: ignore[attr-defined]
    assert found == [], f"{case}: the cyclic GC had to free {found}"
