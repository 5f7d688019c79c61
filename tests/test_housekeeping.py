"""prune, du and verify on real caches pulled from the registry fixture."""
from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures import cli
from puller.errors import CacheError
from puller.housekeeping import TMP_GRACE, du, prune, reachable, verify
from puller.image import ensure_rootfs, lookup_ref, resolve
from puller.platform import Platform
from puller.pull import pull
from puller.reference import parse as parse_ref
from puller.registry import RegistryOptions
from puller.store import Store

AMD64 = Platform("linux", "amd64")
OPTS = RegistryOptions.build(config={})


def _pull(ref: str, cache: Path):
    return pull(parse_ref(ref), store=Store(cache), platform=AMD64, options=OPTS)


def _image(store: Store, ref: str):
    entry = lookup_ref(store, parse_ref(ref))
    return resolve(store, entry, AMD64) if entry else None


def _blobs_on_disk(store: Store) -> set[str]:
    return set(store.iter_blobs())


def _fake_rootfs(store: Store, hexd: str) -> Path:
    """An unpacked rootfs as a rootless unpack leaves it: a 0000 file inside a 0555 dir."""
    root = store.rootfs_dir / hexd
    (root / "ro").mkdir(parents=True)
    (root / "ro" / "secret").write_text("x")
    os.chmod(root / "ro" / "secret", 0)
    os.chmod(root / "ro", 0o555)
    (store.rootfs_dir / f"{hexd}.ready").write_text(f"sha256:{hexd}\n")
    (store.root / "rootless").mkdir(exist_ok=True)
    (store.root / "rootless" / f"{hexd}.json").write_text("{}")
    return root


@pytest.fixture
def two_images(registry, cache_dir):
    """shared-a and shared-b (sharing their first layer) pulled, then shared-b untagged."""
    a, b = f"{registry.host}/library/shared-a:1", f"{registry.host}/library/shared-b:1"
    _pull(a, cache_dir)
    _pull(b, cache_dir)
    store = Store(cache_dir)
    img_b = _image(store, b)
    assert store.remove_ref(str(parse_ref(b)))
    return store, a, registry.images["library/shared-a:1"], registry.images["library/shared-b:1"], img_b


def test_prune_removes_only_what_nothing_reaches(two_images):
    store, a, image_a, image_b, img_b = two_images
    kept_rootfs = _fake_rootfs(store, _image(store, a).local_digest.split(":")[1])
    gone_rootfs, _ = ensure_rootfs(store, img_b)  # a real unpack of the untagged image
    assert (gone_rootfs / "own-b.txt").read_text() == "b\n"
    (gone_rootfs / "ro").mkdir()
    (gone_rootfs / "ro" / "locked").write_text("x")
    os.chmod(gone_rootfs / "ro" / "locked", 0)
    os.chmod(gone_rootfs / "ro", 0o555)
    (store.root / "rootless").mkdir(exist_ok=True)
    (store.root / "rootless" / f"{gone_rootfs.name}.json").write_text("{}")  # as a rootless unpack
    partial = store.partial_path("sha256:" + "1" * 64)
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_bytes(b"half")
    old_tmp, new_tmp = store.tmp_dir / "old.leftover", store.tmp_dir / "fresh.write"
    old_tmp.write_bytes(b"x")
    new_tmp.write_bytes(b"y")
    os.utime(old_tmp, (time.time() - TMP_GRACE - 10,) * 2)
    store.set_meta(image_b.layer_digests[1], uncompressed=1)
    store.set_meta(image_a.layer_digests[1], uncompressed=1)

    before = _blobs_on_disk(store)
    out = cli.run("prune", "--dry-run", "--cache", str(store.root))
    assert out.returncode == 0 and out.stdout.count("would remove blob ") == 4, out.stderr
    preview = prune(store, dry_run=True)
    assert _blobs_on_disk(store) == before and gone_rootfs.is_dir() and partial.exists()
    only_b = {image_b.layer_digests[1], image_b.digest, img_b.local_digest,
              img_b.manifest.config.digest}
    assert {p.path for p in preview.removed if p.kind == "blob"} == {str(store.blob_path(d)) for d in only_b}

    report = prune(store)
    assert sorted(r.path for r in report.removed) == sorted(r.path for r in preview.removed)
    assert _blobs_on_disk(store) == before - only_b
    assert image_b.layer_digests[0] in _blobs_on_disk(store)  # shared with shared-a
    assert not gone_rootfs.exists() and not (store.rootfs_dir / f"{gone_rootfs.name}.ready").exists()
    assert not (store.root / "rootless" / f"{gone_rootfs.name}.json").exists()
    assert kept_rootfs.is_dir() and not partial.exists()
    assert not old_tmp.exists() and new_tmp.exists()
    assert not store.meta_path(image_b.layer_digests[1]).exists()
    assert store.meta_path(image_a.layer_digests[1]).exists()
    assert _image(store, a) is not None
    assert prune(store).removed == ()  # nothing left to do


