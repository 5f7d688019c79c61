"""save / load / export / import against the real registry fixture, with skopeo and umoci as
oracles for the formats (docker-archive, OCI archive, OCI layout)."""
from __future__ import annotations

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

from fixtures.catalog import MULTI_EXPECTED
from puller.archive import SaveItem, export, import_tar, load, save
from puller.errors import ArchiveError, DigestMismatch
from puller.image import CachedImage, lookup_ref, resolve
from puller.platform import Platform
from puller.pull import pull
from puller.reference import parse as parse_ref
from puller.registry import RegistryOptions
from puller.store import Store

AMD64 = Platform("linux", "amd64")
needs_skopeo = pytest.mark.skipif(not shutil.which("skopeo"), reason="needs skopeo")


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def cached(store: Store, text: str, *, registry=None) -> CachedImage:
    """``text`` from the cache, pulled from ``registry`` first when one is given."""
    ref = parse_ref(text)
    if registry is not None:
        pull(ref, store=store, platform=AMD64, options=RegistryOptions.build(config={}))
    img = resolve(store, lookup_ref(store, ref), AMD64)
    assert img is not None
    return img


def item(img: CachedImage) -> SaveItem:
    return SaveItem(img, (img.name,))


def cache_state(root: Path) -> dict[str, tuple]:
    """Everything of a cache that a load may change (its runtime rooms tmp/ and locks/ aside)."""
    out: dict[str, tuple] = {}
    if not root.exists():
        return out
    for dirpath, _, files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel.split(os.sep)[0] in ("tmp", "locks"):
            continue
        for name in files:
            p = Path(dirpath) / name
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns, sha256(p.read_bytes()))
    return out


