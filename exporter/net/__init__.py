"""The network layer: resolution, TCP connect, TLS through SSLObject + MemoryBIO.

It knows no engine, no config file and no Prometheus: it takes plain settings
and reports values (exporter.result types) and the exceptions OpenSSL, the
kernel and the resolvers raised. Callers import the modules
(``from exporter.net import connection, resolve, tls``); nothing is
re-exported here, so ``net.resolve`` stays the module and not its function.
"""
from __future__ import annotations

from . import connection, guard, resolve, tls

__all__ = ["connection", "guard", "resolve", "tls"]