@pytest.mark.parametrize("record", ["image-file", "rootfs-field"])
def test_kept_container_pins_its_image(two_images, record):
    store, _a, _image_a, image_b, img_b = two_images
    box = store.containers_dir / "box"
    box.mkdir(parents=True)
    rootfs = _fake_rootfs(store, img_b.local_digest.split(":")[1])
    meta = {"name": "box", "image": "gone:1"}
    if record == "image-file":
        (box / "image").write_text(img_b.local_digest + "\n")
    else:
        meta["rootfs"] = str(rootfs)
    (box / "container.json").write_text(json.dumps(meta))
    before = _blobs_on_disk(store)
    report = prune(store)
    # the pin is the local manifest: it keeps what a run needs, and only the registry's own
    # Docker manifest (which the OCI twin does not name) goes
    assert [r.path for r in report.removed] == [str(store.blob_path(image_b.digest))]
    assert rootfs.is_dir()
    assert _blobs_on_disk(store) == before - {image_b.digest}
    assert {image_b.layer_digests[1], img_b.local_digest, img_b.manifest.config.digest} <= before
    if record == "image-file":
        (box / "image").unlink()
    else:
        (box / "container.json").write_text(json.dumps({"name": "box", "image": "gone:1"}))
    assert prune(store).count("blob") == 3 and not rootfs.exists()


def test_prune_spares_a_rootfs_in_use(two_images):
    store, img_b = two_images[0], two_images[4]
    rootfs = _fake_rootfs(store, img_b.local_digest.split(":")[1])
    ready = store.rootfs_dir / f"{rootfs.name}.ready"
    fd = os.open(ready, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # as a running container holds it
        first = prune(store)
        assert first.count("rootfs") == 0 and rootfs.is_dir() and ready.exists()
        assert first.count("blob") == 4 and first.count("rootless") == 1
    finally:
        os.close(fd)
    assert prune(store).count("rootfs") == 1 and not rootfs.exists() and not ready.exists()


def test_du_numbers_add_up(two_images, registry):
    store, a = two_images[0], two_images[1]
    _pull(f"{registry.host}/library/shared-b:1", store.root)
    _fake_rootfs(store, "2" * 64)
    usage = du(store)
    sizes = {d: store.blob_path(d).stat().st_size for d in store.iter_blobs()}
    assert usage.blobs == sum(sizes.values()) and usage.blob_count == len(sizes)
    assert usage.blobs == sum(i.exclusive for i in usage.images) + usage.shared + usage.unreferenced
    shared_layer = two_images[2].layer_digests[0]
    assert usage.shared == sizes[shared_layer]
    assert usage.unreferenced == 0 and usage.rootfs == len("x") + len(f"sha256:{'2' * 64}\n")
    assert {r for i in usage.images for r in i.refs} == {str(parse_ref(a)),
                                                         f"{registry.host}/library/shared-b:1"}
    out = cli.run("du", "--json", "--cache", str(store.root))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["total"] == usage.total


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))


def test_verify_names_a_corrupt_blob_and_repair_fetches_it(registry, cache_dir):
    ref = f"{registry.host}/library/alpine:3.10"
    _pull(ref, cache_dir)
    pull(parse_ref(ref), store=Store(cache_dir), platform=Platform("linux", "arm64"), options=OPTS)
    store = Store(cache_dir)
    entry = lookup_ref(store, parse_ref(ref))
    img = resolve(store, entry, AMD64)
    layer, twin = img.manifest.layers[0].digest, img.local_digest
    local_index, registry_index = entry.descriptor.digest, entry.registry_digest
    assert local_index != registry_index
    assert cli.run("verify", "--cache", str(cache_dir)).returncode == 0
    orphan = store.put_bytes(b"nobody uses me")
    broken = {layer, twin, local_index, registry_index, orphan}
    for digest in broken:
        _flip_byte(store.blob_path(digest))

    out = cli.run("verify", "--cache", str(cache_dir))
    assert out.returncode == 1
    assert {line.split()[1].rstrip(":") for line in out.stdout.splitlines()} == broken
    with pytest.raises(CacheError, match="verify --repair"):
        prune(store)  # a damaged index hides what it names: nothing is deleted
    assert set(store.iter_blobs()) >= broken

    out = cli.run("verify", "--repair", "--json", "--cache", str(cache_dir))
    doc = json.loads(out.stdout)
    assert out.returncode == 1, doc  # the orphan cannot be repaired
    assert {b["digest"]: b["repaired"] for b in doc["bad"]} == {d: d != orphan for d in broken}
    assert lookup_ref(store, parse_ref(ref)).descriptor.digest == local_index  # rebuilt exactly
    prune(store)
    assert verify(store).ok and verify(store).bad == ()
    assert cli.run("verify", "--cache", str(cache_dir)).returncode == 0
    for plat in (AMD64, Platform("linux", "arm64")):
        assert resolve(store, lookup_ref(store, parse_ref(ref)), plat) is not None


