"""Unpack an image's layers into a rootfs directory, all or nothing.

The layers are applied in order into a temporary directory beside DEST (same file system,
so the final rename is atomic); each layer's uncompressed stream is hashed while it is
applied, read to its very end and compared with the config's ``rootfs.diff_ids[i]``. On any
error the temporary directory is removed and DEST is left exactly as it was: never a half
rootfs under the final name, never leftovers.

Usage::

    result = unpack([lambda: open(blob_path, "rb") for blob_path in blobs], diff_ids,
                    Path("rootfs"), record=cache / "skipped.json")

Each layer source is a callable returning a fresh binary stream of the (compressed) blob;
``unpack`` closes it. The same source may appear twice (the same digest listed twice in a
manifest is applied twice).
"""
from __future__ import annotations

import base64
import ctypes
import errno
import json
import os
import secrets
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, Callable, Sequence

from puller.errors import DigestMismatch, UnpackError
from puller.layer.applier import Applier, LayerStats, Skipped, remove_tree
from puller.layer.reader import LayerReader, Limits

__all__ = ["unpack", "UnpackResult", "UnpackEvent", "Limits", "RECORD_VERSION"]

RECORD_VERSION = 1


@dataclass(frozen=True, slots=True)
class UnpackEvent:
    """Progress: ``kind`` is 'layer-start', 'layer-progress' (``bytes``: compressed bytes
    read so far, every 8 MiB), 'layer-done' (``bytes``: uncompressed size) or 'done';
    ``layer`` counts from 0."""
    kind: str
    layer: int
    layers: int
    entries: int = 0
    bytes: int = 0
    diff_id: str = ""
    compression: str = ""


@dataclass(frozen=True, slots=True)
class UnpackResult:
    """What :func:`unpack` made. ``skipped`` counts the record's entries (rootless)."""
    dest: Path
    diff_ids: tuple[str, ...]
    entries: int
    bytes: int
    skipped: int
    record: Path | None
    privileged: bool


def unpack(layers: Sequence[Callable[[], BinaryIO]], diff_ids: Sequence[str], dest: Path, *,
           force: bool = False, limits: Limits = Limits(), record: Path | None = None,
           progress: Callable[[UnpackEvent], None] | None = None) -> UnpackResult:
    """Apply ``layers`` in order into ``dest``, verifying each against ``diff_ids[i]``.

    ``dest`` must not exist or be an empty directory, unless ``force`` (then it is
    replaced, atomically where the kernel can exchange names). Unprivileged, what could not
    be applied is written to ``record`` (JSON, atomically; nothing is written beside
    ``dest``). Raises :class:`UnpackError`, :class:`DigestMismatch`, :class:`LayerError`
    (:class:`UnsafeLayer`, :class:`LimitExceeded`) or :class:`DiskFull`.
    """
    if len(layers) != len(diff_ids):
        raise UnpackError(f"{len(layers)} layers but {len(diff_ids)} diff_ids")
    dest = Path(os.path.abspath(dest))
    _check_dest(dest, force)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.unpack-", dir=dest.parent))
    except OSError as exc:
        raise UnpackError(f"cannot create a directory beside {dest}: {exc.strerror}") from exc
    try:
        os.chmod(tmp, 0o755)
        applier, total, entries = _apply_all(tmp, layers, diff_ids, limits, progress)
        skipped = applier.skipped
        if record is not None:
            write_record(Path(record), skipped)
        _move_into_place(tmp, dest, force)
    except BaseException:
        remove_tree(tmp)
        raise
    if progress:
        progress(UnpackEvent("done", len(layers), len(layers), entries, total))
    return UnpackResult(dest, tuple(diff_ids), entries, total, len(skipped),
                        Path(record) if record is not None else None, applier.privileged)


