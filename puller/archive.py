"""Offline carry formats: docker-archive and OCI archives in and out, rootfs tars in and out.

What each function writes or reads is the ecosystem's own format, so that ``docker load``,
``podman load``, skopeo, umoci and containerd read what we write and we read what they write:

* :func:`save` writes a *docker-archive* (``manifest.json`` with Config, RepoTags, Layers,
  plus ``repositories``; layers uncompressed as ``docker save`` does, or the registry's gzip
  blobs with ``compress=True``) or an *OCI archive* (an OCI image layout in a tar, refs as
  ``org.opencontainers.image.ref.name``). Layers are streamed from the cache into the tar:
  a tar header needs the size first, so a layer's uncompressed size is learnt by one
  streaming pass the first time and kept in the cache's meta (``uncompressed_size``).
* :func:`load` reads either format (and an OCI layout directory). Every member is staged
  under ``tmp/`` in one pass: hashed, and a compressed layer inflated on the way to hash its
  DiffID (unless the cache recorded that blob's DiffID when it checked it), a docker-archive's
  plain tar layer gzipped (the cache holds compressed blobs). An archive file's layers are
  staged side by side by worker threads; a pipe is read in order, its layers inflated from
  their staged files beside the reading. Nothing reaches ``blobs/`` before the whole archive
  has been read and every digest and DiffID checked, and refs come last. A corrupt or
  truncated archive is therefore refused with the cache as it was, and loading the same
  archive again finds every blob and ref in place and writes nothing.
* :func:`export` writes the merged rootfs as one tar without unpacking it: a first pass over
  the headers of every layer works out which entries survive (whiteouts and opaque markers
  applied, hardlinks followed to their inode), a second pass copies their data.
* :func:`import_tar` is the reverse: a rootfs tar becomes a one-layer image.

Nothing here prints: progress goes to the ``progress(event)`` callback.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ._log import get_logger
from .errors import ArchiveError, DigestMismatch, DiskFull, LayerError, PullerError
from .manifest import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    REGISTRY_DIGEST,
    REGISTRY_MEDIA_TYPE,
    Descriptor,
    Index,
    Manifest,
    digest_of,
)
from .manifest import parse as parse_manifest
from .store import REF_NAME, Store, _mkdtemp, _mkstemp

# Imported where used, not here: tarfile (load, export: save writes its plain headers
# itself), the layer decoder (load, a docker-archive's uncompressed layers) and reader
# (export, import), the platform (import), typing (only for type checkers): ``puller
# save`` and ``puller load`` of a small image are bound by their start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import tarfile
    from collections.abc import Callable, Iterator, Sequence
    from typing import IO, Any, BinaryIO

    from .image import CachedImage
    from .layer.reader import LayerEntry, LayerReader
    from .platform import Platform

    Progress = Callable[[dict[str, Any]], None]

log = get_logger("puller.archive")

__all__ = ["FORMATS", "SaveItem", "export", "import_tar", "load", "save"]

FORMATS = ("docker", "oci")
CONTAINERD_NAME = "io.containerd.image.name"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"

_CHUNK = 1 << 20
_MAX_JSON = 16 << 20          # manifest.json, configs, indexes: read whole, so capped
_BLOB_NAME = re.compile(r"^blobs/(sha256|sha512)/([0-9a-f]{64}|[0-9a-f]{128})$")
_DIFF_NAME = re.compile(r"^([0-9a-f]{64})\.tar$")         # skopeo's and our layer names
_JSON_NAME = re.compile(r"^([0-9a-f]{64})\.json$")        # docker's and skopeo's config names
_META_NAMES = ("manifest.json", "repositories", "index.json", "oci-layout")


def _noop(event: dict[str, Any]) -> None:
    return None


def _hex(digest: str) -> str:
    return digest.partition(":")[2]


def _gzip_compressor() -> Any:
    """A gzip stream compressor with a fixed header (no name, mtime 0), so that the same tar
    always becomes the same blob and re-loading an archive finds its blobs in place.
    ISA-L's level 2 (a dependency: 17x as fast as zlib's 6, for blobs some 12% larger),
    else zlib at gzip's default level."""
    try:
        from isal import isal_zlib  # type: ignore[import-not-found, unused-ignore]
        return isal_zlib.compressobj(2, isal_zlib.DEFLATED, 31)
    except ImportError:  # pragma: no cover - depends on the environment
        import zlib
        return zlib.compressobj(6, zlib.DEFLATED, 31)


def _sniff(head: bytes) -> str:
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return "zstd"
    return "none"


def _layer_media_type(compression: str) -> str:
    return {"gzip": OCI_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD}.get(compression, OCI_LAYER_TAR)


# --- tar output ---------------------------------------------------------------------------

def _ustar_file(name: str, size: int, mtime: int = 0) -> bytes | None:
    """The header of a plain 0644 file member owned by root, byte for byte as ``tarfile``
    writes it (PAX format), without importing tarfile (and shutil, bz2, lzma with it) for
    the members ``save`` writes; None when it needs a PAX header (a long or non-ASCII name,
    8 GiB or more)."""
    try:
        raw = name.encode("ascii")
    except UnicodeEncodeError:
        return None
    if len(raw) > 100 or not 0 <= size < 8 ** 11 or not 0 <= mtime < 8 ** 11:
        return None
    head = b"".join((raw.ljust(100, b"\0"), b"0000644\0", b"0000000\0", b"0000000\0",
                     b"%011o\0" % size, b"%011o\0" % mtime, b" " * 8, b"0", b"\0" * 100,
                     b"ustar\x0000", b"\0" * 80, b"\0" * 155)).ljust(512, b"\0")
    return head[:148] + b"%06o\0" % sum(head) + head[155:]


class _TarOut:
    """A streaming tar writer: a header, then the data in chunks, then padding. ``tarfile``
    wants the whole member as a file object; we feed data as it is decompressed."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self._open = 0        # bytes still owed to the current member
        self._size = 0

    def header(self, info: tarfile.TarInfo) -> None:
        import tarfile
        self._begin(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"),
                    info.size if info.type in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0)

    def file(self, name: str, size: int, mtime: int = 0) -> None:
        """The header of a plain file member (0644, root's); :meth:`data` writes its bytes."""
        head = _ustar_file(name, size, mtime)
        if head is not None:
            self._begin(head, size)
            return
        import tarfile
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = size, 0o644, mtime
        self.header(info)

    def _begin(self, head: bytes, size: int) -> None:
        if self._open:
            raise ArchiveError("internal error: tar member left incomplete")
        self._f.write(head)
        self._open = self._size = size

    def data(self, chunk: bytes | memoryview) -> None:
        if len(chunk) > self._open:
            raise ArchiveError("internal error: more data than the tar header announced")
        self._f.write(chunk)
        self._open -= len(chunk)

    @property
    def owed(self) -> int:
        """Data bytes the current member still needs."""
        return self._open

    def end_member(self) -> None:
        if self._open:
            raise ArchiveError(f"internal error: {self._open} bytes missing from a tar member")
        self._f.write(b"\0" * (-self._size % 512))
        self._size = 0

    def add_bytes(self, name: str, data: bytes, mtime: int = 0) -> None:
        self.file(name, len(data), mtime)
        self.data(data)
        self.end_member()

    def close(self) -> None:
        self._f.write(b"\0" * 1024)


@contextlib.contextmanager
def _open_output(out: Path | str | BinaryIO) -> Iterator[IO[bytes]]:
    """A file is written under a temp name next to it and renamed when complete, so an
    interrupted save never leaves a half archive under the final name; a stream is used as
    it is (``-o -``)."""
    if not isinstance(out, (str, os.PathLike)):
        yield out
        out.flush()
        return
    path = Path(out)
    try:
        fd, tmp = _mkstemp(path.parent, f".{path.name}")
    except OSError as e:
        raise ArchiveError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb", buffering=_CHUNK) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# --- save -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SaveItem:
    """One image to save and the names it is saved under (normalised references)."""

    image: CachedImage
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.image.manifest.layers) != len(self.image.diff_ids):
            raise ArchiveError(f"{self.image.name}: the config lists {len(self.image.diff_ids)} "
                               f"diff_ids for {len(self.image.manifest.layers)} layers")


