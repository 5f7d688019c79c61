"""``puller layers / ls / cat / which / diff`` against the test registry, and the oracle:
``puller diff --json A B`` equals the difference of the trees that ``puller.unpack.unpack``
(and ``umoci unpack``) make of A and B, computed here by walking both trees."""
from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from fixtures.catalog import catalog
from fixtures.images import WH, D, E, F, H, L, build_image, tar_layer, write_oci_layout
from puller.cli.compare import bar, escape
from puller.cli.entry import main
from puller.compare import diff
from puller.compare_sources import docker_archive
from puller.image import lookup_ref, resolve
from puller.platform import parse_platform
from puller.reference import parse
from puller.store import Store
from tests.test_compare import image_input

AMD64 = "linux/amd64"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    out, err = capsys.readouterr()
    return code, out, err


def lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.fixture
def puller(capsys, cache_dir):
    """``puller(*args)`` -> (exit code, stdout, stderr), on the test's cache, amd64."""
    def call(*args: str) -> tuple[int, str, str]:
        return run(capsys, args[0], *args[1:], "--cache", str(cache_dir), "--platform", AMD64)
    return call


def ref(registry, name: str) -> str:
    return f"{registry.host}/library/{name}"


# --- layers, ls, cat, which -------------------------------------------------------------

def test_layers_json_lists_sizes_changes_and_wasted_bytes(registry, puller):
    code, out, _ = puller("layers", ref(registry, "busybox:multi"), "--json")
    assert code == 0
    doc = json.loads(out)
    rows = doc["layers"]
    assert [r["index"] for r in rows] == [1, 2, 3, 4]
    assert [r["wasted_bytes"] for r in rows] == [0, 47, 0, 0]
    assert rows[2]["added"]["count"] == 5 and rows[2]["deleted"]["count"] == 7
    assert rows[2]["deleted"]["whiteouts"] == 2 and rows[2]["deleted"]["opaques"] == 1
    assert rows[0]["created_by"] == "/bin/sh -c #(nop) layer 1"
    assert all(r["diff_id"].startswith("sha256:") and r["size"] > 0 for r in rows)
    assert doc["summary"]["wasted_bytes"] == 47
    assert doc["summary"]["efficiency"] == pytest.approx(1 - 47 / doc["summary"]["total_bytes"])
    assert doc["wasted_paths"][0] == {"path": "/f2d", "bytes": 15, "times": 1}


def test_layers_human_output_and_offline_use_of_the_cache(registry, puller):
    image = ref(registry, "alpine:3.11")
    code, out, _ = puller("layers", image)
    assert code == 0
    assert "CREATED BY" in out and "efficiency" in out and "/etc/motd" in out
    assert "+1 ~1 -1" in out  # layer 2: alpine-release; os-release (etc/ unchanged); motd
    code, offline_out, _ = puller("layers", image, "--offline")
    assert code == 0 and offline_out == out


def test_offline_without_the_image_cached_is_an_error(registry, puller):
    code, _, err = puller("layers", ref(registry, "alpine:3.10"), "--offline")
    assert code == 1 and "not in the cache" in err
    code, _, err = puller("diff", ref(registry, "alpine:3.10"), ref(registry, "alpine:3.11"),
                          "--offline")
    assert code == 2 and err.count("\n") == 1


def test_ls_lists_the_merged_view_and_one_layers_entries(registry, puller):
    image = ref(registry, "alpine:3.11")
    code, out, _ = puller("ls", image, "/etc")
    assert code == 0
    assert out.split() == ["alpine-release", "group", "os-release", "passwd"]
    code, out, _ = puller("ls", image, "/etc", "--layer", "2", "--json")
    entries = {(e["path"], e["type"]) for e in lines(out)}
    assert entries == {("/etc", "dir"), ("/etc/os-release", "file"),
                       ("/etc/alpine-release", "file"), ("/etc/motd", "whiteout")}
    code, out, _ = puller("ls", "-l", image, "/bin")
    assert code == 0
    assert any(line.startswith("-rwxr-xr-x") and line.endswith(" busybox")
               for line in out.splitlines())
    assert "sh => /bin/busybox" in out
    code, _, err = puller("ls", image, "/etc/motd")
    assert code == 1 and "does not exist" in err


