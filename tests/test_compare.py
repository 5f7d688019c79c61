"""The comparison engine on images built in code: change sets, merged views, wasted bytes,
diffs and the shared-chain shortcut. Layers are served from memory; nothing is unpacked."""
from __future__ import annotations

import io
import json
from dataclasses import replace

import pytest

from fixtures.catalog import MULTI_EXPECTED, catalog
from fixtures.images import OPQ, WH, D, F, H, Image, L, build_image, tar_layer
from puller.compare import (
    ImageInput,
    LayerRef,
    PathError,
    analyse,
    config_diff,
    diff,
    diff_layers,
    history_of,
    merged_view,
    read_file,
    scan_layer,
    which,
)
from puller.errors import DigestMismatch, UsageError
from puller.store import Store


def image_input(img: Image, name: str = "img", opened: list[int] | None = None) -> ImageInput:
    """An ImageInput over a fixture image; ``opened`` collects the layers read."""
    config = json.loads(img.config)
    manifest = json.loads(img.manifest)
    history = history_of(config, len(img.layers))

    def opener(i: int, blob: bytes):
        def open_():
            if opened is not None:
                opened.append(i)
            return io.BytesIO(blob)
        return open_
    layers = tuple(LayerRef(i + 1, d["digest"], img.diff_ids[i], d["size"], d["mediaType"],
                            opener(i + 1, blob), history[i])
                   for i, (d, blob) in enumerate(zip(manifest["layers"], img.layers)))
    return ImageInput(name, config, layers, "linux/amd64", img.digest, img.media_type)


def multi(opened: list[int] | None = None) -> ImageInput:
    return image_input(catalog()["library/busybox:multi"], "multi", opened)


def view_of(img: ImageInput):
    return merged_view(scan_layer(layer) for layer in img.layers)


def content(img: ImageInput, path: str) -> bytes:
    _node, chunks = read_file(img, path)
    return b"".join(chunks)


# --- merged view ------------------------------------------------------------------------

def test_merged_view_matches_what_the_multi_image_must_hold():
    img = multi()
    view, _ = view_of(img)
    for path, expected in MULTI_EXPECTED.items():
        node = view.get(path)
        if expected is None:
            assert node is None, path
            continue
        assert node is not None, path
        assert node.type == expected[0], path
        if expected[0] == "file":
            assert content(img, path) == expected[1]
            assert node.mode == expected[2]
        elif expected[0] == "dir":
            assert node.mode == expected[1]
        else:
            assert node.link == expected[1]


def test_layer_change_sets_count_whiteouts_opaques_and_type_changes():
    _, changes = view_of(multi())
    third = changes[2]
    assert set(third.added) == {"opq/new", "f2d/inside", "link-to-lower", "l2file", "l2hard"}
    assert set(third.modified) == {"f2d", "d2l", "modeonly"}
    assert set(third.deleted) == {"a/gone", "opq/old1", "opq/sub", "opq/sub/old2",
                                  "gonedir", "gonedir/x", "d2l/inner"}
    assert third.deleted["d2l/inner"].layer == 2
    assert set(changes[3].added) == {"a/added-later"}
    assert set(changes[3].deleted) == {"l2file"}


def test_opaque_marker_hides_only_lower_children_whatever_its_place_in_the_tar():
    lower = tar_layer(D("d"), F("d/old", "old"))
    for order in ((OPQ("d"), F("d/new", "new")), (F("d/new", "new"), OPQ("d"))):
        img = image_input(build_image([lower, tar_layer(*order)]))
        view, changes = view_of(img)
        assert [n.path for n in view.walk("d")] == ["d/new"]
        assert set(changes[1].deleted) == {"d/old"}