def save(items: Sequence[SaveItem], out: Path | str | BinaryIO, *, store: Store,
         fmt: str = "docker", compress: bool = False, progress: Progress | None = None) -> None:
    """Write ``items`` as one archive to ``out`` (a path, written atomically, or a stream).

    ``fmt`` is ``docker`` (docker-archive) or ``oci`` (OCI image layout tar); ``compress``
    keeps the registry's compressed blobs in a docker-archive instead of plain tars.
    Layers shared by several images are written once.
    """
    if fmt not in FORMATS:
        raise ArchiveError(f"unknown archive format {fmt!r}: expected docker or oci")
    if not items:
        raise ArchiveError("nothing to save")
    emit = progress or _noop
    with store.gc_lock(shared=True), _open_output(out) as f:
        tar = _TarOut(f)
        if fmt == "docker":
            _save_docker(items, tar, store, compress, emit)
        else:
            _save_oci(items, tar, store, emit)
        tar.close()


def _repo_tag(name: str) -> tuple[str, str] | None:
    """``(repository, tag)`` as Docker writes them in RepoTags (familiar form); None for
    digest references, which Docker cannot tag."""
    from .reference import parse
    ref = parse(name)
    if ref.digest or not ref.tag:
        return None
    return ref.familiar.rpartition(":")[0], ref.tag


def _save_docker(items: Sequence[SaveItem], tar: _TarOut, store: Store, compress: bool,
                 emit: Progress) -> None:
    written: set[str] = set()
    manifest: list[dict[str, Any]] = []
    repositories: dict[str, dict[str, str]] = {}
    for item in items:
        img = item.image
        paths = []
        for desc, diff_id in zip(img.manifest.layers, img.diff_ids):
            if compress:
                ext = {"gzip": ".gz", "zstd": ".zst"}.get(_compression_of(desc), "")
                path = f"{_hex(desc.digest)}.tar{ext}"
                if path not in written:
                    _copy_blob(tar, store, desc, path, emit)
            else:
                path = f"{_hex(diff_id)}.tar"
                if path not in written:
                    _write_uncompressed(tar, store, desc, diff_id, path, emit)
            written.add(path)
            paths.append(path)
        config = f"{_hex(img.manifest.config.digest)}.json"
        if config not in written:
            tar.add_bytes(config, img.config_raw)
            written.add(config)
        tags = [rt for rt in map(_repo_tag, item.names) if rt is not None]
        manifest.append({"Config": config, "RepoTags": [f"{r}:{t}" for r, t in tags] or None,
                         "Layers": paths})
        for repo, tag in tags:
            repositories.setdefault(repo, {})[tag] = _hex(img.diff_ids[-1]) if img.diff_ids else ""
    tar.add_bytes("manifest.json", json.dumps(manifest).encode())
    tar.add_bytes("repositories", json.dumps(repositories).encode())


def _compression_of(desc: Descriptor) -> str:
    mt = desc.media_type
    if "zstd" in mt:
        return "zstd"
    return "gzip" if "gzip" in mt else "none"


def _copy_blob(tar: _TarOut, store: Store, desc: Descriptor, path: str, emit: Progress) -> None:
    """A cached blob into the tar as it is; the cache's reader checks its digest at EOF."""
    tar.file(path, desc.size)
    with store.open_blob(desc.digest, desc.size) as r:
        while chunk := r.read(_CHUNK):
            tar.data(chunk)
    tar.end_member()
    emit({"event": "archive-blob", "digest": desc.digest, "size": desc.size})


def uncompressed_size(store: Store, desc: Descriptor, diff_id: str) -> int:
    """A layer's uncompressed size: from the cache's meta, else learnt by one streaming pass
    (which also checks the DiffID) and recorded there for next time."""
    from .layer.decode import Decoded
    meta = store.get_meta(desc.digest)
    if isinstance(meta.get("uncompressed_size"), int) and meta.get("diff_id") == diff_id:
        return int(meta["uncompressed_size"])
    with store.open_blob(desc.digest, desc.size) as raw:
        dec = Decoded(raw)  # type: ignore[arg-type] - a reader, as Decoded needs
        while dec.next_chunk():
            pass
    got = f"sha256:{dec.hash.hexdigest()}"
    if got != diff_id:
        raise DigestMismatch(f"layer {desc.digest} does not match its diff_id {diff_id} (got {got})")
    store.set_meta(desc.digest, uncompressed_size=dec.total, diff_id=diff_id)
    return dec.total


def _write_uncompressed(tar: _TarOut, store: Store, desc: Descriptor, diff_id: str, path: str,
                        emit: Progress) -> None:
    """Decompress a cached layer straight into the tar; its DiffID is checked on the way."""
    from .layer.decode import Decoded
    size = uncompressed_size(store, desc, diff_id)
    tar.file(path, size)
    with store.open_blob(desc.digest, desc.size) as raw:
        dec = Decoded(raw)  # type: ignore[arg-type] - a reader, as Decoded needs
        while chunk := dec.next_chunk():
            if len(chunk) > tar.owed:
                raise ArchiveError(f"layer {desc.digest} is larger than its recorded size {size}")
            tar.data(chunk)
    if dec.total != size or f"sha256:{dec.hash.hexdigest()}" != diff_id:
        raise DigestMismatch(f"layer {desc.digest} does not match its diff_id {diff_id}")
    tar.end_member()
    emit({"event": "archive-blob", "digest": desc.digest, "size": size})


def _save_oci(items: Sequence[SaveItem], tar: _TarOut, store: Store, emit: Progress) -> None:
    tar.add_bytes("oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
    written: set[str] = set()
    entries: list[dict[str, Any]] = []

    def blob(digest: str, data: bytes | None = None, desc: Descriptor | None = None) -> None:
        path = f"blobs/{digest.replace(':', '/')}"
        if path in written:
            return
        written.add(path)
        if data is not None:
            tar.add_bytes(path, data)
        elif desc is not None:
            _copy_blob(tar, store, desc, path, emit)

    for item in items:
        img = item.image
        for layer in img.manifest.layers:
            blob(layer.digest, desc=layer)
        blob(img.manifest.config.digest, img.config_raw)
        blob(img.local_digest, img.manifest.raw)
        entry = store.get_ref(img.name)
        for name in item.names:
            ann = {REF_NAME: name, CONTAINERD_NAME: name}
            if img.manifest_digest != img.local_digest:
                ann[REGISTRY_DIGEST] = img.manifest_digest
                if entry is not None and entry.registry_digest == img.manifest_digest:
                    ann[REGISTRY_MEDIA_TYPE] = entry.registry_media_type
            entries.append(Descriptor(img.manifest.media_type, img.local_digest,
                                      len(img.manifest.raw), img.platform,
                                      tuple(sorted(ann.items()))).to_json())
    tar.add_bytes("index.json", json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                            "manifests": entries}, indent=2).encode())


