"""Files a module references, read when a probe uses them (as blackbox does).

CA bundles, client certificates and keys, password, token and body files are
named in the config but read at probe time: a missing file fails the probes
that need it with ``config_file_missing`` and leaves every other module
working. Reads run in a thread (a file on a slow mount never stalls the loop),
are bounded in size, and are cached by (path, mtime, size, inode) so a file
rotated in place is picked up without a reload: a file read less than RECHECK
seconds ago is served from the cache without even a stat (the thread hop and
stat cost ~70 µs, twice per https probe), so a rotation shows within RECHECK.
"""
from __future__ import annotations

import asyncio
import os
import stat
import time
from collections import OrderedDict

from .failures import ProbeFailure

MAX_BYTES = 4 << 20  # a CA bundle with every public root is ~250 KiB
_CACHE_ENTRIES = 256


RECHECK = 1.0
_clock = time.monotonic  # tests replace it

# path -> ((mtime_ns, size, inode), bytes, when last checked)
_cache: OrderedDict[str, tuple[tuple[int, int, int], bytes, float]] = OrderedDict()


def _read(path: str, limit: int) -> tuple[tuple[int, int, int], bytes]:
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        # A FIFO would block the reading thread for good, /dev/zero would never end.
        raise ValueError("is not a regular file")
    key = (st.st_mtime_ns, st.st_size, st.st_ino)
    cached = _cache.get(path)
    if cached is not None and cached[0] == key:
        return key, cached[1]  # unchanged: not read again
    if st.st_size > limit:
        raise ValueError(f"is {st.st_size} bytes, over the {limit}-byte limit")
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"is over the {limit}-byte limit")
    return key, data


async def read(path: str, what: str, limit: int = MAX_BYTES) -> bytes:
    """The file's bytes, or ProbeFailure("config_file_missing") naming ``what`` and the path."""
    now = _clock()
    cached = _cache.get(path)
    if cached is not None and now - cached[2] < RECHECK and len(cached[1]) <= limit:
        return cached[1]
    try:
        key, data = await asyncio.to_thread(_read, path, limit)
    except OSError as exc:
        raise ProbeFailure("config_file_missing", f"{what} {path}: {exc.strerror or exc}", phase="probe") from None
    except ValueError as exc:
        raise ProbeFailure("config_file_missing", f"{what} {path} {exc}", phase="probe") from None
    _cache[path] = (key, data, now)
    _cache.move_to_end(path)
    while len(_cache) > _CACHE_ENTRIES:
        _cache.popitem(last=False)
    return data


def exists_warning(path: str, what: str) -> str | None:
    """For check-config: a warning when ``path`` cannot be read now (the config still loads)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            problem = "not a regular file"
        elif not os.access(path, os.R_OK):  # not open(): a FIFO would block check-config
            problem = "Permission denied"
        else:
            return None
    except OSError as exc:
        problem = exc.strerror or str(exc)
    return f"{what} {path}: {problem} (probes using it will fail with config_file_missing)"