def test_cat_reads_the_file_from_the_right_layer(registry, puller):
    image = ref(registry, "alpine:3.11")
    code, out, _ = puller("cat", image, "/etc/os-release")
    assert code == 0 and "VERSION_ID=3.11" in out
    code, out, _ = puller("cat", image, "etc/passwd", "--json")
    doc = json.loads(out)
    assert doc["layer"] == 1 and doc["content_base64"]
    code, _, err = puller("cat", image, "/etc/motd")
    assert code == 1 and "does not exist" in err


def test_which_names_the_layers_that_wrote_and_deleted_a_path(registry, puller):
    code, out, _ = puller("which", ref(registry, "alpine:3.11"), "/etc/motd", "--json")
    assert code == 0
    events = json.loads(out)["events"]
    assert [(e["layer"], e["action"], e["how"]) for e in events] == [
        (1, "added", None), (2, "deleted", "whiteout")]
    code, out, _ = puller("which", ref(registry, "alpine:3.11"), "/etc/os-release")
    assert [line.split()[:3] for line in out.splitlines()] == [
        ["layer", "1", "added"], ["layer", "2", "modified"]]
    code, _, _ = puller("which", ref(registry, "alpine:3.11"), "/nowhere")
    assert code == 1


# --- diff -------------------------------------------------------------------------------

def test_diff_exit_status_and_json_records(registry, puller):
    a, b = ref(registry, "alpine:3.10"), ref(registry, "alpine:3.11")
    code, out, _ = puller("diff", a, b, "--json")
    assert code == 1
    records = lines(out)
    changes = [(r["path"], r["status"], r["layer_a"], r["layer_b"])
               for r in records if r["record"] == "change"]
    assert changes == [("/etc/alpine-release", "added", None, 2),
                       ("/etc/motd", "removed", 1, 2),
                       ("/etc/os-release", "changed", 1, 2)]
    summary = records[-1]
    assert summary["record"] == "summary" and summary["same"] is False
    assert summary["shared_layers"] == 1 and summary["layers_read"] == 2
    assert any(r["record"] == "note" and "layer count" in r["text"] for r in records)
    offline_code, offline_out, _ = puller("diff", a, b, "--json", "--offline")
    assert offline_code == 1 and lines(offline_out)[:-1] == records[:-1]
    assert lines(offline_out)[-1]["layers_read"] == 0  # the scans came from the cache
    code, out, _ = puller("diff", a, a, "--json")
    assert code == 0 and lines(out)[-1]["same"] is True and lines(out)[-1]["layers_read"] == 0
    code, _, err = puller("diff", a, ref(registry, "nosuch:1"))
    assert code == 2 and err.startswith("puller: error:")


def test_diff_human_output_groups_folds_and_totals(registry, puller):
    code, out, _ = puller("diff", ref(registry, "busybox:latest"), ref(registry, "busybox:multi"))
    assert code == 1
    assert "Added (12):" in out
    assert "+ /opq/  1 entry below, 18 B" in out and "/opq/new" not in out
    assert out.rstrip().endswith("different")
    code, verbose, _ = puller("diff", ref(registry, "busybox:latest"),
                              ref(registry, "busybox:multi"), "-v")
    assert "/opq/new" in verbose


def test_diff_config_filter_only_and_layer_mode(registry, puller):
    code, out, _ = puller("diff", ref(registry, "alpine:3.10"), ref(registry, "config:1"),
                          "--json")
    config = {(r["field"], r["key"]) for r in lines(out) if r["record"] == "config"}
    assert {("Entrypoint", None), ("WorkingDir", None), ("User", None),
            ("Env", "GREETING"), ("Cmd", None)} <= config
    code, out, _ = puller("diff", ref(registry, "busybox:multi@2"),
                          ref(registry, "busybox:multi@3"), "--json", "--only", "changed",
                          "--filter", "/modeonly")
    changes = [r for r in lines(out) if r["record"] == "change"]
    assert code == 1 and [(c["path"], c["what"]) for c in changes] == [("/modeonly", ["mode"])]
    code, out, _ = puller("diff", "--layer", ref(registry, "busybox:multi@3"),
                          ref(registry, "busybox:multi@4"), "--json")
    statuses = {r["path"]: r["status"] for r in lines(out) if r["record"] == "change"}
    assert statuses["/.wh.l2file"] == "added" and statuses["/a/added-later"] == "added"
    code, _, err = puller("diff", "--layer", ref(registry, "busybox:multi"),
                          ref(registry, "busybox:multi@4"))
    assert code == 2 and "A@N B@M" in err
    code, _, _ = puller("diff", ref(registry, "busybox:multi@9"), ref(registry, "busybox:multi"))
    assert code == 2