def test_pulls_racing_prunes_leave_a_sound_cache(registry, cache_dir):
    refs = [f"{registry.host}/library/{n}" for n in
            ("alpine:3.10", "alpine:3.11", "shared-a:1", "shared-b:1", "busybox:latest",
             "busybox:multi", "config:1", "alpine:3.10")]
    # something unreachable for the prunes to chew on while the pulls run
    _pull(f"{registry.host}/library/mixed:1", cache_dir)
    Store(cache_dir).remove_ref(f"{registry.host}/library/mixed:1")
    procs = [subprocess.Popen([str(cli.BIN / "puller"), "pull", "-q", "--platform", "linux/amd64",
                               "--cache", str(cache_dir), r], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in refs]
    # two processes prune over and over while the pulls run, one more through the CLI
    stop = cache_dir.parent / "stop-pruning"
    loop = ("import os, sys; from puller.housekeeping import prune; from puller.store import Store\n"
            "while not os.path.exists(sys.argv[2]): prune(Store(sys.argv[1]))")
    pruners = [subprocess.Popen([sys.executable, "-c", loop, str(cache_dir), str(stop)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    procs.append(subprocess.Popen([str(cli.BIN / "puller"), "prune", "-q", "--cache", str(cache_dir)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        for p in procs:
            _out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
    finally:
        stop.touch()
        for p in pruners:
            _out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
    store = Store(cache_dir)
    for r in refs:
        assert _image(store, r) is not None, r
    prune(store)
    report = verify(store)
    assert report.ok and report.checked == len(reachable(store).blobs.keys() & set(store.iter_blobs()))
    assert cli.run("verify", "--cache", str(cache_dir)).returncode == 0


def test_prune_removes_layer_scans_of_unreachable_layers(registry, tmp_path):
    from fixtures import cli as _cli
    cache = tmp_path / "scan-cache"
    ref = f"{registry.host}/library/busybox:multi"
    assert _cli.run("layers", "--cache", str(cache), ref).returncode == 0
    scans = list((cache / "meta" / "compare").glob("*.json.gz"))
    assert scans
    assert _cli.run("prune", "--cache", str(cache)).returncode == 0
    assert all(p.exists() for p in scans)  # still reachable
    assert _cli.run("rmi", "--cache", str(cache), ref).returncode == 0
    assert _cli.run("prune", "--cache", str(cache)).returncode == 0
    assert not any(p.exists() for p in scans)


def test_prune_spares_the_rootfs_of_running_and_kept_containers(registry, tmp_path):
    import subprocess
    import time
    from fixtures import cli as _cli
    cache = tmp_path / "run-cache"
    ref = f"{registry.host}/library/busybox:multi"
    env = {"PULLER_CACHE": str(cache)}
    # A running --rm container: its base rootfs must survive a prune that drops its ref.
    proc = subprocess.Popen([str(_cli.BIN / "pull-and-run"), ref, "sleep", "3"], env={**__import__("os").environ, **env},
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not list(cache.glob("rootfs/*.ready")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    assert _cli.run("rmi", ref, env=env).returncode == 0
    assert _cli.run("prune", env=env).returncode == 0
    assert list(cache.glob("rootfs/*/bin/busybox")), "the running container's rootfs was pruned"
    assert proc.wait(30) == 0, proc.stderr.read()
    # A kept container (--name) pins its rootfs until it is removed.
    assert _cli.run("run", "--name", "keep", ref, "true", prog="puller", env=env).returncode == 0
    assert _cli.run("rmi", ref, env=env).returncode == 0
    assert _cli.run("prune", env=env).returncode == 0
    assert list(cache.glob("rootfs/*/bin/busybox"))
    assert _cli.run("rm", "keep", env=env).returncode == 0
    assert _cli.run("prune", env=env).returncode == 0
    assert not list(cache.glob("rootfs/*/bin/busybox"))