def members(archive: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


@pytest.fixture
def source(registry, tmp_path) -> Store:
    """A cache holding alpine 3.10 and 3.11 (which share their first layer) and busybox:multi."""
    store = Store(tmp_path / "source")
    for name in ("library/alpine:3.10", "library/alpine:3.11", "library/busybox:multi",
                 "library/mixed:1"):
        cached(store, f"{registry.host}/{name}", registry=registry)
    return store


def test_docker_archive_is_docker_s_layout_and_shares_layers(registry, source, tmp_path):
    a = cached(source, f"{registry.host}/library/alpine:3.10")
    b = cached(source, f"{registry.host}/library/alpine:3.11")
    out = tmp_path / "images.tar"
    save([item(a), item(b)], out, store=source)
    files = members(out.read_bytes())
    manifest = json.loads(files["manifest.json"])
    assert [m["RepoTags"] for m in manifest] == [[f"{registry.host}/library/alpine:3.10"],
                                                 [f"{registry.host}/library/alpine:3.11"]]
    for entry, img in zip(manifest, (a, b)):
        assert sha256(files[entry["Config"]]) == img.manifest.config.digest
        # layers uncompressed, as docker save writes them: each file hashes to its DiffID
        assert [sha256(files[p]) for p in entry["Layers"]] == img.diff_ids
    assert manifest[0]["Layers"][0] == manifest[1]["Layers"][0]
    with tarfile.open(out) as tar:
        names = [m.name for m in tar]
    assert names.count(manifest[0]["Layers"][0]) == 1  # the shared layer is written once
    repos = json.loads(files["repositories"])
    assert repos[f"{registry.host}/library/alpine"]["3.11"] == b.diff_ids[-1].split(":")[1]
    # the uncompressed sizes were learnt and kept in the cache for the next save
    for layer, diff_id in zip(b.manifest.layers, b.diff_ids):
        assert source.get_meta(layer.digest)["diff_id"] == diff_id


@pytest.mark.parametrize("fmt", ["docker", "oci"])
def test_round_trip_into_an_empty_cache(registry, source, tmp_path, fmt):
    imgs = [cached(source, f"{registry.host}/library/{n}") for n in ("alpine:3.10", "alpine:3.11",
                                                                     "busybox:multi", "mixed:1")]
    out = tmp_path / "images.tar"
    save([item(i) for i in imgs], out, store=source, fmt=fmt)
    target = Store(tmp_path / "target")
    assert load(out, target) == [i.name for i in imgs]
    for img in imgs:
        got = cached(target, img.name)
        assert got.manifest.config.digest == img.manifest.config.digest
        assert got.diff_ids == img.diff_ids
        assert got.platform == img.platform
        if fmt == "oci":  # blobs as they were, and the registry's digest kept
            assert got.local_digest == img.local_digest
            assert got.manifest_digest == img.manifest_digest
        else:  # plain tars became gzip blobs; the zstd/plain layers of mixed too
            assert all(d.media_type.endswith("+gzip") for d in got.manifest.layers)
        for layer, diff_id in zip(got.manifest.layers, got.diff_ids):
            assert target.has_blob(layer.digest, layer.size)
            with target.open_blob(layer.digest) as r:
                assert r.read(2) == b"\x1f\x8b" or fmt == "oci"


def test_compressed_docker_archive_keeps_the_registry_blobs(registry, source, tmp_path):
    img = cached(source, f"{registry.host}/library/alpine:3.11")
    out = tmp_path / "c.tar"
    save([item(img)], out, store=source, compress=True)
    files = members(out.read_bytes())
    entry = json.loads(files["manifest.json"])[0]
    assert [sha256(files[p]) for p in entry["Layers"]] == [d.digest for d in img.manifest.layers]
    target = Store(tmp_path / "target")
    load(out, target)
    got = cached(target, img.name)
    assert [d.digest for d in got.manifest.layers] == [d.digest for d in img.manifest.layers]
    assert got.diff_ids == img.diff_ids


def test_save_to_a_stream_and_load_from_one(registry, source, tmp_path):
    img = cached(source, f"{registry.host}/library/alpine:3.10")
    buf = io.BytesIO()
    save([item(img)], buf, store=source, fmt="oci")
    target = Store(tmp_path / "target")
    assert load(io.BytesIO(buf.getvalue()), target) == [img.name]
    assert cached(target, img.name).local_digest == img.local_digest


@pytest.mark.parametrize("fmt", ["docker", "oci"])
def test_reloading_the_same_archive_changes_nothing(registry, source, tmp_path, fmt):
    imgs = [cached(source, f"{registry.host}/library/{n}") for n in ("alpine:3.10", "alpine:3.11")]
    out = tmp_path / "images.tar"
    save([item(i) for i in imgs], out, store=source, fmt=fmt)
    target = Store(tmp_path / "target")
    load(out, target)
    before = cache_state(target.root)
    assert any(k.startswith("blobs/") for k in before)
    assert load(out, target) == [i.name for i in imgs]
    assert cache_state(target.root) == before
    assert not any((target.root / "tmp").iterdir())  # the staging room is gone too


def _corrupt(data: bytes, member: str) -> bytes:
    """Flip one byte in the middle of ``member``'s data."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        m = tar.getmember(member)
    pos = m.offset_data + m.size // 2
    return data[:pos] + bytes([data[pos] ^ 0xFF]) + data[pos + 1:]


@pytest.mark.parametrize("fmt", ["docker", "oci"])
@pytest.mark.parametrize("damage", ["layer-byte", "truncated", "half-header"])
def test_a_damaged_archive_is_refused_and_leaves_the_cache_as_it_was(registry, source, tmp_path,
                                                                     fmt, damage):
    a = cached(source, f"{registry.host}/library/alpine:3.10")
    b = cached(source, f"{registry.host}/library/alpine:3.11")
    target = Store(tmp_path / "target")
    buf = io.BytesIO()
    save([item(a)], buf, store=source, fmt=fmt)
    load(io.BytesIO(buf.getvalue()), target)  # the target already holds something
    buf = io.BytesIO()
    save([item(b)], buf, store=source, fmt=fmt)
    data = buf.getvalue()
    layer = b.manifest.layers[-1]
    name = (f"{b.diff_ids[-1].split(':')[1]}.tar" if fmt == "docker"
            else f"blobs/sha256/{layer.digest.split(':')[1]}")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        offset = tar.getmember(name).offset_data
    bad = {"layer-byte": lambda: _corrupt(data, name),
           "truncated": lambda: data[:offset + 100],
           "half-header": lambda: data[:offset - 300]}[damage]()
    before = cache_state(target.root)
    with pytest.raises(ArchiveError) as e:
        load(io.BytesIO(bad), target)
    assert "\n" not in str(e.value)
    assert cache_state(target.root) == before
    assert target.get_ref(b.name) is None
    assert not any((target.root / "tmp").iterdir())


def test_a_config_that_does_not_match_its_layers_is_refused(registry, source, tmp_path):
    img = cached(source, f"{registry.host}/library/alpine:3.10")
    buf = io.BytesIO()
    save([item(img)], buf, store=source)
    files = members(buf.getvalue())
    entry = json.loads(files["manifest.json"])[0]
    config = json.loads(files[entry["Config"]])
    config["rootfs"]["diff_ids"] = ["sha256:" + "0" * 64]
    raw = json.dumps(config).encode()
    files[entry["Config"]] = raw  # its name no longer matches either: drop the name check
    del files[entry["Config"]]
    entry["Config"] = "config.json"
    files["config.json"] = raw
    files["manifest.json"] = json.dumps([entry]).encode()
    target = Store(tmp_path / "target")
    with pytest.raises(ArchiveError, match="diff_id"):
        load(io.BytesIO(write_tar(files)), target)
    assert cache_state(target.root).keys() <= {"oci-layout", "index.json"}


def test_not_an_archive_is_one_line_error(tmp_path):
    bogus = tmp_path / "x.tar"
    bogus.write_bytes(b"this is not a tar file at all" * 100)
    with pytest.raises(ArchiveError) as e:
        load(bogus, Store(tmp_path / "c"))
    assert "\n" not in str(e.value)


def test_failed_save_leaves_no_file(registry, source, tmp_path):
    img = cached(source, f"{registry.host}/library/alpine:3.10")
    layer = img.manifest.layers[0]
    path = source.blob_path(layer.digest)
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF  # rot on disk: the cache's own check must stop the save
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))
    out = tmp_path / "out.tar"
    with pytest.raises(DigestMismatch):
        save([item(img)], out, store=source, fmt="oci")
    assert list(tmp_path.glob("*out.tar*")) == []


def test_load_of_an_oci_layout_directory(registry, source, tmp_path):
    img = cached(source, f"{registry.host}/library/alpine:3.11")
    buf = io.BytesIO()
    save([item(img)], buf, store=source, fmt="oci")
    layout = tmp_path / "layout"
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tar:
        tar.extractall(layout)
    target = Store(tmp_path / "target")
    assert load(layout, target) == [img.name]
    assert cached(target, img.name).local_digest == img.local_digest


# --- export / import --------------------------------------------------------------------

def tar_tree(data: bytes) -> dict[str, tuple]:
    """path -> (type, mode, content or target), hardlinks resolved to their file's data."""
    out: dict[str, tuple] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar:
            name = m.name.rstrip("/")
            if m.isfile():
                out[name] = ("file", tar.extractfile(m).read(), m.mode)  # type: ignore[union-attr]
            elif m.islnk():
                out[name] = out[m.linkname]
            elif m.isdir():
                out[name] = ("dir", m.mode)
            elif m.issym():
                out[name] = ("symlink", m.linkname)
    return out


def test_export_is_the_merged_tree(registry, source, tmp_path):
    img = cached(source, f"{registry.host}/library/busybox:multi")
    buf = io.BytesIO()
    export(img, buf, source)
    data = buf.getvalue()
    tree = tar_tree(data)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        all_members = tar.getmembers()
    assert not [m.name for m in all_members if ".wh." in m.name]
    for path, want in MULTI_EXPECTED.items():
        if want is None:
            assert path not in tree, path
        else:
            assert tree[path] == want, path
    links = {m.name: m.linkname for m in all_members if m.islnk()}
    # one inode stays one inode: the later name links to the file that holds the data
    assert links.get("link-to-lower") == "lower-target"
    assert tree["bin/sh"] == tree["bin/busybox"]
    assert "bin/sh" in links
    # l2file was whited out, its hardlink keeps the data as a file of its own
    assert "l2hard" not in links


@pytest.mark.skipif(os.geteuid() != 0, reason="unpack as root to compare owners and modes")
def test_export_equals_unpack(registry, source, tmp_path):
    from puller.unpack import unpack
    img = cached(source, f"{registry.host}/library/busybox:multi")
    out = tmp_path / "rootfs.tar"
    export(img, out, source)
    ours = tmp_path / "x"
    ours.mkdir()
    subprocess.run(["tar", "-xpf", str(out), "-C", str(ours)], check=True)
    unpack(img.layer_openers(source), img.diff_ids, tmp_path / "u")
    assert tree_of(ours) == tree_of(tmp_path / "u")


def tree_of(root: Path) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    inodes: dict[int, str] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            extra: object = None
            if stat.S_ISREG(st.st_mode):
                extra = (sha256(Path(p).read_bytes()), inodes.setdefault(st.st_ino, rel)
                         if st.st_nlink > 1 else None)
            elif stat.S_ISLNK(st.st_mode):
                extra = os.readlink(p)
            out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                        extra)
    return out


