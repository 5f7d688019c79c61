"""Read an image layer blob as a stream of tar entries, without ever extracting anything.

A layer blob comes from whoever pushed the image, so this module trusts nothing in it:

* the compression is detected from the magic bytes (gzip, zstd or none), not from the media
  type, which lies often enough;
* decompression is streamed with a bounded output per step, so a bomb costs us only the
  bytes we decide to read; a truncated or corrupt stream is a :class:`LayerError`;
* the *uncompressed* bytes are hashed while they are read (that digest is the DiffID) and
  the stream is drained to its very end, because a tar reader stops at the end-of-archive
  blocks while the DiffID covers any trailing bytes too;
* headers are parsed by our own small reader (ustar, GNU long names and sparse files, PAX
  incl. ``SCHILY.xattr.*`` and the GNU sparse formats 0.0/0.1/1.0): ``tarfile`` silently ends
  the archive on a truncated or broken header and keeps every member in memory, neither of
  which we can afford.

Usage::

    with LayerReader(open(blob, "rb")) as layer:
        for entry in layer:
            if entry.type == "file":
                for chunk in layer.read_chunks():
                    ...
        print(layer.diff_id)        # valid once the iteration has ended

Entries are frozen :class:`LayerEntry` values with normalised relative paths, usable on
their own for listing or diffing layers.
"""
from __future__ import annotations

from dataclasses import dataclass

from puller.errors import LayerError, LimitExceeded
from puller.layer.decode import MAX_BYTES, Decoded

TYPE_CHECKING = False  # typing costs start-up time that the lean commands do not spend
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import BinaryIO

__all__ = ["Limits", "LayerEntry", "LayerReader", "EntryType", "WHITEOUT_PREFIX", "OPAQUE",
           "normalise_path"]

WHITEOUT_PREFIX = ".wh."
OPAQUE = ".wh..wh..opq"

EntryType = str  # one of: file, dir, symlink, hardlink, char, block, fifo
_TYPES = {b"0": "file", b"\0": "file", b"7": "file", b"1": "hardlink", b"2": "symlink",
          b"3": "char", b"4": "block", b"5": "dir", b"6": "fifo", b"D": "dir", b"S": "file"}
_CHUNK = 1 << 20           # zero bytes handed out per step for a sparse file's holes


@dataclass(frozen=True, slots=True)
class Limits:
    """Guards against tar and decompression bombs; every default fits any real image.

    ``max_bytes`` caps the uncompressed bytes of one unpack (all layers), ``max_entries``
    its entries. ``max_path`` (bytes) and ``max_depth`` bound one entry's name: fd-relative
    walks are not bound by Linux's PATH_MAX. ``max_header`` caps one PAX or GNU long-name
    header. Free space is watched while writing: the unpack stops before less than
    ``max(min_free_ratio * fs size, min_free_bytes)`` would remain.
    """
    max_bytes: int = MAX_BYTES
    max_entries: int = 2_000_000
    max_path: int = 64 << 10
    max_depth: int = 4096
    max_header: int = 16 << 20
    min_free_ratio: float = 0.10
    min_free_bytes: int = 256 << 20

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_entries", "max_path", "max_depth", "max_header",
                     "min_free_bytes"):
            if getattr(self, name) < 0:
                raise ValueError(f"Limits.{name} must be >= 0")
        if not 0.0 <= self.min_free_ratio < 1.0:
            raise ValueError("Limits.min_free_ratio must be in [0, 1)")


