"""The layer applier: OCI changeset semantics, and a regression test per attack class.

Layers are applied through :func:`puller.unpack.unpack` (the public entry point) into a
fresh directory; the attack tests put a canary directory beside the rootfs and check that
nothing outside the rootfs changed.
"""
from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from fixtures import hostile
from fixtures.images import D, E, F, H, L, OPQ, WH, compress, sha256, tar_layer
from puller.errors import DiskFull, LayerError, LimitExceeded, UnsafeLayer
from puller.layer.applier import remove_tree
from puller.layer.reader import Limits
from puller.unpack import unpack

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def apply(dest: Path, *tars: bytes, how: str = "gzip", **kw) -> Path:
    blobs = [compress(t, how) for t in tars]
    unpack([(lambda b=b: io.BytesIO(b)) for b in blobs], [sha256(t) for t in tars], dest, **kw)
    return dest


def tree(root: Path) -> dict[str, tuple]:
    """path -> (type, mode, uid, gid, content or link target), never following symlinks."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                what = ("symlink", os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                what = ("file", p.read_bytes())
            elif stat.S_ISDIR(st.st_mode):
                what = ("dir", None)
            else:
                what = ("other", st.st_rdev)
            out[rel] = (what[0], stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, what[1])
    return out


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    """A directory outside the rootfs that no layer may touch."""
    c = tmp_path / "outside"
    c.mkdir()
    (c / "victim").write_text("precious")
    (c / "sub").mkdir()
    (c / "sub" / "file").write_text("also precious")
    return c


def assert_canary_intact(c: Path) -> None:
    assert sorted(p.name for p in c.rglob("*")) == ["file", "sub", "victim"]
    assert (c / "victim").read_text() == "precious"
    assert (c / "sub" / "file").read_text() == "also precious"


# --- semantics ----------------------------------------------------------------------------

def test_whiteout_deletes_file_and_tree_of_lower_layers(tmp_path: Path) -> None:
    root = apply(tmp_path / "r",
                 tar_layer(D("etc"), F("etc/a", "a"), F("etc/b", "b"), D("opt"), D("opt/x"),
                           F("opt/x/y")),
                 tar_layer(WH("etc/a"), WH("opt"), WH("does/not/exist")))
    assert sorted(tree(root)) == ["etc", "etc/b"]


def test_own_whiteouts_do_not_hide_same_layer_entries(tmp_path: Path) -> None:
    root = apply(tmp_path / "r", tar_layer(F("a", "lower"), F("b", "lower")),
                 tar_layer(F("a", "upper"), WH("a"), WH("b"), F("b", "new")))
    t = tree(root)
    assert t["a"][4] == b"upper" and t["b"][4] == b"new"


@pytest.mark.parametrize("opq_first", [True, False])
def test_opaque_applies_first_wherever_it_stands(tmp_path: Path, opq_first: bool) -> None:
    upper = [D("d"), F("d/new", "n"), D("d/sub"), F("d/sub/n2")]
    upper = [OPQ("d"), *upper] if opq_first else [*upper, OPQ("d")]
    root = apply(tmp_path / "r",
                 tar_layer(D("d"), F("d/old"), D("d/sub"), F("d/sub/old"), F("keep")),
                 tar_layer(*upper))
    assert sorted(tree(root)) == ["d", "d/new", "d/sub", "d/sub/n2", "keep"]


def test_opaque_at_root_and_markers_never_materialise(tmp_path: Path) -> None:
    root = apply(tmp_path / "r", tar_layer(F("a"), D("b"), F("b/c")),
                 tar_layer(F("z"), hostile_opaque_root()))
    assert sorted(tree(root)) == ["z"]


def hostile_opaque_root() -> object:
    return F(".wh..wh..opq")


@pytest.mark.parametrize("name", [".wh.", ".wh..", ".wh...", "d/.wh..", "d/.wh...",
                                  "d/.wh..wh.plnk"])
def test_invalid_whiteout_names_are_refused_not_delete_parent(tmp_path: Path, name: str
                                                               ) -> None:
    lower = tar_layer(D("d"), F("d/f"))
    bad = hostile.archive(hostile.member(name))
    with pytest.raises(UnsafeLayer):
        apply(tmp_path / "r", lower, bad)
    assert not (tmp_path / "r").exists()


def test_dir_over_dir_merges_and_takes_new_attributes(tmp_path: Path) -> None:
    root = apply(tmp_path / "r", tar_layer(D("d", mode=0o700), F("d/a")),
                 tar_layer(D("d", mode=0o750, uid=5, gid=6), F("d/b")))
    t = tree(root)
    assert t["d"][:4] == ("dir", 0o750, 5, 6) and {"d/a", "d/b"} <= t.keys()


@pytest.mark.parametrize("lower,upper,kind", [
    ([F("x", "file")], [D("x"), F("x/in")], "dir"),
    ([D("x"), F("x/in")], [L("x", "target")], "symlink"),
    ([L("x", "/etc/passwd")], [F("x", "new")], "file"),
    ([D("x"), D("x/deep"), F("x/deep/f")], [F("x", "new")], "file"),
    ([F("x")], [E("x", kind="fifo")], "other"),
])
def test_other_replacements_remove_the_old_entry(tmp_path: Path, lower, upper, kind) -> None:
    t = tree(apply(tmp_path / "r", tar_layer(*lower), tar_layer(*upper)))
    assert t["x"][0] == kind
    if kind != "dir":
        assert not any(p.startswith("x/") for p in t)


def test_file_replacing_a_hardlinked_file_does_not_write_through(tmp_path: Path) -> None:
    root = apply(tmp_path / "r", tar_layer(F("a", "old"), H("b", "a")),
                 tar_layer(F("b", "new")))
    assert (root / "a").read_text() == "old" and (root / "b").read_text() == "new"


def test_hardlinks_to_lower_layers_and_without_parent_entry(tmp_path: Path) -> None:
    root = apply(tmp_path / "r", tar_layer(D("bin"), F("bin/busybox", "bb", mode=0o755)),
                 tar_layer(H("bin/sh", "bin/busybox"), H("usr/sbin/deep/ls", "bin/busybox")))
    a, b, c = (os.lstat(root / p) for p in ("bin/busybox", "bin/sh", "usr/sbin/deep/ls"))
    assert a.st_ino == b.st_ino == c.st_ino and a.st_nlink == 3
    assert stat.S_IMODE(os.lstat(root / "usr/sbin").st_mode) == 0o755


def test_hardlink_to_missing_target_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(LayerError, match="does not exist"):
        apply(tmp_path / "r", tar_layer(H("a", "nothing")))


@root_only
def test_devices_fifos_modes_and_owners_as_root(tmp_path: Path) -> None:
    root = apply(tmp_path / "r", tar_layer(
        D("dev"), E("dev/null", kind="char", devmajor=1, devminor=3, mode=0o666),
        E("dev/sda", kind="block", devmajor=8, devminor=0, mode=0o660, gid=6),
        E("run-fifo", kind="fifo", mode=0o620),
        F("suid", mode=0o4755, uid=0), F("sgid", mode=0o2711, uid=3, gid=4),
        D("tmp", mode=0o1777), F("gshadow", mode=0o000, gid=42)))
    st = os.lstat(root / "dev/null")
    assert stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 1 and os.minor(st.st_rdev) == 3
    assert stat.S_IMODE(st.st_mode) == 0o666
    st = os.lstat(root / "dev/sda")
    assert stat.S_ISBLK(st.st_mode) and st.st_gid == 6 and stat.S_IMODE(st.st_mode) == 0o660
    assert stat.S_ISFIFO(os.lstat(root / "run-fifo").st_mode)
    t = tree(root)
    assert t["suid"][1] == 0o4755 and t["sgid"][1:4] == (0o2711, 3, 4)
    assert t["tmp"][1] == 0o1777 and t["gshadow"][1:4] == (0, 0, 42)


def test_mtimes_of_files_symlinks_and_directories_after_content(tmp_path: Path) -> None:
    root = apply(tmp_path / "r", tar_layer(D("d", mtime=1000), F("d/f", mtime=2000),
                                           L("d/l", "f", mtime=3000), D("d/e", mtime=4000),
                                           F("d/e/g", mtime=5000)))
    assert os.lstat(root / "d").st_mtime == 1000
    assert os.lstat(root / "d/f").st_mtime == 2000
    assert os.lstat(root / "d/l").st_mtime == 3000
    assert os.lstat(root / "d/e").st_mtime == 4000


def test_pax_mtime_keeps_nanoseconds(tmp_path: Path) -> None:
    layer = hostile.archive(hostile.pax({"mtime": "1600000000.123456789"}),
                            hostile.member("f", b"x"))
    root = apply(tmp_path / "r", layer)
    assert os.lstat(root / "f").st_mtime_ns == 1_600_000_000_123_456_789


CAP_NET_RAW = b"\x01\x00\x00\x02" + b"\x00\x20\x00\x00" + bytes(12)


@root_only
def test_xattrs_incl_security_capability_as_root(tmp_path: Path) -> None:
    layer = hostile.archive(
        hostile.pax({"SCHILY.xattr.security.capability": CAP_NET_RAW,
                     "SCHILY.xattr.user.note": b"hello"}),
        hostile.member("ping", b"\x7fELF", mode=0o755),
        hostile.pax({"SCHILY.xattr.user.dir": b"d"}), hostile.member("dir", kind=b"5"))
    root = apply(tmp_path / "r", layer)
    assert os.getxattr(root / "ping", "security.capability") == CAP_NET_RAW
    assert os.getxattr(root / "ping", "user.note") == b"hello"
    assert os.getxattr(root / "dir", "user.dir") == b"d"


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_long_names_and_link_names(tmp_path: Path, fmt: int) -> None:
    deep = "/".join(["n" * 250] * 20)  # 5 KB: more than PATH_MAX would allow as one string
    root = apply(tmp_path / "r", tar_layer(F(f"{deep}/f", "x"), L(f"{deep}/l", "t" * 400),
                                           H(f"{deep}/h", f"{deep}/f"), fmt=fmt))
    fd = os.open(root, os.O_RDONLY)
    try:
        for part in deep.split("/"):
            nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        assert os.readlink("l", dir_fd=fd) == "t" * 400
        assert os.stat("h", dir_fd=fd).st_nlink == 2
    finally:
        os.close(fd)
    remove_tree(root)
    assert not root.exists()


@pytest.mark.parametrize("fmt", ["gnu", "pax-0.0", "pax-0.1", "pax-1.0"])
def test_sparse_files_are_written_as_holes(tmp_path: Path, fmt: str) -> None:
    tar, content = hostile.gnu_sparse_tar(fmt, size=16 << 20)
    root = apply(tmp_path / "r", tar, how="none")
    st = os.lstat(root / "sparse.bin")
    assert st.st_size == len(content) and (root / "sparse.bin").read_bytes() == content
    assert st.st_blocks * 512 < len(content) // 4


def test_same_layer_twice_is_applied_twice(tmp_path: Path) -> None:
    add, remove = tar_layer(F("a", "1")), tar_layer(WH("a"))
    root = apply(tmp_path / "r", add, remove, add)
    assert (root / "a").read_text() == "1"


def test_root_entry_sets_root_attributes(tmp_path: Path) -> None:
    root = apply(tmp_path / "r", tar_layer(D(".", mode=0o750), F("a")))
    assert stat.S_IMODE(os.lstat(root).st_mode) == 0o750


def test_umask_does_not_change_modes(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        root = apply(tmp_path / "r", tar_layer(D("d", mode=0o775), F("d/f", mode=0o666),
                                               H("x/h", "d/f")))
    finally:
        os.umask(old)
    t = tree(root)
    assert (t["d"][1], t["d/f"][1], t["x"][1]) == (0o775, 0o666, 0o755)


# --- attacks ------------------------------------------------------------------------------

def test_dotdot_and_absolute_names_stay_inside(tmp_path: Path, canary: Path) -> None:
    layer = hostile.archive(hostile.member("../outside/victim", b"pwned"),
                            hostile.member("../../../../../outside/new", b"pwned"),
                            hostile.member(f"{canary}/abs", b"pwned"),
                            hostile.member("a/../../outside/sub/file", b"pwned"))
    root = apply(tmp_path / "r", layer)
    assert_canary_intact(canary)
    assert (root / "outside/victim").read_bytes() == b"pwned"
    assert (root / str(canary).lstrip("/") / "abs").exists()


@pytest.mark.parametrize("target", ["CANARY", "../../../../../../CANARY_REL", "/"])
def test_symlink_then_write_within_a_layer(tmp_path: Path, canary: Path, target: str) -> None:
    target = target.replace("CANARY_REL", str(canary).lstrip("/")).replace("CANARY", str(canary))
    layer = tar_layer(L("evil", target), F("evil/victim", "pwned"), F("evil/sub/file", "x"))
    try:
        apply(tmp_path / "r", layer)
    except LayerError:
        pass
    assert_canary_intact(canary)


def test_symlink_then_write_across_layers(tmp_path: Path, canary: Path) -> None:
    try:
        apply(tmp_path / "r", tar_layer(L("evil", str(canary))),
              tar_layer(F("evil/victim", "pwned")))
    except LayerError:
        pass
    assert_canary_intact(canary)


def test_writes_through_inroot_symlinks_land_inside(tmp_path: Path, canary: Path) -> None:
    """A symlinked parent resolves as in a chroot: ``/etc -> /real`` writes into ./real."""
    root = apply(tmp_path / "r", tar_layer(D("real"), L("etc", "/real"),
                                           L("up", "../../../../real")),
                 tar_layer(F("etc/passwd", "p"), F("up/group", "g")))
    assert (root / "real/passwd").read_text() == "p" and (root / "real/group").exists()
    assert_canary_intact(canary)


def test_file_over_symlink_replaces_the_link(tmp_path: Path, canary: Path) -> None:
    root = apply(tmp_path / "r", tar_layer(L("victim", str(canary / "victim"))),
                 tar_layer(F("victim", "pwned", mode=0o777)))
    assert_canary_intact(canary)
    assert (root / "victim").read_text() == "pwned" and not (root / "victim").is_symlink()


@pytest.mark.parametrize("name", [".", "/", "./", "a/.."])
def test_symlink_named_dot_or_slash_is_refused(tmp_path: Path, canary: Path, name: str) -> None:
    layer = hostile.archive(hostile.member(name, kind=b"2", link=str(canary)))
    with pytest.raises(UnsafeLayer):
        apply(tmp_path / "r", layer, tar_layer(F("victim", "pwned")))
    assert_canary_intact(canary)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("link", ["../../../../../etc/passwd", "/etc/passwd", "esc/passwd"])
def test_hardlinks_out_of_the_root(tmp_path: Path, link: str) -> None:
    before = os.stat("/etc/passwd").st_nlink
    layer = tar_layer(L("esc", "/etc"), H("h", link))
    with pytest.raises(LayerError):
        apply(tmp_path / "r", layer)
    assert os.stat("/etc/passwd").st_nlink == before
    assert not (tmp_path / "r").exists()


def test_hardlink_to_an_inroot_symlink_links_the_symlink(tmp_path: Path, canary: Path) -> None:
    root = apply(tmp_path / "r", tar_layer(L("s", str(canary / "victim")), H("h", "s")))
    assert os.readlink(root / "h") == str(canary / "victim")
    assert os.lstat(root / "h").st_ino == os.lstat(root / "s").st_ino


def test_whiteouts_through_symlinks(tmp_path: Path, canary: Path) -> None:
    root = apply(tmp_path / "r", tar_layer(L("lnk", str(canary)), L("rel", "../../outside")),
                 tar_layer(WH("lnk/victim"), WH("rel/sub"), WH("lnk/sub/file")))
    assert_canary_intact(canary)
    root = apply(tmp_path / "r2", tar_layer(L("lnk", str(canary))), tar_layer(WH("lnk")))
    assert_canary_intact(canary)
    assert not (root / "lnk").exists()


def test_directory_replaced_by_symlink_then_written_under(tmp_path: Path, canary: Path
                                                         ) -> None:
    try:
        apply(tmp_path / "r", tar_layer(D("d"), F("d/a")), tar_layer(L("d", str(canary))),
              tar_layer(F("d/victim", "pwned"), F("d/sub/file", "pwned")))
    except LayerError:
        pass
    assert_canary_intact(canary)
    try:  # the same within one layer
        apply(tmp_path / "r2", tar_layer(D("d"), L("d", str(canary)), F("d/victim", "pwned")))
    except LayerError:
        pass
    assert_canary_intact(canary)


def test_opaque_marker_in_a_symlinked_directory(tmp_path: Path, canary: Path) -> None:
    apply(tmp_path / "r", tar_layer(L("d", str(canary)), L("e", "../../outside")),
          tar_layer(OPQ("d"), OPQ("e")))
    assert_canary_intact(canary)


def test_tar_bomb_of_entries(tmp_path: Path) -> None:
    layer = tar_layer(*[F(f"f{i}") for i in range(50)])
    with pytest.raises(LimitExceeded, match="max_entries"):
        apply(tmp_path / "r", layer, limits=Limits(max_entries=20))
    assert not (tmp_path / "r").exists()
    assert list(tmp_path.iterdir()) == []


def test_decompression_bomb(tmp_path: Path) -> None:
    bomb = hostile.zero_bomb(64 << 20)
    with pytest.raises(LimitExceeded, match="max_bytes"):
        unpack([lambda: io.BytesIO(bomb)], ["sha256:" + "0" * 64], tmp_path / "r",
               limits=Limits(max_bytes=16 << 20))
    assert list(tmp_path.iterdir()) == []


def test_depth_and_path_bombs(tmp_path: Path) -> None:
    with pytest.raises(LimitExceeded):
        apply(tmp_path / "r", tar_layer(F("/".join(["d"] * 100))), limits=Limits(max_depth=50))
    with pytest.raises(LimitExceeded):
        apply(tmp_path / "r", tar_layer(F("x" * 5000)), limits=Limits(max_path=4096))


class FakeStatvfs:
    def __init__(self, avail: int, total: int = 10 << 30) -> None:
        self.f_frsize, self.f_blocks, self.f_bavail = 4096, total // 4096, avail // 4096


def test_free_space_is_checked_before_writing(tmp_path: Path, monkeypatch) -> None:
    import puller.layer.applier as applier_mod
    monkeypatch.setattr(applier_mod.os, "fstatvfs", lambda fd: FakeStatvfs(100 << 20))
    with pytest.raises(DiskFull, match="1024 MiB would remain"):
        apply(tmp_path / "r", tar_layer(F("a", "x")))
    assert list(tmp_path.iterdir()) == []


def test_free_space_margin_counts_what_is_written(tmp_path: Path, monkeypatch) -> None:
    """10 % of a 10 GiB file system is kept free: 1.1 GiB free leaves ~100 MiB to write."""
    import puller.layer.applier as applier_mod

    def used() -> int:  # the fake file system shrinks as the unpack writes
        return sum(p.lstat().st_blocks * 512 for p in tmp_path.rglob("*"))
    monkeypatch.setattr(applier_mod.os, "fstatvfs", lambda fd: FakeStatvfs((1100 << 20) - used()))
    apply(tmp_path / "ok", tar_layer(F("small", bytes(1 << 20))))
    with pytest.raises(DiskFull):
        apply(tmp_path / "r", tar_layer(F("a", bytes(60 << 20)), F("b", bytes(60 << 20))))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok"]


# --- remove_tree --------------------------------------------------------------------------

def test_remove_tree_does_not_follow_symlinks(tmp_path: Path, canary: Path) -> None:
    root = apply(tmp_path / "r", tar_layer(L("out", str(canary)), L("rel", "../outside"),
                                           D("d", mode=0o555), F("d/f", mode=0),
                                           D("d/e", mode=0)))
    remove_tree(root)
    assert not root.exists()
    assert_canary_intact(canary)
    link = tmp_path / "link"
    link.symlink_to(canary)
    remove_tree(link)
    assert not link.exists() and canary.exists()
    remove_tree(tmp_path / "missing")


def test_remove_tree_of_a_very_deep_tree(tmp_path: Path) -> None:
    root = apply(tmp_path / "r", tar_layer(F("/".join(["d"] * 600) + "/f")))
    remove_tree(root)
    assert not root.exists()


# --- order with files written by worker threads -------------------------------------------

def test_same_path_twice_in_a_layer_last_wins(tmp_path: Path) -> None:
    root = apply(tmp_path / "r", tar_layer(F("a", "1"), F("a", "2"), F("b", "x"), D("b"),
                                           F("b/in"), F("c/f"), L("c", "b"), F("e", "e"),
                                           H("h", "e")))
    t = tree(root)
    assert t["a"][4] == b"2" and t["b"][0] == "dir" and t["c"][:1] == ("symlink",)
    assert "c/f" not in t and os.lstat(root / "h").st_ino == os.lstat(root / "e").st_ino


def test_many_files_then_whiteouts_in_the_same_and_next_layer(tmp_path: Path) -> None:
    files = [F(f"d{i % 7}/f{i}", str(i)) for i in range(500)]
    root = apply(tmp_path / "r", tar_layer(*files, WH("d3"), OPQ("d4")),
                 tar_layer(WH("d5"), OPQ("d6"), F("d6/new")))
    t = tree(root)
    assert sum(p.startswith("d3/") for p in t) == len(range(3, 500, 7))  # same layer: kept
    assert sum(p.startswith("d4/") for p in t) == len(range(4, 500, 7))
    assert "d5" not in t and [p for p in t if p.startswith("d6/")] == ["d6/new"]
    assert t["d0/f0"][4] == b"0" and t["d1/f498"][4] == b"498"


def test_serial_and_threaded_applies_agree(tmp_path: Path) -> None:
    import puller.layer.applier as applier_mod
    from puller.layer.applier import Applier
    from puller.layer.reader import LayerReader
    layers = [tar_layer(*[F(f"x/{i % 5}/f{i}", str(i), mode=0o600 + i % 8) for i in range(300)],
                        H("x/h", "x/1/f1"), D("x/2", mode=0o700)),
              tar_layer(WH("x/0"), F("x/1/f1", "new"), L("x/3", "2"))]
    trees = []
    for workers in (1, 4):
        dest = tmp_path / f"w{workers}"
        dest.mkdir()
        fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with Applier(fd, workers=workers) as ap:
                for t in layers:
                    ap.apply(LayerReader(io.BytesIO(t)))
        finally:
            os.close(fd)
        trees.append(tree(dest))
    assert trees[0] == trees[1] and applier_mod._ASYNC_BATCH > 1


def test_directory_attributes_never_reach_through_a_later_symlink(tmp_path: Path,
                                                                  canary: Path) -> None:
    before = os.lstat(canary)
    apply(tmp_path / "r", tar_layer(D("d", mode=0o777, uid=123, mtime=5), L("d", str(canary)),
                                    D("e", mode=0o700), L("e", "../../outside")),
          tar_layer(F("z")))
    after = os.lstat(canary)
    assert (after.st_mode, after.st_uid, after.st_mtime_ns) == (before.st_mode, before.st_uid,
                                                                before.st_mtime_ns)
    assert_canary_intact(canary)


@root_only
def test_remove_tree_does_not_cross_mount_points(tmp_path: Path, canary: Path) -> None:
    """A bind mount left inside a rootfs (a crashed container) is never emptied."""
    import subprocess
    from puller.errors import UnpackError
    root = apply(tmp_path / "r", tar_layer(D("mnt"), D("etc"), F("etc/x")))
    if subprocess.run(["mount", "--bind", str(canary), str(root / "mnt")]).returncode:
        pytest.skip("cannot bind mount here")
    try:
        with pytest.raises(UnpackError, match="mount point"):
            remove_tree(root)
        assert_canary_intact(canary)
    finally:
        subprocess.run(["umount", str(root / "mnt")], check=True)
    remove_tree(root)
    assert not root.exists()


def test_symlink_loops_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsafeLayer, match="symlinks"):
        apply(tmp_path / "r", tar_layer(L("a", "b"), L("b", "a"), F("a/x")))
    assert list(tmp_path.iterdir()) == []


def test_non_utf8_names_keep_their_bytes(tmp_path: Path) -> None:
    layer = hostile.archive(hostile.member(b"caf\xe9", b"latin-1"),
                            hostile.member(b"d\xff/f", b"x"))
    root = apply(tmp_path / "r", layer)
    assert sorted(os.listdir(os.fsencode(root))) == [b"caf\xe9", b"d\xff"]
    assert (root / os.fsdecode(b"caf\xe9")).read_bytes() == b"latin-1"
