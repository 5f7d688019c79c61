"""A layer blob's uncompressed bytes: gzip (every member, as pigz writes them), zstd, or none.

Detected from the magic bytes, not the media type; streamed with a bounded output per step,
so a decompression bomb costs only what the caller decides to read; hashed on the way (that
digest is the DiffID). :mod:`puller.layer.reader` parses the tar inside; ``puller load``
only hashes it, and needs none of the reader's entry types (nor their import time).
"""
from __future__ import annotations

import hashlib
import zlib

from puller.errors import LayerError, LimitExceeded

try:  # ISA-L (a dependency) inflates about twice as fast as zlib, same API
    from isal import isal_zlib as _inflate_mod  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the environment
    _inflate_mod = zlib

TYPE_CHECKING = False  # no typing at run time: the lean commands' start-up
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import BinaryIO

__all__ = ["Decoded", "MAX_BYTES"]

MAX_BYTES = 256 << 30      # Limits.max_bytes' default
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CHUNK = 1 << 20           # decompressed bytes handed out per step
_RAW_CHUNK = 256 << 10     # compressed bytes read per step


class Decoded:
    """The uncompressed bytes of a blob, handed out in bounded chunks and hashed on the way.

    ``max_bytes`` caps the uncompressed size (:class:`LimitExceeded` beyond it); a corrupt
    or truncated stream is a :class:`LayerError`. ``compression`` is 'gzip', 'zstd' or
    'none', as detected from the bytes; ``total`` and ``hash`` cover what was handed out.
    """

    def __init__(self, raw: BinaryIO, max_bytes: int = MAX_BYTES,
                 digest_algorithm: str = "sha256") -> None:
        self._raw = raw
        self._max_bytes = max_bytes
        self.hash = hashlib.new(digest_algorithm)
        self.total = 0
        head = self._read_raw()
        if head.startswith(_GZIP_MAGIC):
            self.compression = "gzip"
            self._chunks = self._gzip(head)
        elif head.startswith(_ZSTD_MAGIC) or (
                len(head) >= 4 and head[0] & 0xF0 == 0x50 and head[1:4] == b"\x2a\x4d\x18"):
            self.compression = "zstd"
            self._chunks = self._zstd(head)
        else:
            self.compression = "none"
            self._chunks = self._plain(head)

    def _read_raw(self) -> bytes:
        try:
            return self._raw.read(_RAW_CHUNK)
        except OSError as exc:
            raise LayerError(f"reading layer blob: {exc}") from exc

    def _plain(self, head: bytes) -> Iterator[bytes]:
        data = head
        while data:
            yield data
            data = self._raw.read(_CHUNK)

    def _gzip(self, data: bytes) -> Iterator[bytes]:
        """Inflate every gzip member in turn (pigz and concatenated members); NUL padding
        after a member is tolerated as gzip(1) does, anything else is corrupt."""
        d = _inflate_mod.decompressobj(31)
        started = True
        while True:
            if not data:
                data = self._read_raw()
                if not data:
                    if started:
                        raise LayerError("truncated gzip stream")
                    return
            if not started:
                data = data.lstrip(b"\0")
                if not data:
                    continue
                if not data.startswith(_GZIP_MAGIC[: len(data)]):
                    raise LayerError("trailing garbage after gzip stream")
                d = _inflate_mod.decompressobj(31)
                started = True
            try:
                while True:  # also drains output zlib holds back once the input is used up
                    out = d.decompress(data, _CHUNK)
                    data = d.unconsumed_tail
                    if out:
                        yield out
                    if d.eof or not out:
                        break
            except _inflate_mod.error as exc:
                raise LayerError(f"corrupt gzip stream: {exc}") from exc
            if d.eof:
                data = d.unused_data
                started = False

    def _zstd(self, head: bytes) -> Iterator[bytes]:
        """zstd frames, one after the other; a frame cut short is an error.

        The input is fed in 1 KiB slices: zstd's RLE blocks expand 3 bytes to 128 KiB, and
        the binding has no output bound, so small slices keep one call's output bounded
        (32 MiB at worst). Small outputs are coalesced into chunks of about 1 MiB.
        """
        import zstandard  # only zstd layers pay for its import (and typing's, which it pulls in)
        d = zstandard.ZstdDecompressor().decompressobj()
        data = head
        in_frame = False
        pending: list[bytes] = []
        held = 0
        while True:
            if not data:
                data = self._read_raw()
                if not data:
                    if in_frame:
                        raise LayerError("truncated zstd stream")
                    if pending:
                        yield b"".join(pending)
                    return
            view = memoryview(data)
            for start in range(0, len(data), 1024):
                step = view[start:start + 1024]
                while step:
                    try:
                        out = d.decompress(step)
                    except zstandard.ZstdError as exc:
                        raise LayerError(f"corrupt zstd stream: {exc}") from exc
                    in_frame = True
                    step = b""
                    if out:
                        pending.append(out)
                        held += len(out)
                        if held >= _CHUNK:
                            yield b"".join(pending)
                            pending, held = [], 0
                    if d.eof:
                        step = d.unused_data
                        d = zstandard.ZstdDecompressor().decompressobj()
                        in_frame = False
            data = b""

    def next_chunk(self) -> bytes:
        """The next decompressed chunk, or b"" at the end of the stream."""
        for chunk in self._chunks:
            if not chunk:
                continue
            self.total += len(chunk)
            if self.total > self._max_bytes:
                raise LimitExceeded(
                    f"layer expands beyond {self._max_bytes} bytes (Limits.max_bytes)")
            self.hash.update(chunk)
            return chunk
        return b""
