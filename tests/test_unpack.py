"""unpack(): all-or-nothing, DiffID verification, DEST rules, --force, and rootless."""
from __future__ import annotations

import base64
import gc
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from fixtures import hostile
from fixtures.images import D, E, F, H, WH, compress, sha256, tar_layer
from puller.errors import DigestMismatch, LayerError, UnpackError
from puller.unpack import UnpackEvent, unpack

REPO = Path(__file__).resolve().parents[1]
L1 = tar_layer(D("etc"), F("etc/os-release", "ID=test\n"), D("bin"), F("bin/sh", "sh"))
L2 = tar_layer(F("etc/motd", "hi"), WH("bin/sh"))


def sources(*blobs: bytes):
    return [(lambda b=b: io.BytesIO(b)) for b in blobs]


def leftovers(parent: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name not in keep)


def test_unpack_result_and_progress(tmp_path: Path) -> None:
    events: list[UnpackEvent] = []
    result = unpack(sources(compress(L1, "gzip"), compress(L2, "zstd")), [sha256(L1), sha256(L2)],
                    tmp_path / "rootfs", progress=events.append)
    assert (tmp_path / "rootfs/etc/motd").read_text() == "hi"
    assert not (tmp_path / "rootfs/bin/sh").exists()
    assert result.dest == tmp_path / "rootfs" and result.diff_ids == (sha256(L1), sha256(L2))
    assert result.bytes == len(L1) + len(L2) and result.entries == 6
    assert [e.kind for e in events] == ["layer-start", "layer-done"] * 2 + ["done"]
    assert events[1].compression == "gzip" and events[3].compression == "zstd"
    assert leftovers(tmp_path, {"rootfs"}) == []
    big = tar_layer(F("big", os.urandom(9 << 20)))
    events.clear()
    unpack(sources(compress(big, "gzip")), [sha256(big)], tmp_path / "big", progress=events.append)
    assert [e.kind for e in events] == ["layer-start", "layer-progress", "layer-done", "done"]
    assert events[1].bytes >= 8 << 20


def test_layers_from_open_files_are_closed(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(compress(L1, "gzip"))
    opened = []

    def src():
        f = open(blob, "rb")
        opened.append(f)
        return f
    unpack([src, src], [sha256(L1)] * 2, tmp_path / "rootfs")
    assert len(opened) == 2 and all(f.closed for f in opened)


def test_diff_id_mismatch_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(DigestMismatch, match="layer 2/2"):
        unpack(sources(compress(L1, "gzip"), compress(L2, "gzip")), [sha256(L1), sha256(L1)],
               tmp_path / "rootfs")
    assert list(tmp_path.iterdir()) == []


def test_trailing_bytes_change_the_diff_id(tmp_path: Path) -> None:
    padded = L1 + b"extra" * 10
    with pytest.raises(DigestMismatch):
        unpack(sources(compress(padded, "gzip")), [sha256(L1)], tmp_path / "rootfs")
    unpack(sources(compress(padded, "gzip")), [sha256(padded)], tmp_path / "rootfs")


def test_truncated_gzip_is_an_error_and_leaves_nothing(tmp_path: Path) -> None:
    blob = compress(L1, "gzip")
    with pytest.raises(LayerError, match="truncated"):
        unpack(sources(blob[:-30]), [sha256(L1)], tmp_path / "rootfs")
    assert list(tmp_path.iterdir()) == []


def test_failure_keeps_the_old_dest_when_forced(tmp_path: Path) -> None:
    dest = tmp_path / "rootfs"
    dest.mkdir()
    (dest / "old").write_text("keep me")
    with pytest.raises(DigestMismatch):
        unpack(sources(compress(L1, "gzip")), [sha256(L2)], dest, force=True)
    assert [p.name for p in dest.iterdir()] == ["old"]
    assert leftovers(tmp_path, {"rootfs"}) == []


def test_dest_rules(tmp_path: Path) -> None:
    args = (sources(compress(L1, "gzip")), [sha256(L1)])
    empty = tmp_path / "empty"
    empty.mkdir()
    unpack(*args, empty)
    assert (empty / "bin/sh").exists()
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").touch()
    with pytest.raises(UnpackError, match="not empty"):
        unpack(*args, full)
    afile = tmp_path / "afile"
    afile.touch()
    with pytest.raises(UnpackError, match="not a directory"):
        unpack(*args, afile)
    link = tmp_path / "link"
    link.symlink_to(empty)
    with pytest.raises(UnpackError, match="symlink"):
        unpack(*args, link)
    nested = tmp_path / "a/b/rootfs"
    unpack(*args, nested)
    assert (nested / "bin/sh").exists()
    assert leftovers(tmp_path, {"empty", "full", "afile", "link", "a"}) == []


@pytest.mark.parametrize("kind", ["dir", "file", "symlink"])
def test_force_replaces_dest(tmp_path: Path, kind: str) -> None:
    dest = tmp_path / "rootfs"
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "precious").touch()
    if kind == "dir":
        dest.mkdir()
        (dest / "old").mkdir(mode=0o555)
    elif kind == "file":
        dest.write_text("x")
    else:
        dest.symlink_to(target)
    unpack(sources(compress(L1, "gzip")), [sha256(L1)], dest, force=True)
    assert dest.is_dir() and not dest.is_symlink() and (dest / "bin/sh").exists()
    assert not (dest / "old").exists() and (target / "precious").exists()
    assert leftovers(tmp_path, {"rootfs", "elsewhere"}) == []