@dataclass(frozen=True, slots=True)
class LayerEntry:
    """One tar entry, as the layer states it (nothing is resolved against a file system).

    ``path`` is normalised: relative, no ``.``/``..``/empty components (``..`` is clamped at
    the root, like a lookup in a chroot), ``""`` for the root itself. ``linkname`` is the
    normalised target path for hardlinks and the raw target for symlinks (a symlink is
    stored as it is, never followed). ``size`` is the logical file size (for sparse files,
    holes included); it is 0 for everything but regular files. ``sparse`` lists the
    ``(offset, length)`` data regions of a sparse file.
    """
    path: str
    type: EntryType
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime_ns: int = 0
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: tuple[tuple[str, bytes], ...] = ()
    uname: str = ""
    gname: str = ""
    sparse: tuple[tuple[int, int], ...] | None = None

    def __post_init__(self) -> None:
        if self.type not in ("file", "dir", "symlink", "hardlink", "char", "block", "fifo"):
            raise ValueError(f"unknown entry type {self.type!r}")

    @property
    def name(self) -> str:
        """The last path component (``""`` for the root)."""
        return self.path.rpartition("/")[2]

    @property
    def parent(self) -> str:
        return self.path.rpartition("/")[0]

    @property
    def mtime(self) -> float:
        return self.mtime_ns / 1e9

    @property
    def is_opaque(self) -> bool:
        """An opaque marker: hides every lower-layer child of :attr:`parent`."""
        return self.name == OPAQUE

    @property
    def is_whiteout(self) -> bool:
        """A whiteout (``.wh.NAME``) or an opaque marker; never materialised."""
        return self.name.startswith(WHITEOUT_PREFIX)

    @property
    def whiteout_target(self) -> str | None:
        """The path a plain whiteout deletes, or None for other entries (opaque included).

        Raises :class:`UnsafeLayer` for the reserved names that would reach the parent
        (``.wh.``, ``.wh..``, ``.wh...``) and for other ``.wh..wh.`` names.
        """
        from puller.errors import UnsafeLayer
        name = self.name
        if not name.startswith(WHITEOUT_PREFIX) or name == OPAQUE:
            return None
        target = name[len(WHITEOUT_PREFIX):]
        if target in ("", ".", "..") or target.startswith(WHITEOUT_PREFIX):
            raise UnsafeLayer(f"invalid whiteout name {self.path!r}")
        return f"{self.parent}/{target}" if self.parent else target

    @property
    def xattr_dict(self) -> dict[str, bytes]:
        return dict(self.xattrs)


def normalise_path(raw: str, limits: Limits = Limits()) -> str:
    """Clean a tar name lexically: drop ``/``, ``.``, empty parts; clamp ``..`` at the root."""
    if "\0" in raw:
        raise LayerError(f"NUL byte in entry name {raw!r}")
    if len(raw.encode("utf-8", "surrogateescape")) > limits.max_path:
        raise LimitExceeded(f"entry name longer than {limits.max_path} bytes")
    parts: list[str] = []
    for part in raw.split("/"):
        if part == "..":
            if parts:
                parts.pop()
        elif part and part != ".":
            parts.append(part)
    if len(parts) > limits.max_depth:
        raise LimitExceeded(f"entry {raw[:200]!r}... deeper than {limits.max_depth} levels")
    return "/".join(parts)


# --- tar parsing ------------------------------------------------------------------------

def _num(field: bytes, what: str) -> int:
    """A numeric header field: octal text, or GNU base-256 when the high bit is set."""
    if field and field[0] & 0x80:
        value = int.from_bytes(field[1:], "big")
        if field[0] == 0xFF:
            value -= 1 << (8 * (len(field) - 1))
        return value
    text = field.split(b"\0", 1)[0].strip(b" \0")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise LayerError(f"invalid {what} field {field!r} in tar header") from None