def test_import_makes_a_one_layer_image(registry, source, tmp_path):
    img = cached(source, f"{registry.host}/library/busybox:multi")
    rootfs = tmp_path / "rootfs.tar"
    export(img, rootfs, source)
    target = Store(tmp_path / "target")
    name = import_tar(rootfs, "mybase:1", target)
    assert name == "docker.io/library/mybase:1"
    got = cached(target, name)
    assert got.diff_ids == [sha256(rootfs.read_bytes())]
    assert len(got.manifest.layers) == 1 and got.manifest.layers[0].media_type.endswith("+gzip")
    from puller.platform import host_platform
    assert got.platform == Platform(host_platform().os, host_platform().architecture,
                                    host_platform().variant)
    again = io.BytesIO()
    export(got, again, target)
    assert tar_tree(again.getvalue()) == tar_tree(rootfs.read_bytes())


def test_import_refuses_what_is_not_a_tar(tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(os.urandom(4096))
    target = Store(tmp_path / "target")
    with pytest.raises(ArchiveError):
        import_tar(junk, "x:1", target)
    assert not target.exists() or target.get_ref("docker.io/library/x:1") is None
    assert not list((target.root / "blobs").rglob("*")) if (target.root / "blobs").exists() else True


# --- the ecosystem's tools as oracles --------------------------------------------------------

def skopeo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["skopeo", "--insecure-policy", *args], capture_output=True, text=True,
                          timeout=120, check=False)