# --- load: staging ----------------------------------------------------------------------

class _Future:
    """A value worked out on one of the :class:`_Workers` (:meth:`get` waits for it, and
    raises what the work raised), known at once, or worked out on first use."""

    __slots__ = ("_value", "_error", "_done", "_later")

    def __init__(self, value: Any = None) -> None:
        self._value = value
        self._error: BaseException | None = None
        self._done: threading.Event | None = None
        self._later: Callable[[], Any] | None = None

    @classmethod
    def pending(cls) -> _Future:
        out = cls()
        out._done = threading.Event()
        return out

    @classmethod
    def later(cls, work: Callable[[], Any]) -> _Future:
        out = cls()
        out._later = work
        return out

    def set(self, value: Any, error: BaseException | None = None) -> None:
        """The worker's result (or the exception it met)."""
        self._value, self._error = value, error
        assert self._done is not None
        self._done.set()

    def ready(self) -> bool:
        """Known without waiting or working for it."""
        return self._later is None and (self._done is None or self._done.is_set())

    def get(self) -> Any:
        if self._later is not None:
            work, self._later = self._later, None
            self._value = work()
        if self._done is not None:
            self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value


class _Workers:
    """Threads that stage an archive's layers side by side: inflating (to hash a DiffID) is
    the costliest step of a load, and zlib, ISA-L and hashlib release the GIL, so an image's
    layers are read, hashed and inflated at once, up to one per core. Work submitted here
    never waits for other work submitted here."""

    def __init__(self, most: int | None = None) -> None:
        import queue
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], _Future] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._most = most or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                              else os.cpu_count() or 1)
        self.stop = threading.Event()   # set when the load is over: running work gives up

    def submit(self, work: Callable[[], Any]) -> _Future:
        out = _Future.pending()
        self._jobs.put((work, out))
        if len(self._threads) < self._most:
            t = threading.Thread(target=self._run, name="load", daemon=True)
            t.start()
            self._threads.append(t)
        return out

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            work, out = job
            try:
                out.set(work())
            except BaseException as e:  # noqa: BLE001 - handed to whoever waits for it
                out.set(None, e)

    def close(self) -> None:
        self.stop.set()
        for _ in self._threads:
            self._jobs.put(None)
        for t in self._threads:
            t.join()
        self._threads.clear()


def _inflated(raw: BinaryIO, stop: threading.Event) -> tuple[str | None, int | None]:
    """``(DiffID, uncompressed size)`` of the compressed bytes ``raw`` reads, ``(None, None)``
    when they do not decompress (or ``stop`` was set: the load is over)."""
    from .layer.decode import Decoded
    try:
        dec = Decoded(raw)
        while dec.next_chunk():
            if stop.is_set():
                return None, None
    except LayerError:
        return None, None
    return f"sha256:{dec.hash.hexdigest()}", dec.total


def _write_all(out: IO[bytes], data: bytes) -> None:
    """An unbuffered file's write may write less than it was given (disk full, a signal)."""
    view = memoryview(data)
    while view:
        view = view[out.write(view):]


class _Tee:
    """Reads ``src`` (whose ``first`` chunk was read already), hashing every byte and copying
    it to ``out``: the compressed side of a one-pass stage, read by the inflater."""

    def __init__(self, src: IO[bytes], first: bytes, algo: str, out: IO[bytes] | None) -> None:
        self._src, self._first, self._out = src, first, out
        self.hash = hashlib.new(algo)
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        if self._first:
            data, self._first = self._first, b""
        else:
            data = self._src.read(n if n > 0 else _CHUNK)
        if data:
            self.hash.update(data)
            self.size += len(data)
            if self._out is not None:
                _write_all(self._out, data)
        return data

    def drain(self) -> None:
        """To the end: bytes after the compressed stream are part of the blob too."""
        while self.read(_CHUNK):
            pass


class _Slice:
    """One member's bytes, read by offset from an archive file, so that several members are
    read at once: ``os.pread`` on the file's descriptor, or, for a file object without one
    (a BytesIO), seek and read in turns under ``lock``."""

    def __init__(self, f: IO[bytes], lock: threading.Lock, offset: int, size: int) -> None:
        self._f, self._lock, self._pos, self._left = f, lock, offset, size
        try:
            self._fd: int | None = f.fileno()
        except (OSError, ValueError):  # io.UnsupportedOperation is both
            self._fd = None

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        if n <= 0:
            return b""
        if self._fd is not None:
            data = os.pread(self._fd, n, self._pos)
        else:
            with self._lock:
                self._f.seek(self._pos)
                data = self._f.read(n)
        if not data:
            import tarfile
            raise tarfile.ReadError("unexpected end of data")
        self._pos += len(data)
        self._left -= len(data)
        return data


@dataclass(frozen=True, slots=True)
class _Staged:
    """An archive member as it would enter the cache: ``path`` is its staged file under
    tmp/ (None when the cache holds that very blob already). ``uncompressed`` is the future
    ``(DiffID, uncompressed size)``: sha256 of the uncompressed bytes, (None, None) when they
    do not decompress."""

    digest: str
    size: int
    compression: str             # gzip, zstd, none, or unknown (a blob only the cache holds)
    path: Path | None
    uncompressed: _Future

    @property
    def diff_id(self) -> str | None:
        """May wait for a worker (or inflate a cached blob) to know it."""
        return self.uncompressed.get()[0]  # type: ignore[no-any-return]

    @property
    def uncompressed_size(self) -> int | None:
        return self.uncompressed.get()[1]  # type: ignore[no-any-return]


