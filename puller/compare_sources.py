"""Where compared images come from: the cache (pulling what is missing), OCI layouts on disk,
docker-archive tar files, with ``@N`` selecting the first N layers (or layer N).

``open_input(spec, ...)`` understands::

    alpine:3.10, registry:5000/repo@sha256:...   cached, or pulled unless offline
    oci:DIR[:REF]                                an OCI image layout (never written to)
    docker-archive:FILE[:REF]                    ``docker save`` output (plain or gzipped)
    any of them followed by @N                   layer N (1-based) / the first N layers

A docker-archive is loaded with ``puller.archive.load`` into a throw-away store when that
module exists; otherwise it is read here directly: ``manifest.json`` names the config and the
layer tars, which are streamed out of the archive one at a time.
"""
from __future__ import annotations

import functools
import json
import re
import tarfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .compare import ImageInput, LayerRef, history_of
from .errors import ArchiveError, NotCached, UsageError

__all__ = ["Source", "docker_archive", "from_cached", "open_input",
           "split_layer"]

_LAYER_SUFFIX = re.compile(r"^(?P<spec>.+)@(?P<n>[0-9]+)$")
_TAR_LAYER = "application/vnd.docker.image.rootfs.diff.tar"


@dataclass(frozen=True, slots=True)
class Source:
    """An opened input: the image, and the store whose ``meta/`` may cache layer scans
    (the puller cache only: a user's OCI layout or archive is never written to)."""
    image: ImageInput
    cache: Any


def split_layer(spec: str) -> tuple[str, int | None]:
    """``REF@N`` -> (REF, N); digests (``@sha256:...``) are left alone."""
    m = _LAYER_SUFFIX.match(spec)
    if not m:
        return spec, None
    n = int(m.group("n"))
    if n < 1:
        raise UsageError(f"{spec!r}: layers are numbered from 1")
    return m.group("spec"), n


def from_cached(store: Any, img: Any, name: str, *, keep_scans: bool = False) -> ImageInput:
    """An ImageInput over a :class:`puller.image.CachedImage` of ``store``; with
    ``keep_scans`` (the puller cache) layer scans are kept in ``store``'s meta."""
    config = img.config
    layers = img.manifest.layers
    diff_ids = img.diff_ids
    if len(diff_ids) != len(layers):
        raise ArchiveError(f"{name}: the config lists {len(diff_ids)} DiffIDs for "
                           f"{len(layers)} layers")
    history = history_of(config, len(layers))
    refs = tuple(
        LayerRef(i + 1, d.digest, diff_ids[i], d.size, d.media_type,
                 functools.partial(store.open_blob, d.digest, d.size), history[i],
                 store if keep_scans else None)
        for i, d in enumerate(layers))
    return ImageInput(name, config, refs, str(img.platform), img.manifest_digest,
                      img.manifest.media_type)


def open_input(spec: str, *, wanted: Any,
               resolve_image: Callable[[str], tuple[Any, Any]]) -> Source:
    """Resolve one command-line image argument (see the module docstring).

    The CLI passes its resolver of references in (``resolve_image(ref) -> (store,
    CachedImage)``, pulling what is missing unless offline), so that this module never
    imports the CLI nor, for local inputs, the HTTP stack."""
    base, upto = split_layer(spec)
    if base.startswith("oci:"):
        from .image import layout_image
        store, img = layout_image(base[4:], wanted)
        source = Source(from_cached(store, img, spec), None)
    elif base.startswith("docker-archive:"):
        source = Source(_archive(base[len("docker-archive:"):], wanted), None)
    else:
        store, img = resolve_image(base)
        if img is None:
            raise NotCached(f"{base} is not complete in the cache for {wanted}")
        source = Source(from_cached(store, img, base, keep_scans=True), store)
    if upto is not None:
        if upto > len(source.image.layers):
            raise UsageError(f"{base} has {len(source.image.layers)} layers; there is no "
                             f"layer {upto} (layers are numbered from 1)")
        source = Source(replace(source.image, name=spec, upto=upto), source.cache)
    return source


def _archive(spec: str, wanted: Any) -> ImageInput:
    path, ref = _archive_spec(spec)
    if not path.is_file():
        raise UsageError(f"docker-archive {path} does not exist")
    try:
        from .archive import load  # written alongside; preferred when present
    except ModuleNotFoundError as e:
        if e.name != "puller.archive":
            raise
        return docker_archive(path, ref)
    return _via_store(load, path, ref, wanted)


def _archive_spec(spec: str) -> tuple[Path, str | None]:
    """``FILE`` or ``FILE:REF`` (a colon inside an existing file's name stays part of it)."""
    if Path(spec).exists() or ":" not in spec:
        return Path(spec), None
    head, _, ref = spec.partition(":")
    return Path(head), ref or None


