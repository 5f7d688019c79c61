"""Images as the cache holds them: find a ref's platform manifest, config and layers offline.

Everything downstream of a pull (unpack, run, compare, save) starts here: ``resolve`` turns a
reference into the local OCI manifest of one platform, reading only the cache.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import CacheError, NotCached, PullerError, UsageError
from .manifest import REGISTRY_DIGEST, Descriptor, Index, Manifest, parse
from .platform import Platform, select
from .store import RefEntry, Store

TYPE_CHECKING = False  # typing costs more to import than this module: names for checkers only
if TYPE_CHECKING:
    from typing import BinaryIO

__all__ = ["CachedImage", "resolve", "lookup_ref", "layout_image", "PreparedImage", "prepare_rootfs"]


@dataclass(frozen=True, slots=True)
class CachedImage:
    """One platform's image, complete in the cache."""

    name: str                 # the ref name in index.json
    registry_digest: str      # what the registry calls the tag's target (index or manifest)
    manifest_digest: str      # the registry's digest of this platform's manifest
    manifest: Manifest        # the local (OCI) manifest
    config_raw: bytes
    platform: Platform

    @property
    def config(self) -> dict:
        return json.loads(self.config_raw)

    @property
    def local_digest(self) -> str:
        return self.manifest.digest

    @property
    def diff_ids(self) -> list[str]:
        return list(self.config.get("rootfs", {}).get("diff_ids") or [])

    def layer_openers(self, store: Store) -> list[Callable[[], BinaryIO]]:
        return [(lambda d=d: store.open_blob(d.digest, d.size)) for d in self.manifest.layers]


def lookup_ref(store: Store, ref) -> RefEntry | None:
    """The index.json entry for a parsed reference (by name, or by the digest it names)."""
    if ref.digest:
        return store.get_ref(f"{ref.name}@{ref.digest}") or store.find_by_registry_digest(ref.digest)
    return store.get_ref(str(ref))


def _load(store: Store, digest: str) -> Manifest | Index:
    try:
        return parse(store.read_blob(digest, max_size=4 * 1024 * 1024))
    except NotCached:
        raise
    except PullerError as e:
        raise CacheError(f"cached manifest {digest} is unusable: {e}") from None


def platform_child(store: Store, index: Index, wanted: Platform) -> Descriptor | None:
    """The cached child of ``index`` for ``wanted``, or None when that platform is not cached."""
    present = [(d.platform or Platform("", ""), d) for d in index.images() if store.has_blob(d.digest)]
    try:
        return select(present, wanted)  # type: ignore[return-value]
    except PullerError:
        return None


def is_complete(store: Store, manifest: Manifest) -> bool:
    return store.has_blob(manifest.config.digest, manifest.config.size) and all(
        store.has_blob(layer.digest, layer.size) for layer in manifest.layers)


def resolve(store: Store, entry: RefEntry, wanted: Platform) -> CachedImage | None:
    """The complete cached image of ``entry`` for ``wanted``, or None if something is missing."""
    if not store.has_blob(entry.descriptor.digest):
        return None
    top = _load(store, entry.descriptor.digest)
    manifest_registry_digest = entry.registry_digest
    if isinstance(top, Index):
        child = platform_child(store, top, wanted)
        if child is None:
            return None
        manifest_registry_digest = child.annotation(REGISTRY_DIGEST) or child.digest
        top = _load(store, child.digest)
        if isinstance(top, Index):
            raise CacheError(f"nested index {child.digest} is not supported")
        plat = child.platform or wanted
    else:
        plat = None
    if not is_complete(store, top):
        return None
    config_raw = store.read_blob(top.config.digest)
    if plat is None:
        try:
            plat = Platform.from_dict(json.loads(config_raw))
        except ValueError:
            raise CacheError(f"cached config {top.config.digest} is not JSON") from None
    return CachedImage(entry.name, entry.registry_digest, manifest_registry_digest, top, config_raw, plat)


def layout_image(spec: str, wanted: Platform) -> tuple[Store, CachedImage]:
    """``DIR[:REF]`` of an OCI image layout (REF may be left out when it holds one image):
    its store and CachedImage, as ``puller unpack --layout`` reads it."""
    path, _, refname = spec.partition(":")
    store = Store(path)
    if not store.exists():
        raise UsageError(f"{path} is not an OCI image layout (no index.json)")
    refs = store.refs()
    if refname:
        matches = [r for r in refs if r.name == refname]
    elif len(refs) > 1:
        raise UsageError(f"{path} holds {len(refs)} images; name one as {path}:REF")
    else:
        matches = refs
    if not matches:
        raise NotCached(f"no image {refname!r} in layout {path}")
    img = resolve(store, matches[0], wanted)
    if img is None:
        raise NotCached(f"image {refname or matches[0].name!r} in {path} is incomplete "
                        f"for {wanted}")
    return store, img


