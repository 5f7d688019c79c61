"""Apply the rootless unpack record (the "sidecar") inside a wide user namespace.

An unprivileged unpack cannot give files to other users, create devices or set privileged
xattrs; it records what it could not do as JSON
``{"version": 1, "entries": [{"path", "type", "uid", "gid", "mode", "xattrs"...}]}``.
When the container has a 65536-id mapping those owners exist inside it, so PID 1 applies
the record to its own root before pivoting: on the overlay this copies the few affected
files up into the container's upper layer, so the shared base stays untouched, and the
cost is proportional to the record, not the image. Device nodes stay impossible in a user
namespace and are skipped (Docker rootless does the same).
"""
from __future__ import annotations

import base64
import json
import logging
import os
import posixpath
from typing import Any

from runner import libc
from runner.steps import open_in_root

__all__ = ["apply_sidecar"]

log = logging.getLogger(__name__)
_FILE_TYPES = {"file", "dir", "symlink", "hardlink", "fifo"}


def apply_sidecar(root_fd: int, path: str) -> int:
    """Apply every entry of the record at ``path`` under ``root_fd``; return how many."""
    with open(path) as f:
        record = json.load(f)
    if record.get("version") != 1:
        raise ValueError(f"unknown sidecar version in {path}")
    done = 0
    for entry in record.get("entries", []):
        if entry.get("type") in _FILE_TYPES and _apply_entry(root_fd, entry):
            done += 1
    return done


def _apply_entry(root_fd: int, entry: dict[str, Any]) -> bool:
    name = posixpath.normpath(entry["path"])
    if not name.startswith("/") or name == "/":
        return False
    parent_path, base = posixpath.split(name)
    try:
        parent = open_in_root(root_fd, parent_path, libc.O_PATH | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        is_link = entry.get("type") == "symlink"
        os.chown(base, int(entry.get("uid", 0)), int(entry.get("gid", 0)), dir_fd=parent,
                 follow_symlinks=False)
        if not is_link and "mode" in entry:  # after chown, which clears set-id bits
            os.chmod(base, int(entry["mode"]) & 0o7777, dir_fd=parent)
        xattrs = entry.get("xattrs") or {}
        if xattrs and not is_link:
            fd = os.open(base, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                         dir_fd=parent)
            try:
                for key, value in xattrs.items():
                    os.setxattr(fd, key, base64.b64decode(value))
            finally:
                os.close(fd)
    except OSError as e:
        log.warning("cannot apply recorded ownership of %s: %s", name, e.strerror)
        return False
    finally:
        os.close(parent)
    return True
