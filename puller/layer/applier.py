"""Apply layer entries onto a rootfs directory, never reaching outside it.

The rootfs is held as a directory fd and every operation is relative to an fd: a parent
directory is resolved with ``openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`` (symlinks
planted by this or an earlier layer resolve *inside* the root, as in a chroot), and the
last component is then created, replaced or removed with ``dir_fd=`` calls that never
follow it (``O_NOFOLLOW``/``O_EXCL``, ``unlinkat``, ``linkat`` without ``AT_SYMLINK_FOLLOW``).
Metadata goes through the fd of the new file, or an ``O_PATH`` fd and its
``/proc/self/fd/N`` name where Linux has no fd call (xattrs and chmod of symlinks,
devices, directories). No path string is ever joined onto the rootfs path.

Semantics follow the OCI image-spec "Applying Changesets" and Docker:

* ``.wh.NAME`` deletes NAME (a file or a whole tree) of *lower* layers; ``.wh..wh..opq``
  hides every lower child of its directory and acts as if it came first in the layer.
  Both spare what this layer itself wrote (the per-layer ``touched`` set, as umoci's
  ``upperPaths``); reserved names (``.wh.``, ``.wh..``, ``.wh...``) are refused.
* A directory over a directory merges and takes the new attributes; any other
  replacement removes the old entry first: nothing is written through an existing inode.
* Directory modes, owners and mtimes are applied at the end of each layer, deepest first,
  so writing their content does not disturb them (and a 0555 dir can still be filled).
* Hardlinks may point to lower layers; their header metadata is ignored (it is the
  target's inode).

Unprivileged (rootless): modes are applied exactly; what the kernel refuses (owners other
than ours, device nodes, privileged xattrs) is skipped and kept in :attr:`Applier.skipped`
for the caller to record. Directories are kept owner-writable while a layer is applied.
"""
from __future__ import annotations

import ctypes
import errno
import os
import stat
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from puller._log import get_logger
from puller.errors import DiskFull, LayerError, LimitExceeded, UnpackError, UnsafeLayer
from puller.layer.reader import LayerEntry, LayerReader, Limits

__all__ = ["Applier", "LayerStats", "Skipped", "Limits", "remove_tree"]

log = get_logger(__name__)

_O_PATH_DIR = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_O_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_RESOLVE_NO_XDEV, _RESOLVE_NO_MAGICLINKS, _RESOLVE_NO_SYMLINKS = 0x01, 0x02, 0x04
_RESOLVE_BENEATH, _RESOLVE_IN_ROOT = 0x08, 0x10
_IN_ROOT = _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS
_BENEATH_STRICT = _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS
_SYS_OPENAT2 = 437  # same number on every Linux architecture (unified syscall table)
_CACHE = 128        # directory fds kept open while applying a layer
_PATH_CHUNK = 3072  # characters of path handed to one openat2 call (PATH_MAX is 4096 bytes)
_ASYNC_MAX = 256 << 10  # files up to this size are written by the worker threads
_ASYNC_BATCH = 16       # files handed to a worker at once (a Future per file costs ~20 us)
_ASYNC_JOBS = 8         # batches in flight at most (so at most 32 MiB held in memory)
_REFUSED = (errno.EPERM, errno.EACCES, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EINVAL)


# --- openat2 through ctypes ---------------------------------------------------------------

class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_HAVE_OPENAT2: bool | None = None


def _openat2(dirfd: int, path: str, flags: int, resolve: int) -> int:
    """openat2(2); raises OSError like os.open. ``path`` must be relative and non-empty."""
    global _HAVE_OPENAT2
    how = _OpenHow(flags, 0, resolve)
    raw = os.fsencode(path)
    for _ in range(16):  # EAGAIN: a concurrent rename raced the '..' check; just retry
        fd = _syscall(_SYS_OPENAT2, ctypes.c_int(dirfd), ctypes.c_char_p(raw),
                      ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
        if fd >= 0:
            return fd
        err = ctypes.get_errno()
        if err == errno.ENOSYS:
            _HAVE_OPENAT2 = False
        if err != errno.EAGAIN:
            raise OSError(err, os.strerror(err), path)
    raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN), path)


