"""The rootless unpack record applied to a container root (what PID 1 does under a wide
mapping), exercised directly as root on a plain directory."""
from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from runner import libc
from runner.sidecar import apply_sidecar

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chown to other users needs root")


def test_ownership_modes_and_xattrs_are_applied(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/shadow").write_text("secret\n")
    (root / "var/mail").mkdir(parents=True)
    (root / "bin").mkdir()
    (root / "bin/ping").write_text("#!/bin/sh\n")
    (root / "etc/link").symlink_to("shadow")
    (root / "outside").symlink_to("/etc")  # must not lead the record out of the root
    record = {"version": 1, "entries": [
        {"path": "/etc/shadow", "type": "file", "uid": 0, "gid": 42, "mode": 0o640},
        {"path": "/var/mail", "type": "dir", "uid": 8, "gid": 8, "mode": 0o2775},
        {"path": "/etc/link", "type": "symlink", "uid": 7, "gid": 7},
        {"path": "/bin/ping", "type": "file", "uid": 0, "gid": 0, "mode": 0o755,
         "xattrs": {"user.puller": base64.b64encode(b"cap").decode()}},
        {"path": "/dev/null", "type": "char", "uid": 0, "gid": 0, "devmajor": 1, "devminor": 3},
        {"path": "/outside/passwd", "type": "file", "uid": 1234, "gid": 1234, "mode": 0o600},
    ]}
    sidecar = tmp_path / "record.json"
    sidecar.write_text(json.dumps(record))
    host_passwd = os.stat("/etc/passwd")
    fd = os.open(root, libc.O_PATH | os.O_DIRECTORY)
    try:
        assert apply_sidecar(fd, str(sidecar)) == 4
    finally:
        os.close(fd)
    shadow = os.stat(root / "etc/shadow")
    assert (shadow.st_uid, shadow.st_gid, shadow.st_mode & 0o7777) == (0, 42, 0o640)
    mail = os.stat(root / "var/mail")
    assert (mail.st_uid, mail.st_gid, mail.st_mode & 0o7777) == (8, 8, 0o2775)
    link = os.lstat(root / "etc/link")
    assert (link.st_uid, os.stat(root / "etc/shadow").st_uid) == (7, 0)
    assert os.getxattr(root / "bin/ping", "user.puller") == b"cap"
    assert not (root / "dev").exists()  # devices cannot be made in a user namespace
    after = os.stat("/etc/passwd")
    assert (after.st_uid, after.st_mode) == (host_passwd.st_uid, host_passwd.st_mode)


def test_unknown_version_is_refused(tmp_path: Path) -> None:
    sidecar = tmp_path / "r.json"
    sidecar.write_text('{"version": 2, "entries": []}')
    with pytest.raises(ValueError):
        apply_sidecar(os.open(tmp_path, libc.O_PATH | os.O_DIRECTORY), str(sidecar))