class _Staging:
    """The per-load room under the cache's tmp/: members are hashed into it as they stream
    past, and moved into blobs/ only by :meth:`commit`, after everything was verified."""

    def __init__(self, store: Store) -> None:
        import itertools
        self.store = store
        try:
            store.tmp_dir.mkdir(parents=True, exist_ok=True)
            self.dir = _mkdtemp(store.tmp_dir, "load")
        except OSError as e:
            raise ArchiveError(f"cannot use cache directory {store.root}: {e.strerror or e}") from None
        self._names = itertools.count(1)  # workers stage too: next() is atomic
        self.workers = _Workers()
        self._syncer = _Workers(1)  # fsync waits on the disk: not on the threads that inflate
        self._syncs: list[_Future] = []

    def close(self) -> None:
        import shutil
        self.workers.close()
        self._syncer.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _sync_and_close(self, out: IO[bytes]) -> None:
        """fsync a staged file, then close it, on the sync thread; :meth:`synced` waits."""
        def work() -> None:
            try:
                os.fsync(out.fileno())
            finally:
                out.close()
        self._syncs.append(self._syncer.submit(work))

    @contextlib.contextmanager
    def _writing(self, out: IO[bytes] | None) -> Iterator[None]:
        """The block writes ``out`` (None: nothing to keep): closed if the block fails,
        else fsynced and closed on the sync thread."""
        try:
            yield
        except BaseException:
            if out is not None:
                out.close()
            raise
        if out is not None:
            self._sync_and_close(out)

    def synced(self) -> None:
        """Every staged file is on disk: due before the first is renamed into blobs/."""
        try:
            for sync in self._syncs:
                sync.get()
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull("no space left on the cache's file system while loading") from None
            raise ArchiveError(f"cannot write to the cache: {e.strerror or e}") from None

    def _new_file(self, *, small_writes: bool = False) -> tuple[Path, IO[bytes]]:
        """A new staged file: unbuffered for chunks copied as they are read (a buffer would
        only copy them once more), buffered for a compressor's small pieces."""
        path = self.dir / f"{next(self._names):06d}"
        return path, open(path, "wb", buffering=_CHUNK if small_writes else 0)

    def stage(self, src: IO[bytes], *, expect: str | None = None, recompress: bool = False,
              known: Descriptor | None = None, inline: bool = False) -> _Staged:
        """Consume ``src``: hash it (and its uncompressed bytes), keep it as a staged file.

        ``expect``: the digest its name promises (mismatch: ArchiveError); a blob the cache
        already holds is only hashed, and not inflated either when the cache recorded its
        DiffID. ``recompress``: a plain tar becomes a gzip blob (a docker-archive's
        layers). ``known``: a cached layer whose DiffID the name claims; when the bytes do
        hash to it, that blob is reused instead of gzipping again. ``inline``: a compressed
        member is inflated in the same pass (on a worker, staging layers side by side),
        else later by a worker, from the staged file (reading a stream in order).
        """
        first = src.read(_CHUNK)
        compression = _sniff(first)
        algo = expect.partition(":")[0] if expect else "sha256"
        in_cache = expect is not None and self.store.has_blob(expect)
        if compression == "none":
            staged = self._stage_plain(src, first, algo, recompress and known is None and not in_cache,
                                       keep=not in_cache and known is None)
        else:
            recorded = self._recorded(expect) if in_cache and expect is not None else None
            staged = self._stage_compressed(src, first, algo, compression, keep=not in_cache,
                                            recorded=recorded, inline=inline)
        if expect is not None and staged.digest != expect:
            self._discard(staged)
            raise ArchiveError(f"archive member does not match its digest {expect} (corrupt archive)")
        return staged

    def _stage_plain(self, src: IO[bytes], first: bytes, algo: str, gzip_it: bool,
                     keep: bool) -> _Staged:
        diff_h = hashlib.sha256()
        blob_h = hashlib.new(algo) if (gzip_it or algo != "sha256") else diff_h
        path, out = self._new_file(small_writes=gzip_it) if keep or gzip_it else (None, None)
        z = _gzip_compressor() if gzip_it else None
        n = written = 0
        with self._writing(out):
            chunk = first
            while chunk:
                n += len(chunk)
                diff_h.update(chunk)
                if blob_h is not diff_h and z is None:
                    blob_h.update(chunk)
                if z is not None:
                    piece = z.compress(chunk)
                    blob_h.update(piece)
                    written += len(piece)
                    out.write(piece)  # type: ignore[union-attr]
                elif out is not None:
                    _write_all(out, chunk)
                chunk = src.read(_CHUNK)
            if z is not None:
                piece = z.flush()
                blob_h.update(piece)
                written += len(piece)
                out.write(piece)  # type: ignore[union-attr]
            if out is not None:
                out.flush()
        plain = _Future((f"sha256:{diff_h.hexdigest()}", n))
        if z is not None:
            return _Staged(f"{algo}:{blob_h.hexdigest()}", written, "gzip", path, plain)
        return _Staged(f"{algo}:{blob_h.hexdigest()}", n, "none", path, plain)

    def _stage_compressed(self, src: IO[bytes], first: bytes, algo: str, compression: str, *,
                          keep: bool, recorded: _Future | None, inline: bool) -> _Staged:
        """Keep the bytes as they are, hashed on the way. Their DiffID: ``recorded`` (the
        cache's), else inflated in this pass (``inline``), else by a worker from the
        staged file, which it reads from the page cache while this thread reads on (or
        from the cache's copy of the blob, see :meth:`cached_uncompressed`)."""
        path, out = self._new_file() if keep else (None, None)
        tee = _Tee(src, first, algo, out)
        with self._writing(out):
            uncompressed = recorded
            if uncompressed is None and inline:
                uncompressed = _Future(_inflated(tee, self.workers.stop))  # type: ignore[arg-type]
            tee.drain()
            digest = f"{algo}:{tee.hash.hexdigest()}"
            if out is not None:
                out.flush()
            if uncompressed is None:
                staged_path = path
                uncompressed = (self.cached_uncompressed(digest, eager=True) if staged_path is None
                                else self.workers.submit(
                                    lambda: _inflated_file(staged_path, self.workers.stop)))
        return _Staged(digest, tee.size, compression, path, uncompressed)

    def _recorded(self, digest: str) -> _Future | None:
        """The DiffID the cache's meta records for a blob it holds (it verified it then)."""
        meta = self.store.get_meta(digest)
        diff_id, size = meta.get("diff_id"), meta.get("uncompressed_size")
        if isinstance(diff_id, str) and isinstance(size, int):
            return _Future((diff_id, size))
        return None

    def cached_uncompressed(self, digest: str, *, eager: bool = False) -> _Future:
        """The DiffID of a blob the cache holds: as recorded in its meta, else inflated from
        the cached copy, by a worker at once (``eager``: it is a layer) or on first use.
        Not a cached blob at all (a corrupt member's digest): unknown, and the member is
        refused for its digest anyway."""
        recorded = self._recorded(digest)
        if recorded is not None:
            return recorded
        if not self.store.has_blob(digest):
            return _Future((None, None))
        stop = self.workers.stop

        def work() -> tuple[str | None, int | None]:
            with self.store.open_blob(digest) as raw:  # checks the cached copy's digest at EOF
                return _inflated(raw, stop)  # type: ignore[arg-type]
        return self.workers.submit(work) if eager else _Future.later(work)

    def gzip_staged(self, staged: _Staged) -> _Staged:
        """Compress a staged plain layer (a docker-archive whose layers sit under blobs/)."""
        src = open(staged.path, "rb") if staged.path else self.store.open_blob(staged.digest)  # noqa: SIM115
        with src:
            out = self.stage(src, recompress=True)  # type: ignore[arg-type]
        return out

    def _discard(self, staged: _Staged) -> None:
        if staged.path is not None:
            with contextlib.suppress(OSError):
                staged.path.unlink()

    def read(self, staged: _Staged, what: str) -> bytes:
        """A small staged member (a config, manifest or index), read whole."""
        if staged.size > _MAX_JSON:
            raise ArchiveError(f"{what} is larger than {_MAX_JSON >> 20} MiB")
        if staged.path is None:
            return self.store.read_blob(staged.digest)
        return staged.path.read_bytes()

    def commit(self, staged: _Staged) -> None:
        """Move a verified staged blob into blobs/ (unless the cache has it by now), and
        record its DiffID in the cache's meta: loading it again need not inflate it."""
        store = self.store
        if staged.path is not None:
            with store.lock_blob(staged.digest):
                if not store.has_blob(staged.digest, staged.size):
                    final = store.blob_path(staged.digest)
                    final.parent.mkdir(parents=True, exist_ok=True)
                    os.chmod(staged.path, 0o644)
                    os.replace(staged.path, final)
        if staged.compression != "none" and staged.uncompressed.ready() and staged.diff_id:
            meta = store.get_meta(staged.digest)
            want = {"diff_id": staged.diff_id, "uncompressed_size": staged.uncompressed_size}
            if any(meta.get(k) != v for k, v in want.items()):
                store.set_meta(staged.digest, **want)

    def put(self, data: bytes) -> _Staged:
        """Small content made by the load itself (a manifest), staged like a member."""
        return self.stage(io.BytesIO(data))