def _open_in_root(root_fd: int, path: str, flags: int) -> int:
    """Open ``path`` as if ``root_fd`` were ``/`` (symlinks resolve inside it).

    Without openat2 (Linux < 5.6) fall back to a walk that refuses symlinked parents.
    """
    if _HAVE_OPENAT2 is not False:
        try:
            if len(path) < _PATH_CHUNK:
                return _openat2(root_fd, path, flags, _IN_ROOT)
            return _open_long(root_fd, path, flags)
        except OSError as exc:
            if exc.errno != errno.ENOSYS:
                raise
    fd = os.dup(root_fd)
    try:
        parts = path.split("/")
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            try:
                nfd = os.open(part, (flags if last else _O_PATH_DIR) | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                if exc.errno == errno.ELOOP and not last:
                    raise UnsafeLayer(f"{path!r} crosses a symlink (kernel has no openat2)")
                raise
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def _open_long(root_fd: int, path: str, flags: int) -> int:
    """Paths beyond PATH_MAX (fd-relative walks are not bound by it): resolve a few KiB at a
    time; each step is confined to the directory reached so far, itself inside the root."""
    parts = path.split("/")
    fd = os.dup(root_fd)
    try:
        while parts:
            take, size = 0, 0
            while take < len(parts) and size + len(parts[take]) + 1 < _PATH_CHUNK:
                size += len(parts[take]) + 1
                take += 1
            take = max(take, 1)
            last = take == len(parts)
            nfd = _openat2(fd, "/".join(parts[:take]), flags if last else _O_PATH_DIR,
                           _IN_ROOT)
            os.close(fd)
            fd, parts = nfd, parts[take:]
        return fd
    except BaseException:
        os.close(fd)
        raise


def _proc(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def _split(path: str) -> tuple[str, str]:
    parent, _, name = path.rpartition("/")
    return parent, name


def _exists_at(dirfd: int, name: str) -> bool:
    try:
        os.lstat(name, dir_fd=dirfd)
        return True
    except FileNotFoundError:
        return False


def _umask() -> int:
    """The process umask, read without changing it (os.umask would race other threads)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


# --- results ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Skipped:
    """Metadata the kernel refused to an unprivileged unpack, kept for the runner/diff.

    ``xattrs`` holds only the refused attributes; ``mode`` is the full mode as recorded.
    """
    path: str                   # absolute inside the rootfs: "/etc/shadow"
    type: str
    uid: int
    gid: int
    mode: int
    devmajor: int = 0
    devminor: int = 0
    xattrs: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class LayerStats:
    """What applying one layer did."""
    entries: int
    bytes: int
    whiteouts: int
    diff_id: str
    compression: str


@dataclass(slots=True)
class _DirMeta:
    mode: int
    uid: int | None = None
    gid: int | None = None
    mtime_ns: int | None = None
    xattrs: tuple[tuple[str, bytes], ...] = ()


class _Record:
    """Skipped entries by path, as a trie so that deleting a tree is O(depth).

    Worker threads add to it: every method holds the lock.
    """

    def __init__(self) -> None:
        self._root: dict = {}
        self.lock = threading.RLock()

    def set(self, item: Skipped) -> None:
        with self.lock:
            self._set(item)

    def _set(self, item: Skipped) -> None:
        node = self._root
        for part in item.path.strip("/").split("/"):
            node = node.setdefault(part, {})
        node[None] = item

    def get(self, path: str) -> Skipped | None:
        with self.lock:
            return self._get(path)

    def _get(self, path: str) -> Skipped | None:
        node = self._root
        for part in path.split("/") if path else ():
            node = node.get(part)
            if node is None:
                return None
        return node.get(None)

    def forget(self, path: str) -> None:
        with self.lock:
            self._forget(path)

    def _forget(self, path: str) -> None:
        """Drop ``path`` and everything below it."""
        if not path:
            self._root = {}
            return
        node = self._root
        parts = path.split("/")
        for part in parts[:-1]:
            node = node.get(part)
            if node is None:
                return
        node.pop(parts[-1], None)

    def discard(self, path: str) -> None:
        with self.lock:
            self._discard(path)

    def _discard(self, path: str) -> None:
        node = self._root
        for part in path.split("/") if path else ():
            node = node.get(part)
            if node is None:
                return
        node.pop(None, None)

    def __iter__(self) -> Iterator[Skipped]:
        stack = [self._root]
        while stack:
            node = stack.pop()
            if None in node:
                yield node[None]
            stack.extend(node[k] for k in sorted((k for k in node if k is not None),
                                                 reverse=True))


class _Space:
    """Free-space guard: stop before less than max(ratio * size, floor) would remain."""

    _RECHECK = 64 << 20

    def __init__(self, fd: int, limits: Limits) -> None:
        self._fd = fd
        self._limits = limits
        self._left = 0
        self._check(0)

    def _check(self, need: int) -> None:
        st = os.fstatvfs(self._fd)
        reserve = max(int(st.f_blocks * st.f_frsize * self._limits.min_free_ratio),
                      self._limits.min_free_bytes)
        free = st.f_bavail * st.f_frsize
        if free - need < reserve:
            raise DiskFull(f"only {free >> 20} MiB free; unpack stops before less than "
                           f"{reserve >> 20} MiB would remain (Limits.min_free_*)")
        self._left = min(free - reserve, self._RECHECK)

    def use(self, n: int) -> None:
        self._left -= n + 4096
        if self._left < 0:
            self._check(n)


# --- the applier ------------------------------------------------------------------------

class Applier:
    """Applies layers, in order, onto the directory ``root_fd`` (which the caller owns).

    One instance per rootfs: it counts entries across layers against ``limits`` and
    collects what an unprivileged unpack had to skip (:attr:`skipped`).

    File creation dominates an unpack (the kernel spends far longer in ``openat(O_CREAT)``
    than we spend parsing), and those syscalls release the GIL: with ``workers > 1`` small
    regular files are created and written by a thread pool while the main thread goes on
    parsing. Ordering stays exact: anything that could depend on a file in flight (the same
    path again, a hardlink, a removal, implicit parents, directory attributes) waits for
    the files in flight first. Call :meth:`close` (or use ``with``) to stop the pool.
    """

    def __init__(self, root_fd: int, *, limits: Limits = Limits(),
                 privileged: bool | None = None, workers: int | None = None) -> None:
        self._root = root_fd
        self._limits = limits
        self._priv = os.geteuid() == 0 if privileged is None else privileged
        self._uid, self._gid = os.geteuid(), os.getegid()
        self._umask = _umask()
        self._space = _Space(root_fd, limits)
        self._record = _Record()
        self._entries = 0
        self._bytes = 0
        try:  # an empty rootfs lets the first layer skip existence checks
            self._first = not os.listdir(_proc(root_fd))
        except OSError:
            self._first = False
        self._cache: dict[str, int] = {}
        self._closing: list[int] = []      # fds dropped from the cache, closed per entry
        self._sgid: dict[str, int | None] = {}
        self._touched: set[str] = set()
        self._holds: set[str] = set()      # ancestors of touched paths
        self._dirs: dict[str, _DirMeta] = {}
        self._restore: dict[str, _DirMeta] = {}
        if workers is None:
            workers = min(4, os.cpu_count() or 1)
        # rootless stays serial: its EACCES fix-ups retry entries from the main thread
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="puller-apply") \
            if workers > 1 and self._priv else None
        self._inflight: set[str] = set()   # paths of files queued or being written
        self._batch: list[tuple] = []
        self._futures: list[Future] = []
        self._slots = threading.BoundedSemaphore(_ASYNC_JOBS)
        self._fresh: set[str] = set()      # dirs this layer made: a name there is free
                                           # unless this layer already wrote it

    def close(self) -> None:
        """Wait for the files in flight and stop the worker threads."""
        self._wait(raise_errors=False)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> Applier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _submit(self) -> None:
        batch, self._batch = self._batch, []
        assert self._pool is not None
        self._slots.acquire()
        try:
            fut = self._pool.submit(self._write_batch, batch)
        except BaseException:
            self._slots.release()
            raise
        fut.add_done_callback(lambda _f: self._slots.release())
        self._futures.append(fut)

    def _write_batch(self, batch: list[tuple]) -> None:
        for job in batch:
            self._write_small(*job)

    def _wait(self, *, raise_errors: bool = True) -> None:
        """Barrier: let every file in flight finish; re-raise the first failure."""
        if not self._inflight:
            return
        if self._batch:
            if raise_errors:
                self._submit()
            else:
                self._batch = []
        futures, self._futures = self._futures, []
        self._inflight = set()
        first: BaseException | None = None
        for fut in futures:
            exc = fut.exception()
            if exc is not None and first is None:
                first = exc
        if first is not None and raise_errors:
            raise first

    @property
    def privileged(self) -> bool:
        """Whether ownership and devices are applied (root), or skipped and recorded."""
        return self._priv

    @property
    def skipped(self) -> list[Skipped]:
        """Refused metadata of the entries now in the rootfs, sorted by path."""
        return list(self._record)

    # -- layer loop --

    def apply(self, reader: LayerReader) -> LayerStats:
        """Apply every entry of ``reader``, then read it to the end (for its DiffID)."""
        whiteouts = 0
        self._touched, self._holds = set(), set()
        self._dirs, self._restore = {}, {}
        self._fresh = {""} if self._first else set()  # the rootfs starts empty
        self._first = False
        try:
            for entry in reader:
                self._entries += 1
                if self._entries > self._limits.max_entries:
                    raise LimitExceeded(f"more than {self._limits.max_entries} entries "
                                        "(Limits.max_entries)")
                whiteouts += entry.is_whiteout
                self._apply_entry(entry, reader)
            self._wait()
            self._finish_dirs()
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull(f"no space left while unpacking: {exc}") from exc
            raise
        finally:
            self._wait(raise_errors=False)
            self._flush()
            self._close_dropped()
        return LayerStats(reader.entries, reader.size, whiteouts, reader.diff_id,
                          reader.compression)

    def _apply_entry(self, entry: LayerEntry, reader: LayerReader) -> None:
        for attempt in (0, 1):
            try:
                if entry.is_whiteout:
                    self._whiteout(entry)
                else:
                    self._create(entry, reader)
                return
            except PermissionError:
                # rootless: a lower-layer directory without u+wx (e.g. 0555) blocks us;
                # make it writable for the rest of this layer and try once more
                if attempt or self._priv or not self._unlock(entry.parent):
                    raise
            finally:
                if self._closing and (not self._inflight or len(self._closing) > 64):
                    self._wait()  # workers may still use a dropped fd
                    self._close_dropped()

    def _mark(self, path: str) -> None:
        self._touched.add(path)
        parent = path
        while parent:
            parent = parent.rpartition("/")[0]
            if parent in self._holds:
                break
            self._holds.add(parent)

    # -- directory fds --

    def _flush(self) -> None:
        """Forget cached directory fds (after anything that may change a resolution).

        They are closed only once the current entry is done: its code may still hold one.
        """
        self._closing.extend(self._cache.values())
        self._cache.clear()
        self._sgid.clear()
        self._fresh.clear()  # lexical paths may now resolve elsewhere

    def _close_dropped(self) -> None:
        for fd in self._closing:
            os.close(fd)
        self._closing.clear()

    def _cache_put(self, path: str, fd: int) -> None:
        if len(self._cache) >= _CACHE:
            old = next(iter(self._cache))
            self._closing.append(self._cache.pop(old))
            self._sgid.pop(old, None)
        self._cache[path] = fd

    def _dir(self, path: str, *, create: bool) -> int | None:
        """An O_PATH fd of directory ``path`` resolved inside the root (cached, not owned by
        the caller); missing parents are made with mode 0755 when ``create``, else None."""
        if not path:
            return self._root
        fd = self._cache.get(path)
        if fd is not None:
            return fd
        try:
            fd = _open_in_root(self._root, path, _O_PATH_DIR)
        except (FileNotFoundError, NotADirectoryError) as exc:
            if not create:
                return None
            if isinstance(exc, NotADirectoryError):
                raise LayerError(f"cannot create {path!r}: a parent is not a directory"
                                 ) from None
            fd = self._make_dirs(path)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafeLayer(f"{path!r}: too many levels of symlinks") from exc
            raise
        self._cache_put(path, fd)
        return fd

    def _make_dirs(self, path: str) -> int:
        """Create the missing directories of ``path`` (implicit parents, mode 0755),
        iteratively: a layer may nest 4096 levels deep."""
        parts = path.split("/")
        have = len(parts) - 1
        while have > 0:  # the deepest ancestor that exists
            prefix = "/".join(parts[:have])
            if prefix in self._cache:
                break
            try:
                self._cache_put(prefix, _open_in_root(self._root, prefix, _O_PATH_DIR))
                break
            except FileNotFoundError:
                have -= 1
            except NotADirectoryError:
                raise LayerError(f"cannot create {path!r}: a parent is not a directory"
                                 ) from None
        self._wait()  # a file in flight may be about to take one of these names
        for depth in range(have, len(parts)):
            pfd = self._dir("/".join(parts[:depth]), create=False)
            if pfd is None:
                raise LayerError(f"cannot create the parents of {path!r}")
            sub = "/".join(parts[:depth + 1])
            try:
                os.mkdir(parts[depth], 0o700, dir_fd=pfd)
                self._dirs.setdefault(sub, _DirMeta(0o755))
                self._fresh.add(sub)
            except FileExistsError:
                pass
            try:
                fd = _open_in_root(self._root, sub, _O_PATH_DIR)
            except (FileNotFoundError, NotADirectoryError):
                raise LayerError(f"{sub!r} exists and is not a directory (or is a dangling "
                                 "symlink): cannot write below it") from None
            if depth == len(parts) - 1:
                return fd
            self._cache_put(sub, fd)
        raise AssertionError("unreachable")

    def _parent_gid(self, parent: str, pfd: int) -> int:
        """The group a new file in ``parent`` gets: ours, or the dir's when it is setgid."""
        gid = self._sgid.get(parent)
        if gid is None:
            st = os.fstat(pfd)
            gid = st.st_gid if st.st_mode & stat.S_ISGID else self._gid
            self._sgid[parent] = gid
        return gid

    def _unlock(self, path: str) -> bool:
        """Rootless: give u+rwx to our own directories along ``path`` that lack it, and
        restore their mode and mtime at the end of the layer. True if anything changed."""
        changed = False
        self._flush()
        parts = path.split("/") if path else []
        for i in range(len(parts) + 1):
            sub = "/".join(parts[:i])
            try:
                fd = _open_in_root(self._root, sub, _O_PATH_DIR) if sub else os.dup(self._root)
            except OSError:
                break
            try:
                st = os.fstat(fd)
                if st.st_uid == self._uid and st.st_mode & 0o700 != 0o700:
                    if sub not in self._dirs:
                        self._restore.setdefault(sub, _DirMeta(st.st_mode & 0o7777,
                                                               mtime_ns=st.st_mtime_ns))
                    os.chmod(_proc(fd), (st.st_mode & 0o7777) | 0o700)
                    changed = True
            finally:
                os.close(fd)
        return changed

    # -- removal --

    def _clear(self, pfd: int, name: str, path: str) -> None:
        """Remove whatever is at ``name`` (any type, a whole tree for a directory)."""
        self._wait()
        try:
            st = os.lstat(name, dir_fd=pfd)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            _rmtree_at(pfd, name, self._priv)
            self._flush()
        else:
            os.unlink(name, dir_fd=pfd)
            if stat.S_ISLNK(st.st_mode):
                self._flush()
        self._record.forget(path)

    def _whiteout(self, entry: LayerEntry) -> None:
        self._wait()
        if entry.is_opaque:
            dfd = self._dir(entry.parent, create=False)
            if dfd is None:
                return
            with os.scandir(_proc(dfd)) as it:  # the O_PATH fd's directory, no re-lookup
                names = [e.name for e in it]
            for name in names:
                self._remove_lower(dfd, name, f"{entry.parent}/{name}" if entry.parent
                                   else name)
            return
        target = entry.whiteout_target
        assert target is not None
        parent, name = _split(target)
        pfd = self._dir(parent, create=False)
        if pfd is not None:
            self._remove_lower(pfd, name, target)

    def _remove_lower(self, pfd: int, name: str, path: str) -> None:
        """Delete ``path`` as lower layers have it, sparing what this layer wrote."""
        if path not in self._touched and path not in self._holds:
            self._clear(pfd, name, path)
            return
        stack = [(path, name, pfd)]
        opened: list[int] = []
        try:
            while stack:
                p, n, fd = stack.pop()
                if p not in self._touched and p not in self._holds:
                    self._clear(fd, n, p)
                    continue
                try:
                    dfd = os.open(n, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                                  | os.O_CLOEXEC, dir_fd=fd)
                except (NotADirectoryError, FileNotFoundError):
                    continue  # a file this layer wrote: kept
                except OSError as exc:
                    if exc.errno == errno.ELOOP:
                        continue  # a symlink this layer wrote: kept
                    raise
                opened.append(dfd)
                for child in os.listdir(dfd):
                    stack.append((f"{p}/{child}", child, dfd))
        finally:
            for fd in opened:
                os.close(fd)

    # -- creation --

    def _create(self, entry: LayerEntry, reader: LayerReader) -> None:
        path = entry.path
        if not path:
            if entry.type != "dir":
                raise UnsafeLayer(f"refusing to replace the root with a {entry.type}")
            self._dirs[""] = _DirMeta(entry.mode, entry.uid, entry.gid, entry.mtime_ns,
                                      entry.xattrs)
            return
        if path in self._inflight:
            self._wait()  # the same path twice in a layer: keep the order
        parent, name = _split(path)
        pfd = self._dir(parent, create=True)
        assert pfd is not None
        fresh = parent in self._fresh and path not in self._touched
        self._mark(path)
        self._record.discard(path)
        kind = entry.type
        if kind == "file":
            self._file(pfd, parent, name, entry, reader, fresh)
        elif kind == "dir":
            self._mkdir(pfd, name, entry)
        elif kind == "symlink":
            self._retry_exists(pfd, name, path,
                               lambda: os.symlink(entry.linkname, name, dir_fd=pfd))
            self._meta_nofollow(pfd, name, entry)
        elif kind == "hardlink":
            self._hardlink(pfd, name, entry)
        else:
            self._special(pfd, name, entry)

    def _retry_exists(self, pfd: int, name: str, path: str, make) -> None:
        try:
            make()
        except FileExistsError:
            self._clear(pfd, name, path)
            make()

    def _file(self, pfd: int, parent: str, name: str, entry: LayerEntry,
              reader: LayerReader, fresh: bool) -> None:
        if (self._pool is not None and entry.sparse is None and entry.size <= _ASYNC_MAX
                and (fresh or not _exists_at(pfd, name))):
            self._space.use(entry.size)
            data = b"".join([bytes(p) for _, p in reader.read_segments()])
            self._bytes += entry.size
            self._batch.append((pfd, name, entry, data, self._parent_gid(parent, pfd)))
            self._inflight.add(entry.path)
            if len(self._batch) >= _ASYNC_BATCH:
                self._submit()
            return
        try:
            fd = os.open(name, _O_FILE, entry.mode & 0o777, dir_fd=pfd)
        except FileExistsError:
            self._clear(pfd, name, entry.path)
            fd = os.open(name, _O_FILE, entry.mode & 0o777, dir_fd=pfd)
        try:
            self._space.use(entry.size)
            if entry.sparse is None:
                for _, piece in reader.read_segments():
                    while piece:
                        piece = piece[os.write(fd, piece):]
            else:
                for off, piece in reader.read_segments():
                    while piece:
                        n = os.pwrite(fd, piece, off)
                        piece, off = piece[n:], off + n
                os.ftruncate(fd, entry.size)
            self._bytes += entry.size
            self._own(entry, fd, self._parent_gid(parent, pfd))
            if entry.mode & 0o7000 or entry.mode & self._umask:
                os.fchmod(fd, entry.mode)  # after chown, which clears setuid/setgid
            self._xattrs(entry, fd)
            os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
        finally:
            os.close(fd)

    def _write_small(self, pfd: int, name: str, entry: LayerEntry, data: bytes,
                     gid_now: int) -> None:
        """Worker thread: create, write and finish one small file (name known free)."""
        fd = os.open(name, _O_FILE, entry.mode & 0o777, dir_fd=pfd)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            self._own(entry, fd, gid_now)
            if entry.mode & 0o7000 or entry.mode & self._umask:
                os.fchmod(fd, entry.mode)
            self._xattrs(entry, fd)
            os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
        finally:
            os.close(fd)

    def _mkdir(self, pfd: int, name: str, entry: LayerEntry) -> None:
        try:
            os.mkdir(name, 0o700, dir_fd=pfd)
            self._fresh.add(entry.path)
        except FileExistsError:
            st = os.lstat(name, dir_fd=pfd)
            if not stat.S_ISDIR(st.st_mode):
                self._clear(pfd, name, entry.path)
                os.mkdir(name, 0o700, dir_fd=pfd)
                self._fresh.add(entry.path)
        self._dirs[entry.path] = _DirMeta(entry.mode, entry.uid, entry.gid, entry.mtime_ns,
                                          entry.xattrs)

    def _hardlink(self, pfd: int, name: str, entry: LayerEntry) -> None:
        target = entry.linkname
        if not target:
            raise UnsafeLayer(f"hardlink {entry.path!r} points at the root")
        if target == entry.path:
            return
        if self._inflight:
            self._wait()  # the target may be a file in flight
        tparent, tname = _split(target)
        tfd = self._dir(tparent, create=False)
        if tfd is None:
            raise LayerError(f"hardlink {entry.path!r}: target {target!r} does not exist")

        def link() -> None:
            os.link(tname, name, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
        try:
            self._retry_exists(pfd, name, entry.path, link)
        except FileNotFoundError:
            raise LayerError(f"hardlink {entry.path!r}: target {target!r} does not exist"
                             ) from None
        except PermissionError as exc:
            if self._priv:
                raise LayerError(f"hardlink {entry.path!r} -> {target!r}: {exc.strerror}"
                                 ) from None
            raise
        known = self._record.get(target)
        if known is not None:
            self._record.set(Skipped(f"/{entry.path}", "hardlink", known.uid, known.gid,
                                     known.mode, xattrs=known.xattrs))

    def _special(self, pfd: int, name: str, entry: LayerEntry) -> None:
        fmt = {"char": stat.S_IFCHR, "block": stat.S_IFBLK, "fifo": stat.S_IFIFO}[entry.type]

        def make() -> None:
            if entry.type == "fifo":
                os.mkfifo(name, 0o600, dir_fd=pfd)
            else:
                os.mknod(name, fmt | 0o600, os.makedev(entry.devmajor, entry.devminor),
                         dir_fd=pfd)
        if entry.type != "fifo" and not self._priv:
            self._clear(pfd, name, entry.path)
            self._skip(entry, device=True)
            return
        try:
            self._retry_exists(pfd, name, entry.path, make)
        except PermissionError:  # root in a user namespace cannot mknod either
            self._skip(entry, device=True)
            return
        self._meta_nofollow(pfd, name, entry)

    # -- metadata --

    def _skip(self, entry: LayerEntry, *, device: bool = False,
              xattrs: tuple[tuple[str, bytes], ...] = ()) -> None:
        with self._record.lock:
            old = self._record.get(entry.path)
            if old is not None and not device:
                xattrs = tuple(sorted(dict(old.xattrs + xattrs).items()))
            self._record.set(Skipped(f"/{entry.path}", entry.type, entry.uid, entry.gid,
                                     entry.mode, entry.devmajor, entry.devminor, xattrs))

    def _own(self, entry: LayerEntry, fd: int | str, gid_now: int) -> None:
        """chown as recorded; rootless (or an unmapped id) is skipped and recorded."""
        if entry.uid == self._uid and entry.gid == gid_now:
            return
        if self._priv:
            try:
                os.chown(fd, entry.uid, entry.gid)
                return
            except OSError as exc:
                if exc.errno not in _REFUSED:
                    raise
        self._skip(entry)

    def _xattrs(self, entry: LayerEntry, target: int | str) -> None:
        refused = []
        for key, value in entry.xattrs:
            try:
                os.setxattr(target, key, value)
            except OSError as exc:
                if exc.errno not in _REFUSED:
                    raise
                refused.append((key, value))
        if refused:
            if self._priv:
                log.warning("%s: xattrs %s not applied", entry.path,
                            ", ".join(k for k, _ in refused))
            self._skip(entry, xattrs=tuple(refused))

    def _meta_nofollow(self, pfd: int, name: str, entry: LayerEntry) -> None:
        """Owner, mode, xattrs and mtime of a symlink, device or FIFO, never followed."""
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
        try:
            proc = _proc(fd)
            if entry.type == "symlink":
                if not (entry.uid == self._uid and entry.gid == self._gid):
                    if self._priv:
                        os.chown(name, entry.uid, entry.gid, dir_fd=pfd,
                                 follow_symlinks=False)
                    else:
                        self._skip(entry)
                if entry.xattrs:
                    self._xattrs(entry, proc)
                os.utime(name, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=pfd,
                         follow_symlinks=False)
                return
            self._own(entry, proc, self._gid)
            os.chmod(proc, entry.mode)
            if entry.xattrs:
                self._xattrs(entry, proc)
            os.utime(proc, ns=(entry.mtime_ns, entry.mtime_ns))
        finally:
            os.close(fd)

    def _finish_dirs(self) -> None:
        """Directory attributes, deepest first, once the layer's content is written."""
        self._wait()
        self._flush()
        todo = {**self._restore, **self._dirs}
        for path in sorted(todo, key=lambda p: p.count("/") + bool(p), reverse=True):
            meta = todo[path]
            try:
                fd = (_open_in_root(self._root, path, _O_PATH_DIR | os.O_NOFOLLOW) if path
                      else os.dup(self._root))
            except (FileNotFoundError, NotADirectoryError):
                continue  # removed or replaced later in the same layer
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    continue
                raise
            try:
                self._dir_meta(fd, path, meta)
            finally:
                os.close(fd)

    def _dir_meta(self, fd: int, path: str, meta: _DirMeta) -> None:
        proc = _proc(fd)
        if meta.uid is not None and meta.gid is not None:
            entry = LayerEntry(path, "dir", meta.mode, meta.uid, meta.gid,
                               mtime_ns=meta.mtime_ns or 0, xattrs=meta.xattrs)
            st = os.fstat(fd)
            if (meta.uid, meta.gid) != (st.st_uid, st.st_gid):
                self._own(entry, proc, -1)
            if meta.xattrs:
                self._xattrs(entry, proc)
        os.chmod(proc, meta.mode)
        if meta.mtime_ns is not None:
            os.utime(proc, ns=(meta.mtime_ns, meta.mtime_ns))


# --- tree removal -----------------------------------------------------------------------

def _open_nofollow_noxdev(pfd: int, name: str, flags: int) -> int:
    """Open ``name`` below ``pfd`` without following it and without crossing a mount point:
    a bind mount left inside a rootfs (a crashed container) must never be emptied."""
    if _HAVE_OPENAT2 is not False:
        try:
            return _openat2(pfd, name, flags, _BENEATH_STRICT | _RESOLVE_NO_XDEV)
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                raise UnpackError(f"{name!r} is a mount point: not removing across it"
                                  ) from None
            if exc.errno != errno.ENOSYS:
                raise
    return os.open(name, flags | os.O_NOFOLLOW, dir_fd=pfd)


def _open_dir_rw(pfd: int, name: str, privileged: bool) -> int:
    """Open a directory to empty it; unprivileged, first give ourselves u+rwx on it."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = _open_nofollow_noxdev(pfd, name, flags)
    except PermissionError:
        if privileged:
            raise
        pfd2 = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
        try:
            os.chmod(_proc(pfd2), 0o700)
        finally:
            os.close(pfd2)
        fd = _open_nofollow_noxdev(pfd, name, flags)
    if not privileged:
        st = os.fstat(fd)
        if st.st_mode & 0o700 != 0o700:
            os.fchmod(fd, (st.st_mode & 0o7777) | 0o700)
    return fd


def _rmtree_at(pfd: int, name: str, privileged: bool) -> None:
    """Remove ``name`` under ``pfd`` and everything below it, following no symlink.

    Iterative (trees may be 4096 deep); at most ``_CACHE`` directory fds are open at once:
    deeper ones are reopened from the top with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS.
    """
    try:
        os.unlink(name, dir_fd=pfd)
        return
    except FileNotFoundError:
        return
    except (IsADirectoryError, PermissionError) as exc:
        if isinstance(exc, PermissionError):
            st = os.lstat(name, dir_fd=pfd)
            if not stat.S_ISDIR(st.st_mode):
                raise
    top = _open_dir_rw(pfd, name, privileged)
    names: list[str] = []                       # path below top of the current frame
    frames: list[tuple[int | None, list[str]]] = []
    try:
        fd: int | None = top
        pending = _empty_files(top, privileged)
        while True:
            if pending:
                child = pending.pop()
                frames.append((fd, pending))
                names.append(child)
                if len(frames) > _CACHE:        # bound open fds: drop an old frame's fd
                    i = len(frames) - _CACHE
                    old_fd, old_pending = frames[i]
                    if old_fd is not None and old_fd != top:
                        os.close(old_fd)
                        frames[i] = (None, old_pending)
                parent_fd, fd = fd, None          # owned by its frame from here on
                assert parent_fd is not None
                fd = _open_dir_rw(parent_fd, child, privileged)
                pending = _empty_files(fd, privileged)
                continue
            if not frames:
                break
            assert fd is not None
            os.close(fd)
            fd = None
            fd, pending = frames.pop()
            child = names.pop()
            if fd is None:
                fd = (_openat2(top, "/".join(names), os.O_RDONLY | os.O_DIRECTORY
                               | os.O_CLOEXEC, _BENEATH_STRICT) if names else top)
            os.rmdir(child, dir_fd=fd)
    finally:
        for f, _ in frames:
            if f is not None and f != top:
                os.close(f)
        if fd is not None and fd != top:
            os.close(fd)
        os.close(top)
    os.rmdir(name, dir_fd=pfd)


def _empty_files(fd: int, privileged: bool) -> list[str]:
    """Unlink every non-directory in ``fd``; return the names of its subdirectories."""
    dirs = []
    with os.scandir(fd) as it:
        for de in it:
            if de.is_dir(follow_symlinks=False):
                dirs.append(de.name)
            else:
                os.unlink(de.name, dir_fd=fd)
    return dirs


def remove_tree(path: Path | str) -> None:
    """Remove ``path`` and everything below it, even 0000 files and 0555 directories of an
    unprivileged unpack, never following a symlink (a symlink ``path`` is itself removed)
    and never crossing into a mount point (:class:`UnpackError`; what was before it is gone).

    Used by ``--force`` and by cache pruning; a missing ``path`` is not an error.
    """
    path = Path(path)
    pfd = os.open(path.parent, _O_PATH_DIR)
    try:
        _rmtree_at(pfd, path.name, os.geteuid() == 0)
    finally:
        os.close(pfd)
