"""The one shard function: which replica (``serve --shard``) and which worker (``serve --workers``) probes a target.

Rendezvous (highest-random-weight) hashing of the target identity (target +
module): shard ``i`` of ``N`` owns the targets for which ``i`` scores highest.
Every target is owned by exactly one shard, every replica decides alone (no
coordination, no shared state), and going from N to N+1 shards moves only the
targets the new shard wins: about 1/(N+1) of them.

Replicas and workers use the same function with a different salt, so the
targets of one replica spread evenly over its workers.
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
import socket
from dataclasses import dataclass

from .schema import ConfigError

MAX_SHARDS = 4096
ENV_VAR = "CONNHEALTH_SHARD"
# A StatefulSet pod's host name is <statefulset>-<ordinal>.
_ORDINAL = re.compile(r"-(\d+)$")


def weight(salt: str, index: int, target: str, module: str) -> int:
    """The score of shard ``index`` for one target: 64 stable bits (the same in every process and Python)."""
    data = f"{salt}\x00{index}\x00{module}\x00{target}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


@functools.lru_cache(maxsize=1 << 16)  # a reload re-shards every target: most are the same as last time
def owner(target: str, module: str, count: int, salt: str = "replica") -> int:
    """The shard (0..count-1) that probes ``target`` with ``module``."""
    return max(range(count), key=lambda i: weight(salt, i, target, module))


@dataclass(frozen=True, slots=True)
class Shard:
    index: int
    count: int
    salt: str = "replica"

    def owns(self, target: str, module: str) -> bool:
        return self.count == 1 or owner(target, module, self.count, self.salt) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str, what: str = "--shard", hostname: str | None = None) -> Shard:
    """``INDEX/COUNT`` (0-based index), or ``ordinal/COUNT``: the index is the number at the end of the
    host name (a StatefulSet pod ``connhealth-2`` is shard 2)."""
    index_text, sep, count_text = text.strip().partition("/")
    if not sep or not count_text.isdigit():
        raise ConfigError(f"{what}: expected INDEX/COUNT such as 0/3 or ordinal/3, got {text!r}")
    count = int(count_text)
    if not 1 <= count <= MAX_SHARDS:
        raise ConfigError(f"{what}: COUNT must be between 1 and {MAX_SHARDS}, got {count}")
    if index_text == "ordinal":
        host = hostname if hostname is not None else socket.gethostname()
        match = _ORDINAL.search(host)
        if match is None:
            raise ConfigError(f"{what}: 'ordinal' needs a host name ending in -<number> (a StatefulSet pod), got {host!r}")
        index_text = match.group(1)
    if not index_text.isdigit():
        raise ConfigError(f"{what}: INDEX must be a number or 'ordinal', got {index_text!r}")
    index = int(index_text)
    if index >= count:
        raise ConfigError(f"{what}: INDEX must be below COUNT ({count}), got {index}")
    return Shard(index, count)


def shard_from_env(environ: dict[str, str] | None = None) -> Shard | None:
    """The shard ``$CONNHEALTH_SHARD`` names (None when unset or empty)."""
    text = (os.environ if environ is None else environ).get(ENV_VAR, "")
    return parse_shard(text, f"${ENV_VAR}") if text.strip() else None
