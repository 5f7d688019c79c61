"""The container's mount setup as data: frozen step objects applied in order by :func:`apply`.

As in bubblewrap's ``SetupOp`` list, :mod:`runner.namespace` first builds the whole plan
(a tuple of steps; each step type's docstring says what it is for, and the generic
``Mount``/``BindMount`` steps carry a ``why`` for their one instance) and then runs one loop,
``apply(plan, root)``, with a ``case`` per step type. Every target path is resolved *inside*
the new root with ``openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)``: an image whose
``/dev`` or ``/proc`` is a symlink (absolute or full of ``..``) resolves within the rootfs and
never makes a mount land on the host. Missing mount points are created the same way.
The mount itself goes through ``/proc/self/fd/N`` of the resolved ``O_PATH`` descriptor, so
there is no second, racy path lookup.
"""
from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from typing import TYPE_CHECKING

from runner import libc

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "BindMount",
    "MakeRprivate",
    "Mount",
    "MountRoot",
    "ProtectPath",
    "ReadOnlyRoot",
    "Step",
    "Symlink",
    "WriteFile",
    "apply",
    "open_in_root",
]

_RESOLVE = libc.RESOLVE_IN_ROOT | libc.RESOLVE_NO_MAGICLINKS
_MAX_LINKS = 40


def _absolute(path: str) -> None:
    if not path.startswith("/") or "\0" in path:
        raise ValueError(f"container path must be absolute: {path!r}")


@dataclass(frozen=True, slots=True)
class MakeRprivate:
    """Make every mount private first, so nothing we mount propagates back to the host
    (and nothing the host mounts later appears in the container)."""


@dataclass(frozen=True, slots=True)
class MountRoot:
    """The container's root: an overlay of a per-container upper over the shared read-only
    base (no copy at start, the cached image never changes); if overlayfs is refused,
    a private copy of the base in ``upper``, reported once through ``warn``."""
    lower: str
    target: str
    upper: str
    work: str


@dataclass(frozen=True, slots=True)
class Mount:
    """A kernel filesystem (proc, sysfs, tmpfs, devpts) mounted at ``dest`` inside the root;
    ``why`` is the one-line reason this mount is in the plan."""
    fstype: str
    dest: str
    flags: int = 0
    data: str | None = None
    why: str = ""

    def __post_init__(self) -> None:
        _absolute(self.dest)


@dataclass(frozen=True, slots=True)
class BindMount:
    """A host path (a -v volume, /sys, a device node) bound onto ``dest`` inside the root,
    recursively unless ``recursive`` is false; ``readonly`` covers every submount."""
    source: str
    dest: str
    readonly: bool = False
    recursive: bool = True
    why: str = ""

    def __post_init__(self) -> None:
        _absolute(self.dest)


@dataclass(frozen=True, slots=True)
class Symlink:
    """A symlink inside the root (/dev/ptmx -> pts/ptmx, /dev/fd -> /proc/self/fd, ...)."""
    target: str
    dest: str


@dataclass(frozen=True, slots=True)
class WriteFile:
    """A generated file (hosts, hostname, resolv.conf) written into the container's tree
    before any read-only remount; a symlink there is replaced, never followed."""
    dest: str
    content: str
    mode: int = 0o644


@dataclass(frozen=True, slots=True)
class ProtectPath:
    """Docker's masked and read-only paths of /proc and /sys: ``mask`` hides a file under
    the host's /dev/null (a directory under an empty read-only tmpfs); otherwise the path
    is bound onto itself read-only. A path the kernel does not have is skipped."""
    dest: str
    mask: bool = False

    def __post_init__(self) -> None:
        _absolute(self.dest)


@dataclass(frozen=True, slots=True)
class ReadOnlyRoot:
    """--read-only: make the root mount read-only last, after every mount point exists."""


Step = (MakeRprivate | MountRoot | Mount | BindMount | Symlink | WriteFile | ProtectPath
        | ReadOnlyRoot)


