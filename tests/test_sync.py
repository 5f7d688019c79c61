"""sync: many images into one OCI layout, resumable, usable offline by another process."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from fixtures import cli
from fixtures.catalog import catalog
from puller.image import lookup_ref, resolve
from puller.platform import Platform
from puller.reference import parse as parse_ref
from puller.registry import RegistryOptions
from puller.store import Store
from puller.sync import read_list, sync

OPTS = RegistryOptions.build(config={})
ARM64 = Platform("linux", "arm64")
AMD64 = Platform("linux", "amd64")


def _complete(dest: Path, ref: str, plat: Platform) -> bool:
    store = Store(dest)
    entry = lookup_ref(store, parse_ref(ref))
    return entry is not None and resolve(store, entry, plat) is not None


def test_sync_all_platforms_then_offline_use_elsewhere(registry_factory, tmp_path):
    images = {k: v for k, v in catalog().items() if k in ("library/alpine:3.10", "library/shared-a:1")}
    reg = registry_factory(images)
    alpine, shared = f"{reg.host}/library/alpine:3.10", f"{reg.host}/library/shared-a:1"
    listing = tmp_path / "images.txt"
    listing.write_text(f"# the air-gap set\n{alpine}\n\n{shared}  # single platform\n")
    assert read_list(listing) == [alpine, shared]
    dest = tmp_path / "mirror"
    out = cli.run("sync", "--list", str(listing), "--dir", str(dest), "--all-platforms", "--json")
    assert out.returncode == 0, out.stderr
    items = json.loads(out.stdout)["items"]
    assert sorted((i["ref"].rsplit("/", 1)[1], i["platform"]) for i in items) == [
        ("alpine:3.10", "linux/amd64"), ("alpine:3.10", "linux/arm64"), ("shared-a:1", "linux/amd64")]
    assert all(i["downloaded_bytes"] > 0 and not i["cached"] for i in items)

    again = cli.run("sync", "--list", str(listing), "--dir", str(dest), "--all-platforms", "--json")
    assert again.returncode == 0, again.stderr
    assert all(i["cached"] and i["downloaded_bytes"] == 0 for i in json.loads(again.stdout)["items"])

    reg.stop()  # the network is gone: everything must come from DIR
    for plat in ("linux/amd64", "linux/arm64"):
        res = cli.run("pull", "--cache", str(dest), "--offline", "--platform", plat, "--json", alpine)
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["platform"] == plat
    res = cli.run("inspect", "--cache", str(dest), "--offline", "--json", shared)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["Layers"] == images["library/shared-a:1"].layer_digests
    skopeo = subprocess.run(["skopeo", "--override-arch", "arm64", "inspect", f"oci:{dest}:{alpine}"],
                            check=False, capture_output=True, text=True, timeout=60)
    assert skopeo.returncode == 0, skopeo.stderr
    assert json.loads(skopeo.stdout)["Architecture"] == "arm64"


def test_sync_resumes_an_interrupted_blob(registry, tmp_path):
    ref = f"{registry.host}/library/alpine:3.11"
    dest = tmp_path / "mirror"
    first = sync([ref], dest, platform=AMD64, options=OPTS)
    assert first.ok and _complete(dest, ref, AMD64)
    store = Store(dest)
    layer = resolve(store, lookup_ref(store, parse_ref(ref)), AMD64).manifest.layers[0]
    data = store.blob_path(layer.digest).read_bytes()
    store.blob_path(layer.digest).unlink()
    partial = store.partial_path(layer.digest)
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_bytes(data[: len(data) // 2])
    events: list[dict] = []
    second = sync([ref], dest, platform=AMD64, options=OPTS, progress=events.append)
    assert second.ok and _complete(dest, ref, AMD64)
    assert second.items[0].downloaded_bytes == len(data) - len(data) // 2
    assert {"event": "blob-resume", "digest": layer.digest, "offset": len(data) // 2} in events


def test_sync_reports_a_bad_ref_and_still_syncs_the_rest(registry, tmp_path):
    good, bad = f"{registry.host}/library/config:1", f"{registry.host}/library/nope:1"
    dest = tmp_path / "mirror"
    out = cli.run("sync", "--dir", str(dest), bad, good)
    assert out.returncode == 1
    assert "nope:1" in out.stdout and "error" in out.stdout
    assert _complete(dest, good, AMD64)
    usage = cli.run("sync", "--dir", str(dest))
    assert usage.returncode == 2 and "no images to sync" in usage.stderr


def test_housekeeping_commands_have_help():
    for command in ("push", "sync", "prune", "du", "verify"):
        out = cli.run(command, "--help")
        assert out.returncode == 0 and "Usage:" in out.stdout, (command, out.stderr[-300:])


def test_sync_list_from_stdin(registry, tmp_path):
    ref = f"{registry.host}/library/busybox:multi"
    out = cli.run("sync", "--list", "-", "--dir", str(tmp_path / "m"), "--json",
                  input=f"# piped\n{ref}\n")
    assert out.returncode == 0, out.stderr
    assert [i["ref"] for i in json.loads(out.stdout)["items"]] == [ref]
    assert _complete(tmp_path / "m", ref, AMD64)