def oci_image(layout: Path) -> tuple[dict, dict]:
    """(manifest, config) of the single image of an OCI layout skopeo wrote."""
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"]
    blob = lambda d: json.loads((layout / "blobs" / d.replace(":", "/")).read_text())
    manifest = blob(digest)
    return manifest, blob(manifest["config"]["digest"])


@needs_skopeo
@pytest.mark.parametrize("compress", [False, True])
def test_skopeo_reads_our_docker_archive(registry, source, tmp_path, compress):
    img = cached(source, f"{registry.host}/library/alpine:3.11")
    out = tmp_path / "ours.tar"
    save([item(img)], out, store=source, compress=compress)
    res = skopeo("copy", f"docker-archive:{out}", f"oci:{tmp_path / 'x'}:img")
    assert res.returncode == 0, res.stderr
    manifest, config = oci_image(tmp_path / "x")
    assert config["rootfs"]["diff_ids"] == img.diff_ids
    assert config["config"] == img.config["config"]
    assert len(manifest["layers"]) == len(img.manifest.layers)


@needs_skopeo
def test_skopeo_reads_our_oci_archive(registry, source, tmp_path):
    img = cached(source, f"{registry.host}/library/alpine:3.11")
    out = tmp_path / "ours.oci.tar"
    save([item(img)], out, store=source, fmt="oci")
    res = skopeo("copy", f"oci-archive:{out}:{img.name}", f"oci:{tmp_path / 'y'}:img")
    assert res.returncode == 0, res.stderr
    manifest, config = oci_image(tmp_path / "y")
    assert [d["digest"] for d in manifest["layers"]] == [d.digest for d in img.manifest.layers]
    assert config["rootfs"]["diff_ids"] == img.diff_ids


