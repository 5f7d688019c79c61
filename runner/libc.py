"""Thin ctypes wrappers for the Linux calls Python 3.11 does not expose.

Python 3.11 has no ``os.unshare``, ``os.setns``, ``mount``, ``pivot_root``, ``openat2`` or
``mount_setattr``; each wrapper here calls libc (or ``syscall(2)`` where glibc has no
wrapper) and raises :class:`OSError` whose message names the step, so a failure deep in the
container setup says *which* mount or namespace went wrong.
"""
from __future__ import annotations

import ctypes
import os

__all__ = [
    "CLONE_NEWCGROUP",
    "CLONE_NEWIPC",
    "CLONE_NEWNET",
    "CLONE_NEWNS",
    "CLONE_NEWPID",
    "CLONE_NEWUSER",
    "CLONE_NEWUTS",
    "MNT_DETACH",
    "MOUNT_ATTR_NODEV",
    "MOUNT_ATTR_NOSUID",
    "MOUNT_ATTR_RDONLY",
    "MS_BIND",
    "MS_NODEV",
    "MS_NOEXEC",
    "MS_NOSUID",
    "MS_PRIVATE",
    "MS_RDONLY",
    "MS_REC",
    "MS_REMOUNT",
    "MS_SLAVE",
    "RESOLVE_IN_ROOT",
    "RESOLVE_NO_MAGICLINKS",
    "RESOLVE_NO_XDEV",
    "capset",
    "close_range",
    "mount",
    "mount_setattr",
    "openat2",
    "pivot_root",
    "prctl",
    "sethostname",
    "setns",
    "umount2",
    "unshare",
]

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MNT_DETACH = 2

O_PATH = getattr(os, "O_PATH", 0o10000000)
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10

AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4

PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38

# syscall numbers glibc has no wrapper for (the generic table is shared by arm64/riscv).
_SYSCALLS = {
    "x86_64": {"pivot_root": 155, "capset": 126, "openat2": 437, "mount_setattr": 442,
               "close_range": 436},
    "aarch64": {"pivot_root": 41, "capset": 91, "openat2": 437, "mount_setattr": 442,
                "close_range": 436},
}
_NR = _SYSCALLS.get(os.uname().machine, _SYSCALLS["aarch64"])

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]


def _check(result: int, step: str, path: str | None = None) -> int:
    """Turn a -1 return into an OSError whose message says which step failed."""
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{step}: {os.strerror(err)}", path)
    return result


def _b(value: str | os.PathLike[str] | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def unshare(flags: int) -> None:
    """Move the calling (single-threaded) process into new namespaces."""
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    """Join the namespace that ``fd`` (an open /proc/PID/ns/* file) refers to."""
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0,
          data: str | None = None, *, step: str = "mount") -> None:
    """mount(2); ``step`` names the setup step for the error message."""
    _check(_libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data)),
           step, target)


def umount2(target: str, flags: int = 0) -> None:
    """umount2(2), used with MNT_DETACH to drop the old root after pivot_root."""
    _check(_libc.umount2(_b(target), ctypes.c_int(flags)), "umount2", target)


def pivot_root(new_root: str, put_old: str) -> None:
    """pivot_root(2) through syscall(2): glibc has no wrapper."""
    _check(_libc.syscall(ctypes.c_long(_NR["pivot_root"]), _b(new_root), _b(put_old)),
           "pivot_root", new_root)


def sethostname(name: str) -> None:
    """Set the hostname of the (new) UTS namespace."""
    raw = name.encode()
    _check(_libc.sethostname(raw, ctypes.c_size_t(len(raw))), "sethostname")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """prctl(2) with integer arguments (PDEATHSIG, NO_NEW_PRIVS, CAPBSET_DROP)."""
    return _check(_libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(arg3),
                              ctypes.c_ulong(arg4), ctypes.c_ulong(arg5)), f"prctl({option})")


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


def openat2(dirfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """openat2(2): open ``path`` under ``dirfd`` with RESOLVE_* scoping (kernel >= 5.6)."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    return _check(_libc.syscall(ctypes.c_long(_NR["openat2"]), ctypes.c_int(dirfd), _b(path),
                                ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how))),
                  "openat2", path)


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def mount_setattr(fd: int, attr_set: int, *, recursive: bool = True) -> None:
    """mount_setattr(2) on the mount ``fd`` refers to: the only way to make a whole
    recursive bind read-only in one call (kernel >= 5.12)."""
    attr = _MountAttr(attr_set, 0, 0, 0)
    flags = AT_EMPTY_PATH | (AT_RECURSIVE if recursive else 0)
    _check(_libc.syscall(ctypes.c_long(_NR["mount_setattr"]), ctypes.c_int(fd), b"",
                         ctypes.c_uint(flags), ctypes.byref(attr),
                         ctypes.c_size_t(ctypes.sizeof(attr))), "mount_setattr")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """capset(2) with 64-bit masks (_LINUX_CAPABILITY_VERSION_3)."""
    header = _CapHeader(0x20080522, 0)
    data = (_CapData * 2)()
    for i in range(2):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(_libc.syscall(ctypes.c_long(_NR["capset"]), ctypes.byref(header), data), "capset")


def close_range(first: int, last: int = 0xFFFFFFFF) -> None:
    """Close every fd from ``first`` to ``last`` in one call; falls back to a loop."""
    if _libc.syscall(ctypes.c_long(_NR["close_range"]), ctypes.c_uint(first),
                     ctypes.c_uint(last), ctypes.c_uint(0)) == -1:
        os.closerange(first, min(last + 1, os.sysconf("SC_OPEN_MAX")))
