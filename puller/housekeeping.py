"""Keeping a cache tidy and sound: what is reachable, ``prune``, ``du`` and ``verify``.

Reachability starts at the refs of ``index.json`` and at kept containers, and follows
every descriptor: a ref's local (OCI) top and the registry's original top (its
``io.puller.registry.digest``), indexes to their children, manifests to their config and
layers, an OCI twin to the original manifest it was made from. Content of platforms that
were never pulled is simply absent; a blob that is present but reached by nothing is
garbage.

Kept containers (``containers/<name>/``) pin their image. The runner records the image
in ``container.json``; the convention read here, in order: a ``containers/<name>/image``
file holding the local manifest digest, the ``image_digest`` (or ``digest``) field of
``container.json``, its ``rootfs`` path (``.../rootfs/<hex>``), and finally its ``image``
field as a digest or a ref name of this cache.

Locking: ``prune`` holds ``gc_lock`` exclusively, so it waits for running pulls (which
hold it shared for their whole run) and no pull starts while it deletes; ``verify`` holds
it shared. ``tmp/`` entries younger than ``TMP_GRACE`` seconds are spared, because
processes that do not take the gc lock (``tag``, ``set_meta``) write there too. An
unreachable rootfs is removed under its image's blob lock (which an unpack holds), and
spared while anything holds a shared ``flock`` on its ``rootfs/<hex>.ready`` marker: the
convention for a container running on it.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ._log import get_logger
from .errors import CacheError, PullerError
from .manifest import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    MAX_MANIFEST_SIZE,
    REGISTRY_DIGEST,
    Descriptor,
    Index,
    Manifest,
    parse,
)
from .store import RefEntry, Store

log = get_logger("puller.housekeeping")

__all__ = [
    "BadBlob",
    "DiskUsage",
    "Graph",
    "ImageUsage",
    "PruneReport",
    "Removal",
    "VerifyReport",
    "du",
    "prune",
    "reachable",
    "remove_tree",
    "verify",
]

TMP_GRACE = 3600.0   # seconds: a tmp/ file younger than this may belong to a running write
_CHUNK = 1 << 20
_LAYERISH = ("tar", "gzip", "zstd", "in-toto", "octet-stream")

Emit = Callable[[dict], None]


# --- reachability --------------------------------------------------------------------

@dataclass
class Graph:
    """Everything reachable: each blob's descriptor, which images use it, and which blobs
    are local OCI twins of a registry original (``twins[twin] = original``)."""

    blobs: dict[str, Descriptor] = field(default_factory=dict)
    users: dict[str, set[str]] = field(default_factory=dict)
    twins: dict[str, str] = field(default_factory=dict)
    images: dict[str, set[str]] = field(default_factory=dict)   # image key -> ref names
    repos: dict[str, set[str]] = field(default_factory=dict)    # blob -> "registry/repo" users
    damaged: set[str] = field(default_factory=set)  # reachable manifests that do not parse

    def rootfs_hexes(self) -> set[str]:
        """Unpacked rootfs are named after the local manifest digest: keep reachable ones."""
        return {d.partition(":")[2] for d, desc in self.blobs.items()
                if desc.media_type in MANIFEST_TYPES or d in self.twins}


def _looks_like_manifest(desc: Descriptor) -> bool:
    if desc.media_type in MANIFEST_TYPES + INDEX_TYPES:
        return True
    return not desc.media_type or not any(k in desc.media_type for k in _LAYERISH) and \
        "config" not in desc.media_type


def _walk(store: Store, graph: Graph, desc: Descriptor, key: str, repo: str | None) -> None:
    """Add ``desc`` and everything below it to ``graph`` as used by image ``key``."""
    stack = [desc]
    while stack:
        d = stack.pop()
        seen = key in graph.users.get(d.digest, ())
        known = graph.blobs.get(d.digest)
        if known is None or (not known.media_type and d.media_type):
            graph.blobs[d.digest] = d
        graph.users.setdefault(d.digest, set()).add(key)
        if repo:
            graph.repos.setdefault(d.digest, set()).add(repo)
        original = d.annotation(REGISTRY_DIGEST)
        if original and original != d.digest:
            graph.twins[d.digest] = original
            stack.append(Descriptor(d.media_type if d.media_type in INDEX_TYPES else "",
                                    original, _size_or_zero(store, original)))
        if seen or not _looks_like_manifest(d) or not store.has_blob(d.digest):
            continue
        m = _parse_cached(store, d.digest)
        if m is None and d.media_type in MANIFEST_TYPES + INDEX_TYPES:
            graph.damaged.add(d.digest)
        if isinstance(m, Manifest):
            graph.blobs[d.digest] = Descriptor(m.media_type, d.digest, len(m.raw), d.platform,
                                               d.annotations)
            stack.extend((m.config, *m.layers))
        elif isinstance(m, Index):
            graph.blobs[d.digest] = Descriptor(m.media_type, d.digest, len(m.raw), d.platform,
                                               d.annotations)
            stack.extend(m.manifests)


def _size_or_zero(store: Store, digest: str) -> int:
    try:
        return os.lstat(store.blob_path(digest)).st_size
    except OSError:
        return 0


def _parse_cached(store: Store, digest: str) -> Manifest | Index | None:
    try:
        if os.lstat(store.blob_path(digest)).st_size > MAX_MANIFEST_SIZE:
            return None
        return parse(store.read_blob(digest, max_size=MAX_MANIFEST_SIZE))
    except (OSError, PullerError):
        return None   # not a manifest, or damaged: verify reports the latter


def _repo_of(name: str) -> str | None:
    from .reference import parse as parse_ref
    try:
        r = parse_ref(name)
    except PullerError:
        return None
    return f"{r.registry}/{r.repository}"


def container_pins(store: Store, refs: list[RefEntry]) -> dict[str, str]:
    """Kept container name -> the local manifest digest it pins (see the module docstring)."""
    pins: dict[str, str] = {}
    if not store.containers_dir.is_dir():
        return pins
    by_name = {r.name: r.descriptor.digest for r in refs}
    for path in sorted(store.containers_dir.iterdir()):
        digest = _container_digest(path, by_name)
        if digest:
            pins[path.name] = digest
        elif path.is_dir():
            log.warning("container %s records no image digest; its image is not pinned", path.name)
    return pins


def _container_digest(path: Path, by_name: dict[str, str]) -> str | None:
    with contextlib.suppress(OSError):
        text = (path / "image").read_text().strip()
        if text.startswith("sha256:"):
            return text
    try:
        meta = json.loads((path / "container.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict):
        return None
    for k in ("image_digest", "digest"):
        if str(meta.get(k, "")).startswith("sha256:"):
            return str(meta[k])
    rootfs = str(meta.get("rootfs") or "")
    if rootfs and Path(rootfs).parent.name == "rootfs":
        return "sha256:" + Path(rootfs).name
    image = str(meta.get("image") or "")
    if image.startswith("sha256:"):
        return image
    from .reference import parse as parse_ref
    with contextlib.suppress(PullerError):
        return by_name.get(str(parse_ref(image)))
    return None


def reachable(store: Store) -> Graph:
    """The reachability graph of ``store``: from every ref and every kept container."""
    graph = Graph()
    refs = store.refs() if store.exists() else []
    for entry in refs:
        key = entry.descriptor.digest
        graph.images.setdefault(key, set()).add(entry.name)
        repo = _repo_of(entry.name)
        _walk(store, graph, entry.descriptor, key, repo)
        if entry.registry_digest != entry.descriptor.digest:
            graph.twins.setdefault(entry.descriptor.digest, entry.registry_digest)
            _walk(store, graph, Descriptor(entry.registry_media_type, entry.registry_digest,
                                           _size_or_zero(store, entry.registry_digest)), key, repo)
    for name, digest in container_pins(store, refs).items():
        key = digest
        graph.images.setdefault(key, set()).add(f"container:{name}")
        _walk(store, graph, Descriptor("", digest, _size_or_zero(store, digest)), key, None)
    return graph


# --- removing trees ------------------------------------------------------------------

def remove_tree(path: Path) -> None:
    """Remove ``path`` (0000 files, 0555 dirs and all), never following a symlink: the
    applier's fd-relative remover, which ``unpack --force`` uses too."""
    from .layer.applier import remove_tree as applier_remove_tree
    applier_remove_tree(path)