@needs_skopeo
@pytest.mark.parametrize("name", ["library/alpine:3.11", "library/busybox:multi"])
def test_we_load_skopeo_s_docker_archive(registry, source, tmp_path, name):
    theirs = tmp_path / "theirs.tar"
    res = skopeo("copy", "--src-tls-verify=false", "--override-arch=amd64", "--override-os=linux",
                 f"docker://{registry.host}/{name}", f"docker-archive:{theirs}:{registry.host}/{name}")
    assert res.returncode == 0, res.stderr
    target = Store(tmp_path / "target")
    ref = f"{registry.host}/{name}"
    assert load(theirs, target) == [ref]
    want, got = cached(source, ref), cached(target, ref)
    assert got.manifest.config.digest == want.manifest.config.digest  # the same image ID
    assert got.diff_ids == want.diff_ids
    assert got.config == want.config


@needs_skopeo
def test_we_load_skopeo_s_oci_archive(registry, source, tmp_path):
    theirs = tmp_path / "theirs.oci.tar"
    ref = f"{registry.host}/library/busybox:multi"
    res = skopeo("copy", "--src-tls-verify=false", f"docker://{ref}", f"oci-archive:{theirs}:{ref}")
    assert res.returncode == 0, res.stderr
    target = Store(tmp_path / "target")
    assert load(theirs, target) == [ref]
    want, got = cached(source, ref), cached(target, ref)
    assert [d.digest for d in got.manifest.layers] == [d.digest for d in want.manifest.layers]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("umoci"), reason="needs root and umoci")
def test_umoci_unpack_of_our_oci_layout_equals_our_unpack(registry, source, tmp_path):
    from puller.unpack import unpack
    img = cached(source, f"{registry.host}/library/busybox:multi")
    buf = io.BytesIO()
    save([SaveItem(img, ("test",))], buf, store=source, fmt="oci")
    layout = tmp_path / "layout"
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tar:
        tar.extractall(layout)
    res = subprocess.run(["umoci", "unpack", "--image", f"{layout}:test", str(tmp_path / "bundle")],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    unpack(img.layer_openers(source), img.diff_ids, tmp_path / "ours")
    theirs = tree_of(tmp_path / "bundle" / "rootfs")
    ours = tree_of(tmp_path / "ours")
    assert ours == theirs


# --- archives other tools write ---------------------------------------------------------

def write_tar(files: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return out.getvalue()


def test_classic_docker_save_layout_with_symlinked_layers(registry, source, tmp_path):
    """docker save before v25: <id>/layer.tar, <id>/json, VERSION; a layer two images share
    is one file and a symlink to it."""
    a = cached(source, f"{registry.host}/library/shared-a:1", registry=registry)
    b = cached(source, f"{registry.host}/library/shared-b:1", registry=registry)
    buf = io.BytesIO()
    save([item(a), item(b)], buf, store=source)
    ours = members(buf.getvalue())
    files: dict[str, bytes] = {}
    links: dict[str, str] = {}
    entries = []
    for n, entry in enumerate(json.loads(ours["manifest.json"])):
        layers = []
        for k, path in enumerate(entry["Layers"]):
            layer_id = hashlib.sha256(f"{n}/{k}".encode()).hexdigest()
            files[f"{layer_id}/VERSION"] = b"1.0"
            files[f"{layer_id}/json"] = json.dumps({"id": layer_id}).encode()
            if k == 0 and n == 1:  # the shared base layer, as docker writes it the 2nd time
                first = entries[0]["Layers"][0]
                links[f"{layer_id}/layer.tar"] = f"../{first}"
            else:
                files[f"{layer_id}/layer.tar"] = ours[path]
            layers.append(f"{layer_id}/layer.tar")
        files[entry["Config"]] = ours[entry["Config"]]
        entries.append({"Config": entry["Config"], "RepoTags": entry["RepoTags"], "Layers": layers})
    files["manifest.json"] = json.dumps(entries).encode()
    target = Store(tmp_path / "target")
    assert load(io.BytesIO(write_tar(files, links)), target) == [a.name, b.name]
    got_a, got_b = cached(target, a.name), cached(target, b.name)
    assert got_a.diff_ids == a.diff_ids and got_b.diff_ids == b.diff_ids
    assert got_a.manifest.layers[0] == got_b.manifest.layers[0]


def test_docker_25_archive_with_an_oci_index(registry, source, tmp_path):
    """docker save since v25: an OCI layout (plain tar layers) plus manifest.json; its
    index.json has the bare tag in ref.name and the full name in containerd's annotation."""
    img = cached(source, f"{registry.host}/library/alpine:3.11")
    buf = io.BytesIO()
    save([item(img)], buf, store=source)
    ours = members(buf.getvalue())
    entry = json.loads(ours["manifest.json"])[0]
    blob = lambda data: (f"blobs/sha256/{sha256(data).split(':')[1]}", data)
    layers = [blob(ours[p]) for p in entry["Layers"]]
    config = blob(ours[entry["Config"]])
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256(config[1]), "size": len(config[1])},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": sha256(d), "size": len(d)} for _, d in layers]}).encode()
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha256(manifest),
        "size": len(manifest), "annotations": {
            "io.containerd.image.name": img.name, "org.opencontainers.image.ref.name": "3.11"}}]}
    files = dict([*layers, config, blob(manifest)])
    files["index.json"] = json.dumps(index).encode()
    files["oci-layout"] = b'{"imageLayoutVersion": "1.0.0"}'
    files["manifest.json"] = json.dumps([{"Config": config[0], "RepoTags": [entry["RepoTags"][0]],
                                          "Layers": [p for p, _ in layers]}]).encode()
    target = Store(tmp_path / "target")
    assert load(io.BytesIO(write_tar(files)), target) == [img.name]
    got = cached(target, img.name)
    assert got.diff_ids == img.diff_ids
    assert got.local_digest == sha256(manifest)