def test_layer_count_must_match_diff_ids(tmp_path: Path) -> None:
    with pytest.raises(UnpackError):
        unpack(sources(L1), [], tmp_path / "rootfs")


def test_record_as_root_is_written_and_empty(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    unpack(sources(L1), [sha256(L1)], tmp_path / "rootfs", record=tmp_path / "c/rec.json")
    assert json.loads((tmp_path / "c/rec.json").read_text()) == {"version": 1, "entries": []}


# --- rootless -----------------------------------------------------------------------------

CAP = b"\x01\x00\x00\x02" + b"\x00\x20\x00\x00" + bytes(12)
ROOTLESS_L1 = (hostile.without_end(tar_layer(D("etc"), F("etc/shadow", "s", mode=0o640, gid=42),
                         F("etc/gshadow", "g", mode=0o000), D("bin"),
                         F("bin/su", "su", mode=0o4755), H("bin/su2", "bin/su"),
                         D("ro", mode=0o555), F("ro/file", mode=0o444), D("locked", mode=0o000),
                         D("dev"), E("dev/null", kind="char", devmajor=1, devminor=3),
                         E("fifo", kind="fifo", mode=0o600),
                         F("mine", "m", uid=65534, gid=65534), D("home"),
                         D("home/app", mode=0o700, uid=1000, gid=1000)))
               + hostile.pax({"SCHILY.xattr.security.capability": CAP,
                              "SCHILY.xattr.user.note": b"kept"})
               + hostile.member("ping", b"elf", mode=0o755, uid=65534, gid=65534)
               + hostile.END)
ROOTLESS_L2 = tar_layer(F("ro/new", "n"), WH("ro/file"), F("locked/x", "x", mode=0o600),
                        F("etc/gshadow", "g2", mode=0o000), D("ro/sub", mode=0o555))

CHILD = """
import json, sys
sys.path.insert(0, {repo!r})
from pathlib import Path
from puller.unpack import unpack
from puller.layer.applier import remove_tree
base = Path(sys.argv[1])
diff = json.loads((base / "diffids.json").read_text())
srcs = [lambda p=p: open(p, "rb") for p in sorted(base.glob("layer*"))]
if sys.argv[2] == "unpack":
    r = unpack(srcs, diff, base / "rootfs", record=base / "cache/record.json")
    r2 = unpack(srcs, diff, base / "rootfs", force=True, record=base / "cache/record.json")
    print(json.dumps({{"skipped": r.skipped, "privileged": r.privileged}}))
else:
    remove_tree(base / "rootfs")
"""


def run_as_nobody(base: Path, what: str) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           sys.executable, "-c", CHILD.format(repo=str(REPO)), str(base), what],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def nobody_dir():
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to become an unprivileged user")
    base = Path(tempfile.mkdtemp(prefix="puller-rootless-"))
    os.chmod(base, 0o755)
    os.chown(base, 65534, 65534)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def test_rootless_unpack_modes_record_and_removal(nobody_dir: Path) -> None:
    (nobody_dir / "layer1").write_bytes(compress(ROOTLESS_L1, "gzip"))
    (nobody_dir / "layer2").write_bytes(compress(ROOTLESS_L2, "zstd"))
    (nobody_dir / "diffids.json").write_text(json.dumps([sha256(ROOTLESS_L1),
                                                         sha256(ROOTLESS_L2)]))
    proc = run_as_nobody(nobody_dir, "unpack")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["privileged"] is False and out["skipped"] > 0
    root = nobody_dir / "rootfs"
    mode = lambda p: stat.S_IMODE(os.lstat(root / p).st_mode)  # noqa: E731
    assert (mode("etc/gshadow"), mode("etc/shadow"), mode("bin/su")) == (0, 0o640, 0o4755)
    assert (mode("ro"), mode("locked"), mode("ro/sub"), mode("home/app")) == (0o555, 0, 0o555,
                                                                            0o700)
    assert (root / "ro/new").exists() and not (root / "ro/file").exists()
    assert os.lstat(root / "bin/su").st_ino == os.lstat(root / "bin/su2").st_ino
    assert stat.S_ISFIFO(os.lstat(root / "fifo").st_mode)
    assert not os.path.lexists(root / "dev/null")
    assert os.getxattr(root / "ping", "user.note") == b"kept"
    assert all(os.lstat(p).st_uid == 65534 for p in [root, *root.rglob("*")])
    assert leftovers(nobody_dir, {"layer1", "layer2", "diffids.json", "rootfs", "cache"}) == []

    record = json.loads((nobody_dir / "cache/record.json").read_text())
    assert record["version"] == 1
    by_path = {e["path"]: e for e in record["entries"]}
    assert by_path["/etc/shadow"] == {"path": "/etc/shadow", "type": "file", "uid": 0,
                                      "gid": 42, "mode": 0o640, "devmajor": 0,
                                      "devminor": 0, "xattrs": {}}
    assert by_path["/dev/null"]["type"] == "char"
    assert (by_path["/dev/null"]["devmajor"], by_path["/dev/null"]["devminor"]) == (1, 3)
    assert by_path["/home/app"]["uid"] == 1000 and by_path["/home/app"]["type"] == "dir"
    assert by_path["/bin/su"]["mode"] == 0o4755 and by_path["/bin/su2"]["type"] == "hardlink"
    assert base64.b64decode(by_path["/ping"]["xattrs"]["security.capability"]) == CAP
    assert "user.note" not in by_path["/ping"]["xattrs"]
    assert by_path["/etc/gshadow"]["mode"] == 0
    assert "/mine" not in by_path and "/ro/file" not in by_path and "/locked/x" in by_path
    assert list(by_path) == sorted(by_path)

    proc = run_as_nobody(nobody_dir, "remove")
    assert proc.returncode == 0, proc.stderr
    assert not root.exists()


def test_no_fd_leaks_on_success_or_failure(tmp_path: Path) -> None:
    gc.collect()  # what earlier tests left for the collector (idle connections) goes first
    before = len(os.listdir("/proc/self/fd"))
    deep = tar_layer(*[F(f"d{i % 20}/" + "/".join(["x"] * 8) + f"/f{i}") for i in range(150)])
    for n in range(2):
        unpack(sources(compress(deep, "gzip")), [sha256(deep)], tmp_path / f"ok{n}")
        with pytest.raises(DigestMismatch):
            unpack(sources(compress(deep, "gzip")), [sha256(L1)], tmp_path / f"bad{n}")
        with pytest.raises(LayerError):
            unpack(sources(compress(deep, "gzip")[:-100]), [sha256(deep)], tmp_path / "t")
    assert len(os.listdir("/proc/self/fd")) == before