@dataclass(frozen=True, slots=True)
class PreparedImage:
    """An image ready to run: its unpacked read-only base rootfs and its runtime config."""

    ref: str
    digest: str
    rootfs: Path
    config: dict
    sidecar: Path | None
    cache_root: Path


def prepare_rootfs(ref: str, *, cache: str | None = None, pull: str = "missing",
                   platform: str | None = None, offline: bool = False,
                   progress: Callable[[object], None] | None = None,
                   registry_options=None) -> PreparedImage:
    """Make sure ``ref`` is cached and unpacked once into ``CACHE/rootfs/<digest>``.

    ``pull``: ``missing`` (default: a cached image starts without any network request),
    ``always`` (check the registry first) or ``never``.
    """
    from .platform import parse_platform
    from .reference import parse as parse_ref
    from .errors import UsageError
    if pull not in ("missing", "always", "never"):
        raise UsageError(f"invalid --pull value {pull!r}: expected missing, always or never")
    store = Store(cache)
    r = parse_ref(ref)
    wanted = parse_platform(platform)
    img = None
    if pull != "always":
        entry = lookup_ref(store, r) if store.exists() else None
        img = resolve(store, entry, wanted) if entry is not None else None
    if img is not None:
        rootfs, sidecar = ensure_rootfs(store, img, progress=progress)
    elif pull == "never" or offline:
        raise NotCached(f"{r.familiar} is not in the cache (and --pull never / --offline)")
    elif pull == "missing":  # not cached: layer n is applied while layer n+1 downloads
        from .pipeline import pull_into_rootfs
        img, rootfs, sidecar = pull_into_rootfs(r, store, wanted, options=registry_options,
                                                progress=progress)
    else:
        from .pull import pull as do_pull
        do_pull(r, store=store, platform=wanted, progress=progress, options=registry_options)
        img = pulled_image(store, r, wanted)
        rootfs, sidecar = ensure_rootfs(store, img, progress=progress)
    _pin(rootfs.with_name(rootfs.name + ".ready"))  # a running container's base survives prune
    return PreparedImage(img.name, img.manifest_digest, rootfs, img.config.get("config") or {},
                         sidecar, store.root)


def pulled_image(store: Store, ref, wanted: Platform) -> CachedImage:
    """The image a pull of ``ref`` just completed; CacheError if the cache lacks part of it."""
    entry = lookup_ref(store, ref)
    img = resolve(store, entry, wanted) if entry is not None else None
    if img is None:
        raise CacheError(f"{ref.familiar} was pulled but is not complete in the cache")
    return img


def ensure_rootfs(store: Store, img: CachedImage, *, progress=None) -> tuple[Path, Path | None]:
    """The shared base rootfs of ``img``, unpacked on first use (under a lock)."""
    return unpack_base(store, img.local_digest, img.layer_openers(store), img.diff_ids, progress=progress)


def unpack_base(store: Store, local_digest: str, openers: list[Callable[[], BinaryIO]],
                diff_ids: list[str], *, progress=None) -> tuple[Path, Path | None]:
    """``CACHE/rootfs/<digest>`` for the image whose local manifest is ``local_digest``:
    unpacked from ``openers`` unless a ``.ready`` marker says it already is; one process
    unpacks while the others wait on the lock. Returns it and its rootless record."""
    import os
    hexd = local_digest.split(":")[1]
    dest = store.rootfs_dir / hexd
    record = store.root / "rootless" / f"{hexd}.json"
    ready = store.rootfs_dir / f"{hexd}.ready"
    if not ready.exists():
        with store.lock_blob(local_digest):
            if not ready.exists():
                from .unpack import unpack
                store.rootfs_dir.mkdir(parents=True, exist_ok=True)
                record.parent.mkdir(parents=True, exist_ok=True)
                unpack(openers, diff_ids, dest, force=True,
                       record=record if os.geteuid() != 0 else None, progress=progress)
                ready.write_text(local_digest + "\n")
    return dest, (record if record.exists() else None)


_PINS: list[int] = []


def _pin(ready: Path) -> None:
    """Hold a shared lock on the rootfs' ``.ready`` marker for the life of this process:
    ``prune`` spares a rootfs that a running container stands on."""
    import fcntl
    import os
    try:
        fd = os.open(ready, os.O_RDONLY | os.O_CLOEXEC)
        fcntl.flock(fd, fcntl.LOCK_SH)
    except OSError:
        return
    _PINS.append(fd)