def test_diff_of_an_oci_layout_and_a_docker_archive(tmp_path, puller):
    layers = [tar_layer(D("etc"), F("etc/hostname", "box\n")), tar_layer(F("app", "v1\n"))]
    other = [layers[0], tar_layer(F("app", "v2\n", 0o755))]
    write_oci_layout(tmp_path / "layout", {"one": build_image(layers, fmt="oci")})
    archive = _docker_archive(tmp_path / "img.tar", build_image(other), "example/app:2")
    code, out, _ = puller("diff", f"oci:{tmp_path / 'layout'}:one",
                          f"docker-archive:{archive}", "--json")
    changes = [(r["path"], r["what"]) for r in lines(out) if r["record"] == "change"]
    assert code == 1 and changes == [("/app", ["content", "mode"])]
    direct = docker_archive(archive)  # the built-in reader, without puller.archive
    assert [layer.diff_id for layer in direct.layers] == build_image(other).diff_ids
    one = image_input(build_image(layers, fmt="oci"))
    assert [(c.path, c.what) for c in diff(one, direct).changes] == [("app", ("content", "mode"))]
    zipped = tmp_path / "img.tar.gz"
    zipped.write_bytes(gzip.compress(archive.read_bytes()))  # docker save | gzip
    assert [(c.path, c.what) for c in diff(one, docker_archive(zipped)).changes] == [
        ("app", ("content", "mode"))]
    assert not any((tmp_path / "layout").glob("meta"))  # a user's layout is never written


def test_paths_are_printed_with_control_characters_escaped(tmp_path, puller):
    bad = "new\nline\x1b[31m"
    latin1 = b"caf\xe9".decode("utf-8", "surrogateescape")
    write_oci_layout(tmp_path / "layout", {"x": build_image(
        [tar_layer(F(bad, "x"), F("grüße", "ok"), F(latin1, "l1"))], fmt="oci")})
    code, out, _ = puller("ls", f"oci:{tmp_path / 'layout'}:x")
    assert code == 0
    assert out.splitlines() == ["caf\\xe9", "grüße", "new\\nline\\x1b[31m"]
    assert escape("tab\there") == "tab\\there"


def test_bar_shows_the_share_in_eighths():
    assert bar(1.0, 4) == "████" and bar(0.0, 4) == "    "
    assert bar(0.5, 3) == "█▌ " and bar(0.25, 1) == "▎" and bar(0.0001, 2) == "▏ "


# --- the oracle -------------------------------------------------------------------------

PAIRS = [("alpine:3.10", "alpine:3.11"), ("alpine:3.11", "alpine:3.10"),
         ("busybox:latest", "busybox:multi"), ("busybox:multi@2", "busybox:multi@3"),
         ("busybox:multi@3", "busybox:multi"), ("shared-a:1", "shared-b:1"),
         ("mixed:1", "busybox:multi@2"), ("config:1", "alpine:3.10")]