# --- prune ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Removal:
    """One thing prune removed (or, with dry_run, would remove)."""

    kind: str      # blob | partial | tmp | meta | rootfs | rootless
    path: str
    size: int

    def to_json(self) -> dict:
        return {"kind": self.kind, "path": self.path, "size": self.size}


@dataclass(frozen=True, slots=True)
class PruneReport:
    removed: tuple[Removal, ...]
    dry_run: bool

    @property
    def bytes(self) -> int:
        return sum(r.size for r in self.removed)

    def count(self, kind: str) -> int:
        return sum(1 for r in self.removed if r.kind == kind)

    def to_json(self) -> dict:
        return {"dry_run": self.dry_run, "bytes": self.bytes,
                "removed": [r.to_json() for r in self.removed]}


def prune(store: Store, *, dry_run: bool = False, progress: Emit | None = None) -> PruneReport:
    """Remove everything no ref or kept container reaches; ``dry_run`` only lists it.

    Runs under the exclusive gc lock: it waits for running pulls, and pulls wait for it."""
    emit = progress or (lambda e: None)
    if not store.exists():
        return PruneReport((), dry_run)
    with store.gc_lock(shared=False):
        graph = reachable(store)
        if graph.damaged:
            raise CacheError(f"refusing to prune: cached manifest {min(graph.damaged)} is damaged, so "
                             "what it names cannot be told apart from garbage; run "
                             "'puller verify --repair' first")
        found = [*_prune_blobs(store, graph), *_prune_partials(store, graph),
                 *_prune_tmp(store), *_prune_meta(store, graph), *_prune_rootfs(store, graph)]
        done = []
        for r in found:
            if not dry_run and not _remove(store, r):
                continue
            emit({"event": "prune", "kind": r.kind, "path": r.path, "size": r.size,
                  "dry_run": dry_run})
            done.append(r)
    return PruneReport(tuple(done), dry_run)