def _apply_all(root: Path, layers: Sequence[Callable[[], BinaryIO]], diff_ids: Sequence[str],
               limits: Limits, progress: Callable[[UnpackEvent], None] | None
               ) -> tuple[Applier, int, int]:
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        with Applier(root_fd, limits=limits) as applier:
            total = entries = 0
            for i, (open_layer, want) in enumerate(zip(layers, diff_ids)):
                stats = _apply_one(applier, i, open_layer, want, len(layers),
                                   replace(limits, max_bytes=limits.max_bytes - total),
                                   progress)
                total += stats.bytes
                entries += stats.entries
        return applier, total, entries
    finally:
        os.close(root_fd)


def _apply_one(applier: Applier, i: int, open_layer: Callable[[], BinaryIO], want: str,
               count: int, limits: Limits, progress: Callable[[UnpackEvent], None] | None
               ) -> LayerStats:
    """Apply layer ``i`` and check its DiffID (the stream is read to its very end)."""
    algorithm = want.partition(":")[0] if ":" in want else "sha256"
    if progress:
        progress(UnpackEvent("layer-start", i, count))
    with open_layer() as stream:
        source = _Progress(stream, i, count, progress) if progress else stream
        stats = applier.apply(LayerReader(source, digest_algorithm=algorithm, limits=limits))
    if stats.diff_id != want:
        raise DigestMismatch(f"layer {i + 1}/{count}: uncompressed content hashes to "
                             f"{stats.diff_id}, the config says {want}")
    if progress:
        progress(UnpackEvent("layer-done", i, count, stats.entries, stats.bytes,
                             stats.diff_id, stats.compression))
    return stats


class _Progress:
    """A read-through wrapper that reports how much of a blob was read."""

    _EVERY = 8 << 20

    def __init__(self, stream: BinaryIO, layer: int, count: int,
                 progress: Callable[[UnpackEvent], None]) -> None:
        self._stream, self._layer, self._count, self._progress = stream, layer, count, progress
        self._read = 0
        self._next = self._EVERY

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n)
        self._read += len(data)
        if self._read >= self._next:
            self._next = self._read + self._EVERY
            self._progress(UnpackEvent("layer-progress", self._layer, self._count,
                                       bytes=self._read))
        return data

    def close(self) -> None:
        self._stream.close()


def _check_dest(dest: Path, force: bool) -> None:
    """DEST must be absent or an empty directory (not a symlink to one), unless forced."""
    try:
        os.lstat(dest)
    except FileNotFoundError:
        return
    if force:
        return
    if os.path.isdir(dest) and not os.path.islink(dest):
        with os.scandir(dest) as it:
            if next(it, None) is None:
                return
        raise UnpackError(f"{dest} exists and is not empty (use --force to replace it)")
    kind = "a symlink" if os.path.islink(dest) else "not a directory"
    raise UnpackError(f"{dest} exists and is {kind} (use --force to replace it)")


_libc = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two names atomically (renameat2 RENAME_EXCHANGE); False where unsupported."""
    fn = getattr(_libc, "renameat2", None)
    if fn is None:
        return False
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _move_into_place(tmp: Path, dest: Path, force: bool) -> None:
    try:
        os.rename(tmp, dest)  # dest absent, or an empty directory
        return
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise UnpackError(f"cannot move the new rootfs to {dest}: {exc.strerror}") from exc
        if not force:
            raise UnpackError(f"{dest} appeared while unpacking and is not empty") from exc
    if _exchange(tmp, dest):
        remove_tree(tmp)  # now holds the old DEST
        return
    old = dest.with_name(f".{dest.name}.old-{secrets.token_hex(4)}")
    os.rename(dest, old)
    os.rename(tmp, dest)
    remove_tree(old)


def write_record(path: Path, skipped: Sequence[Skipped]) -> None:
    """Write the record of skipped metadata atomically (the runner reads this format)."""
    doc = {"version": RECORD_VERSION, "entries": [
        {"path": s.path, "type": s.type, "uid": s.uid, "gid": s.gid, "mode": s.mode,
         "devmajor": s.devmajor, "devminor": s.devminor,
         "xattrs": {k: base64.b64encode(v).decode() for k, v in s.xattrs}}
        for s in skipped]}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
