"""Oracle: the tree unpack() makes equals the one ``umoci unpack`` makes (as root).

Compared per path: type, mode, uid/gid, size, content hash, link target, device numbers
and xattrs. Only BUNDLE/rootfs of umoci's output is compared (not its mtree or config).
"""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from fixtures import hostile
from fixtures.distro import distro_tar
from fixtures.images import (D, E, F, H, L, OPQ, WH, build_image, busybox_entries, tar_layer,
                             write_oci_layout)
from puller.unpack import unpack

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("umoci"),
                                reason="needs root and umoci")
CAP = b"\x01\x00\x00\x02" + b"\x00\x20\x00\x00" + bytes(12)


def snapshot(root: Path) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            kind = stat.S_IFMT(st.st_mode)
            extra: object = None
            if stat.S_ISREG(kind):
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
                extra = (st.st_size, h.hexdigest())
            elif stat.S_ISLNK(kind):
                extra = os.readlink(p)
            elif stat.S_ISCHR(kind) or stat.S_ISBLK(kind):
                extra = (os.major(st.st_rdev), os.minor(st.st_rdev))
            xattrs = tuple(sorted((k, os.getxattr(p, k, follow_symlinks=False))
                                  for k in os.listxattr(p, follow_symlinks=False)))
            out[os.path.relpath(p, root)] = (kind, stat.S_IMODE(st.st_mode), st.st_uid,
                                             st.st_gid, extra, xattrs)
    return out


def check_same_as_umoci(tmp_path: Path, layers: list[bytes]) -> int:
    image = build_image(layers, fmt="oci", compression="gzip")
    layout = write_oci_layout(tmp_path / "layout", {"test": image})
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:test", str(bundle)], check=True,
                   capture_output=True)
    ours = tmp_path / "ours"
    unpack([(lambda b=b: io.BytesIO(b)) for b in image.layers], image.diff_ids, ours)
    theirs, mine = snapshot(bundle / "rootfs"), snapshot(ours)
    only_theirs = sorted(set(theirs) - set(mine))
    only_mine = sorted(set(mine) - set(theirs))
    differ = {p: (theirs[p], mine[p]) for p in sorted(set(theirs) & set(mine))
              if theirs[p] != mine[p]}
    assert (only_theirs[:20], only_mine[:20], dict(list(differ.items())[:10])) == ([], [], {})
    return len(mine)


def test_multi_layer_image_with_whiteouts_opaque_dirs_type_changes_hardlinks(tmp_path: Path
                                                                             ) -> None:
    base = tar_layer(
        *busybox_entries(),
        D("opt"), D("opt/app"), F("opt/app/a", "a"), F("opt/app/b", "b"),
        D("var/lib"), D("var/lib/x"), F("var/lib/x/old1"), D("var/lib/x/deep"),
        F("var/lib/x/deep/old2"), F("todir", "was a file"), D("tofile"), F("tofile/in"),
        L("tolink", "bin"), F("etc/conf", "conf"), L("etc/conf-link", "conf"),
        D("sub", mode=0o700), F("sub/s", mode=0o600, uid=7, gid=8),
        F("usr/bin/suid", "x", mode=0o4755), F("usr/bin/sgid", "x", mode=0o2755, gid=50),
        D("var/tmp", mode=0o1777), F("etc/gshadow", "g", mode=0o000, gid=42),
        E("dev/null", kind="char", devmajor=1, devminor=3, mode=0o666),
        E("dev/loop0", kind="block", devmajor=7, devminor=0, mode=0o660, gid=6),
        E("run/initctl", kind="fifo", mode=0o600),
        F("usr/share/doc/long/" + "n" * 150, "long name"), F("ext", "x", xattrs={"user.k": "v"}))
    upper = tar_layer(
        WH("opt/app/a"), F("var/lib/x/new", "n"), OPQ("var/lib/x"), D("todir"),
        F("todir/in", "now a dir"), F("tofile", "now a file"), F("tolink", "now a file"),
        L("etc/conf", "conf-link-target"), H("bin/newsh", "bin/busybox"),
        D("sub", mode=0o755, uid=5, gid=5), H("usr/bin/suid2", "usr/bin/suid"),
        H("etc/hardlink-no-parent-entry/x", "etc/conf-link"), WH("bin/ls"), F("bin/ls", "mine"),
        D("dev", mode=0o755))
    cap = hostile.without_end(tar_layer(WH("bin/ping"))) + hostile.pax(
        {"SCHILY.xattr.security.capability": CAP, "SCHILY.xattr.user.note": b"n"}
    ) + hostile.member("bin/ping", b"elf", mode=0o755) + hostile.END
    third = tar_layer(WH("var/lib/x/new"), F("opt/app/a", "back"), WH("dev/loop0"), OPQ("sub"))
    assert check_same_as_umoci(tmp_path, [base, upper, cap, third]) > 60


def test_distribution_sized_image(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
                                  ) -> None:
    cache = tmp_path_factory.getbasetemp() / "distro-cache"
    cache.mkdir(exist_ok=True)
    tar = distro_tar(cache)
    assert len(tar) > 30 << 20
    second = tar_layer(WH("usr/share/perl"), OPQ("etc/default"), F("etc/default/new", "x"),
                       H("usr/sbin/hardlink-to-lower", "usr/sbin/nologin"))
    assert check_same_as_umoci(tmp_path, [tar, second]) > 2000