def _inflated_file(path: Path, stop: threading.Event) -> tuple[str | None, int | None]:
    with open(path, "rb") as raw:
        return _inflated(raw, stop)


def known_layers(store: Store) -> dict[str, Descriptor]:
    """DiffID -> a cached layer blob with that DiffID, from the cached images' configs and
    the cache's meta records: a docker-archive's plain layer that the cache already holds
    compressed (say, pulled from the registry) is not compressed a second time."""
    out: dict[str, Descriptor] = {}
    for ref in store.refs() if store.exists() else ():
        for m in _cached_manifests(store, ref.descriptor):
            try:
                config = json.loads(store.read_blob(m.config.digest))
                ids = _diff_ids(config)
            except (PullerError, ValueError):
                continue
            for layer, diff_id in zip(m.layers, ids):
                if store.has_blob(layer.digest, layer.size):
                    out.setdefault(diff_id, layer)
    meta_dir = store.root / "meta"
    if not meta_dir.is_dir():
        return out
    for p in meta_dir.glob("*.json"):
        try:
            meta = json.loads(p.read_bytes())
        except (OSError, ValueError):
            continue
        digest = f"sha256:{p.stem}"
        diff_id = meta.get("diff_id")
        if isinstance(diff_id, str) and diff_id not in out and store.has_blob(digest):
            path = store.blob_path(digest)
            with open(path, "rb") as f:
                compression = _sniff(f.read(4))
            out[diff_id] = Descriptor(_layer_media_type(compression), digest, path.stat().st_size)
    return out


# --- load -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Loaded:
    """One ref an archive names, ready to be written once all blobs are in place."""

    name: str
    descriptor: Descriptor
    registry_digest: str | None
    registry_media_type: str | None


def _open_tar(f: IO[bytes]) -> tuple[tarfile.TarFile, bool]:
    """``(tar, by_offset)``: an archive file is read by offset (its members' data can then
    be read side by side); a pipe, or an archive compressed as a whole, as a stream."""
    import tarfile
    try:
        start = f.tell() if f.seekable() else None
    except OSError:
        start = None
    if start is not None:
        try:
            return tarfile.open(fileobj=f, mode="r:"), True
        except tarfile.ReadError:
            f.seek(start)  # not a plain tar: perhaps a compressed one
    return tarfile.open(fileobj=f, mode="r|*", bufsize=_CHUNK), False


def _is_json(name: str) -> bool:
    """A member read whole and parsed (so capped): indexes, manifests, docker configs."""
    return name in _META_NAMES or (name.endswith(".json") and not name.startswith("blobs/"))


