"""Response bodies: counted, bounded and kept as they arrive, decoded first when the module says so.

blackbox_exporter's ``compression`` (gzip, deflate, br, identity) decodes the
body whatever the response's Content-Encoding says, and applies
``body_size_limit`` to the *decoded* bytes (its MaxBytesReader wraps the
decompressor). Here every decoder hands out its output in slices of at most
``STEP`` bytes and the body accumulator checks the limit after each one, so a
gzip bomb (1 KiB that inflates to gigabytes) fails as ``http_body_too_large``
with memory bounded by one slice; between slices the loop gets a turn.

Semantics follow Go's readers, so the same bodies fail in both:
- ``gzip``: RFC 1952, concatenated members read as one stream (Go's
  multistream default); anything after the last member that is not a member
  is an error.
- ``deflate``: raw RFC 1951 DEFLATE, as Go's ``flate.NewReader`` (a
  zlib-wrapped RFC 1950 body fails there and here).
- ``br``: brotli (the ``brotli`` package, Google's C decoder).
- ``zstd``: connhealth extension (blackbox fails every probe with it:
  "unsupported compression algorithm"); the ``zstandard`` package.
A body that ends before its compressed stream does (an empty body included)
is an error, as in Go.
"""
from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import brotli
import zstandard

CODINGS = ("gzip", "deflate", "br", "zstd", "identity")
STEP = 256 << 10  # the most one decoder call hands out
_ZSTD_IN = 64  # zstd input slice: zstd's densest block (RLE) turns 4 bytes into 128 KiB
_YIELD_EVERY = 4 << 20  # decoded bytes between two turns of the loop


class DecodeError(Exception):
    """The body is not valid in the configured coding."""


class Decoder:
    """One body's decoder: ``feed`` each received chunk (it yields slices of at most STEP bytes), then ``finish``."""

    def __init__(self, coding: str) -> None:
        if coding not in CODINGS or coding == "identity":
            raise ValueError(f"no decoder for {coding!r}")
        self.coding = coding
        self.decoded = 0  # bytes handed out so far (what a body cut short reports)
        self._d = self._new()
        self._done = False

    def _new(self) -> Any:
        if self.coding == "gzip":
            return zlib.decompressobj(wbits=31)
        if self.coding == "deflate":
            return zlib.decompressobj(wbits=-15)
        if self.coding == "br":
            return brotli.Decompressor()
        return zstandard.ZstdDecompressor().decompressobj()

    def feed(self, data: bytes) -> Iterator[bytes]:
        try:
            for piece in self._feed(data):
                self.decoded += len(piece)
                yield piece
        except (zlib.error, brotli.error, zstandard.ZstdError) as exc:
            raise DecodeError(f"response body is not valid {self.coding}: {exc}") from None

    def finish(self) -> None:
        if not self._done:
            raise DecodeError(f"response body ended before its {self.coding} stream did")

    def _feed(self, data: bytes) -> Iterator[bytes]:
        if self.coding in ("gzip", "deflate"):
            yield from self._zlib(data)
        elif self.coding == "br":
            yield from self._brotli(data)
        else:
            yield from self._zstd(data)

    def _zlib(self, data: bytes) -> Iterator[bytes]:
        while data:
            if self._done:
                if self.coding == "deflate":
                    return  # Go's flate reader stops at the final block; what follows is never read
                self._d, self._done = self._new(), False  # gzip: another member follows
            d = self._d
            out = d.decompress(data, STEP)
            data = d.unconsumed_tail
            while True:
                if out:
                    yield out
                if d.eof or not data and not out:
                    break
                out = d.decompress(data, STEP)
                data = d.unconsumed_tail
            if d.eof:
                self._done = True
                data = d.unused_data

    def _brotli(self, data: bytes) -> Iterator[bytes]:
        d = self._d
        if self._done:
            if data:
                raise DecodeError("response body has data after the end of its br stream")
            return
        out = d.process(data, output_buffer_limit=STEP)
        while True:
            if out:
                yield out
            if d.can_accept_more_data():
                break
            out = d.process(b"", output_buffer_limit=STEP)
        self._done = d.is_finished()

    def _zstd(self, data: bytes) -> Iterator[bytes]:
        view = memoryview(data)
        for i in range(0, len(view), _ZSTD_IN):
            if self._d.eof:
                raise DecodeError("response body has data after the end of its zstd frame")
            out = self._d.decompress(view[i:i + _ZSTD_IN].tobytes())
            for j in range(0, len(out), STEP):
                yield out[j:j + STEP]
        self._done = self._d.eof


class BodyReader:
    """Counts a body's (decoded) bytes, enforces the limits and keeps it when asked.

    ``too_large(limit, message)`` builds the caller's exception (http1's or http2's BodyTooLarge).
    """

    __slots__ = ("total", "limit", "keep", "keep_limit", "too_large", "decoder", "_chunks", "_since_yield")

    def __init__(self, *, limit: int | None, keep: bool, keep_limit: int, too_large: Callable[[int, str], Exception],
                 decoder: Decoder | None = None) -> None:
        self.total = 0
        self.limit, self.keep, self.keep_limit, self.too_large, self.decoder = limit, keep, keep_limit, too_large, decoder
        self._chunks: list[bytes] = []
        self._since_yield = 0

    async def add(self, data: bytes) -> None:
        if self.decoder is None:
            self._count(data)
            return
        for piece in self.decoder.feed(data):
            self._count(piece)
            self._since_yield += len(piece)
            if self._since_yield >= _YIELD_EVERY:  # a bomb without a limit runs to the deadline, not over the loop
                self._since_yield = 0
                await asyncio.sleep(0)

    def end(self) -> tuple[int, bytes]:
        if self.decoder is not None:
            self.decoder.finish()
        return self.total, b"".join(self._chunks)

    def _count(self, data: bytes) -> None:
        self.total += len(data)
        what = "decoded response body" if self.decoder is not None else "response body"
        if self.limit is not None and self.total > self.limit:
            self.total = self.limit  # as blackbox's MaxBytesReader: at most the limit was handed out
            raise self.too_large(self.limit, f"{what} larger than the limit of {self.limit} bytes")
        if self.keep:
            if self.total > self.keep_limit:
                raise self.too_large(self.keep_limit, f"{what} larger than the {self.keep_limit} bytes kept for matching")
            self._chunks.append(data)
