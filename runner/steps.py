"""The container's mount setup as data: frozen step objects applied in order by :func:`apply`.

As in bubblewrap's ``SetupOp`` list, :mod:`runner.namespace` first builds the whole plan
(a tuple of steps, each saying in its docstring *why* it exists) and then runs one loop,
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
from collections.abc import Callable
from dataclasses import dataclass

from runner import libc

__all__ = [
    "MakeRprivate", "MountRoot", "MountProc", "MountSysfs", "BindSys", "Tmpfs", "BindDevice",
    "MountDevpts", "Symlink", "BindMount", "WriteFile", "ReadOnlyRoot", "Step", "apply",
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
    base (no copy at start, the cached image never changes), or, when ``upper`` is None, a
    bind of ``lower`` onto ``target`` (the private-copy fallback; pivot_root needs a mount)."""
    lower: str
    target: str
    upper: str | None = None
    work: str | None = None


@dataclass(frozen=True, slots=True)
class MountProc:
    """A fresh procfs: it shows the new PID namespace only, so the host's processes (and
    their /proc/PID/root) stay out of sight."""
    dest: str = "/proc"


@dataclass(frozen=True, slots=True)
class MountSysfs:
    """A fresh, read-only sysfs; only possible with our own network namespace."""
    dest: str = "/sys"


@dataclass(frozen=True, slots=True)
class BindSys:
    """With the host's network namespace a fresh sysfs is refused, so bind the host's /sys
    recursively and make the whole tree read-only in one mount_setattr call."""
    dest: str = "/sys"


@dataclass(frozen=True, slots=True)
class Tmpfs:
    """A private tmpfs (/dev, /dev/shm): the image's own files there are not used and
    nothing written there survives the container."""
    dest: str
    mode: int = 0o755
    flags: int = libc.MS_NOSUID | libc.MS_NODEV


@dataclass(frozen=True, slots=True)
class BindDevice:
    """Bind one harmless host device node (null, zero, ...) into the tmpfs /dev: in a user
    namespace mknod is refused, and binding the host's node is what Docker rootless does."""
    name: str


@dataclass(frozen=True, slots=True)
class MountDevpts:
    """A new devpts instance, so the container's ptys are its own; ``gid=5`` only when the
    tty group is mapped (under a single-id map the kernel refuses an unmapped gid)."""
    dest: str = "/dev/pts"
    tty_gid: int | None = None


@dataclass(frozen=True, slots=True)
class Symlink:
    """A symlink in the new /dev (ptmx -> pts/ptmx, fd -> /proc/self/fd, ...)."""
    target: str
    dest: str


@dataclass(frozen=True, slots=True)
class WriteFile:
    """Write a generated file (hosts, hostname, resolv.conf) into the container's tree
    before any read-only remount; a symlink there is replaced, never followed."""
    dest: str
    content: str
    mode: int = 0o644


@dataclass(frozen=True, slots=True)
class BindMount:
    """Bind a host path (a -v volume) onto a path inside the container."""
    source: str
    dest: str
    readonly: bool = False


@dataclass(frozen=True, slots=True)
class ReadOnlyRoot:
    """--read-only: make the root mount read-only last, after every mount point exists."""


Step = (MakeRprivate | MountRoot | MountProc | MountSysfs | BindSys | Tmpfs | BindDevice
        | MountDevpts | Symlink | WriteFile | BindMount | ReadOnlyRoot)


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
        _mount_at(root_fd, step.dest, _fdpath(src), None, libc.MS_BIND | libc.MS_REC, None,
                  is_dir=is_dir, step=f"bind {step.source} -> {step.dest}")
    finally:
        os.close(src)
    if step.readonly:
        _set_readonly(root_fd, step.dest, recursive=True)


def _apply_root(step: MountRoot, warn: Callable[[str], None]) -> None:
    if step.upper is None:
        libc.mount(step.lower, step.target, None, libc.MS_BIND | libc.MS_REC,
                   step="bind rootfs")
        return
    # userxattr: we always mount from inside a user namespace, where trusted.* is refused.
    data = f"lowerdir={step.lower},upperdir={step.upper},workdir={step.work},userxattr"
    try:
        libc.mount("overlay", step.target, "overlay", 0, data, step="mount overlay root")
    except OSError as e:
        # No overlayfs here (old kernel, unsupported upper fs): a private copy instead.
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
            case MountProc():
                _mount_at(root_fd, step.dest, "proc", "proc",
                          libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC, None,
                          step="mount /proc")
            case MountSysfs():
                _mount_at(root_fd, step.dest, "sysfs", "sysfs", libc.MS_RDONLY | libc.MS_NOSUID
                          | libc.MS_NODEV | libc.MS_NOEXEC, None, step="mount /sys")
            case BindSys():
                _mount_at(root_fd, step.dest, "/sys", None, libc.MS_BIND | libc.MS_REC, None,
                          step="bind /sys")
                _set_readonly(root_fd, step.dest, recursive=True)
            case Tmpfs():
                _mount_at(root_fd, step.dest, "tmpfs", "tmpfs", step.flags,
                          f"mode={step.mode:o}", step=f"mount tmpfs {step.dest}")
            case BindDevice():
                _mount_at(root_fd, f"/dev/{step.name}", f"/dev/{step.name}", None, libc.MS_BIND,
                          None, is_dir=False, step=f"bind /dev/{step.name}")
            case MountDevpts():
                gid = "" if step.tty_gid is None else f",gid={step.tty_gid}"
                _mount_at(root_fd, step.dest, "devpts", "devpts",
                          libc.MS_NOSUID | libc.MS_NOEXEC,
                          f"newinstance,ptmxmode=0666,mode=620{gid}", step="mount /dev/pts")
            case Symlink():
                _symlink(root_fd, step)
            case WriteFile():
                _write_file(root_fd, step)
            case BindMount():
                _bind(root_fd, step)
            case ReadOnlyRoot():
                libc.mount_setattr(root_fd, libc.MOUNT_ATTR_RDONLY, recursive=False)
            case _:
                raise TypeError(f"unknown setup step {step!r}")
    return root_fd
