"""The layer reader: format detection, streaming decompression, DiffID, tar parsing."""
from __future__ import annotations

import gzip
import hashlib
import io
import tarfile

import pytest

from fixtures import hostile
from fixtures.images import D, E, F, H, L, OPQ, WH, compress, sha256, tar_layer
from puller.errors import LayerError, LimitExceeded, UnsafeLayer
from puller.layer.reader import LayerEntry, LayerReader, Limits, normalise_path


def read_all(blob: bytes, **kw) -> tuple[list[LayerEntry], dict[str, bytes], LayerReader]:
    reader = LayerReader(io.BytesIO(blob), **kw)
    entries, contents = [], {}
    for entry in reader:
        entries.append(entry)
        if entry.type == "file":
            contents[entry.path] = b"".join(bytes(c) for c in reader.read_chunks())
    return entries, contents, reader


SAMPLE = tar_layer(D("etc"), F("etc/passwd", "root\n", mode=0o4750, uid=1, gid=2,
                               xattrs={"security.capability": "\x01\x00\x00\x02"}),
                   L("bin", "usr/bin"), H("etc/p2", "etc/passwd"),
                   E("dev/null", kind="char", devmajor=1, devminor=3), E("fifo", kind="fifo"),
                   F("big", bytes(range(256)) * 10_000), WH("x/y"), OPQ("z"))


@pytest.mark.parametrize("how", ["gzip", "zstd", "none"])
def test_detects_format_from_bytes_and_hashes_uncompressed(how: str) -> None:
    entries, contents, reader = read_all(compress(SAMPLE, how))
    assert reader.compression == how
    assert reader.diff_id == sha256(SAMPLE)
    assert [e.path for e in entries] == ["etc", "etc/passwd", "bin", "etc/p2", "dev/null",
                                         "fifo", "big", "x/.wh.y", "z/.wh..wh..opq"]
    assert contents["big"] == bytes(range(256)) * 10_000
    passwd = entries[1]
    assert (passwd.mode, passwd.uid, passwd.gid, passwd.size) == (0o4750, 1, 2, 5)
    assert passwd.xattr_dict == {"security.capability": b"\x01\x00\x00\x02"}
    assert entries[2].type == "symlink" and entries[2].linkname == "usr/bin"
    assert entries[3].type == "hardlink" and entries[3].linkname == "etc/passwd"
    assert (entries[4].type, entries[4].devmajor, entries[4].devminor) == ("char", 1, 3)
    assert entries[5].type == "fifo"
    assert entries[7].is_whiteout and entries[7].whiteout_target == "x/y"
    assert entries[8].is_opaque and entries[8].whiteout_target is None


def test_multi_member_gzip_is_read_whole() -> None:
    blob = hostile.multi_member_gzip(SAMPLE, pieces=5)
    entries, contents, reader = read_all(blob)
    assert len(entries) == 9 and reader.diff_id == sha256(SAMPLE)


def test_multi_frame_zstd_is_read_whole() -> None:
    import zstandard
    half = len(SAMPLE) // 2
    blob = (zstandard.ZstdCompressor().compress(SAMPLE[:half])
            + zstandard.ZstdCompressor().compress(SAMPLE[half:]))
    assert read_all(blob)[2].diff_id == sha256(SAMPLE)


@pytest.mark.parametrize("how", ["gzip", "zstd"])
def test_truncated_stream_is_an_error(how: str) -> None:
    blob = compress(SAMPLE, how)
    with pytest.raises(LayerError, match="truncated"):
        LayerReader(io.BytesIO(blob[: len(blob) - 20])).finish()


def test_truncated_plain_tar_is_an_error() -> None:
    with pytest.raises(LayerError, match="truncated"):
        LayerReader(io.BytesIO(SAMPLE[:1536 + 100])).finish()