def _fdpath(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def _split(path: str) -> list[str]:
    _absolute(path)
    return [p for p in posixpath.normpath(path).split("/") if p]


def open_in_root(root_fd: int, path: str, flags: int = libc.O_PATH) -> int:
    """Open ``path`` as seen from inside the root (symlinks resolve within it)."""
    return libc.openat2(root_fd, path, flags, _RESOLVE)


def _mkdir_in_root(root_fd: int, path: str, *, is_dir: bool = True, depth: int = 0) -> int:
    """Return an O_PATH fd for ``path`` inside the root, creating missing pieces inside it.

    A dangling symlink on the way is followed (inside the root) and its target created,
    which is what runc's securejoin MkdirAll does; ``depth`` bounds symlink loops.
    """
    if depth > _MAX_LINKS:
        raise OSError(40, f"too many symlinks resolving {path}")
    parts = _split(path)
    for i in range(len(parts) + 1):
        prefix = "/" + "/".join(parts[:i])
        last = i == len(parts)
        try:
            fd = open_in_root(root_fd, prefix, libc.O_PATH | (0 if last else os.O_DIRECTORY))
        except FileNotFoundError:
            return _create(root_fd, parts, i, is_dir, depth)
        if last:
            return fd
        os.close(fd)
    raise AssertionError("unreachable")


def _create(root_fd: int, parts: list[str], i: int, is_dir: bool, depth: int) -> int:
    """Create component ``i`` of ``parts`` (and, by recursion, the rest)."""
    parent_path = "/" + "/".join(parts[:i - 1])
    name = parts[i - 1]
    parent = open_in_root(root_fd, parent_path, libc.O_PATH | os.O_DIRECTORY)
    try:
        try:
            if i < len(parts) or is_dir:
                os.mkdir(name, 0o755, dir_fd=parent)
            else:
                os.close(os.open(name, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                 0o644, dir_fd=parent))
        except FileExistsError:
            link = os.readlink(name, dir_fd=parent)  # a dangling symlink: follow it inside
            base = link if link.startswith("/") else posixpath.join(parent_path, link)
            rest = "/".join(parts[i:])
            joined = posixpath.normpath("/" + base + ("/" + rest if rest else ""))
            return _mkdir_in_root(root_fd, _clamp(joined), is_dir=is_dir, depth=depth + 1)
    finally:
        os.close(parent)
    return _mkdir_in_root(root_fd, "/" + "/".join(parts), is_dir=is_dir, depth=depth + 1)


def _clamp(path: str) -> str:
    """Resolve ``..`` lexically with the root as a floor (as the kernel does at '/')."""
    out: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if out:
                out.pop()
        else:
            out.append(part)
    return "/" + "/".join(out)


def _mount_at(root_fd: int, dest: str, source: str | None, fstype: str | None, flags: int,
              data: str | None, *, is_dir: bool = True, step: str) -> None:
    fd = _mkdir_in_root(root_fd, dest, is_dir=is_dir)
    try:
        libc.mount(source, _fdpath(fd), fstype, flags, data, step=step)
    finally:
        os.close(fd)


def _set_readonly(root_fd: int, dest: str, *, recursive: bool) -> None:
    """Re-open ``dest`` (now the new mount's root) and make that mount read-only."""
    fd = open_in_root(root_fd, dest)
    try:
        libc.mount_setattr(fd, libc.MOUNT_ATTR_RDONLY, recursive=recursive)
    finally:
        os.close(fd)


def _write_file(root_fd: int, step: WriteFile) -> None:
    parts = _split(step.dest)
    parent_fd = _mkdir_in_root(root_fd, "/" + "/".join(parts[:-1]))
    try:
        try:
            os.unlink(parts[-1], dir_fd=parent_fd)
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            raise OSError(21, f"{step.dest} is a directory in the image") from None
        fd = os.open(parts[-1], os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW
                     | os.O_CLOEXEC, step.mode, dir_fd=parent_fd)
        with os.fdopen(fd, "w") as out:
            out.write(step.content)
    finally:
        os.close(parent_fd)


def _symlink(root_fd: int, step: Symlink) -> None:
    parts = _split(step.dest)
    parent_fd = _mkdir_in_root(root_fd, "/" + "/".join(parts[:-1]))
    try:
        os.symlink(step.target, parts[-1], dir_fd=parent_fd)
    finally:
        os.close(parent_fd)


def _bind(root_fd: int, step: BindMount) -> None:
    src = os.open(step.source, libc.O_PATH | os.O_CLOEXEC)
    try:
        is_dir = os.path.isdir(_fdpath(src))
        flags = libc.MS_BIND | (libc.MS_REC if step.recursive else 0)
        _mount_at(root_fd, step.dest, _fdpath(src), None, flags, None, is_dir=is_dir,
                  step=f"bind {step.source} -> {step.dest}")
    finally:
        os.close(src)
    if step.readonly:
        _set_readonly(root_fd, step.dest, recursive=step.recursive)


def _protect(root_fd: int, step: ProtectPath) -> None:
    try:
        fd = open_in_root(root_fd, step.dest)
    except FileNotFoundError:
        return
    try:
        is_dir = os.path.isdir(_fdpath(fd))
        where = _fdpath(fd)
        if step.mask and is_dir:
            libc.mount("tmpfs", where, "tmpfs", libc.MS_RDONLY | libc.MS_NOSUID | libc.MS_NODEV
                       | libc.MS_NOEXEC, "size=0,mode=555", step=f"mask {step.dest}")
            return
        if step.mask:
            libc.mount("/dev/null", where, None, libc.MS_BIND, step=f"mask {step.dest}")
            return
        libc.mount(where, where, None, libc.MS_BIND | libc.MS_REC, step=f"protect {step.dest}")
    finally:
        os.close(fd)
    _set_readonly(root_fd, step.dest, recursive=True)


def _apply_root(step: MountRoot, warn: Callable[[str], None]) -> None:
    # userxattr: we always mount from inside a user namespace, where trusted.* is refused.
    data = f"lowerdir={step.lower},upperdir={step.upper},workdir={step.work},userxattr"
    try:
        libc.mount("overlay", step.target, "overlay", 0, data, step="mount overlay root")
    except OSError as e:
        warn(f"overlayfs unavailable ({e.strerror}); using a private copy of the rootfs")
        import shutil
        shutil.copytree(step.lower, step.upper, symlinks=True, dirs_exist_ok=True)
        libc.mount(step.upper, step.target, None, libc.MS_BIND | libc.MS_REC,
                   step="bind private rootfs copy")


def apply(plan: tuple[Step, ...], root: str, *,
          warn: Callable[[str], None] = lambda text: None) -> int:
    """Run the plan in order; return an O_PATH fd of the new root (open before pivot_root).

    ``root`` is the host path where the container's root gets mounted. Steps before
    :class:`MountRoot` act on the host's tree; every later step acts inside the new root.
    """
    root_fd = -1
    for step in plan:
        match step:
            case MakeRprivate():
                libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE, step="make / rprivate")
            case MountRoot():
                _apply_root(step, warn)
                root_fd = os.open(root, libc.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            case Mount():
                _mount_at(root_fd, step.dest, step.fstype, step.fstype, step.flags, step.data,
                          step=f"mount {step.fstype} on {step.dest}")
            case Symlink():
                _symlink(root_fd, step)
            case WriteFile():
                _write_file(root_fd, step)
            case BindMount():
                _bind(root_fd, step)
            case ProtectPath():
                _protect(root_fd, step)
            case ReadOnlyRoot():
                libc.mount_setattr(root_fd, libc.MOUNT_ATTR_RDONLY, recursive=False)
            case _:
                raise TypeError(f"unknown setup step {step!r}")
    return root_fd
