"""The cache: an OCI image layout that skopeo and umoci read as it is, plus puller's own rooms.

Layout of a cache directory::

    oci-layout, index.json      the OCI image layout; refs are index.json entries annotated
                                with org.opencontainers.image.ref.name
    blobs/sha256/<hex>          verified content only, ever: written under tmp/, checked, fsynced,
                                renamed into place
    tmp/                        in-flight writes (removed on failure)
    partial/sha256/<hex>        interrupted downloads kept for resume (never under blobs/)
    locks/                      fcntl lock files: one per blob, one for index.json
    meta/<hex>.json             facts learnt about a blob (e.g. a layer's uncompressed size)
    rootfs/<hex>/, rootless/    unpacked read-only base rootfs per image, rootless records
    containers/<name>/          kept containers' writable layers

Any number of processes may use one cache at once: a blob is written by one process while the
others wait on its lock, and index.json is rewritten atomically under its own lock, re-read
inside the lock so that no process loses another's entry.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import CacheError, DigestMismatch, DiskFull, NotCached
from .manifest import Descriptor, REGISTRY_DIGEST, REGISTRY_MEDIA_TYPE

TYPE_CHECKING = False  # typing costs more to import than this module: names for checkers only
if TYPE_CHECKING:
    from typing import BinaryIO, TypeVar

    T = TypeVar("T")

__all__ = ["Store", "RefEntry", "default_cache_dir", "REF_NAME"]

REF_NAME = "org.opencontainers.image.ref.name"
_CHUNK = 1 << 20


def default_cache_dir() -> Path:
    """--cache, else $PULLER_CACHE, else $XDG_CACHE_HOME/puller, else ~/.cache/puller."""
    if os.environ.get("PULLER_CACHE"):
        return Path(os.environ["PULLER_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "puller"


def _hex(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    if algo not in ("sha256", "sha512") or not hexpart or not all(c in "0123456789abcdef" for c in hexpart):
        raise CacheError(f"invalid digest {digest!r}")
    return hexpart


def _new_hash(digest: str):
    return hashlib.new(digest.partition(":")[0])


def _disk_error(e: OSError) -> Exception:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull("no space left on the cache's file system")
    return CacheError(f"cache write failed: {e.strerror or e}")


@dataclass(frozen=True, slots=True)
class RefEntry:
    """One ref of index.json: its name, the local (OCI) descriptor, the registry's digest."""

    name: str
    descriptor: Descriptor
    registry_digest: str
    registry_media_type: str


class VerifyingReader:
    """A read-only file whose bytes are hashed as they are read; at EOF a digest or size that
    is not what the name promises raises DigestMismatch (the blob was corrupted on disk)."""

    def __init__(self, f: BinaryIO, digest: str, size: int) -> None:
        self._f, self._digest, self._size = f, digest, size
        self._h = _new_hash(digest)
        self._n = 0
        self._checked = False

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        if data:
            self._h.update(data)
            self._n += len(data)
        elif not self._checked and n != 0:
            self._checked = True
            if self._n != self._size or f"{self._digest.partition(':')[0]}:{self._h.hexdigest()}" != self._digest:
                raise DigestMismatch(f"cached blob {self._digest} is corrupt (run 'puller verify --repair')")
        return data

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "VerifyingReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_WRITEBACK = 4 * 1024 * 1024  # start writing a blob back to disk every 4 MiB


def _mkstemp(d: Path, prefix: str) -> tuple[int, str]:
    """A new private file ``d/PREFIX.RANDOM``, as ``tempfile.mkstemp`` makes one (tempfile
    itself costs more to import than a warm pull spends here)."""
    return _unused(d, prefix, lambda n: os.open(n, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))


def _mkdtemp(d: Path, prefix: str) -> Path:
    """A new private directory ``d/PREFIX.RANDOM``, as ``tempfile.mkdtemp`` makes one."""
    return Path(_unused(d, prefix, lambda n: os.mkdir(n, 0o700))[1])


def _unused(d: Path, prefix: str, create: Callable[[str], T]) -> tuple[T, str]:
    """What ``create`` makes of a name ``d/PREFIX.RANDOM`` that did not exist yet (it must
    fail with FileExistsError when the name is taken), and the name."""
    for _ in range(100):
        name = os.path.join(d, f"{prefix}.{os.urandom(6).hex()}")
        try:
            return create(name), name
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unused temporary name", str(d))