def _prune_blobs(store: Store, graph: Graph) -> Iterator[Removal]:
    for digest in store.iter_blobs():
        if digest not in graph.blobs:
            yield Removal("blob", str(store.blob_path(digest)), _size_or_zero(store, digest))


def _prune_partials(store: Store, graph: Graph) -> Iterator[Removal]:
    """Partials of blobs a ref still reaches (an interrupted platform pull) stay for resume."""
    base = store.root / "partial"
    for p in sorted(base.glob("*/*")) if base.is_dir() else ():
        if f"{p.parent.name}:{p.name}" not in graph.blobs:
            yield Removal("partial", str(p), _tree_size(p))


def _prune_tmp(store: Store) -> Iterator[Removal]:
    now = time.time()
    for p in sorted(store.tmp_dir.iterdir()) if store.tmp_dir.is_dir() else ():
        with contextlib.suppress(FileNotFoundError):
            if now - os.lstat(p).st_mtime >= TMP_GRACE:
                yield Removal("tmp", str(p), _tree_size(p))


def _prune_meta(store: Store, graph: Graph) -> Iterator[Removal]:
    keep = {d.partition(":")[2] for d in graph.blobs}
    base = store.root / "meta"
    for p in sorted(base.glob("*.json")) if base.is_dir() else ():
        if p.name[:-5] not in keep:
            yield Removal("meta", str(p), _tree_size(p))
    # Layer scans of `puller layers/diff`: compare/<algo>-<hex>.v<N>.json.gz
    for p in sorted((base / "compare").glob("*.json.gz")) if (base / "compare").is_dir() else ():
        if p.name.split(".", 1)[0].partition("-")[2] not in keep:
            yield Removal("meta", str(p), _tree_size(p))


def _prune_rootfs(store: Store, graph: Graph) -> Iterator[Removal]:
    """An unreachable unpacked rootfs (the directory with its ``.ready`` marker, as one
    item) and its rootless record."""
    keep = graph.rootfs_hexes()
    names: set[str] = set()
    if store.rootfs_dir.is_dir():
        names |= {p.name.removesuffix(".ready") for p in store.rootfs_dir.iterdir()}
    rootless = store.root / "rootless"
    if rootless.is_dir():
        names |= {p.name.removesuffix(".json") for p in rootless.iterdir()}
    for hexd in sorted(names - keep):
        tree, ready = store.rootfs_dir / hexd, store.rootfs_dir / f"{hexd}.ready"
        if os.path.lexists(tree) or os.path.lexists(ready):
            yield Removal("rootfs", str(tree), _tree_size(tree) + _tree_size(ready))
        if os.path.lexists(rootless / f"{hexd}.json"):
            yield Removal("rootless", str(rootless / f"{hexd}.json"), _tree_size(rootless / f"{hexd}.json"))