class _Loader:
    """Reads one archive into a staging room, checks it whole, then commits it."""

    def __init__(self, store: Store, emit: Progress) -> None:
        self.store, self.emit = store, emit
        self.staging = _Staging(store)
        self.members: dict[str, _Staged] = {}     # archive path -> staged member
        self.meta: dict[str, bytes] = {}          # manifest.json, index.json, ...
        self.aliases: dict[str, str] = {}         # symlinked members (old docker save)
        self.by_digest: dict[str, _Staged] = {}
        self.used: dict[str, _Staged] = {}        # what the refs need, in commit order
        self._known: dict[str, Descriptor] | None = None
        self._meta_bytes = 0
        self.layout_dir: Path | None = None       # set when reading an OCI layout directory

    def known(self) -> dict[str, Descriptor]:
        if self._known is None:
            self._known = known_layers(self.store)
        return self._known

    # -- reading --
    def read_tar(self, f: IO[bytes]) -> None:
        import tarfile
        import zlib
        try:
            tar, by_offset = _open_tar(f)
            with tar:
                if by_offset:
                    self._read_side_by_side(f, tar)
                else:
                    for m in tar:
                        name = self._name(m)
                        if name is not None:
                            self._take(name, m, tar.extractfile(m))  # type: ignore[arg-type]
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull("no space left on the cache's file system while loading") from None
            raise ArchiveError(f"cannot read the archive: {e.strerror or e}") from None
        except (tarfile.TarError, EOFError, zlib.error) as e:
            raise ArchiveError(f"archive is corrupt or truncated ({e})") from None

    def _name(self, m: tarfile.TarInfo) -> str | None:
        """The normalised name of a member whose data counts; links are noted as aliases."""
        name = os.path.normpath(m.name).lstrip("/")
        if m.issym() or m.islnk():
            target = m.linkname if m.islnk() else os.path.join(os.path.dirname(name), m.linkname)
            self.aliases[name] = os.path.normpath(target).lstrip("/")
            return None
        return name if m.isfile() else None

    def _take(self, name: str, m: tarfile.TarInfo, src: IO[bytes]) -> None:
        """One member of an archive read as a stream, in order."""
        if _is_json(name):
            self._read_json(name, m.size, src)
            return
        self.emit({"event": "archive-member", "name": name, "size": m.size})
        self._add(name, self._stage_member(name, src, inline=False))

    def _read_side_by_side(self, f: IO[bytes], tar: tarfile.TarFile) -> None:
        """An archive file: its headers first, its JSON files read at once, then every other
        member staged by the workers in one pass each, largest first (it finishes last)."""
        lock = threading.Lock()
        blobs = []
        for m in tar.getmembers():
            name = self._name(m)
            if name is None:
                continue
            if _is_json(name):
                self._read_json(name, m.size, tar.extractfile(m))  # type: ignore[arg-type]
            else:
                self.emit({"event": "archive-member", "name": name, "size": m.size})
                blobs.append((name, m))
        if any(not _BLOB_NAME.match(name) for name, _ in blobs):
            self.known()  # worked out here, not by racing workers
        order = sorted(range(len(blobs)), key=lambda i: -blobs[i][1].size)
        futures: dict[int, _Future] = {}
        for i in order:
            name, m = blobs[i]
            src = _Slice(f, lock, m.offset_data, m.size)
            futures[i] = self.staging.workers.submit(
                lambda name=name, src=src: self._stage_member(name, src, inline=True))  # type: ignore[misc]
        for i, (name, _) in enumerate(blobs):  # archive order: the first of equal blobs wins
            self._add(name, futures[i].get())

    def _read_json(self, name: str, size: int, src: IO[bytes]) -> None:
        self._meta_bytes += size
        if size > _MAX_JSON or self._meta_bytes > 4 * _MAX_JSON:
            raise ArchiveError(f"archive member {name} makes its JSON files larger than we read "
                               f"({4 * _MAX_JSON >> 20} MiB in all, {_MAX_JSON >> 20} MiB each)")
        self.meta[name] = src.read()

    def _stage_member(self, name: str, src: IO[bytes], *, inline: bool) -> _Staged:
        """A blob (``blobs/ALG/HEX``: checked against its name) or a docker-archive layer (a
        plain tar, gzipped unless the cache holds it compressed already)."""
        blob = _BLOB_NAME.match(name)
        if blob:
            return self.staging.stage(src, expect=f"{blob[1]}:{blob[2]}", inline=inline)
        hint = _DIFF_NAME.match(os.path.basename(name))
        known = self.known().get(f"sha256:{hint[1]}") if hint else None
        staged = self.staging.stage(src, recompress=True, known=known, inline=inline)
        if known is not None and staged.path is None:
            if staged.diff_id != f"sha256:{hint[1]}":  # type: ignore[index]
                raise ArchiveError(f"layer {name} does not match the DiffID its name claims")
            staged = _Staged(known.digest, known.size, _compression_of(known), None,
                             staged.uncompressed)
        return staged

    def _add(self, name: str, staged: _Staged) -> None:
        self.members[name] = staged
        self.by_digest.setdefault(staged.digest, staged)

    def read_dir(self, root: Path) -> None:
        """An OCI layout directory: only the blobs its index reaches are staged (lazily)."""
        try:
            self.meta["index.json"] = (root / "index.json").read_bytes()
        except OSError as e:
            raise ArchiveError(f"{root} is not an OCI image layout: {e.strerror or e}") from None
        self.layout_dir = root

    def blob(self, digest: str, size: int | None = None) -> _Staged | None:
        """The staged member with ``digest`` (from a layout dir: staged on first use)."""
        staged = self.by_digest.get(digest)
        if staged is None and self.layout_dir is not None:
            path = self.layout_dir / "blobs" / digest.replace(":", "/")
            try:
                f = open(path, "rb")  # noqa: SIM115 - closed by the with below
            except FileNotFoundError:
                f = None
            except OSError as e:
                raise ArchiveError(f"cannot read {path}: {e.strerror or e}") from None
            if f is not None:
                with f:
                    staged = self.staging.stage(f, expect=digest)
                self.by_digest[digest] = staged
        if staged is None and self.store.has_blob(digest, size):
            size = size if size is not None else self.store.blob_path(digest).stat().st_size
            staged = _Staged(digest, size, "unknown", None, self.staging.cached_uncompressed(digest))
        if staged is not None and size is not None and staged.size != size:
            raise ArchiveError(f"blob {digest} is {staged.size} bytes, its descriptor says {size}")
        return staged

    # -- checking --
    def refs(self) -> list[_Loaded]:
        if "index.json" in self.meta:
            return self._oci_refs()
        if "manifest.json" in self.meta:
            return self._docker_refs()
        raise ArchiveError("not an image archive (no manifest.json or index.json)")

    def _json(self, data: bytes, what: str) -> Any:
        try:
            return json.loads(data)
        except ValueError:
            raise ArchiveError(f"{what} is not valid JSON") from None

    def _need(self, digest: str, size: int | None, what: str) -> _Staged:
        staged = self.blob(digest, size)
        if staged is None:
            raise ArchiveError(f"{what} {digest} is missing from the archive")
        self.used.setdefault(digest, staged)
        return staged

    def _check_image(self, desc: Descriptor) -> Manifest:
        """A manifest, its config and layers are all there and the DiffIDs agree."""
        raw = self.staging.read(self._need(desc.digest, desc.size, "manifest"), "manifest")
        m = _parse(raw, desc.media_type)
        if not isinstance(m, Manifest):
            raise ArchiveError(f"{desc.digest} is an index where an image manifest was expected")
        config = self._json(self.staging.read(self._need(m.config.digest, m.config.size, "config"),
                                              "config"), "image config")
        diff_ids = _diff_ids(config)
        if len(diff_ids) != len(m.layers):
            raise ArchiveError(f"image {desc.digest}: {len(m.layers)} layers but "
                               f"{len(diff_ids)} diff_ids in its config")
        # every layer first, then their DiffIDs: from a layout directory, staging a layer
        # starts its inflating on a worker, so the layers are inflated side by side
        staged = [self._need(layer.digest, layer.size, "layer") for layer in m.layers]
        for layer, one, diff_id in zip(m.layers, staged, diff_ids):
            if one.diff_id != diff_id:
                why = " (it does not decompress)" if one.diff_id is None else ""
                raise ArchiveError(f"layer {layer.digest} does not match its diff_id {diff_id}{why}")
        return m

    def _oci_refs(self) -> list[_Loaded]:
        doc = self._json(self.meta["index.json"], "index.json")
        out = []
        for d in doc.get("manifests") or [] if isinstance(doc, dict) else []:
            desc = _descriptor(d)
            name = _oci_ref_name(desc)
            if name is None:
                log.warning("skipping unnamed image %s in the archive", desc.digest)
                continue
            raw = self.staging.read(self._need(desc.digest, desc.size, "manifest"), "manifest")
            top = _parse(raw, desc.media_type)
            if isinstance(top, Index):
                present = [c for c in top.images() if self.blob(c.digest, c.size) is not None]
                if not present:
                    raise ArchiveError(f"{name}: the archive holds none of its platforms")
                for child in present:
                    self._check_image(child)
            else:
                self._check_image(desc)
            plain = Descriptor(desc.media_type, desc.digest, desc.size, desc.platform)
            out.append(_Loaded(name, plain, desc.annotation(REGISTRY_DIGEST),
                               desc.annotation(REGISTRY_MEDIA_TYPE)))
        if not out:
            raise ArchiveError("the archive names no image (index.json lists no ref names)")
        return out

    def _member_named(self, name: str) -> _Staged | bytes:
        name = os.path.normpath(name).lstrip("/")
        for _ in range(8):
            if name not in self.aliases:
                break
            name = self.aliases[name]
        if name in self.meta:
            return self.meta[name]
        if name in self.members:
            return self.members[name]
        raise ArchiveError(f"{name} is listed in manifest.json but missing from the archive")

    def _docker_refs(self) -> list[_Loaded]:
        doc = self._json(self.meta["manifest.json"], "manifest.json")
        if not isinstance(doc, list):
            raise ArchiveError("manifest.json is not a list of images")
        out = []
        for entry in doc:
            if not isinstance(entry, dict) or not isinstance(entry.get("Layers"), list):
                raise ArchiveError("manifest.json entry has no Layers list")
            names = _repo_tags(entry)
            config_raw, layers = self._docker_layers(entry)
            config_digest = digest_of(config_raw)
            current = [self.store.get_ref(n) for n in names]
            if names and all(c is not None and config_digest in _image_ids(self.store, c.descriptor)
                             for c in current):
                # the cache holds this very image under these names (say, pulled from the
                # registry): keep its blobs and refs rather than making a second copy
                out += [_Loaded(c.name, c.descriptor, c.registry_digest, c.registry_media_type)
                        for c in current if c is not None]
                continue
            desc = self._docker_manifest(config_raw, layers) if names else None
            out += [_Loaded(n, desc, None, None) for n in names if desc is not None]
            if not names:
                log.warning("skipping untagged image %s in the archive", entry.get("Config"))
        if not out:
            raise ArchiveError("the archive names no image (manifest.json has no RepoTags)")
        return out

    def _docker_layers(self, entry: dict[str, Any]) -> tuple[bytes, list[_Staged]]:
        """The config of one manifest.json image and its layers, each checked against the
        config's DiffIDs (the layers' DiffIDs were hashed as they streamed past)."""
        cfg_name = str(entry.get("Config") or "")
        cfg = self._member_named(cfg_name)
        config_raw = cfg if isinstance(cfg, bytes) else self.staging.read(cfg, "config")
        named = _JSON_NAME.match(os.path.basename(cfg_name)) or _BLOB_NAME.match(cfg_name)
        if named and _hex(digest_of(config_raw)) != named[named.lastindex or 1]:
            raise ArchiveError(f"config {cfg_name} does not match its digest (corrupt archive)")
        diff_ids = _diff_ids(self._json(config_raw, "image config"))
        if len(diff_ids) != len(entry["Layers"]):
            raise ArchiveError(f"{cfg_name}: {len(entry['Layers'])} layers but "
                               f"{len(diff_ids)} diff_ids in the config")
        layers = []
        for path, diff_id in zip(entry["Layers"], diff_ids):
            staged = self._member_named(str(path))
            if isinstance(staged, bytes) or staged.diff_id != diff_id:
                raise ArchiveError(f"layer {path} does not match its diff_id {diff_id}")
            layers.append(staged)
        return config_raw, layers

    def _docker_manifest(self, config_raw: bytes, layers: list[_Staged]) -> Descriptor:
        """An OCI manifest over the layers as the cache keeps them (gzip, unless the archive
        had them compressed already), staged with the config."""
        descs = []
        for staged in layers:
            if staged.compression == "none":
                staged = self._recompressed(staged)
            self.used.setdefault(staged.digest, staged)
            descs.append(Descriptor(_layer_media_type(staged.compression), staged.digest,
                                    staged.size))
        config_staged = self.staging.put(config_raw)
        self.used.setdefault(config_staged.digest, config_staged)
        doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
               "config": Descriptor(OCI_CONFIG, config_staged.digest, len(config_raw)).to_json(),
               "layers": [d.to_json() for d in descs]}
        raw = json.dumps(doc, indent=2).encode()
        staged = self.staging.put(raw)
        self.used.setdefault(staged.digest, staged)
        return Descriptor(OCI_MANIFEST, staged.digest, len(raw))

    def _recompressed(self, staged: _Staged) -> _Staged:
        known = self.known().get(staged.diff_id or "")
        if known is not None:
            return _Staged(known.digest, known.size, _compression_of(known), None,
                           staged.uncompressed)
        return self.staging.gzip_staged(staged)

    # -- writing --
    def commit(self, refs: list[_Loaded]) -> None:
        """Blobs into the cache first, refs last: a crash in between leaves only blobs that
        prune can collect, never a ref to something missing."""
        self.staging.synced()
        self.store.ensure()
        for staged in self.used.values():
            self.staging.commit(staged)
        for r in refs:
            current = self.store.get_ref(r.name)
            if (current is not None and current.descriptor.digest == r.descriptor.digest
                    and (r.registry_digest is None or current.registry_digest == r.registry_digest)):
                continue  # already so: re-loading writes nothing
            self.store.set_ref(r.name, r.descriptor, registry_digest=r.registry_digest,
                               registry_media_type=r.registry_media_type)
            self.emit({"event": "loaded", "ref": r.name, "digest": r.descriptor.digest})