class BlobWriter:
    """Writes one blob: bytes go to a temp file while hashed; ``commit`` checks size and
    digest, fsyncs and renames into blobs/. With ``resumable`` the temp file lives in
    partial/ and survives an interruption; ``offset`` says how much is already there."""

    def __init__(self, store: "Store", digest: str, size: int | None, *, resumable: bool) -> None:
        self.store, self.digest, self.size = store, digest, size
        self._h = _new_hash(digest)
        if resumable:
            self.path = store.partial_path(digest)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "ab+")
            self._f.seek(0)
            for chunk in iter(lambda: self._f.read(_CHUNK), b""):  # re-hash what we kept
                self._h.update(chunk)
            self.offset = self._f.tell()
            if size is not None and self.offset > size:
                self.restart()
        else:
            store.tmp_dir.mkdir(parents=True, exist_ok=True)
            fd, name = _mkstemp(store.tmp_dir, _hex(digest)[:16])
            self.path, self._f, self.offset = Path(name), os.fdopen(fd, "wb"), 0
        self.resumable = resumable
        self._written_back = self.offset

    def restart(self) -> None:
        """Throw away what was kept (the server ignored Range, or it was bad)."""
        self._f.seek(0)
        self._f.truncate()
        self._h = _new_hash(self.digest)
        self.offset = self._written_back = 0

    def write(self, data: bytes) -> None:
        try:
            self._f.write(data)
        except OSError as e:
            raise _disk_error(e) from None
        self._h.update(data)
        self.offset += len(data)
        if self.size is not None and self.offset > self.size:
            raise DigestMismatch(f"blob {self.digest} is larger than its descriptor says ({self.size} bytes)")
        if self.offset - self._written_back >= _WRITEBACK:
            self._start_writeback()

    def _start_writeback(self) -> None:
        """Have the kernel start writing what we wrote so far, without waiting: ``commit``'s
        fsync then has little left to wait for (on the last blob of a pull, that wait is on
        the critical path). POSIX_FADV_DONTNEED starts writeback of the range's dirty pages
        and drops only pages that are already clean, so the blob stays in the page cache
        for the unpack that often follows."""
        try:
            self._f.flush()
            os.posix_fadvise(self._f.fileno(), self._written_back, self.offset - self._written_back,
                             os.POSIX_FADV_DONTNEED)
        except (OSError, AttributeError):  # not Linux, or a file system that declines
            pass
        self._written_back = self.offset

    def commit(self) -> Path:
        got = f"{self.digest.partition(':')[0]}:{self._h.hexdigest()}"
        if got != self.digest or (self.size is not None and self.offset != self.size):
            self.abort(keep=False)
            raise DigestMismatch(f"blob {self.digest} failed verification "
                                 f"(got {got}, {self.offset} bytes); the bad bytes were discarded")
        try:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            final = self.store.blob_path(self.digest)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(self.path, 0o644)
            os.replace(self.path, final)
        except OSError as e:
            self.abort(keep=False)
            raise _disk_error(e) from None
        return final

    def abort(self, *, keep: bool | None = None) -> None:
        """Close; remove the temp file unless it is a resumable partial worth keeping."""
        keep = self.resumable if keep is None else keep
        with contextlib.suppress(OSError):
            self._f.close()
        if not keep:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


