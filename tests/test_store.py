import hashlib
import json
import multiprocessing
import os

import pytest

from puller.errors import DigestMismatch, NotCached
from puller.manifest import Descriptor
from puller.store import Store, default_cache_dir


def _d(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_layout_files(tmp_path):
    s = Store(tmp_path / "c").ensure()
    assert json.loads((s.root / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    assert json.loads((s.root / "index.json").read_text())["manifests"] == []


def test_cache_location_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "puller"
    monkeypatch.setenv("PULLER_CACHE", str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"


def test_blob_is_visible_only_after_verification(tmp_path):
    s = Store(tmp_path).ensure()
    data = b"hello world" * 1000
    w = s.writer(_d(data), len(data))
    w.write(data[:100])
    assert not s.has_blob(_d(data))
    w.write(data[100:])
    w.commit()
    assert s.has_blob(_d(data), len(data))
    assert s.read_blob(_d(data)) == data
    assert os.listdir(s.tmp_dir) == []


def test_wrong_bytes_are_discarded(tmp_path):
    s = Store(tmp_path).ensure()
    w = s.writer(_d(b"good"), 4)
    w.write(b"evil")
    with pytest.raises(DigestMismatch, match="discarded"):
        w.commit()
    assert not s.has_blob(_d(b"good"))
    assert os.listdir(s.tmp_dir) == []


def test_oversized_stream_is_cut_off(tmp_path):
    s = Store(tmp_path).ensure()
    w = s.writer(_d(b"abc"), 3)
    with pytest.raises(DigestMismatch, match="larger"):
        w.write(b"abcdef")
    w.abort()
    assert os.listdir(s.tmp_dir) == []


def test_resumable_partial_survives_and_continues(tmp_path):
    s = Store(tmp_path).ensure()
    data = os.urandom(5000)
    w = s.writer(_d(data), len(data), resumable=True)
    w.write(data[:3000])
    w.abort()  # interrupted: kept in partial/, not in blobs/
    assert s.partial_path(_d(data)).stat().st_size == 3000
    assert not s.has_blob(_d(data))
    w2 = s.writer(_d(data), len(data), resumable=True)
    assert w2.offset == 3000
    w2.write(data[3000:])
    w2.commit()
    assert s.read_blob(_d(data)) == data
    assert not s.partial_path(_d(data)).exists()


def test_corruption_on_disk_is_detected_on_use(tmp_path):
    s = Store(tmp_path).ensure()
    d = s.put_bytes(b"content that will rot")
    p = s.blob_path(d)
    p.write_bytes(b"content that will ROT")
    with pytest.raises(DigestMismatch, match="corrupt"):
        s.read_blob(d)
    with pytest.raises(NotCached):
        s.open_blob(_d(b"missing"))


def test_symlinked_blob_is_not_followed(tmp_path):
    s = Store(tmp_path).ensure()
    (tmp_path / "outside").write_bytes(b"x")
    d = _d(b"x")
    s.blob_path(d).parent.mkdir(parents=True, exist_ok=True)
    s.blob_path(d).symlink_to(tmp_path / "outside")
    assert not s.has_blob(d)


def _add_refs(root: str, start: int) -> None:
    s = Store(root)
    for i in range(start, start + 20):
        digest = s.put_bytes(f"m{i}".encode())
        s.set_ref(f"example.com/r:{i}", Descriptor("application/vnd.oci.image.manifest.v1+json", digest, 2 + len(str(i))))


def test_concurrent_ref_updates_lose_nothing(tmp_path):
    Store(tmp_path).ensure()
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_add_refs, args=(str(tmp_path), k * 100)) for k in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    names = {r.name for r in Store(tmp_path).refs()}
    assert len(names) == 120


def test_set_ref_replaces_and_remove(tmp_path):
    s = Store(tmp_path).ensure()
    a, b = s.put_bytes(b"a"), s.put_bytes(b"b")
    s.set_ref("x.io/r:1", Descriptor("application/vnd.oci.image.manifest.v1+json", a, 1), registry_digest=b)
    s.set_ref("x.io/r:1", Descriptor("application/vnd.oci.image.manifest.v1+json", b, 1))
    refs = s.refs()
    assert len(refs) == 1 and refs[0].descriptor.digest == b
    assert s.remove_ref("x.io/r:1") and s.refs() == []


def test_writeback_of_a_large_blob_starts_while_it_is_written(tmp_path, monkeypatch):
    """Every 4 MiB the written range is handed to the kernel to write back (so the fsync at
    commit has little left to do); the ranges follow each other, each once."""
    calls = []
    real = os.posix_fadvise
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, off, n, advice: (calls.append((off, n, advice)),
                                                                        real(fd, off, n, advice)))
    data = os.urandom(256 * 1024) * 40  # 10 MiB
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    store = Store(tmp_path).ensure()
    w = store.writer(digest, len(data), resumable=True)
    for i in range(0, len(data), 256 * 1024):
        w.write(data[i:i + 256 * 1024])
    w.commit()
    mib = 1024 * 1024
    assert calls == [(0, 4 * mib, os.POSIX_FADV_DONTNEED), (4 * mib, 4 * mib, os.POSIX_FADV_DONTNEED)]
    assert store.read_blob(digest) == data