@needs_skopeo
def test_loading_an_image_the_cache_already_holds_changes_nothing(registry, source, tmp_path):
    """skopeo's docker-archive of an image we pulled: same image ID, so the pulled blobs
    and the ref (with the registry's digest) stay as they are."""
    ref = f"{registry.host}/library/alpine:3.10"
    theirs = tmp_path / "theirs.tar"
    res = skopeo("copy", "--src-tls-verify=false", "--override-arch=amd64", "--override-os=linux",
                 f"docker://{ref}", f"docker-archive:{theirs}:{ref}")
    assert res.returncode == 0, res.stderr
    before = cache_state(source.root)
    assert load(theirs, source) == [ref]
    assert cache_state(source.root) == before


def test_docker_archive_layer_the_cache_holds_is_not_compressed_again(registry, source, tmp_path):
    """A new name for a cached image's layers: the registry's gzip blobs are reused."""
    img = cached(source, f"{registry.host}/library/alpine:3.11")
    buf = io.BytesIO()
    save([SaveItem(img, ("example.com/copy/alpine:1",))], buf, store=source)
    blobs_before = set(source.iter_blobs())
    assert load(io.BytesIO(buf.getvalue()), source) == ["example.com/copy/alpine:1"]
    got = cached(source, "example.com/copy/alpine:1")
    assert [d.digest for d in got.manifest.layers] == [d.digest for d in img.manifest.layers]
    assert len(set(source.iter_blobs()) - blobs_before) == 1  # only the new manifest


def test_a_gzipped_archive_loads_too(registry, source, tmp_path):
    """``puller save IMAGE | gzip`` (or docker's) is read as it is."""
    import gzip
    img = cached(source, f"{registry.host}/library/alpine:3.10")
    buf = io.BytesIO()
    save([item(img)], buf, store=source)
    target = Store(tmp_path / "target")
    assert load(io.BytesIO(gzip.compress(buf.getvalue(), 1)), target) == [img.name]
    assert cached(target, img.name).diff_ids == img.diff_ids