def _repo_tags(entry: dict[str, Any]) -> list[str]:
    from .errors import BadReference
    from .reference import parse
    try:
        return [str(parse(str(tag))) for tag in entry.get("RepoTags") or ()]
    except BadReference as e:
        raise ArchiveError(f"manifest.json: {e}") from None


def _cached_manifests(store: Store, desc: Descriptor) -> Iterator[Manifest]:
    """The cached image manifests a ref's descriptor reaches (an index's present children)."""
    try:
        top = parse_manifest(store.read_blob(desc.digest))
        if isinstance(top, Manifest):
            yield top
            return
        for child in top.manifests:
            if store.has_blob(child.digest):
                m = parse_manifest(store.read_blob(child.digest))
                if isinstance(m, Manifest):
                    yield m
    except PullerError:
        return


def _image_ids(store: Store, desc: Descriptor) -> set[str]:
    """Config digests (Docker's image IDs) of what a cached ref points at."""
    return {m.config.digest for m in _cached_manifests(store, desc)}


def _parse(raw: bytes, media_type: str | None) -> Manifest | Index:
    try:
        return parse_manifest(raw, media_type or None)
    except PullerError as e:
        raise ArchiveError(f"archive holds an unusable manifest: {e}") from None


def _descriptor(d: Any) -> Descriptor:
    try:
        return Descriptor.from_json(d)
    except (PullerError, TypeError, ValueError) as e:
        raise ArchiveError(f"index.json has an invalid entry: {e}") from None


def _diff_ids(config: Any) -> list[str]:
    rootfs = config.get("rootfs") if isinstance(config, dict) else None
    ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ArchiveError("image config has no rootfs.diff_ids list")
    return ids


def _oci_ref_name(desc: Descriptor) -> str | None:
    """The full reference an OCI index entry names: containerd's annotation when present
    (Docker 25+ writes the bare tag into ref.name), else ref.name."""
    from .errors import BadReference
    from .reference import parse
    for key in (CONTAINERD_NAME, REF_NAME):
        value = desc.annotation(key)
        if value:
            try:
                return str(parse(value))
            except BadReference:
                continue
    return None


def load(source: Path | str | BinaryIO, store: Store, *, progress: Progress | None = None
         ) -> list[str]:
    """Load a docker-archive, an OCI archive or an OCI layout directory into ``store``;
    returns the ref names it wrote (or found already in place)."""
    emit = progress or _noop
    loader = _Loader(store, emit)
    try:
        with store.gc_lock(shared=True) if store.root.exists() else contextlib.nullcontext():
            if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
                loader.read_dir(Path(source))
            elif isinstance(source, (str, os.PathLike)):
                try:
                    f = open(source, "rb")  # noqa: SIM115 - closed by the with below
                except OSError as e:
                    raise ArchiveError(f"cannot read {source}: {e.strerror or e}") from None
                with f:
                    loader.read_tar(f)
            else:
                loader.read_tar(source)
            refs = loader.refs()
            loader.commit(refs)
    finally:
        loader.staging.close()
    return [r.name for r in refs]


# --- export -----------------------------------------------------------------------------

_TAR_TYPES = {"file": b"0", "dir": b"5", "symlink": b"2", "hardlink": b"1", "char": b"3",
              "block": b"4", "fifo": b"6"}  # tarfile's REGTYPE, DIRTYPE...


@dataclass(frozen=True, slots=True)
class _Node:
    """A path of the merged tree: the entry that made it (for a hardlink, the entry of its
    inode's first name), and its inode as (layer, ordinal) of that entry."""

    entry: LayerEntry
    layer: int
    inode: tuple[int, int] | None


