"""One module per protocol, one contract for every prober.

A prober is ``async def probe(ctx, target, module) -> None``: it performs the
probe through ``ctx.phase(...)``, fills ``ctx`` with what it learned and raises
on failure (a ``ProbeFailure`` for its own checks, or the low-level exception).
It knows nothing about metrics or trace exporters.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from . import http, tcp

if TYPE_CHECKING:
    from ..config import Module
    from ..engine import ProbeContext

Prober = Callable[["ProbeContext", str, "Module"], Awaitable[Any]]

PROBERS: dict[str, Prober] = {
    "http": http.probe,
    "tcp": tcp.probe,
}

# Target syntax per prober: raises ProbeFailure("invalid_target") (the CLI
# checks before probing, to answer a typo with a usage error).
CHECK_TARGET: dict[str, Callable[[str], Any]] = {
    "http": http.check_target,
    "tcp": tcp.check_target,
}
