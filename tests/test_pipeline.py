"""Pull and unpack overlap: layer 1 is applied while layer 2 is still downloading."""
from __future__ import annotations

import threading
import time

import pytest

from fixtures.images import F, build_image, tar_layer
from fixtures.netfaults import ScriptedServer, reply
from puller.errors import NotFound
from puller.pipeline import pull_and_unpack
from puller.platform import Platform
from puller.reference import parse
from puller.registry import RegistryOptions
from puller.store import Store

IMG = build_image([tar_layer(F("one", "1")), tar_layer(F("two", "2"))])


def _serve(srv: ScriptedServer, slow_layer: str, hold: threading.Event, *, missing: bool = False) -> None:
    srv.routes[("GET", "/v2/")] = lambda h, s: reply(h, 200, b"{}")
    for method in ("GET", "HEAD"):
        srv.routes[(method, "/v2/library/app/manifests/")] = lambda h, s: reply(
            h, 200, IMG.manifest, {"Content-Type": IMG.media_type, "Docker-Content-Digest": IMG.digest})

    def blob(h, s):
        digest = h.path.split("?")[0].rsplit("/", 1)[1]
        if digest == slow_layer:
            hold.wait(10)
            if missing:
                return reply(h, 404, b'{"errors":[{"code":"BLOB_UNKNOWN"}]}')
        reply(h, 200, IMG.blobs[digest])
    srv.routes[("GET", "/v2/library/app/blobs/")] = blob


def test_layer_one_is_applied_before_layer_two_arrives(tmp_path):
    hold = threading.Event()
    events: list[str] = []

    def progress(e):
        kind = e.get("event") if isinstance(e, dict) else e.kind
        if isinstance(e, dict) and kind == "blob-done" and e["digest"] == IMG.layer_digests[1]:
            events.append("layer 2 downloaded")
        elif not isinstance(e, dict) and kind == "layer-done":
            events.append(f"layer {e.layer + 1} applied")
            hold.set()  # only now does the server send layer 2
    with ScriptedServer() as srv:
        _serve(srv, IMG.layer_digests[1], hold)
        img, _, _ = pull_and_unpack(parse(f"{srv.host}/library/app:1"), Store(tmp_path / "c"),
                                    Platform("linux", "amd64"), tmp_path / "root", progress=progress,
                                    options=RegistryOptions.build(config={}))
    assert events == ["layer 1 applied", "layer 2 downloaded", "layer 2 applied"]
    assert (tmp_path / "root/one").read_text() == "1" and (tmp_path / "root/two").read_text() == "2"
    assert img.manifest_digest == IMG.digest


def test_a_failed_pull_leaves_no_rootfs(tmp_path):
    hold = threading.Event()
    hold.set()
    with ScriptedServer() as srv:
        _serve(srv, IMG.layer_digests[1], hold, missing=True)
        with pytest.raises(NotFound):
            pull_and_unpack(parse(f"{srv.host}/library/app:1"), Store(tmp_path / "c"),
                            Platform("linux", "amd64"), tmp_path / "root",
                            options=RegistryOptions.build(config={}))
    time.sleep(0.1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_a_cold_pull_and_run_unpacks_its_base_rootfs_while_pulling(tmp_path):
    """``prepare_rootfs`` (what ``pull-and-run`` calls) on an image not in the cache."""
    from puller.image import prepare_rootfs
    hold = threading.Event()
    events: list[str] = []

    def progress(e):
        if isinstance(e, dict) and e.get("event") == "blob-done" and e["digest"] == IMG.layer_digests[1]:
            events.append("layer 2 downloaded")
        elif not isinstance(e, dict) and e.kind == "layer-done":
            events.append(f"layer {e.layer + 1} applied")
            hold.set()
    with ScriptedServer() as srv:
        _serve(srv, IMG.layer_digests[1], hold)
        prepared = prepare_rootfs(f"{srv.host}/library/app:1", cache=str(tmp_path / "c"),
                                  platform="linux/amd64", progress=progress,
                                  registry_options=RegistryOptions.build(config={}))
    assert events == ["layer 1 applied", "layer 2 downloaded", "layer 2 applied"]
    assert prepared.rootfs.parent == tmp_path / "c" / "rootfs"
    assert (prepared.rootfs / "one").read_text() == "1" and (prepared.rootfs / "two").read_text() == "2"
    assert prepared.rootfs.with_name(prepared.rootfs.name + ".ready").exists()
    # Warm: the same rootfs (named by the local manifest, as ensure_rootfs names it), no
    # network (the server is gone), nothing unpacked again.
    again = prepare_rootfs(f"{srv.host}/library/app:1", cache=str(tmp_path / "c"), platform="linux/amd64",
                           progress=lambda e: events.append("again"))
    assert again.rootfs == prepared.rootfs and "again" not in events