def test_whiteout_of_a_directory_deletes_its_subtree_and_same_layer_entries_survive():
    img = image_input(build_image([
        tar_layer(D("x"), D("x/y"), F("x/y/z", "zz")),
        tar_layer(F("x/again", "a"), WH("x"))]))  # whiteouts never hide their own layer
    view, changes = view_of(img)
    assert set(changes[1].deleted) == {"x/y", "x/y/z"}
    assert [n.path for n in view.walk()] == ["x", "x/again"]
    assert view.get("x").implicit


def test_file_replacing_directory_drops_the_subtree_and_dir_over_dir_keeps_it():
    img = image_input(build_image([
        tar_layer(D("p"), F("p/a", "a"), D("q"), F("q/b", "b")),
        tar_layer(F("p", "now a file"), D("q", mode=0o700))]))
    view, changes = view_of(img)
    assert view.get("p").type == "file" and view.get("p/a") is None
    assert view.get("q").mode == 0o700 and view.get("q/b") is not None
    assert set(changes[1].modified) == {"p", "q"} and set(changes[1].deleted) == {"p/a"}


def test_entries_below_a_symlinked_parent_land_in_its_target():
    img = image_input(build_image([
        tar_layer(D("real"), L("alias", "real")),
        tar_layer(F("alias/x", "through the link"))]))
    view, _ = view_of(img)
    assert view.get("real/x") is not None and view.get("alias/x") is None
    assert content(img, "alias/x") == b"through the link"


def test_hardlink_takes_the_inode_of_its_target_at_link_time():
    img = image_input(build_image([
        tar_layer(F("t", "first", 0o600, uid=7)),
        tar_layer(H("h", "t"), F("t", "second"))]))
    view, _ = view_of(img)
    h = view.get("h")
    assert (h.type, h.mode, h.uid, h.hardlink) == ("file", 0o600, 7, "t")
    assert content(img, "h") == b"first" and content(img, "t") == b"second"


# --- wasted bytes -----------------------------------------------------------------------

def test_wasted_bytes_count_overwritten_and_deleted_files_of_each_layer():
    result = analyse(multi())
    # layer 2's a/gone, opq/old1, opq/sub/old2, f2d, d2l/inner, modeonly, gonedir/x
    assert [r.wasted_bytes for r in result.layers] == [0, 5 + 4 + 4 + 15 + 6 + 11 + 2, 0, 0]
    # l2file's bytes are still reachable through the hardlink l2hard: not wasted
    assert "l2file" not in {p for p, _, _ in result.wasted_paths}
    assert result.efficiency == pytest.approx(1 - 47 / result.total_bytes)
    third = result.layers[2]
    assert (third.added, third.modified, third.deleted) == (5, 3, 7)
    assert (third.whiteouts, third.opaques) == (2, 1)


def test_wasted_bytes_include_a_file_written_twice_in_one_layer_and_rewritten_later():
    img = image_input(build_image([
        tar_layer(F("big", b"x" * 1000), F("big", b"y" * 300)),
        tar_layer(F("big", b"z" * 10)), tar_layer(WH("big"))]))
    result = analyse(img)
    assert [r.wasted_bytes for r in result.layers] == [1300, 10, 0]
    assert result.wasted_paths == (("big", 1310, 3),)
    assert result.total_bytes == 1310 and result.efficiency == 0.0
    assert result.final_entries == 0


def test_efficiency_is_one_without_waste():
    result = analyse(image_input(build_image([tar_layer(F("a", "a"))])))
    assert result.wasted_bytes == 0 and result.efficiency == 1.0


# --- diff -------------------------------------------------------------------------------

def test_diff_reports_each_change_with_what_changed_and_the_layers_involved():
    a, b = replace(multi(), upto=2), replace(multi(), upto=3)
    result = diff(a, b)
    by = {c.path: c for c in result.changes}
    assert by["modeonly"].what == ("mode",)
    assert by["f2d"].what == ("type", "size", "mode")
    assert by["d2l"].status == "changed" and "type" in by["d2l"].what
    assert by["d2l/inner"].status == "removed" and by["d2l/inner"].layer_b == 3
    assert by["opq/new"].status == "added" and by["opq/new"].layer_b == 3
    assert by["a/gone"].layer_a == 2
    assert "lower-target" not in by and "a/keep" not in by
    assert result.shared_layers == 2