def _via_store(load: Callable[..., Any], path: Path, ref: str | None, wanted: Any
               ) -> ImageInput:
    """Load the archive into a temporary store (removed at exit) and take its image."""
    import atexit
    import shutil
    import tempfile

    from .image import resolve
    from .store import Store
    tmp = Path(tempfile.mkdtemp(prefix="puller-compare-"))
    atexit.register(shutil.rmtree, tmp, True)
    store = Store(tmp).ensure()
    load(path, store)
    refs = store.refs()
    chosen = [r for r in refs if ref is None or r.name == ref or r.name.endswith("/" + ref)]
    if len(chosen) != 1:
        names = ", ".join(r.name for r in refs) or "none"
        raise UsageError(f"{path}: name one image as docker-archive:{path}:REF (has: {names})")
    img = resolve(store, chosen[0], wanted)
    if img is None:
        raise ArchiveError(f"{path}: image {chosen[0].name} is incomplete for {wanted}")
    return from_cached(store, img, f"docker-archive:{path}")


def docker_archive(path: Path, ref: str | None = None) -> ImageInput:
    """Read ``docker save`` output in place: its manifest.json, config, and layer tars."""
    try:
        tar = tarfile.open(path, "r:*")  # noqa: SIM115 - open while its layers are read
        members = {m.name.removeprefix("./"): m
                   for m in tar.getmembers()}
        manifest = json.loads(_member(tar, members, "manifest.json"))
    except (OSError, tarfile.TarError, ValueError) as e:
        raise ArchiveError(f"{path} is not a readable docker-archive: {e}") from None
    if not isinstance(manifest, list) or not manifest:
        raise ArchiveError(f"{path}: manifest.json lists no image")
    entry = _pick(manifest, ref, path)
    try:
        config = json.loads(_member(tar, members, entry["Config"]))
        layer_names = list(entry["Layers"])
    except (KeyError, TypeError, ValueError) as e:
        raise ArchiveError(f"{path}: bad manifest.json entry: {e}") from None
    diff_ids = list((config.get("rootfs") or {}).get("diff_ids") or [])
    if len(diff_ids) != len(layer_names):
        raise ArchiveError(f"{path}: {len(layer_names)} layers but {len(diff_ids)} DiffIDs")
    history = history_of(config, len(layer_names))
    layers = []
    for i, name in enumerate(layer_names):
        member = members.get(name)
        if member is None or not member.isfile():
            raise ArchiveError(f"{path}: layer {name} is missing from the archive")
        digest = ("sha256:" + name.rsplit("/", 1)[1] if name.startswith("blobs/sha256/")
                  else diff_ids[i])
        layers.append(LayerRef(i + 1, digest, diff_ids[i], member.size, _TAR_LAYER,
                               functools.partial(_open_member, tar, member, path),
                               history[i]))
    plat = "/".join(p for p in (config.get("os"), config.get("architecture"),
                                config.get("variant")) if p)
    tags = entry.get("RepoTags") or []
    return ImageInput(f"docker-archive:{path}" + (f" ({tags[0]})" if tags else ""), config,
                      tuple(layers), plat, "", "docker-archive")


def _member(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo], name: str) -> bytes:
    member = members.get(name)
    if member is None:
        raise ArchiveError(f"{name} is missing from the archive")
    f = tar.extractfile(member)
    if f is None:
        raise ArchiveError(f"{name} in the archive is not a file")
    return f.read(64 << 20)


class _Slice:
    """One member of an uncompressed archive, read through its own file handle (scans of
    several layers run in threads; a shared tarfile handle would mix their reads)."""

    def __init__(self, path: Path, offset: int, size: int) -> None:
        self._f = open(path, "rb")  # noqa: SIM115 - closed by close(), as LayerReader does
        self._f.seek(offset)
        self._left = size

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        data = self._f.read(n)
        self._left -= len(data)
        return data

    def close(self) -> None:
        self._f.close()


class _Locked:
    """A member of a compressed archive: every read seeks the shared stream, under a lock."""

    _lock = threading.Lock()

    def __init__(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        with self._lock:
            f = tar.extractfile(member)
        if f is None:
            raise ArchiveError(f"{member.name} is not a file")
        self._f = f

    def read(self, n: int = -1) -> bytes:
        with self._lock:
            return self._f.read(n)

    def close(self) -> None:
        self._f.close()


def _open_member(tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path) -> Any:
    if not member.isfile():
        raise ArchiveError(f"{path}: {member.name} is not a file")
    if _compressed(path):
        return _Locked(tar, member)
    return _Slice(path, member.offset_data, member.size)


@functools.lru_cache(maxsize=8)
def _compressed(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(6)
    return head[:2] == b"\x1f\x8b" or head[:4] == b"\x28\xb5\x2f\xfd" or head[:3] == b"BZh" \
        or head[:6] == b"\xfd7zXZ\x00"


def _pick(manifest: list[Any], ref: str | None, path: Path) -> dict[str, Any]:
    if ref is None:
        if len(manifest) > 1:
            raise UsageError(f"{path} holds {len(manifest)} images; name one as "
                             f"docker-archive:{path}:REF")
        return dict(manifest[0])
    for item in manifest:
        tags = item.get("RepoTags") or []
        if ref in tags or any(t.endswith("/" + ref) for t in tags):
            return dict(item)
    raise NotCached(f"no image {ref!r} in {path}")
