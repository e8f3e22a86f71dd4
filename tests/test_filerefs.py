"""exporter/filerefs.py: files a module references, read at probe time (issue 10's "loading like blackbox").

Time is injected (filerefs._clock): a re-check interval is advanced, never slept through.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from exporter import filerefs
from exporter.failures import ProbeFailure


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(filerefs, "_clock", clock)
    monkeypatch.setattr(filerefs, "_cache", type(filerefs._cache)())
    return clock


async def test_a_file_rotated_in_place_is_read_again_after_the_recheck_interval(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "ca.pem"
    path.write_bytes(b"one")
    assert await filerefs.read(str(path), "tls_config.ca_file") == b"one"
    path.write_bytes(b"two!")  # a different size: a different (mtime, size, inode) key
    clock.now += filerefs.RECHECK / 2
    assert await filerefs.read(str(path), "tls_config.ca_file") == b"one"  # not even a stat within the interval
    clock.now += filerefs.RECHECK
    assert await filerefs.read(str(path), "tls_config.ca_file") == b"two!"


async def test_missing_unreadable_oversized_and_special_files_fail_with_config_file_missing(tmp_path: Path,
                                                                                           clock: Clock) -> None:
    big = tmp_path / "big.pem"
    big.write_bytes(b"x" * 11)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    cases = [(tmp_path / "nope.pem", "No such file or directory"), (tmp_path, "is not a regular file"),
             (fifo, "is not a regular file"), (big, "is 11 bytes, over the 10-byte limit")]
    for path, message in cases:
        with pytest.raises(ProbeFailure) as info:
            await filerefs.read(str(path), "tls_config.ca_file", limit=10)
        assert (info.value.reason, info.value.phase) == ("config_file_missing", "probe")
        assert info.value.message.startswith(f"tls_config.ca_file {path}") and message in info.value.message


async def test_a_file_that_appears_is_read_by_the_next_probe(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "late.pem"
    with pytest.raises(ProbeFailure):
        await filerefs.read(str(path), "tls_config.ca_file")
    path.write_bytes(b"here")
    assert await filerefs.read(str(path), "tls_config.ca_file") == b"here"  # a failure is never cached


def test_exists_warning_never_opens_the_file(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it would block
    assert filerefs.exists_warning(str(fifo), "x") == f"x {fifo}: not a regular file (probes using it will fail with config_file_missing)"
    ok = tmp_path / "ok.pem"
    ok.write_bytes(b"")
    assert filerefs.exists_warning(str(ok), "x") is None