def _remove(store: Store, r: Removal) -> bool:
    """Remove one item; False when it is gone already, or in use."""
    p = Path(r.path)
    try:
        if r.kind == "rootfs":
            return _remove_rootfs(store, p)
        if os.path.isdir(p) and not os.path.islink(p):
            remove_tree(p)
        else:
            os.unlink(p)
    except FileNotFoundError:
        return False
    except OSError as e:
        log.warning("cannot remove %s: %s", p, e.strerror or e)
        return False
    return True


def _remove_rootfs(store: Store, tree: Path) -> bool:
    """Remove an unpacked rootfs, then its ``.ready`` marker. It waits for an unpack of it
    that is running (those hold the image's blob lock) and spares a rootfs in use: a
    container running on it holds a shared ``flock`` on its ``.ready`` file."""
    ready = tree.parent / f"{tree.name}.ready"
    with store.lock_blob("sha256:" + tree.name):
        try:
            fd = os.open(ready, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = -1
        try:
            if fd >= 0:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    log.info("keeping %s: a container is running on it", tree)
                    return False
            if os.path.lexists(tree):
                remove_tree(tree)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(ready)
        finally:
            if fd >= 0:
                os.close(fd)
    return True


def _tree_size(path: Path) -> int:
    """Bytes of regular files below ``path`` (hardlinks once), not following symlinks."""
    total, seen = 0, set()
    try:
        st = os.lstat(path)
    except OSError:
        return 0
    if not stat.S_ISDIR(st.st_mode):
        return st.st_size if stat.S_ISREG(st.st_mode) else 0
    for top, _dirs, files, dfd in os.fwalk(path, follow_symlinks=False):
        for name in files:
            with contextlib.suppress(OSError):
                s = os.lstat(name, dir_fd=dfd)
                if stat.S_ISREG(s.st_mode) and (s.st_dev, s.st_ino) not in seen:
                    seen.add((s.st_dev, s.st_ino))
                    total += s.st_size
    return total


# --- du ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ImageUsage:
    """One image (refs sharing a local top digest): all its blobs, and those only it uses."""

    digest: str
    refs: tuple[str, ...]
    size: int
    exclusive: int

    def to_json(self) -> dict:
        return {"digest": self.digest, "refs": list(self.refs), "size": self.size,
                "exclusive": self.exclusive}


@dataclass(frozen=True, slots=True)
class DiskUsage:
    """Sizes in bytes. ``blobs == sum(exclusive) + shared + unreferenced`` always holds."""

    images: tuple[ImageUsage, ...]
    blobs: int
    blob_count: int
    shared: int
    unreferenced: int
    rootfs: int
    containers: int
    partial: int
    tmp: int
    meta: int

    @property
    def total(self) -> int:
        return self.blobs + self.rootfs + self.containers + self.partial + self.tmp + self.meta

    def to_json(self) -> dict:
        return {"images": [i.to_json() for i in self.images], "blobs": self.blobs,
                "blob_count": self.blob_count, "shared": self.shared,
                "unreferenced": self.unreferenced, "rootfs": self.rootfs,
                "containers": self.containers, "partial": self.partial, "tmp": self.tmp,
                "meta": self.meta, "total": self.total}


def du(store: Store) -> DiskUsage:
    """Where the cache's bytes are: per image, shared between images, unpacked, kept."""
    if not store.exists():
        return DiskUsage((), 0, 0, 0, 0, 0, 0, 0, 0, 0)
    graph = reachable(store)
    sizes = {d: _size_or_zero(store, d) for d in store.iter_blobs()}
    images = []
    for key, names in sorted(graph.images.items(), key=lambda kv: sorted(kv[1])):
        mine = [d for d, users in graph.users.items() if key in users and d in sizes]
        images.append(ImageUsage(key, tuple(sorted(names)), sum(sizes[d] for d in mine),
                                 sum(sizes[d] for d in mine if len(graph.users[d]) == 1)))
    shared = sum(s for d, s in sizes.items() if len(graph.users.get(d, ())) > 1)
    unref = sum(s for d, s in sizes.items() if d not in graph.users)
    return DiskUsage(tuple(images), sum(sizes.values()), len(sizes), shared, unref,
                     _tree_size(store.rootfs_dir), _tree_size(store.containers_dir),
                     _tree_size(store.root / "partial"), _tree_size(store.tmp_dir),
                     _tree_size(store.root / "meta"))


# --- verify --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class BadBlob:
    """A blob whose bytes do not hash to its name."""

    digest: str
    reason: str
    repaired: bool = False
    note: str = ""

    def to_json(self) -> dict:
        return {"digest": self.digest, "reason": self.reason, "repaired": self.repaired,
                **({"note": self.note} if self.note else {})}


@dataclass(frozen=True, slots=True)
class VerifyReport:
    checked: int
    bad: tuple[BadBlob, ...]

    @property
    def ok(self) -> bool:
        """Sound now: nothing bad, or every bad blob repaired."""
        return all(b.repaired for b in self.bad)

    def to_json(self) -> dict:
        return {"ok": self.ok, "checked": self.checked, "bad": [b.to_json() for b in self.bad]}


def check_blob(store: Store, digest: str) -> str | None:
    """Why the blob named ``digest`` is bad, or None when its bytes hash to its name."""
    path = store.blob_path(digest)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None  # pruned meanwhile: nothing to be wrong
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    with os.fdopen(fd, "rb", buffering=0) as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return "not a regular file"
        h = hashlib.new(digest.partition(":")[0])
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    got = f"{digest.partition(':')[0]}:{h.hexdigest()}"
    return None if got == digest else f"content hashes to {got}"


def verify(store: Store, *, repair: bool = False, options=None,
           progress: Emit | None = None) -> VerifyReport:
    """Re-hash every blob; with ``repair``, replace each bad one from a registry that has it."""
    emit = progress or (lambda e: None)
    if not store.exists():
        return VerifyReport(0, ())
    bad: list[BadBlob] = []
    with store.gc_lock(shared=True):
        digests = list(_valid_digests(store))
        for digest in digests:
            reason = check_blob(store, digest)
            emit({"event": "verify-blob", "digest": digest, "ok": reason is None})
            if reason is not None:
                bad.append(BadBlob(digest, reason))
        if repair and bad:
            bad = _repair_all(store, bad, options, emit)
    return VerifyReport(len(digests), tuple(bad))


def _valid_digests(store: Store) -> Iterable[str]:
    for digest in store.iter_blobs():
        try:
            store.blob_path(digest)
        except PullerError:
            log.warning("ignoring a file with an invalid digest name: %s", digest)
            continue
        yield digest


def _repair_all(store: Store, bad: list[BadBlob], options, emit: Emit) -> list[BadBlob]:
    """Repair in passes: registry blobs before the local twins derived from them, and a
    repaired manifest makes what it names reachable (so repairable) in the next pass."""
    done: dict[str, BadBlob] = {}
    pending = list(bad)
    while pending:
        unresolved = {b.digest for b in pending}
        graph = reachable(store)
        later = []
        for b in sorted(pending, key=lambda b: b.digest in graph.twins):
            graph = reachable(store)  # afresh: an earlier repair may have widened it
            source = graph.twins.get(b.digest)
            if b.digest not in graph.blobs or (source is not None and source in unresolved):
                later.append(b)
                continue
            done[b.digest] = _repair(store, graph, b, options, emit)
            unresolved.discard(b.digest)
        if len(later) == len(pending):
            break
        pending = later
    graph = reachable(store)
    for b in pending:
        note = ("no cached image uses it; 'puller prune' removes it" if b.digest not in graph.blobs
                else f"cannot be repaired: it is derived from {graph.twins.get(b.digest)}, "
                     "which is damaged too")
        done[b.digest] = BadBlob(b.digest, b.reason, False, note)
    return [done[b.digest] for b in bad]


def _repair(store: Store, graph: Graph, b: BadBlob, options, emit: Emit) -> BadBlob:
    """Delete the bad blob, then rebuild it locally (an OCI twin) or fetch it again."""
    desc = graph.blobs.get(b.digest)
    if desc is None:
        return BadBlob(b.digest, b.reason, False, "no cached image uses it; 'puller prune' removes it")
    with store.lock_blob(b.digest), contextlib.suppress(FileNotFoundError):
        os.unlink(store.blob_path(b.digest))
    errors: list[str] = []
    if b.digest in graph.twins:
        how = _rebuild_twin(store, b.digest, graph.twins[b.digest])
        if how:
            emit({"event": "repaired", "digest": b.digest, "how": "rebuilt"})
            return BadBlob(b.digest, b.reason, True, how)
        return BadBlob(b.digest, b.reason, False, "cannot be repaired: it exists only in this "
                       "cache and cannot be derived again; 'puller rmi' and pull the image again")
    for repo in sorted(graph.repos.get(b.digest, ())):
        try:
            _refetch(store, repo, desc, options, emit)
        except PullerError as e:
            errors.append(f"{repo}: {e}")
            continue
        emit({"event": "repaired", "digest": b.digest, "how": "fetched", "from": repo})
        return BadBlob(b.digest, b.reason, True, f"fetched again from {repo}")
    why = "; ".join(errors) if errors else "it exists only in this cache (re-pull the image)"
    return BadBlob(b.digest, b.reason, False, f"cannot be repaired: {why}")


def _rebuild_twin(store: Store, twin: str, original: str) -> str:
    """An OCI twin is derived from the registry's manifest: derive it again. Returns how
    it was repaired, or "" when it could not be."""
    m = _parse_cached(store, original) if store.has_blob(original) else None
    if isinstance(m, Manifest):
        oci = m.to_oci()
        if oci.digest != twin:
            return ""
        store.put_bytes(oci.raw, twin)
        return "rebuilt from the registry's manifest"
    if isinstance(m, Index):
        return _rebuild_index(store, twin, m)
    return ""


def _rebuild_index(store: Store, local: str, original: Index) -> str:
    """The local index of a Docker manifest list lists the OCI twins of the platforms that
    were pulled, in the order they were pulled: find that order again; failing that, point
    the refs at a new local index of the platforms present."""
    from .manifest import OCI_MANIFEST
    children = []
    for c in original.images():
        m = _parse_cached(store, c.digest) if store.has_blob(c.digest) else None
        if isinstance(m, Manifest) and store.has_blob(m.to_oci().digest):
            oci = m.to_oci()
            ann = ((REGISTRY_DIGEST, m.digest),) if oci.digest != m.digest else ()
            children.append(Descriptor(OCI_MANIFEST, oci.digest, len(oci.raw), c.platform, ann))
    if not children:
        return ""
    if len(children) <= 6:
        for order in itertools.permutations(children):
            candidate = original.with_children(list(order))
            if candidate.digest == local:
                store.put_bytes(candidate.raw, local)
                return "rebuilt from the registry's index and the platforms present"
    new = original.with_children(children)
    store.put_bytes(new.raw, new.digest)
    desc = Descriptor(new.media_type, new.digest, len(new.raw),
                      annotations=((REGISTRY_DIGEST, original.digest),))
    for entry in store.refs():
        if entry.descriptor.digest == local:
            store.set_ref(entry.name, desc, registry_digest=entry.registry_digest,
                          registry_media_type=entry.registry_media_type)
    return f"its refs now use a rebuilt local index {new.digest}"


def _refetch(store: Store, repo_path: str, desc: Descriptor, options, emit: Emit) -> None:
    from .pull import ByteCounter, fetch_blob
    from .registry import Registry, RegistryOptions
    registry, _, repo = repo_path.partition("/")
    reg = Registry(registry, options or RegistryOptions.build(), on_event=emit)
    if desc.media_type in MANIFEST_TYPES + INDEX_TYPES or not desc.media_type:
        try:
            m = reg.get_manifest(repo, desc.digest)
        except PullerError:
            if desc.media_type:
                raise
        else:
            store.put_bytes(m.raw, desc.digest)
            return
    fetch_blob(reg, store, repo, desc, emit, ByteCounter())