def test_diff_of_alpine_versions_skips_content_of_the_shared_base_layer():
    cat = catalog()
    opened: list[int] = []
    a = image_input(cat["library/alpine:3.10"].children[0], "3.10", opened)
    b = image_input(cat["library/alpine:3.11"].children[0], "3.11", opened)
    result = diff(a, b)
    assert [(c.path, c.status) for c in result.changes] == [
        ("etc/alpine-release", "added"), ("etc/motd", "removed"), ("etc/os-release", "changed")]
    assert result.shared_layers == 1
    assert sorted(opened) == [1, 2]  # the shared layer once, B's own layer once
    assert result.changes[1].layer_b == 2 and result.changes[1].layer_a == 1


def test_identical_chains_read_no_layer_and_compression_is_only_a_note():
    layers = [tar_layer(D("etc"), F("etc/x", "x")), tar_layer(F("y", "y"))]
    opened: list[int] = []
    a = image_input(build_image(layers, compression="gzip", fmt="oci"), "gz", opened)
    b = image_input(build_image(layers, compression=["zstd", "none"], fmt="oci"), "zst", opened)
    result = diff(a, b)
    assert result.same and opened == [] and result.layers_read == 0
    assert any("DiffIDs" in n for n in result.notes)


def test_same_files_in_differently_split_layers_are_the_same_image():
    one = image_input(build_image([tar_layer(F("a", "a"), F("b", "b"))]))
    two = image_input(build_image([tar_layer(F("a", "a")), tar_layer(F("b", "b"))]))
    result = diff(one, two)
    assert result.same and any("layer count" in n for n in result.notes)


def test_config_diff_compares_env_per_variable_and_runtime_fields():
    base = build_image([tar_layer(F("a"))], config={"Env": ["A=1", "B=2"], "Cmd": ["sh"]})
    other = build_image([tar_layer(F("a"))], config={
        "Env": ["A=1", "B=3", "C=4"], "Cmd": ["sh"], "User": "app",
        "ExposedPorts": {"80/tcp": {}}})
    changes = config_diff(image_input(base), image_input(other))
    assert [(c.field, c.key, c.a, c.b) for c in changes] == [
        ("Env", "B", "2", "3"), ("Env", "C", None, "4"), ("User", None, None, "app"),
        ("ExposedPorts", "80/tcp", None, {})]
    assert not diff(image_input(base), image_input(other)).same


def test_mtime_is_compared_only_on_request():
    a = image_input(build_image([tar_layer(F("f", "same", mtime=1))]))
    b = image_input(build_image([tar_layer(F("f", "same", mtime=2))]))
    assert diff(a, b).same
    assert [c.what for c in diff(a, b, mtime=True).changes] == [("mtime",)]


def test_diff_layers_compares_own_entries_including_markers():
    result = diff_layers(replace(multi(), upto=3), replace(multi(), upto=4))
    by = {c.path: c.status for c in result.changes}
    assert by[".wh.l2file"] == "added" and by["opq/.wh..wh..opq"] == "removed"
    assert by["a/added-later"] == "added" and by["modeonly"] == "removed"


def test_layer_numbers_out_of_range_are_usage_errors():
    with pytest.raises(UsageError, match="no layer 9"):
        diff(replace(multi(), upto=9), multi())


# --- single paths, scans ----------------------------------------------------------------

def test_which_lists_the_layers_that_wrote_and_deleted_a_path():
    events = which(multi(), "l2file")
    assert [(e.layer, e.action, e.how) for e in events] == [(3, "added", ""),
                                                           (4, "deleted", "whiteout")]
    assert [(e.layer, e.how) for e in which(multi(), "opq/sub/old2")] == [(2, ""), (3, "opaque")]