def _str(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _pax_time_ns(text: str) -> int:
    sign = -1 if text.startswith("-") else 1
    whole, _, frac = text.lstrip("-").partition(".")
    try:
        return sign * (int(whole or "0") * 1_000_000_000 + int((frac + "000000000")[:9]))
    except ValueError:
        raise LayerError(f"invalid PAX mtime {text!r}") from None


def _parse_pax(data: bytes) -> list[tuple[str, bytes]]:
    """PAX records ``"LEN KEY=VALUE\\n"``, in order (GNU sparse 0.0 repeats keys)."""
    records: list[tuple[str, bytes]] = []
    pos = 0
    while pos < len(data):
        if data[pos] == 0:  # padding some writers leave
            break
        space = data.find(b" ", pos)
        if space < 0:
            raise LayerError("malformed PAX header")
        try:
            length = int(data[pos:space])
        except ValueError:
            raise LayerError("malformed PAX record length") from None
        end = pos + length
        if length <= space - pos or end > len(data) or data[end - 1] != 0x0A:
            raise LayerError("malformed PAX record")
        key, eq, value = data[space + 1:end - 1].partition(b"=")
        if not eq:
            raise LayerError("malformed PAX record (no '=')")
        records.append((key.decode("utf-8", "surrogateescape"), value))
        pos = end
    return records


def _pax_int(key: str, value: bytes) -> int:
    try:
        number = int(value)
    except ValueError:
        raise LayerError(f"invalid PAX {key} {value[:40]!r}") from None
    if number < 0:
        raise LayerError(f"negative PAX {key}")
    return number


class _Pax:
    """What PAX records (global, then per entry) override in a header."""

    __slots__ = ("name", "linkname", "size", "fields", "xattrs", "sparse_map", "sparse_name",
                 "sparse_size", "sparse_major")

    def __init__(self, records: list[tuple[str, bytes]]) -> None:
        self.name: str | None = None
        self.linkname: str | None = None
        self.size: int | None = None
        self.fields: dict = {}
        self.xattrs: dict[str, bytes] = {}
        self.sparse_map: list[int] = []
        self.sparse_name: str | None = None
        self.sparse_size: int | None = None
        self.sparse_major: int | None = None
        for key, value in records:
            self._one(key, value)

    def _one(self, key: str, value: bytes) -> None:
        text = value.decode("utf-8", "surrogateescape")
        if key == "path":
            self.name = text
        elif key == "linkpath":
            self.linkname = text
        elif key == "size":
            self.size = _pax_int(key, value)
        elif key in ("uid", "gid"):
            self.fields[key] = _pax_int(key, value)
        elif key == "mtime":
            self.fields["mtime_ns"] = _pax_time_ns(text)
        elif key in ("uname", "gname"):
            self.fields[key] = text
        elif key.startswith("SCHILY.xattr."):
            self.xattrs[key[len("SCHILY.xattr."):]] = value  # raw bytes, binary allowed
        elif key.startswith("GNU.sparse."):
            self._sparse(key[len("GNU.sparse."):], key, value, text)

    def _sparse(self, sub: str, key: str, value: bytes, text: str) -> None:
        if sub in ("offset", "numbytes"):          # format 0.0: repeated pairs
            self.sparse_map.append(_pax_int(key, value))
        elif sub == "map":                         # format 0.1: one comma list
            self.sparse_map = [_pax_int(key, v) for v in value.split(b",") if v]
        elif sub == "name":
            self.sparse_name = text
        elif sub in ("size", "realsize"):
            self.sparse_size = _pax_int(key, value)
        elif sub == "major":                       # format 1.0: map in the data
            self.sparse_major = _pax_int(key, value)


class LayerReader:
    """Iterate the entries of one layer blob; see the module docstring.

    ``stream`` is the blob as stored (compressed or not); the reader never closes it
    unless used as a context manager. Content of the current regular file is read with
    :meth:`read_chunks` (logical bytes, holes as zeros) or :meth:`read_segments` (the stored
    data regions with their offsets, to write sparse files as holes); whatever is not read
    is skipped (and still hashed) when the iteration moves on. Chunks are memoryviews into
    an internal buffer, valid until the next read.
    """

    def __init__(self, stream: BinaryIO, *, limits: Limits = Limits(),
                 digest_algorithm: str = "sha256") -> None:
        self._stream = stream
        self._limits = limits
        self._src = Decoded(stream, limits.max_bytes, digest_algorithm)
        self._buf = b""
        self._pos = 0
        self._remaining = 0          # stored data bytes of the current entry not yet read
        self._padding = 0
        self._current: LayerEntry | None = None
        self._global: dict[str, bytes] = {}
        self._done = False
        self.entries = 0

    @property
    def compression(self) -> str:
        """'gzip', 'zstd' or 'none', as detected from the bytes."""
        return self._src.compression

    @property
    def size(self) -> int:
        """Uncompressed bytes read so far (the whole layer once iteration has ended)."""
        return self._src.total

    @property
    def diff_id(self) -> str:
        """``sha256:<hex>`` of the uncompressed stream; only once it was read to the end."""
        if not self._done:
            raise RuntimeError("diff_id is only known once the layer was read to its end")
        return f"{self._src.hash.name}:{self._src.hash.hexdigest()}"

    def __enter__(self) -> LayerReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stream.close()

    # -- low-level byte access --

    def _avail(self) -> int:
        return len(self._buf) - self._pos

    def _fill(self) -> bool:
        chunk = self._src.next_chunk()
        if not chunk:
            return False
        if self._pos < len(self._buf):
            self._buf = self._buf[self._pos:] + chunk
        else:
            self._buf = chunk
        self._pos = 0
        return True

    def _read_exact(self, n: int, what: str) -> bytes:
        while self._avail() < n:
            if not self._fill():
                raise LayerError(f"truncated tar stream ({what})")
        out = self._buf[self._pos:self._pos + n]
        self._pos += n
        return out

    def _read_some(self, n: int) -> memoryview:
        """Up to ``n`` bytes (at least one), zero-copy from the buffer."""
        if self._avail() == 0 and not self._fill():
            raise LayerError("truncated tar stream (file data)")
        take = min(n, self._avail())
        out = memoryview(self._buf)[self._pos:self._pos + take]
        self._pos += take
        return out

    def _skip(self, n: int) -> None:
        while n:
            n -= len(self._read_some(n))

    def _drain(self) -> None:
        """Read to the very end: trailing bytes after the end blocks belong to the DiffID."""
        self._buf, self._pos = b"", 0
        while self._src.next_chunk():
            pass
        self._done = True

    # -- entries --

    def __iter__(self) -> Iterator[LayerEntry]:
        while True:
            entry = self._next()
            if entry is None:
                return
            yield entry

    def _finish_current(self) -> None:
        if self._remaining:
            self._skip(self._remaining)
            self._remaining = 0
        if self._padding:
            self._skip(self._padding)
            self._padding = 0
        self._current = None

    def _next(self) -> LayerEntry | None:
        if self._done:
            return None
        self._finish_current()
        pax: list[tuple[str, bytes]] = []
        longname = longlink = None
        while True:
            if self._avail() < 512:
                while self._avail() < 512 and self._fill():
                    pass
                if self._avail() == 0 and not pax and longname is None and longlink is None:
                    self._drain()  # an empty stream or one without end blocks: Go accepts it
                    return None
            block = self._read_exact(512, "header")
            if block.count(0) == 512:
                self._drain()
                return None
            self._check_sum(block)
            kind = block[156:157]
            size = _num(block[124:136], "size")
            if kind in (b"x", b"g", b"L", b"K"):
                if size > self._limits.max_header:
                    raise LimitExceeded(f"tar extended header of {size} bytes "
                                        f"(Limits.max_header {self._limits.max_header})")
                data = self._read_exact(size, "extended header")
                self._skip(-size % 512)
                if kind == b"x":
                    pax.extend(_parse_pax(data))
                elif kind == b"g":
                    for key, value in _parse_pax(data):
                        if value:
                            self._global[key] = value
                        else:
                            self._global.pop(key, None)
                elif kind == b"L":
                    longname = _str(data)
                else:
                    longlink = _str(data)
                continue
            if kind == b"V":  # a volume label is not a file
                self._skip(size + (-size % 512))
                pax, longname, longlink = [], None, None
                continue
            return self._entry(block, kind, size, pax, longname, longlink)

    @staticmethod
    def _check_sum(block: bytes) -> None:
        stored = _num(block[148:156], "checksum")
        unsigned = sum(block) - sum(block[148:156]) + 256
        if stored != unsigned:
            signed = sum(b - 256 if b > 127 else b for b in block[:148] + block[156:]) + 256
            if stored != signed:
                raise LayerError("tar header checksum mismatch (corrupt or not a tar)")

    def _entry(self, block: bytes, kind: bytes, size: int, pax: list[tuple[str, bytes]],
               longname: str | None, longlink: str | None) -> LayerEntry:
        magic = block[257:265]
        name = _str(block[0:100])
        if magic[:6] == b"ustar\0" and block[345] != 0:
            name = _str(block[345:500]) + "/" + name
        linkname = _str(block[157:257])
        if kind not in _TYPES:
            raise LayerError(f"unsupported tar entry type {kind!r} for {name!r}")
        etype = _TYPES[kind]
        if kind == b"\0" and name.endswith("/"):
            etype = "dir"  # pre-POSIX directories
        if longname is not None:
            name = longname
        if longlink is not None:
            linkname = longlink
        fields: dict = {"uid": _num(block[108:116], "uid"),
                        "gid": _num(block[116:124], "gid"),
                        "mtime_ns": _num(block[136:148], "mtime") * 1_000_000_000,
                        "uname": _str(block[265:297]), "gname": _str(block[297:329])}
        over = _Pax([*self._global.items(), *pax])
        name = over.name if over.name is not None else name
        linkname = over.linkname if over.linkname is not None else linkname
        size = over.size if over.size is not None else size
        fields.update(over.fields)
        xattrs = over.xattrs
        sparse_map, sparse_name, sparse_size, sparse_major = (
            over.sparse_map, over.sparse_name, over.sparse_size, over.sparse_major)
        if size < 0:
            raise LayerError(f"negative size for {name!r}")
        if etype != "file":
            data_size = 0  # header-only types: any size field is ignored (Go, tarfile)
            size_out = 0
        else:
            data_size = size
            size_out = size
        sparse: tuple[tuple[int, int], ...] | None = None
        if kind == b"S":
            regions, size_out = self._gnu_old_sparse(block)
            sparse = regions
        elif sparse_name is not None or sparse_size is not None or sparse_map or sparse_major:
            if sparse_name is not None:
                name = sparse_name
            if sparse_major == 1:
                sparse_map, used = self._sparse_map_10(data_size)
                data_size -= used
            sparse = tuple(zip(sparse_map[0::2], sparse_map[1::2]))
            size_out = sparse_size if sparse_size is not None else size
        if sparse is not None:
            self._check_sparse(name, sparse, size_out, data_size)
        path = normalise_path(name, self._limits)
        if etype == "hardlink":
            linkname = normalise_path(linkname, self._limits)
        elif "\0" in linkname:
            raise LayerError(f"NUL byte in link target of {name!r}")
        if len(linkname.encode("utf-8", "surrogateescape")) > self._limits.max_path:
            raise LimitExceeded(f"link target of {name!r} longer than {self._limits.max_path}")
        if kind == b"D":
            data_size = size  # a GNU dumpdir's listing: skipped, never content
        self.entries += 1
        self._remaining = data_size
        self._padding = -data_size % 512  # the sparse 1.0 map is whole blocks
        entry = LayerEntry(
            path=path, type=etype, mode=_num(block[100:108], "mode") & 0o7777,
            size=size_out, linkname=linkname,
            devmajor=_num(block[329:337], "devmajor") if etype in ("char", "block") else 0,
            devminor=_num(block[337:345], "devminor") if etype in ("char", "block") else 0,
            xattrs=tuple(sorted(xattrs.items())), sparse=sparse, **fields)
        self._current = entry
        return entry

    def _gnu_old_sparse(self, block: bytes) -> tuple[tuple[tuple[int, int], ...], int]:
        """Old GNU sparse ('S'): 4 map slots in the header, more in extension blocks."""
        regions: list[tuple[int, int]] = []

        def slots(area: bytes, count: int) -> None:
            for i in range(count):
                off = area[i * 24:i * 24 + 12]
                if off[0] == 0:
                    return
                regions.append((_num(off, "sparse offset"),
                                _num(area[i * 24 + 12:i * 24 + 24], "sparse size")))

        slots(block[386:482], 4)
        extended = block[482]
        real_size = _num(block[483:495], "sparse realsize")
        while extended:
            ext = self._read_exact(512, "sparse header")
            slots(ext[:504], 21)
            extended = ext[504]
            if len(regions) > 1_000_000:
                raise LimitExceeded("sparse map too long")
        return tuple(regions), real_size

    def _sparse_map_10(self, stored: int) -> tuple[list[int], int]:
        """GNU sparse 1.0: the map is decimal lines at the start of the data, 512-padded."""
        used = 0
        text = b""

        def line() -> int:
            nonlocal used, text
            while b"\n" not in text:
                if used + 512 > stored:
                    raise LayerError("GNU sparse 1.0 map longer than its entry")
                text += self._read_exact(512, "sparse map")
                used += 512
                if len(text) > self._limits.max_header:
                    raise LimitExceeded("sparse map too long")
            head, _, text = text.partition(b"\n")
            try:
                return int(head)
            except ValueError:
                raise LayerError("malformed GNU sparse 1.0 map") from None

        count = line()
        values = [line() for _ in range(2 * count)]
        return values, used

    @staticmethod
    def _check_sparse(name: str, regions: tuple[tuple[int, int], ...], real: int,
                      stored: int) -> None:
        end = 0
        total = 0
        for off, length in regions:
            if off < end or length < 0:
                raise LayerError(f"overlapping or unordered sparse map for {name!r}")
            end = off + length
            total += length
        if end > real or total != stored:
            raise LayerError(f"sparse map of {name!r} does not match its sizes")

    # -- content --

    def read_segments(self) -> Iterator[tuple[int, memoryview]]:
        """The current file's stored data as ``(file offset, bytes)`` pieces, in order."""
        entry = self._current
        if entry is None or entry.type != "file":
            return
        regions = entry.sparse if entry.sparse is not None else ((0, self._remaining),)
        for off, length in regions:
            while length:
                piece = self._read_some(min(length, self._remaining))
                self._remaining -= len(piece)
                yield off, piece
                off += len(piece)
                length -= len(piece)

    def read_chunks(self) -> Iterator[bytes | memoryview]:
        """The current file's logical content (holes of sparse files as zero bytes)."""
        entry = self._current
        if entry is None or entry.type != "file":
            return
        pos = 0
        for off, piece in self.read_segments():
            while pos < off:
                n = min(off - pos, _CHUNK)
                yield bytes(n)
                pos += n
            yield piece
            pos += len(piece)
        while pos < entry.size:
            n = min(entry.size - pos, _CHUNK)
            yield bytes(n)
            pos += n

    def finish(self) -> str:
        """Skip whatever is left, read the stream to its end and return the DiffID."""
        for _ in self:
            pass
        return self.diff_id