@pytest.mark.parametrize("how", ["gzip", "zstd"])
def test_corrupt_stream_is_an_error(how: str) -> None:
    """zstd frames carry a checksum only when asked; without one the DiffID check catches it."""
    import zstandard
    blob = bytearray(compress(SAMPLE, how) if how == "gzip" else
                     zstandard.ZstdCompressor(write_checksum=True).compress(SAMPLE))
    blob[len(blob) // 2] ^= 0xFF
    blob[len(blob) // 2 + 1] ^= 0xFF
    with pytest.raises(LayerError):
        LayerReader(io.BytesIO(bytes(blob))).finish()


def test_garbage_after_gzip_member_is_an_error_but_nul_padding_is_not() -> None:
    blob = compress(SAMPLE, "gzip")
    assert LayerReader(io.BytesIO(blob + bytes(1000))).finish() == sha256(SAMPLE)
    with pytest.raises(LayerError, match="garbage"):
        LayerReader(io.BytesIO(blob + b"garbage")).finish()


def test_trailing_bytes_after_end_blocks_count_in_diff_id() -> None:
    """The DiffID covers the whole stream, not only up to the end-of-archive blocks."""
    tar = SAMPLE + b"trailing data" * 100
    reader = LayerReader(io.BytesIO(compress(tar, "gzip")))
    assert [e.path for e in reader][-1] == "z/.wh..wh..opq"
    assert reader.diff_id == sha256(tar) != sha256(SAMPLE)


def test_unread_content_is_skipped_and_still_hashed() -> None:
    reader = LayerReader(io.BytesIO(compress(SAMPLE, "zstd")))
    assert len(list(reader)) == 9
    assert reader.diff_id == sha256(SAMPLE)


def test_diff_id_needs_the_end() -> None:
    reader = LayerReader(io.BytesIO(SAMPLE))
    next(iter(reader))
    with pytest.raises(RuntimeError):
        reader.diff_id


def test_empty_stream_is_an_empty_layer() -> None:
    assert read_all(b"")[0] == []
    assert read_all(hostile.END)[0] == []


def test_bad_checksum_is_refused() -> None:
    blob = hostile.archive(hostile.member("a", b"x", bad_checksum=True))
    with pytest.raises(LayerError, match="checksum"):
        LayerReader(io.BytesIO(blob)).finish()


def test_unknown_type_is_refused() -> None:
    with pytest.raises(LayerError, match="unsupported"):
        LayerReader(io.BytesIO(hostile.archive(hostile.member("a", kind=b"Z")))).finish()


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_long_names_and_link_names(fmt: int) -> None:
    long_dir = "/".join(["d" * 200] * 5)
    tar = tar_layer(F(f"{long_dir}/file", "x"), L(f"{long_dir}/lnk", "t" * 300),
                    H(f"{long_dir}/hard", f"{long_dir}/file"), fmt=fmt)
    entries = read_all(tar)[0]
    assert [e.path for e in entries] == [f"{long_dir}/file", f"{long_dir}/lnk",
                                         f"{long_dir}/hard"]
    assert entries[1].linkname == "t" * 300 and entries[2].linkname == f"{long_dir}/file"


def test_ustar_prefix_field() -> None:
    name = "p" * 120 + "/" + "n" * 90
    tar = tar_layer(F(name, "x"), fmt=tarfile.USTAR_FORMAT)
    assert read_all(tar)[0][0].path == name


def test_pax_overrides_mtime_uid_and_binary_xattrs() -> None:
    blob = hostile.archive(
        hostile.pax({"mtime": "1600000000.123456789", "uid": "4000000", "gid": "7",
                     "path": "über/name", "SCHILY.xattr.user.bin": b"\x00\xff\n=",
                     "size": "3"}),
        hostile.member("short", b"abc"))
    entry = read_all(blob)[0][0]
    assert entry.path == "über/name" and entry.size == 3
    assert (entry.uid, entry.gid, entry.mtime_ns) == (4_000_000, 7, 1_600_000_000_123_456_789)
    assert entry.xattr_dict == {"user.bin": b"\x00\xff\n="}


def test_base256_numbers() -> None:
    h = bytearray(hostile.header("big-uid"))
    h[108:116] = b"\x80" + (2**40).to_bytes(7, "big")
    h[148:156] = b" " * 8
    h[148:156] = b"%06o\0 " % sum(h)
    assert read_all(hostile.archive(bytes(h)))[0][0].uid == 2**40


@pytest.mark.parametrize("raw,clean", [("./etc//passwd/", "etc/passwd"), ("/etc/x", "etc/x"),
                                       ("../../etc/x", "etc/x"), ("a/../../b", "b"),
                                       (".", ""), ("/", ""), ("./", "")])
def test_names_are_normalised_inside_the_root(raw: str, clean: str) -> None:
    assert normalise_path(raw) == clean
    blob = hostile.archive(hostile.member(raw, b"x"))
    assert read_all(blob)[0][0].path == clean


def test_nul_in_pax_name_is_refused() -> None:
    blob = hostile.archive(hostile.pax({"path": "a\0b"}), hostile.member("a"))
    with pytest.raises(LayerError):
        LayerReader(io.BytesIO(blob)).finish()


@pytest.mark.parametrize("name", [".wh.", ".wh..", ".wh...", "d/.wh..wh.plnk"])
def test_invalid_whiteout_names_are_refused(name: str) -> None:
    entry = read_all(hostile.archive(hostile.member(name)))[0][0]
    assert entry.is_whiteout
    with pytest.raises(UnsafeLayer):
        entry.whiteout_target


@pytest.mark.parametrize("fmt", ["gnu", "pax-0.0", "pax-0.1", "pax-1.0"])
def test_sparse_files(fmt: str) -> None:
    tar, content = hostile.gnu_sparse_tar(fmt)
    entries, contents, reader = read_all(tar)
    assert [e.path for e in entries] == ["sparse.bin"]
    assert entries[0].size == len(content) and entries[0].sparse
    stored = sum(n for _, n in entries[0].sparse)
    assert stored < len(content) // 4
    assert hashlib.sha256(contents["sparse.bin"]).digest() == hashlib.sha256(content).digest()
    assert reader.diff_id == sha256(tar)


def test_limits_path_depth_and_header() -> None:
    deep = "/".join(["d"] * 50)
    with pytest.raises(LimitExceeded):
        LayerReader(io.BytesIO(tar_layer(F(deep))), limits=Limits(max_depth=10)).finish()
    with pytest.raises(LimitExceeded):
        LayerReader(io.BytesIO(tar_layer(F("x" * 300))), limits=Limits(max_path=100)).finish()
    with pytest.raises(LimitExceeded):
        LayerReader(io.BytesIO(tar_layer(F("x" * 3000))), limits=Limits(max_header=1000)).finish()


def test_decompression_bomb_stops_at_the_byte_limit() -> None:
    bomb = hostile.zero_bomb(64 << 20)
    assert len(bomb) < 200_000
    with pytest.raises(LimitExceeded, match="max_bytes"):
        LayerReader(io.BytesIO(bomb), limits=Limits(max_bytes=8 << 20)).finish()


def test_entry_is_frozen_and_validated() -> None:
    entry = LayerEntry("a", "file")
    with pytest.raises(AttributeError):
        entry.path = "b"  # type: ignore[misc]
    with pytest.raises(ValueError):
        LayerEntry("a", "socket")


def test_reads_files_as_a_stream_not_whole() -> None:
    """Content comes in bounded chunks, so a big file never sits in memory at once."""
    tar = tar_layer(F("big", bytes(5 << 20)))
    reader = LayerReader(io.BytesIO(gzip.compress(tar)))
    next(iter(reader))
    sizes = [len(c) for c in reader.read_chunks()]
    assert sum(sizes) == 5 << 20 and max(sizes) <= 1 << 20


def test_stdlib_zlib_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The optional ISA-L inflater and stdlib zlib behave alike on every edge."""
    import zlib
    import puller.layer.decode as decode_mod
    monkeypatch.setattr(decode_mod, "_inflate_mod", zlib)
    assert read_all(hostile.multi_member_gzip(SAMPLE, 4))[2].diff_id == sha256(SAMPLE)
    blob = compress(SAMPLE, "gzip")
    with pytest.raises(LayerError, match="truncated"):
        LayerReader(io.BytesIO(blob[:-9])).finish()
    with pytest.raises(LayerError, match="garbage"):
        LayerReader(io.BytesIO(blob + b"junk")).finish()


def test_gnu_dumpdir_is_a_directory_and_its_listing_skipped() -> None:
    blob = hostile.archive(hostile.member("d/", b"Yfile\0\0", kind=b"D"),
                           hostile.member("d/file", b"x"))
    entries = read_all(blob)[0]
    assert [(e.path, e.type, e.size) for e in entries] == [("d", "dir", 0), ("d/file", "file", 1)]


from hypothesis import given, settings, strategies as st  # noqa: E402


FUZZ = hostile.without_end(tar_layer(F("a/b", "x", xattrs={"user.x": "y"}), L("l", "t"),
                                     H("h", "a/b"), D("d"), F("n" * 200, "long"),
                                     fmt=tarfile.PAX_FORMAT)) + hostile.archive(
    hostile.pax({"GNU.sparse.map": "0,1,10,1", "GNU.sparse.size": "20", "mtime": "1.5"}),
    hostile.member("s", b"ab"))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(FUZZ) - 1), st.integers(0, 255)),
                min_size=1, max_size=8),
       st.integers(0, len(FUZZ)))
def test_mutated_tars_fail_only_with_layer_errors(flips: list[tuple[int, int]], cut: int
                                                   ) -> None:
    """Whatever the bytes, the reader ends or raises LayerError: no other exception."""
    data = bytearray(FUZZ[:cut])
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    try:
        reader = LayerReader(io.BytesIO(bytes(data)))
        for entry in reader:
            for _ in reader.read_chunks():
                pass
            if entry.is_whiteout:
                try:
                    entry.whiteout_target
                except LayerError:
                    pass
    except LayerError:
        pass


@pytest.mark.parametrize("records", [{"uid": "abc"}, {"uid": "-1"}, {"size": "1e3"},
                                     {"GNU.sparse.map": "0,x"}, {"mtime": "soon"},
                                     {"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                                      "GNU.sparse.realsize": "10"}])
def test_bad_pax_values_are_layer_errors(records: dict[str, str]) -> None:
    blob = hostile.archive(hostile.pax(records), hostile.member("f", b"abc"))
    with pytest.raises(LayerError):
        LayerReader(io.BytesIO(blob)).finish()