def test_read_file_follows_symlinks_and_refuses_other_types():
    img = image_input(build_image([tar_layer(D("etc"), F("usr-os", "ID=x\n"),
                                             L("etc/os-release", "../usr-os"))]))
    assert content(img, "etc/os-release") == b"ID=x\n"
    with pytest.raises(PathError, match="not a regular file"):
        read_file(img, "etc")
    with pytest.raises(PathError, match="does not exist"):
        read_file(img, "nope")


def test_a_layer_whose_diff_id_lies_is_refused():
    img = multi()
    bad = replace(img.layers[1], diff_id="sha256:" + "0" * 64)
    with pytest.raises(DigestMismatch, match="DiffID"):
        scan_layer(bad)


def test_scans_are_cached_in_the_store_and_not_read_again(tmp_path):
    store = Store(tmp_path / "cache").ensure()
    opened: list[int] = []
    img = multi(opened)
    first = analyse(img, store=store)
    assert sorted(opened) == [1, 2, 3, 4]
    opened.clear()
    again = analyse(img, store=store)
    assert opened == [] and again == first
    assert len(list((tmp_path / "cache" / "meta" / "compare").iterdir())) == 4


def test_memory_holds_metadata_only():
    big = b"\0" * (4 << 20)
    scan = scan_layer(image_input(build_image([tar_layer(F("big", big))])).layers[0])
    node = scan.entries[0]
    assert node.size == len(big) and node.digest.startswith("sha256:")
    assert not any(isinstance(getattr(node, f), bytes) and len(getattr(node, f)) > 64
                   for f in node.__slots__)


def test_shared_base_paths_reached_through_a_symlink_are_still_compared_by_content():
    base = tar_layer(D("real"), F("real/x", "base"), L("alias", "real"))
    a = image_input(build_image([base]))
    b = image_input(build_image([base, tar_layer(F("alias/x", "upper"))]))
    result = diff(a, b)
    assert [(c.path, c.what) for c in result.changes] == [("real/x", ("content", "size"))]
    assert result.layers_read == 3  # the base once with partial hashes, once in full


def test_unchanged_rewrite_on_top_of_a_shared_base_is_no_change():
    base = tar_layer(D("etc"), F("etc/conf", "same"), F("etc/other", "o"))
    a = image_input(build_image([base]))
    b = image_input(build_image([base, tar_layer(D("etc"), F("etc/conf", "same"))]))
    result = diff(a, b)
    assert result.same and result.layers_read == 2


def test_a_scan_kept_without_hashes_is_redone_for_a_diff(tmp_path):
    store = Store(tmp_path / "cache").ensure()
    opened: list[int] = []
    img = multi(opened)
    analyse(img, store=store)  # names and sizes only
    assert sorted(opened) == [1, 2, 3, 4]
    opened.clear()
    analyse(img, store=store)
    assert opened == []
    result = diff(replace(img, upto=2), replace(multi(opened), upto=3), store=store)
    assert [c.what for c in result.changes if c.path == "modeonly"] == [("mode",)]
    assert sorted(opened) == [1, 2, 3]  # hashed now, and kept so
    opened.clear()
    again = diff(replace(img, upto=2), replace(multi(opened), upto=3), store=store)
    assert again.changes == result.changes and again.layers_read == 0 and opened == []


def test_owner_xattr_and_device_changes_are_named():
    from fixtures.images import E
    a = image_input(build_image([tar_layer(
        F("f", "x", xattrs={"user.k": "1"}), F("o", "o"), E("dev", "char", devmajor=1, devminor=3),
        L("l", "one"))]))
    b = image_input(build_image([tar_layer(
        F("f", "x", xattrs={"user.k": "2"}), F("o", "o", uid=5, gid=6),
        E("dev", "char", devmajor=1, devminor=5), L("l", "two"))]))
    assert {c.path: c.what for c in diff(a, b).changes} == {
        "f": ("xattrs",), "o": ("uid", "gid"), "dev": ("device",), "l": ("link",)}