def tree(root: Path) -> dict[str, dict]:
    """Every path under ``root`` with what a diff compares, read from the file system."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            kind = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink",
                    stat.S_IFCHR: "char", stat.S_IFBLK: "block",
                    stat.S_IFIFO: "fifo"}[stat.S_IFMT(st.st_mode)]
            info = {"type": kind, "mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid,
                    "gid": st.st_gid, "size": st.st_size if kind == "file" else 0,
                    "content": None, "link": os.readlink(p) if kind == "symlink" else "",
                    "device": (os.major(st.st_rdev), os.minor(st.st_rdev))
                    if kind in ("char", "block") else (0, 0),
                    "xattrs": sorted((k, os.getxattr(p, k, follow_symlinks=False))
                                     for k in os.listxattr(p, follow_symlinks=False))}
            if kind == "file":
                with open(p, "rb") as f:
                    info["content"] = hashlib.file_digest(f, "sha256").hexdigest()
            out[os.path.relpath(p, root)] = info
    return out


def tree_diff(a: dict[str, dict], b: dict[str, dict]) -> set[tuple[str, str, tuple[str, ...]]]:
    out = set()
    for path in a.keys() | b.keys():
        if path not in a:
            out.add(("/" + path, "added", ()))
        elif path not in b:
            out.add(("/" + path, "removed", ()))
        else:
            x, y = a[path], b[path]
            same_type = x["type"] == y["type"]
            what = tuple(k for k in ("type", "content", "size", "mode", "uid", "gid", "link",
                                     "device", "xattrs")
                         if x[k] != y[k]
                         and not (k == "content" and not same_type)  # files' bytes only
                         and not (k == "mode" and same_type and x["type"] == "symlink"))
            if what:
                out.add(("/" + path, "changed", what))
    return out


def _cached(cache: Path, name: str):
    base, _, upto = name.partition("@")
    store = Store(cache)
    img = resolve(store, lookup_ref(store, parse(base)), parse_platform(AMD64))
    n = int(upto) if upto else len(img.manifest.layers)
    return store, img, n


def unpack_tree(cache: Path, name: str, dest: Path) -> dict[str, dict]:
    from puller.unpack import unpack
    store, img, n = _cached(cache, name)
    unpack(img.layer_openers(store)[:n], img.diff_ids[:n], dest)
    return tree(dest)


def umoci_tree(cache: Path, name: str, work: Path) -> dict[str, dict]:
    """umoci's unpack of the image (its first N layers for NAME@N: a manifest and config
    cut to N layers are written beside the cached blobs)."""
    _, img, n = _cached(cache, name)
    layout = work / "layout"
    layout.mkdir(parents=True)
    shutil.copytree(cache / "blobs", layout / "blobs", copy_function=os.link)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    config = json.loads(img.config_raw)
    config["rootfs"]["diff_ids"] = config["rootfs"]["diff_ids"][:n]
    manifest = json.loads(img.manifest.raw)
    manifest["config"] = _put(layout, json.dumps(config).encode(), manifest["config"]["mediaType"])
    manifest["layers"] = manifest["layers"][:n]
    desc = _put(layout, json.dumps(manifest).encode(), img.manifest.media_type)
    desc["annotations"] = {"org.opencontainers.image.ref.name": "img"}
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [desc]}))
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:img", str(work / "bundle")],
                   check=True, capture_output=True)
    return tree(work / "bundle" / "rootfs")


def _put(layout: Path, data: bytes, media_type: str) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def _diff_json(puller, registry, a: str, b: str) -> set:
    code, out, _ = puller("diff", ref(registry, a), ref(registry, b), "--json")
    records = lines(out)
    ours = {(r["path"], r["status"], tuple(r["what"])) for r in records
            if r["record"] == "change"}
    assert (code == 0) == (not ours and not any(r["record"] == "config" for r in records))
    return ours


ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="unpacks keep owners only as root")


@ROOT
@pytest.mark.parametrize(("a", "b"), PAIRS)
def test_oracle_diff_equals_the_difference_of_puller_unpack_trees(registry, puller, cache_dir,
                                                                 tmp_path, a, b):
    ours = _diff_json(puller, registry, a, b)
    names = [f"{registry.host}/library/{x}" for x in (a, b)]
    expected = tree_diff(unpack_tree(cache_dir, names[0], tmp_path / "a"),
                         unpack_tree(cache_dir, names[1], tmp_path / "b"))
    assert ours == expected


@ROOT
@pytest.mark.skipif(not shutil.which("umoci"), reason="needs umoci")
@pytest.mark.parametrize(("a", "b"), [p for p in PAIRS if "mixed:1" not in p])  # umoci: no zstd
def test_oracle_diff_equals_the_difference_of_umoci_unpack_trees(registry, puller, cache_dir,
                                                                tmp_path, a, b):
    ours = _diff_json(puller, registry, a, b)
    names = [f"{registry.host}/library/{x}" for x in (a, b)]
    expected = tree_diff(umoci_tree(cache_dir, names[0], tmp_path / "a"),
                         umoci_tree(cache_dir, names[1], tmp_path / "b"))
    assert ours == expected
    if a.partition(":")[0] != "config":
        assert ours  # these pairs differ in their files: the comparison is not vacuous


# --- helpers ----------------------------------------------------------------------------

def _docker_archive(path: Path, image, tag: str) -> Path:
    """``docker save`` layout: manifest.json, the config, one <id>/layer.tar per layer."""
    raw_layers = [_gunzip(blob) for blob in image.layers]
    config_name = hashlib.sha256(image.config).hexdigest() + ".json"
    names = [f"{hashlib.sha256(t).hexdigest()}/layer.tar" for t in raw_layers]
    manifest = [{"Config": config_name, "RepoTags": [tag], "Layers": names}]
    with tarfile.open(path, "w") as tar:
        for name, data in [("manifest.json", json.dumps(manifest).encode()),
                           (config_name, image.config), *zip(names, raw_layers)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _gunzip(blob: bytes) -> bytes:
    return gzip.decompress(blob)


def test_layers_of_symlinks_only_image(tmp_path, puller):
    write_oci_layout(tmp_path / "l", {"x": build_image([tar_layer(L("a", "b"))], fmt="oci")})
    code, out, _ = puller("layers", f"oci:{tmp_path / 'l'}:x", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["summary"]["efficiency"] == 1.0 and doc["summary"]["entries"] == 1


def test_only_the_puller_cache_keeps_layer_scans(registry, puller, cache_dir, tmp_path):
    other = build_image([tar_layer(F("x", "x"))], fmt="oci")
    write_oci_layout(tmp_path / "layout", {"x": other})
    code, _, _ = puller("diff", ref(registry, "alpine:3.10"), f"oci:{tmp_path / 'layout'}:x")
    assert code == 1
    kept = {p.name.split(".")[0] for p in (cache_dir / "meta" / "compare").iterdir()}
    alpine = catalog()["library/alpine:3.10"].children[0]
    assert kept == {d.replace(":", "-") for d in alpine.layer_digests}
    assert not (tmp_path / "layout" / "meta").exists()


def test_lean_entry_point_parses_with_argparse(registry, cache_dir, capsys):
    from puller.cli.compare import main as compare_main
    image = ref(registry, "alpine:3.11")
    common = ["--cache", str(cache_dir), "--platform", AMD64]
    assert compare_main("ls", [image, "/etc", *common]) == 0
    assert capsys.readouterr().out.split() == ["alpine-release", "group", "os-release",
                                               "passwd"]
    assert compare_main("diff", [image, image, *common]) == 0
    capsys.readouterr()
    assert compare_main("diff", [image, image, "--bogus", *common]) == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
    assert compare_main("ls", [image, "--layer", "0", *common]) == 2
    assert compare_main("layers", [f"oci:{cache_dir}/nowhere", *common]) == 2
    assert "not an OCI image layout" in capsys.readouterr().err
    code, out, _ = run(capsys, "diff", "--help")
    assert code == 0 and "--only" in out and "--mtime" in out


EDGE_LOWER = tar_layer(D("real"), F("real/x", "base x"), L("alias", "real"), F("t", "target"),
                       D("d"), F("d/keep", "k"), D("w"), F("w/old", "o"), F("f", "file"))
EDGE_UPPER = tar_layer(
    F("alias/x", "through the symlink"),       # lands in real/x
    H("h", "t"), F("t", "replaced after link"),  # h keeps the old inode
    F("d", "dir became a file"),                 # the subtree goes
    WH("w"), D("w"), F("w/new", "n"),            # deleted and made again in one layer
    D("f"), F("f/inside", "file became dir"),
    F("deep/er/file", "parents made implicitly"),
    F("owned", "o", uid=1000, gid=50), F("xa", "x", xattrs={"user.note": "v"}),
    E("pipe", "fifo"), E("null", "char", devmajor=1, devminor=3))


@ROOT
@pytest.mark.skipif(not shutil.which("umoci"), reason="needs umoci")
def test_oracle_edge_cases_against_both_unpackers(tmp_path, puller):
    lower, upper = build_image([EDGE_LOWER], fmt="oci"), build_image([EDGE_LOWER, EDGE_UPPER],
                                                                     fmt="oci")
    layout = write_oci_layout(tmp_path / "layout", {"lower": lower, "upper": upper})
    code, out, _ = puller("diff", f"oci:{layout}:lower", f"oci:{layout}:upper", "--json")
    ours = {(r["path"], r["status"], tuple(r["what"])) for r in lines(out)
            if r["record"] == "change"}
    assert code == 1 and ("/real/x", "changed", ("content", "size")) in ours
    from puller.unpack import unpack
    trees = {}
    for name, img in (("lower", lower), ("upper", upper)):
        blobs = [layout / "blobs" / "sha256" / d.split(":")[1] for d in img.layer_digests]
        unpack([functools.partial(Path.open, b, "rb") for b in blobs], img.diff_ids,
               tmp_path / name)  # unpack closes what its openers return
        subprocess.run(["umoci", "unpack", "--image", f"{layout}:{name}",
                        str(tmp_path / f"u-{name}")], check=True, capture_output=True)
        trees[name] = (tree(tmp_path / name), tree(tmp_path / f"u-{name}" / "rootfs"))
    assert ours == tree_diff(trees["lower"][0], trees["upper"][0])  # puller unpack
    assert ours == tree_diff(trees["lower"][1], trees["upper"][1])  # umoci