def _tarinfo(path: str, e: LayerEntry, kind: str | None = None, link: str = "") -> tarfile.TarInfo:
    import tarfile
    info = tarfile.TarInfo(path)
    kind = kind or e.type
    info.type = _TAR_TYPES[kind]
    info.mode = e.mode & 0o7777
    info.uid, info.gid, info.uname, info.gname = e.uid, e.gid, e.uname, e.gname
    info.mtime = e.mtime_ns // 1_000_000_000
    info.linkname = link or (e.linkname if kind == "symlink" else "")
    info.devmajor, info.devminor = e.devmajor, e.devminor
    info.size = e.size if kind == "file" else 0
    if e.xattrs:
        info.pax_headers = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape")
                            for k, v in e.xattrs}
    return info


def _drop(tree: dict[str, _Node], path: str, below: int | None) -> None:
    """Remove ``path`` and everything under it that came from layers lower than ``below``
    (whiteouts hide only lower layers' content; None: remove whatever is there)."""
    prefix = path + "/" if path else ""
    doomed = [p for p, n in tree.items() if (p == path or p.startswith(prefix))
              and (below is None or n.layer < below)]
    for p in doomed:
        del tree[p]


def _merge_layer(tree: dict[str, _Node], layer: int, reader: LayerReader) -> None:
    for ordinal, e in enumerate(reader):
        if e.path == "":
            continue
        if e.is_opaque:
            for p in [p for p, n in tree.items()
                      if p.startswith(e.parent + "/" if e.parent else "") and n.layer < layer]:
                del tree[p]
            continue
        target = e.whiteout_target
        if target is not None:
            _drop(tree, target, layer)
            continue
        old = tree.get(e.path)
        if old is not None and old.entry.type == "dir" and e.type != "dir":
            _drop(tree, e.path, None)
        if e.type == "hardlink":
            src = tree.get(e.linkname)
            if src is None or src.entry.type == "dir":
                log.warning("export: hardlink %s -> %s has no target; left out", e.path, e.linkname)
                continue
            tree[e.path] = _Node(src.entry, layer, src.inode)
        else:
            tree[e.path] = _Node(e, layer, None if e.type == "dir" else (layer, ordinal))


def _check_diff_id(reader: LayerReader, want: str, index: int) -> None:
    if reader.diff_id != want:
        raise DigestMismatch(f"layer {index + 1} does not match its diff_id {want} "
                             f"(got {reader.diff_id})")


def export(image: CachedImage, out: Path | str | BinaryIO, store: Store, *,
           progress: Progress | None = None) -> None:
    """Write ``image``'s merged rootfs as one tar, as ``docker export`` does, streaming.

    Pass one reads every layer's headers to know what survives; pass two copies the
    surviving entries' data layer by layer. Directories come first (parents before
    children), then the other entries in layer order; the names of one inode become one
    file and hardlinks to it.
    """
    from .layer.reader import LayerReader
    emit = progress or _noop
    openers, diff_ids = image.layer_openers(store), image.diff_ids
    tree: dict[str, _Node] = {}
    with store.gc_lock(shared=True):
        for i, opener in enumerate(openers):
            with LayerReader(opener()) as reader:
                _merge_layer(tree, i, reader)
                _check_diff_id(reader, diff_ids[i], i)
        groups: dict[tuple[int, int], list[str]] = {}
        for path, node in tree.items():
            if node.inode is not None:
                groups.setdefault(node.inode, []).append(path)
        for names in groups.values():
            names.sort(key=lambda p: (tree[p].entry.path != p, p))  # the source's own name first
        with _open_output(out) as f:
            tar = _TarOut(f)
            for path in sorted(p for p, n in tree.items() if n.entry.type == "dir"):
                tar.header(_tarinfo(path, tree[path].entry))
                tar.end_member()
            for i, opener in enumerate(openers):
                emit({"event": "export-layer", "index": i + 1, "digest": image.manifest.layers[i].digest})
                with LayerReader(opener()) as reader:
                    for ordinal, e in enumerate(reader):
                        paths = groups.get((i, ordinal))
                        if paths:
                            _write_inode(tar, reader, e, paths)
                    _check_diff_id(reader, diff_ids[i], i)
            tar.close()


def _write_inode(tar: _TarOut, reader: LayerReader, e: LayerEntry, paths: list[str]) -> None:
    first, rest = paths[0], paths[1:]
    tar.header(_tarinfo(first, e))
    if e.type == "file":
        for chunk in reader.read_chunks():
            tar.data(chunk)
    tar.end_member()
    for path in rest:
        if e.type == "file":
            tar.header(_tarinfo(path, e, "hardlink", first))
        else:  # a hardlinked symlink or device: each name its own entry
            tar.header(_tarinfo(path, e))
        tar.end_member()


# --- import -----------------------------------------------------------------------------

def import_tar(src: Path | str | BinaryIO, ref: str, store: Store, *,
               platform: Platform | None = None, progress: Progress | None = None) -> str:
    """A rootfs tar (plain or compressed) as a one-layer image named ``ref``; returns the
    normalised ref name. The config is minimal, with the host's (or ``platform``'s) os and
    architecture, like ``docker import``."""
    from .platform import host_platform
    from .reference import parse
    name = str(parse(ref))
    plat = platform or host_platform()
    loader = _Loader(store, progress or _noop)
    try:
        with contextlib.ExitStack() as stack:
            if isinstance(src, (str, os.PathLike)):
                try:
                    f: IO[bytes] = stack.enter_context(open(src, "rb"))
                except OSError as e:
                    raise ArchiveError(f"cannot read {src}: {e.strerror or e}") from None
            else:
                f = src
            layer = loader.staging.stage(f, recompress=True)
        _check_tar(loader.staging, layer)
        loader.used[layer.digest] = layer
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        config = {**plat.to_dict(), "created": now, "config": {},
                  "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
                  "history": [{"created": now, "created_by": "puller import",
                               "comment": "imported from a rootfs tar"}]}
        config_raw = json.dumps(config, indent=2).encode()
        cfg = loader.staging.put(config_raw)
        loader.used[cfg.digest] = cfg
        doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
               "config": Descriptor(OCI_CONFIG, cfg.digest, cfg.size).to_json(),
               "layers": [Descriptor(_layer_media_type(layer.compression), layer.digest,
                                     layer.size).to_json()]}
        m = loader.staging.put(json.dumps(doc, indent=2).encode())
        loader.used[m.digest] = m
        with store.gc_lock(shared=True) if store.root.exists() else contextlib.nullcontext():
            loader.commit([_Loaded(name, Descriptor(OCI_MANIFEST, m.digest, m.size), None, None)])
    finally:
        loader.staging.close()
    return name


def _check_tar(staging: _Staging, layer: _Staged) -> None:
    """Read the staged layer as a tar to the end: refuse what is not one."""
    from .layer.reader import LayerReader
    src = open(layer.path, "rb") if layer.path else staging.store.open_blob(layer.digest)  # noqa: SIM115
    try:
        with LayerReader(src) as reader:  # type: ignore[arg-type] - closes src
            for _ in reader:
                pass
    except LayerError as e:
        raise ArchiveError(f"not a usable tar archive: {e}") from None
