"""Sync: pull many images into one OCI layout directory, for hosts without a network.

The target directory is itself a puller cache (``Store(dest_dir)``), so on the air-gapped
host ``puller --cache DIR --offline ...`` (or ``pull-and-run``) uses it as it is, and skopeo
or umoci read it as an OCI layout. Each reference is an ordinary :func:`puller.pull.pull`,
which makes sync resumable for free: what is complete is found by one HEAD (nothing at all
for a reference by digest) and skipped, and an interrupted blob continues from its
``partial/`` bytes. ``all_platforms`` pulls every platform an index lists (attestations
are not platforms), one pull per platform.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ._log import get_logger
from .errors import PullerError, UsageError
from .manifest import Index
from .platform import Platform
from .store import Store

log = get_logger("puller.sync")

__all__ = ["SyncItem", "SyncResult", "read_list", "sync"]

Emit = Callable[[dict], None]


@dataclass(frozen=True, slots=True)
class SyncItem:
    """One reference and platform: pulled, already complete, or failed (``error``)."""

    ref: str
    platform: str
    digest: str
    cached: bool
    downloaded_bytes: int
    error: str = ""

    def to_json(self) -> dict:
        return {"ref": self.ref, "platform": self.platform, "digest": self.digest,
                "cached": self.cached, "downloaded_bytes": self.downloaded_bytes,
                **({"error": self.error} if self.error else {})}


@dataclass(frozen=True, slots=True)
class SyncResult:
    dest: str
    items: tuple[SyncItem, ...]

    @property
    def ok(self) -> bool:
        return not any(i.error for i in self.items)

    def to_json(self) -> dict:
        return {"dest": self.dest, "ok": self.ok, "items": [i.to_json() for i in self.items]}


def read_list(path: str | Path) -> list[str]:
    """References from a list file: one a line; blank lines and ``#`` comments skipped."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise UsageError(f"cannot read the image list {path}: {e.strerror or e}") from None
    return [line.split("#", 1)[0].strip() for line in text.splitlines()
            if line.split("#", 1)[0].strip()]


def sync(refs: Iterable[str], dest_dir: str | Path, *, all_platforms: bool = False,
         platform: Platform | None = None, options=None, jobs: int = 4,
         progress: Emit | None = None) -> SyncResult:
    """Pull each of ``refs`` into the layout at ``dest_dir``; a failing reference does not
    stop the others (its item carries the error)."""
    from .reference import parse as parse_ref
    from .registry import RegistryOptions
    texts = list(refs)
    if not texts:
        raise UsageError("no images to sync: give references or --list FILE")
    parsed = [parse_ref(t) for t in texts]  # every reference checked before any network use
    store = Store(dest_dir).ensure()
    options = options or RegistryOptions.build()
    emit = progress or (lambda e: None)
    items: list[SyncItem] = []
    for ref in parsed:
        emit({"event": "sync-ref", "ref": str(ref)})
        try:
            platforms = _platforms(store, ref, options, emit) if all_platforms else [platform]
        except PullerError as e:
            items.append(SyncItem(str(ref), "", "", False, 0, str(e)))
            continue
        for plat in platforms:
            items.append(_pull_one(store, ref, plat, options, jobs, emit))
    return SyncResult(str(store.root), tuple(items))


def _pull_one(store: Store, ref, plat: Platform | None, options, jobs: int, emit: Emit) -> SyncItem:
    from .pull import pull
    try:
        r = pull(ref, store=store, platform=plat, options=options, jobs=jobs, progress=emit)
    except PullerError as e:
        log.warning("%s (%s): %s", ref, plat or "host platform", e)
        return SyncItem(str(ref), str(plat or ""), "", False, 0, str(e))
    return SyncItem(r.ref, r.platform, r.digest, r.cached, r.downloaded_bytes)


def _platforms(store: Store, ref, options, emit: Emit) -> list[Platform | None]:
    """Every image platform of what ``ref`` names ([None] for a single-platform image)."""
    from .image import lookup_ref
    from .manifest import parse
    from .registry import Registry
    top = None
    if ref.digest and store.has_blob(ref.digest):
        top = parse(store.read_blob(ref.digest))
    if top is None:
        entry = lookup_ref(store, ref)
        reg = Registry(ref.registry, options, on_event=emit)
        ident = ref.digest or ref.tag or "latest"
        head = None if ref.digest else reg.head_manifest(ref.repository, ident)
        if entry is not None and head is not None and head.digest == entry.registry_digest \
                and store.has_blob(head.digest):
            top = parse(store.read_blob(head.digest))   # unchanged since the last sync
        else:
            top = reg.get_manifest(ref.repository, head.digest if head else ident)
            store.put_bytes(top.raw, top.digest)
    if not isinstance(top, Index):
        return [None]
    plats = [d.platform for d in top.images() if d.platform is not None]
    return list(dict.fromkeys(plats)) or [None]