@pytest.mark.parametrize("fmt", ["docker", "oci"])
def test_one_image_under_two_names(registry, source, tmp_path, fmt):
    img = cached(source, f"{registry.host}/library/alpine:3.10")
    names = (img.name, "example.com/team/base:stable")
    buf = io.BytesIO()
    save([SaveItem(img, names)], buf, store=source, fmt=fmt)
    target = Store(tmp_path / "target")
    assert load(io.BytesIO(buf.getvalue()), target) == list(names)
    a, b = (cached(target, n) for n in names)
    assert a.local_digest == b.local_digest


def test_a_multi_platform_oci_layout_loads_every_platform(tmp_path):
    """An OCI layout (as skopeo copy --all or our sync writes) whose ref is an index."""
    from fixtures.catalog import catalog
    from fixtures.images import write_oci_layout
    index = catalog()["library/busybox:latest"]
    layout = write_oci_layout(tmp_path / "layout", {"example.com/multi/busybox:1": index})
    target = Store(tmp_path / "target")
    assert load(layout, target) == ["example.com/multi/busybox:1"]
    for child in index.children[:3]:
        plat = Platform(child.platform["os"], child.platform["architecture"],
                        child.platform.get("variant"))
        img = resolve(target, target.get_ref("example.com/multi/busybox:1"), plat)
        assert img is not None and img.diff_ids == child.diff_ids
    # the whole image set is in the cache, verified: re-loading it changes nothing
    before = cache_state(target.root)
    load(layout, target)
    assert cache_state(target.root) == before


# --- load: what it checks, and the work it spares -----------------------------------------