class Store:
    """Blob store and ref index of one cache directory."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        self.tmp_dir = self.root / "tmp"
        self.blobs_dir = self.root / "blobs"
        self.rootfs_dir = self.root / "rootfs"
        self.containers_dir = self.root / "containers"

    # --- layout ---------------------------------------------------------------------
    def ensure(self) -> "Store":
        """Create the layout files if this is a new cache (idempotent, race-free)."""
        try:
            (self.blobs_dir / "sha256").mkdir(parents=True, exist_ok=True)
            layout = self.root / "oci-layout"
            if not layout.exists():
                self._atomic_write(layout, b'{"imageLayoutVersion": "1.0.0"}')
            if not (self.root / "index.json").exists():
                with self._index_lock():
                    if not (self.root / "index.json").exists():
                        self._write_index([])
        except OSError as e:
            raise CacheError(f"cannot use cache directory {self.root}: {e.strerror or e}") from None
        return self

    def exists(self) -> bool:
        try:
            return (self.root / "index.json").is_file()
        except OSError as e:  # e.g. EACCES on a parent directory
            raise CacheError(f"cannot use cache directory {self.root}: {e.strerror or e}") from None

    def _atomic_write(self, path: Path, data: bytes) -> None:
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, name = _mkstemp(self.tmp_dir, path.name)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(name, 0o644)
            os.replace(name, path)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(name)
            raise _disk_error(e) from None

    # --- locks ----------------------------------------------------------------------
    @contextlib.contextmanager
    def _lock(self, name: str, *, shared: bool = False) -> Iterator[None]:
        d = self.root / "locks"
        d.mkdir(parents=True, exist_ok=True)
        fd = os.open(d / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def lock_blob(self, digest: str):
        """Exclusive per-blob lock: one process downloads it, the others wait and reuse it."""
        return self._lock(_hex(digest) + ".lock")

    def _index_lock(self):
        return self._lock("index.json.lock")

    def gc_lock(self, *, shared: bool):
        """Pulls hold it shared; prune holds it exclusively, so it never deletes a blob that a
        running pull is about to reference."""
        return self._lock("gc.lock", shared=shared)

    # --- blobs ----------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        return self.blobs_dir / digest.partition(":")[0] / _hex(digest)

    def partial_path(self, digest: str) -> Path:
        return self.root / "partial" / digest.partition(":")[0] / _hex(digest)

    def meta_path(self, digest: str) -> Path:
        return self.root / "meta" / (_hex(digest) + ".json")

    def has_blob(self, digest: str, size: int | None = None) -> bool:
        try:
            st = os.lstat(self.blob_path(digest))
        except (FileNotFoundError, NotADirectoryError):
            return False
        import stat as _stat
        return _stat.S_ISREG(st.st_mode) and (size is None or st.st_size == size)

    def open_blob(self, digest: str, size: int | None = None) -> VerifyingReader:
        """Open a cached blob for streaming; corruption surfaces as DigestMismatch at EOF."""
        path = self.blob_path(digest)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotCached(f"blob {digest} is not in the cache") from None
        except OSError as e:
            raise CacheError(f"cannot open blob {digest}: {e.strerror or e}") from None
        f = os.fdopen(fd, "rb", buffering=0)
        real = os.fstat(fd).st_size
        return VerifyingReader(f, digest, real if size is None else size)

    def read_blob(self, digest: str, *, max_size: int = 16 * 1024 * 1024) -> bytes:
        """A small blob (manifest, config) read whole and verified."""
        with self.open_blob(digest) as r:
            data = r.read(max_size + 1)
            if len(data) > max_size:
                raise CacheError(f"blob {digest} is larger than {max_size} bytes")
            r.read()  # EOF: triggers the digest check
        return data

    def writer(self, digest: str, size: int | None = None, *, resumable: bool = False) -> BlobWriter:
        return BlobWriter(self, digest, size, resumable=resumable)

    def put_bytes(self, data: bytes, digest: str | None = None) -> str:
        """Store small content (a manifest or config); returns its digest."""
        digest = digest or "sha256:" + hashlib.sha256(data).hexdigest()
        if self.has_blob(digest, len(data)):
            return digest
        w = self.writer(digest, len(data))
        try:
            w.write(data)
        except BaseException:
            w.abort()
            raise
        w.commit()
        return digest

    def iter_blobs(self) -> Iterator[str]:
        for algo_dir in sorted(self.blobs_dir.glob("*")):
            for p in sorted(algo_dir.iterdir()):
                yield f"{algo_dir.name}:{p.name}"

    # --- meta -----------------------------------------------------------------------
    def get_meta(self, digest: str) -> dict:
        try:
            return json.loads(self.meta_path(digest).read_bytes())
        except (OSError, ValueError):
            return {}

    def set_meta(self, digest: str, **values) -> None:
        meta = self.get_meta(digest) | values
        path = self.meta_path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._atomic_write(path, json.dumps(meta, sort_keys=True).encode())

    # --- refs -----------------------------------------------------------------------
    def _read_index(self) -> list[dict]:
        try:
            doc = json.loads((self.root / "index.json").read_bytes())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as e:
            raise CacheError(f"{self.root / 'index.json'} is unreadable: {e}") from None
        return list(doc.get("manifests") or [])

    def _write_index(self, manifests: list[dict]) -> None:
        doc = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
               "manifests": manifests}
        self._atomic_write(self.root / "index.json", json.dumps(doc, indent=2).encode())

    def refs(self) -> list[RefEntry]:
        out = []
        for d in self._read_index():
            ann = d.get("annotations") or {}
            if REF_NAME not in ann:
                continue
            desc = Descriptor.from_json(d)
            out.append(RefEntry(ann[REF_NAME], desc, ann.get(REGISTRY_DIGEST, desc.digest),
                                ann.get(REGISTRY_MEDIA_TYPE, desc.media_type)))
        return out

    def get_ref(self, name: str) -> RefEntry | None:
        for r in self.refs():
            if r.name == name:
                return r
        return None

    def find_by_registry_digest(self, digest: str) -> RefEntry | None:
        for r in self.refs():
            if digest in (r.registry_digest, r.descriptor.digest):
                return r
        return None

    def set_ref(self, name: str, descriptor: Descriptor, *, registry_digest: str | None = None,
                registry_media_type: str | None = None) -> None:
        """Point ``name`` at ``descriptor`` (replacing any earlier entry of that name)."""
        ann = dict(descriptor.annotations) | {REF_NAME: name}
        ann[REGISTRY_DIGEST] = registry_digest or descriptor.digest
        ann[REGISTRY_MEDIA_TYPE] = registry_media_type or descriptor.media_type
        entry = Descriptor(descriptor.media_type, descriptor.digest, descriptor.size,
                           descriptor.platform, tuple(sorted(ann.items()))).to_json()
        self.ensure()
        with self._index_lock():
            manifests = [d for d in self._read_index()
                         if (d.get("annotations") or {}).get(REF_NAME) != name]
            manifests.append(entry)
            self._write_index(manifests)

    def remove_ref(self, name: str) -> bool:
        if not self.exists():
            return False
        with self._index_lock():
            before = self._read_index()
            after = [d for d in before if (d.get("annotations") or {}).get(REF_NAME) != name]
            if len(after) != len(before):
                self._write_index(after)
        return len(after) != len(before)
