"""Rootless with a 65536-id mapping (newuidmap/newgidmap and /etc/subuid, /etc/subgid).

As root (CI), a range for user 65534 (nobody) is added to both files for the duration of this
module when the machine has none, and the files are restored byte for byte afterwards.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fixtures.rootfs import NOBODY, Sandbox


def _has_range(path: str) -> bool:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return False
    return any(line.split(":")[0] in ("nobody", str(NOBODY)) and line.count(":") == 2
               and int(line.split(":")[2]) >= 65535 for line in lines if line.strip())


pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (to become user 65534)"),
    pytest.mark.skipif(not Path("/bin/busybox").exists(), reason="needs busybox-static"),
    pytest.mark.skipif(not (shutil.which("newuidmap") and shutil.which("newgidmap")),
                       reason="needs newuidmap/newgidmap (apt-get install uidmap)"),
    pytest.mark.usefixtures("subid_range"),
]


@pytest.fixture(scope="module")
def subid_range() -> Iterator[None]:
    """Make sure nobody has 65536 sub-ids (the setting newuidmap reads), then restore /etc."""
    saved: dict[str, bytes | None] = {}
    try:
        for path in ("/etc/subuid", "/etc/subgid"):
            if _has_range(path):
                continue
            saved[path] = Path(path).read_bytes() if os.path.exists(path) else None
            with open(path, "ab") as f:
                f.write(b"nobody:300000:65536\n")
        yield
    finally:
        for path, data in saved.items():
            if data is None:
                os.unlink(path)
            else:
                Path(path).write_bytes(data)


@pytest.fixture(scope="module")
def box() -> Iterator[Sandbox]:
    path = Path(tempfile.mkdtemp(prefix="puller-wide-", dir="/tmp"))
    yield Sandbox(path, rootless=True)
    shutil.rmtree(path, ignore_errors=True)


def test_other_users_exist_inside(box: Sandbox) -> None:
    script = "id; touch /tmp/mine; stat -c '%u:%g' /tmp/mine; grep -c . /proc/self/uid_map"
    out = box.run(["sh", "-c", script], user="alice")
    assert out.stdout.splitlines() == [
        "uid=1000(alice) gid=1000(alice) groups=10(wheel),1000(alice)", "1000:1000", "2"
    ], out.stderr


def test_sidecar_ownership_is_applied_in_the_container_only(box: Sandbox) -> None:
    sidecar = box.base / "sidecar.json"
    sidecar.write_text(json.dumps({"version": 1, "entries": [
        {"path": "/etc/group", "type": "file", "uid": 0, "gid": 42, "mode": 0o640}]}))
    os.chown(sidecar, NOBODY, NOBODY)
    before = os.stat(box.rootfs / "etc/group")
    out = box.run(["stat", "-c", "%u:%g:%a", "/etc/group"], sidecar=str(sidecar))
    assert out.stdout.strip() == "0:42:640", out.stderr
    after = os.stat(box.rootfs / "etc/group")
    assert (after.st_uid, after.st_gid, after.st_mode) == (before.st_uid, before.st_gid,
                                                           before.st_mode)


def test_named_container_with_sub_id_files_can_be_removed(box: Sandbox) -> None:
    import subprocess
    import sys
    out = box.run(["sh", "-c", "mkdir /tmp/d && touch /tmp/d/f && chmod 500 /tmp/d"],
                  user="alice", name="wide", containers_dir=str(box.containers))
    assert out.returncode == 0, out.stderr
    owner = os.stat(box.containers / "wide/upper/tmp/d").st_uid
    assert owner not in (0, NOBODY)  # a sub-id: the caller cannot delete it directly
    code = ("from pathlib import Path; from runner.containers import remove_container; "
            f"remove_container(Path({str(box.containers)!r}), 'wide')")
    done = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                           "--clear-groups", sys.executable, "-c", code], check=False,
                          cwd=Path(__file__).parent.parent, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not (box.containers / "wide").exists()