class Pipe(io.RawIOBase):
    """An archive as a pipe gives it: read in order, no seeking (``puller save | puller load``)."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
        return self._data.readinto(b)


def oci_archive(img, ref: str) -> bytes:
    """``img`` (a fixtures image) as an OCI archive naming it ``ref``."""
    files = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}'}
    for digest, data in {**img.blobs, img.digest: img.manifest}.items():
        files[f"blobs/sha256/{digest.split(':')[1]}"] = data
    entry = {"mediaType": img.media_type, "size": len(img.manifest), "digest": img.digest,
             "annotations": {"org.opencontainers.image.ref.name": ref}}
    files["index.json"] = json.dumps({"schemaVersion": 2, "manifests": [entry]}).encode()
    return write_tar(files)


def with_layer_blob(img, blob: bytes):
    """``img`` whose first layer blob is ``blob`` instead (its config left as it was)."""
    import dataclasses
    doc = json.loads(img.manifest)
    old = doc["layers"][0]["digest"]
    doc["layers"][0] |= {"digest": sha256(blob), "size": len(blob)}
    blobs = {d: b for d, b in img.blobs.items() if d != old} | {sha256(blob): blob}
    return dataclasses.replace(img, manifest=json.dumps(doc).encode(),
                               layers=[blob, *img.layers[1:]], blobs=blobs)


def with_diff_ids(img, diff_ids: list[str]):
    """``img`` whose config claims ``diff_ids`` instead."""
    import dataclasses
    config = json.loads(img.config)
    config["rootfs"]["diff_ids"] = diff_ids
    raw = json.dumps(config).encode()
    doc = json.loads(img.manifest)
    doc["config"] |= {"digest": sha256(raw), "size": len(raw)}
    blobs = {d: b for d, b in img.blobs.items() if d != sha256(img.config)} | {sha256(raw): raw}
    return dataclasses.replace(img, manifest=json.dumps(doc).encode(), config=raw,
                               diff_ids=diff_ids, blobs=blobs)


def small_image():
    from fixtures.images import F, build_image, tar_layer
    return build_image([tar_layer(F("etc/a", b"a" * 5000)), tar_layer(F("etc/b", b"b" * 300)),
                        tar_layer(F("etc/c", b"c"))], fmt="oci")


def open_as(kind: str, data: bytes):
    return io.BytesIO(data) if kind == "file" else Pipe(data)


@pytest.mark.parametrize("kind", ["file", "pipe"])
def test_reloading_does_not_inflate_layers_whose_diff_id_the_cache_recorded(tmp_path, monkeypatch,
                                                                            kind):
    import puller.layer.decode
    img = small_image()
    data = oci_archive(img, "example.com/small/img:1")
    target = Store(tmp_path / "target")
    assert load(open_as(kind, data), target) == ["example.com/small/img:1"]
    for digest, diff_id in zip(img.layer_digests, img.diff_ids):
        assert target.get_meta(digest)["diff_id"] == diff_id  # learnt while verifying
    inflated = []

    class Spy(puller.layer.decode.Decoded):
        def __init__(self, *args, **kwargs) -> None:
            inflated.append(args)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(puller.layer.decode, "Decoded", Spy)
    before = cache_state(target.root)
    assert load(open_as(kind, data), target) == ["example.com/small/img:1"]
    assert inflated == []
    assert cache_state(target.root) == before
    # without the record, the same load inflates every layer again (and checks it)
    for digest in img.layer_digests:
        target.meta_path(digest).unlink()
    assert load(open_as(kind, data), target) == ["example.com/small/img:1"]
    assert len(inflated) == len(img.layers)


@pytest.mark.parametrize("kind", ["file", "pipe"])
def test_a_layer_that_does_not_decompress_is_refused(tmp_path, kind):
    """Its digest is right (it is the manifest's blob), but it is no gzip stream at all:
    there is no DiffID to agree with the config's, so the image is refused."""
    img = with_layer_blob(small_image(), b"\x1f\x8b\x08\x00" + b"\xff" * 200)
    target = Store(tmp_path / "target")
    with pytest.raises(ArchiveError, match="does not decompress") as e:
        load(open_as(kind, oci_archive(img, "example.com/small/bad:1")), target)
    assert "\n" not in str(e.value)
    assert cache_state(target.root).keys() <= {"oci-layout", "index.json"}
    assert not any((target.root / "tmp").iterdir())


def test_a_layer_only_the_cache_holds_is_checked_too(tmp_path):
    """An OCI layout without a layer blob that the cache holds (pulled: no DiffID recorded):
    the cached blob is inflated to check the config's DiffID, and the DiffID is recorded."""
    from fixtures.images import write_oci_layout
    img = small_image()
    target = Store(tmp_path / "target")
    target.put_bytes(img.layers[0])  # as a pull leaves it: the blob, no meta
    wrong = with_diff_ids(img, [img.diff_ids[1], *img.diff_ids[1:]])
    for name, image in (("wrong", wrong), ("right", img)):
        layout = write_oci_layout(tmp_path / name, {f"example.com/small/{name}:1": image})
        (layout / "blobs" / "sha256" / img.layer_digests[0].split(":")[1]).unlink()
    with pytest.raises(ArchiveError, match="does not match its diff_id"):
        load(tmp_path / "wrong", target)
    assert target.get_meta(img.layer_digests[0]) == {}
    assert load(tmp_path / "right", target) == ["example.com/small/right:1"]
    assert target.get_meta(img.layer_digests[0])["diff_id"] == img.diff_ids[0]


def test_an_archive_file_and_a_pipe_load_alike(tmp_path):
    """A file is read by offset, its layers side by side; a pipe in order: same cache."""
    img = small_image()
    data = oci_archive(img, "example.com/small/img:1")
    states = []
    for kind in ("file", "pipe"):
        target = Store(tmp_path / kind)
        assert load(open_as(kind, data), target) == ["example.com/small/img:1"]
        states.append({k: v[0::2] for k, v in cache_state(target.root).items()})  # no mtimes
    assert states[0] == states[1]


def test_save_writes_tarfile_s_own_headers():
    """The plain members save writes get a header made without tarfile, byte for byte the
    one tarfile makes; a name too long for it goes through tarfile (a PAX header)."""
    from puller.archive import _TarOut
    for name, size in (("manifest.json", 5), ("blobs/sha256/" + "a" * 64, 123456789),
                       ("x" * 100, 8 ** 11 - 1), ("x" * 101, 7), ("blöb", 1), ("big", 8 ** 11)):
        ours, theirs = io.BytesIO(), io.BytesIO()
        _TarOut(ours).file(name, size)
        info = tarfile.TarInfo(name)
        info.size, info.mode = size, 0o644
        theirs.write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        assert ours.getvalue() == theirs.getvalue(), name
