"""Compare layers and images without unpacking them: change sets, merged views and diffs.

Everything here works on the *metadata* of layers, read as a stream with
:class:`puller.layer.reader.LayerReader`: one pass per layer, file contents hashed while they
stream by and then dropped, so memory grows with the number of entries, never with their
bytes. The pieces, bottom up:

* :func:`scan_layer` reads one layer into a :class:`LayerScan` (its entries as :class:`Node`
  values, its explicit and opaque whiteouts, its DiffID). Scans are cached per blob under
  ``CACHE/meta/compare/`` when a store is given, so a second run reads no layer at all.
* :class:`View` is a merged filesystem: it applies scans in order with the rules of the
  OCI image-spec changesets (whiteouts only hide what lower layers wrote, an opaque marker
  hides a directory's lower children, a non-directory replaces a whole subtree, a directory
  over a directory only updates its metadata, symlinks in parents are followed inside the
  root as umoci and containerd do, hardlinks take their target's inode). Applying a layer
  yields its :class:`LayerChanges`: what it added, modified and deleted, and how many bytes
  of lower (or its own earlier) files it made *wasted*.
* :func:`analyse` gives per-layer statistics and the image's efficiency; :func:`diff` the
  difference of two merged filesystems (skipping the shared leading layers' contents: they
  are merged once and only the paths the upper layers touch are compared) and of the two
  runtime configs; :func:`diff_layers` compares two layers' own entries.

Paths are relative and normalised (``etc/passwd``); the CLI adds the leading ``/``.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, BinaryIO

from ._log import get_logger
from .errors import DigestMismatch, LayerError, PullerError, UsageError
from .layer.reader import LayerReader

log = get_logger("puller.compare")

__all__ = [
    "RUNTIME_FIELDS",
    "Analysis",
    "Change",
    "ConfigChange",
    "DiffResult",
    "ImageInput",
    "LayerChanges",
    "LayerRef",
    "LayerScan",
    "LayerStats",
    "Node",
    "PathError",
    "View",
    "analyse",
    "diff",
    "diff_layers",
    "history_of",
    "merged_view",
    "read_file",
    "scan_all",
    "scan_layer",
    "which",
]

Progress = Callable[[dict[str, Any]], None]
_SCAN_FORMAT = 1
_MAX_SYMLINKS = 40
_NODE_TYPES = frozenset(("file", "dir", "symlink", "hardlink", "char", "block", "fifo",
                         "whiteout", "opaque"))
RUNTIME_FIELDS = ("Env", "Entrypoint", "Cmd", "WorkingDir", "User", "ExposedPorts", "Volumes",
                  "Labels")


class PathError(PullerError):
    """A path that is not in the image (or not of the kind asked for).

    Not yet in ``puller/errors.py``; subclassed here from PullerError (exit status 1)."""


@dataclass(frozen=True, slots=True)
class Node:
    """One path of a layer or of a merged view, with what a diff compares.

    ``type`` is file, dir, symlink, hardlink (only inside a :class:`LayerScan`; a merged view
    resolves it to its target's type and keeps the target in ``hardlink``), char, block or
    fifo. ``digest`` is the sha256 of a file's content. ``layer`` is the 1-based layer that
    wrote this path; ``source`` is ``(layer, entry ordinal)`` of the tar entry that holds its
    bytes (for a hardlink: its target's), to read the content back.
    """
    path: str
    type: str
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime_ns: int = 0
    link: str = ""
    hardlink: str = ""
    digest: str = ""
    xattrs: tuple[tuple[str, bytes], ...] = ()
    device: tuple[int, int] = (0, 0)
    layer: int = 0
    source: tuple[int, int] = (0, -1)
    implicit: bool = False

    def __post_init__(self) -> None:
        if self.type not in _NODE_TYPES:
            raise ValueError(f"unknown node type {self.type!r} for {self.path!r}")

    @property
    def own_bytes(self) -> int:
        """Content bytes the layer stores for this entry (hardlinks store none)."""
        return self.size if self.type == "file" and not self.hardlink else 0

    @property
    def parent(self) -> str:
        return self.path.rpartition("/")[0]

    @property
    def name(self) -> str:
        return self.path.rpartition("/")[2]

    def differences(self, other: Node, *, mtime: bool = False) -> tuple[str, ...]:
        """Names of the attributes that differ (content, size, type, mode, ...)."""
        out = []
        if self.type != other.type:
            out.append("type")
        if self.type == other.type == "file" and self.digest != other.digest:
            out.append("content")
        if self.size != other.size:
            out.append("size")
        for name in ("mode", "uid", "gid", "link", "device", "xattrs"):
            if name == "mode" and self.type == other.type == "symlink":
                continue  # Linux has no symlink permissions: every unpack shows 0777
            if getattr(self, name) != getattr(other, name):
                out.append(name)
        if mtime and self.mtime_ns // 1_000_000_000 != other.mtime_ns // 1_000_000_000:
            out.append("mtime")
        return tuple(out)

    def to_cache(self) -> list[Any]:
        return [self.path, self.type, self.mode, self.uid, self.gid, self.size, self.mtime_ns,
                self.link, self.hardlink, self.digest,
                [[k, v.hex()] for k, v in self.xattrs], list(self.device), self.source[1]]

    @classmethod
    def from_cache(cls, row: list[Any], layer: int) -> Node:
        (path, type_, mode, uid, gid, size, mtime_ns, link, hardlink, digest, xattrs, device,
         ordinal) = row
        return cls(path, type_, mode, uid, gid, size, mtime_ns, link, hardlink, digest,
                   tuple((k, bytes.fromhex(v)) for k, v in xattrs), (device[0], device[1]),
                   layer, (layer, ordinal) if type_ == "file" else (0, -1))


# --- inputs ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class LayerRef:
    """One layer of an image: how to open its blob and what the manifest and config say."""
    index: int                       # 1-based
    digest: str                      # the blob's digest (compressed), as the manifest says
    diff_id: str                     # the config's DiffID (uncompressed digest), "" if unknown
    size: int                        # compressed size
    media_type: str
    open: Callable[[], BinaryIO] = field(repr=False, compare=False)
    created_by: str = ""
    cache: Any = field(default=None, repr=False, compare=False)  # a Store keeping its scan

    def __post_init__(self) -> None:
        if self.index < 1:
            raise ValueError(f"layer index {self.index}: layers are numbered from 1")


@dataclass(frozen=True, slots=True)
class ImageInput:
    """An image (or its first ``len(layers)`` layers) to compare, wherever it came from."""
    name: str
    config: dict[str, Any]
    layers: tuple[LayerRef, ...]
    platform: str = ""
    digest: str = ""                 # manifest digest (the registry's when known)
    media_type: str = ""
    upto: int | None = None          # REF@N: only the first N layers count

    def chain(self) -> list[str]:
        """Layer identities for the same-chain check: DiffIDs (blob digests if unknown)."""
        return [layer.diff_id or layer.digest for layer in self.layers]

    @property
    def runtime(self) -> dict[str, Any]:
        return dict(self.config.get("config") or {})


def history_of(config: dict[str, Any], count: int) -> list[str]:
    """``created_by`` of each layer: history entries with ``empty_layer`` are skipped."""
    steps = [h for h in config.get("history") or () if isinstance(h, dict)
             and not h.get("empty_layer")]
    out = [str(h.get("created_by") or h.get("comment") or "") for h in steps[:count]]
    return out + [""] * (count - len(out))


# --- scanning one layer ---------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class LayerScan:
    """A layer's own entries, as it states them (nothing resolved against lower layers)."""
    index: int
    entries: tuple[Node, ...]          # tar order, whiteouts excluded
    whiteouts: tuple[str, ...]         # paths a ``.wh.NAME`` deletes
    opaques: tuple[str, ...]           # directories whose lower children a marker hides
    diff_id: str
    size: int                          # uncompressed bytes
    compression: str

    @property
    def stored_bytes(self) -> int:
        return sum(n.own_bytes for n in self.entries)


def _cache_path(store: Any, digest: str) -> Any:
    return store.root / "meta" / "compare" / f"{digest.replace(':', '-')}.v{_SCAN_FORMAT}.json.gz"


def _load_scan(store: Any, layer: LayerRef, *, hashed: bool) -> LayerScan | None:
    """The cached scan of ``layer`` (one with every content hash if ``hashed``)."""
    try:
        with gzip.open(_cache_path(store, layer.digest), "rt", encoding="utf-8") as f:
            doc = json.load(f)
        if (hashed and not doc["hashed"]) or (layer.diff_id and doc["diff_id"] != layer.diff_id):
            return None
        entries = tuple(Node.from_cache(row, layer.index) for row in doc["entries"])
        return LayerScan(layer.index, entries, tuple(doc["whiteouts"]), tuple(doc["opaques"]),
                         doc["diff_id"], doc["size"], doc["compression"])
    except (OSError, ValueError, KeyError, TypeError, EOFError):
        return None


def _save_scan(store: Any, digest: str, scan: LayerScan, *, hashed: bool) -> None:
    """Atomically write the scan next to the cache's other blob facts; failures only log."""
    path = _cache_path(store, digest)
    doc = {"entries": [n.to_cache() for n in scan.entries], "whiteouts": list(scan.whiteouts),
           "opaques": list(scan.opaques), "diff_id": scan.diff_id, "size": scan.size,
           "compression": scan.compression, "hashed": hashed}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
        with os.fdopen(fd, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb",
                                                       compresslevel=1, mtime=0) as f:
            f.write(json.dumps(doc, separators=(",", ":")).encode())
        os.replace(tmp, path)
    except OSError as e:
        log.warning("cannot cache the layer summary of %s: %s", digest, e)


def scan_layer(layer: LayerRef, *, store: Any = None, progress: Progress | None = None,
               hash_content: bool | Callable[[str], bool] = True) -> LayerScan:
    """Read one layer once: entries, whiteouts, content hashes and the DiffID (checked).

    ``hash_content=False`` leaves ``Node.digest`` empty for callers that only need names
    and sizes (``layers``); a predicate hashes only the paths it accepts (a diff's shared
    base: what the upper layers touch). With ``store`` (the puller cache) the result is kept
    under ``meta/compare/`` keyed by the blob digest, and a later call returns it without
    opening the blob; there a predicate means all (the kept scan serves every later use),
    and a scan kept without hashes is taken again only by callers that need none. Without
    ``store``, the layer's own ``cache`` (set for layers of the puller cache) is used."""
    store = store if store is not None else layer.cache
    if store is not None and callable(hash_content):
        hash_content = True
    wants: Callable[[str], bool] = (hash_content if callable(hash_content)
                                    else (lambda _path: True) if hash_content
                                    else (lambda _path: False))
    if store is not None:
        cached = _load_scan(store, layer, hashed=hash_content is True)
        if cached is not None:
            return cached
    if progress:
        progress({"event": "layer-scan", "index": layer.index, "digest": layer.digest,
                  "size": layer.size})
    entries: list[Node] = []
    whiteouts: list[str] = []
    opaques: list[str] = []
    with LayerReader(layer.open()) as reader:
        for ordinal, e in enumerate(reader):
            if e.is_opaque:
                opaques.append(e.parent)
                continue
            target = e.whiteout_target
            if target is not None:
                whiteouts.append(target)
                continue
            if not e.path:
                continue  # the root's own entry: an unpack keeps the target directory
            digest = ""
            if e.type == "file" and wants(e.path):
                h = hashlib.sha256()
                for chunk in reader.read_chunks():
                    h.update(chunk)
                digest = "sha256:" + h.hexdigest()
            entries.append(Node(
                e.path, e.type, e.mode, e.uid, e.gid, e.size, e.mtime_ns,
                e.linkname if e.type == "symlink" else "",
                e.linkname if e.type == "hardlink" else "", digest, e.xattrs,
                (e.devmajor, e.devminor), layer.index,
                (layer.index, ordinal) if e.type == "file" else (0, -1)))
        diff_id = reader.finish()
        size, compression = reader.size, reader.compression
    if layer.diff_id and diff_id != layer.diff_id:
        raise DigestMismatch(f"layer {layer.index} ({layer.digest}) has DiffID {diff_id}, "
                             f"the config says {layer.diff_id}")
    scan = LayerScan(layer.index, tuple(entries), tuple(whiteouts), tuple(opaques), diff_id,
                     size, compression)
    if store is not None:
        _save_scan(store, layer.digest, scan, hashed=hash_content is True)
    return scan


# --- the merged view ------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class LayerChanges:
    """What applying one layer did to the view below it.

    ``added``/``modified`` map a path to its new node, ``deleted`` to the node it removed
    (whole subtrees are listed path by path). ``wasted`` maps ``layer -> bytes`` of files
    (of lower layers or written earlier in this one) that this layer overwrote or deleted
    and that no other name (hardlink) still reaches; ``wasted_paths`` the same per path."""
    index: int
    added: dict[str, Node]
    modified: dict[str, Node]
    deleted: dict[str, Node]
    wasted: dict[int, int]
    wasted_paths: dict[str, int]
    touched: frozenset[str]


class View:
    """A merged filesystem: real paths -> :class:`Node`; every ancestor of a key is a dir."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.children: dict[str, set[str]] = {"": set()}
        self.removed_by: dict[str, int] = {}   # path -> last layer that deleted it
        self.layers = 0
        self._refs: dict[tuple[int, int], int] = {}  # file data -> live names (hardlinks)
        self._wasted: list[tuple[int, str, int]] = []

    def copy(self) -> View:
        out = View()
        out.nodes = dict(self.nodes)
        out.children = {k: set(v) for k, v in self.children.items()}
        out.removed_by = dict(self.removed_by)
        out.layers = self.layers
        out._refs = dict(self._refs)
        return out

    def get(self, path: str) -> Node | None:
        return self.nodes.get(path)

    def __len__(self) -> int:
        return len(self.nodes)

    def walk(self, top: str = "") -> Iterator[Node]:
        """Nodes under ``top`` (excluded), depth first, children sorted by name."""
        for name in sorted(self.children.get(top, ())):
            path = f"{top}/{name}" if top else name
            node = self.nodes[path]
            yield node
            if node.type == "dir":
                yield from self.walk(path)

    def listdir(self, path: str) -> list[Node]:
        return [self.nodes[f"{path}/{n}" if path else n]
                for n in sorted(self.children.get(path, ()))]

    # -- lookups --

    def resolve(self, path: str, *, follow_last: bool = True) -> str | None:
        """The real path of ``path`` inside the root, symlinks followed as a chroot would
        (absolute targets from the root, ``..`` clamped at it); None on a symlink loop."""
        parent = path.rpartition("/")[0]
        if not follow_last and (not parent or self._is_dir(parent)):
            return path
        pending = deque(p for p in path.split("/") if p)
        out: list[str] = []
        hops = 0
        while pending:
            part = pending.popleft()
            if part == ".":
                continue
            if part == "..":
                if out:
                    out.pop()
                continue
            cur = "/".join([*out, part])
            node = self.nodes.get(cur)
            if node is not None and node.type == "symlink" and (pending or follow_last):
                hops += 1
                if hops > _MAX_SYMLINKS:
                    return None
                if node.link.startswith("/"):
                    out = []
                pending.extendleft(reversed([p for p in node.link.split("/") if p]))
                continue
            out.append(part)
        return "/".join(out)

    def _is_dir(self, path: str) -> bool:
        node = self.nodes.get(path)
        return node is not None and node.type == "dir"

    def lookup(self, path: str, *, follow: bool = True) -> Node | None:
        real = self.resolve(path, follow_last=follow)
        return self.nodes.get(real) if real is not None else None

    # -- changes --

    def _unlink(self, path: str, removed: list[Node]) -> None:
        """Remove ``path`` and its subtree, appending what went to ``removed``."""
        node = self.nodes.pop(path, None)
        if node is None:
            return
        removed.append(node)
        if node.type == "file" and node.source[1] >= 0:
            left = self._refs[node.source] - 1
            if left:
                self._refs[node.source] = left
            else:  # the last name of these bytes: nothing in the image reaches them now
                del self._refs[node.source]
                self._wasted.append((node.source[0], node.path, node.size))
        kids = self.children.pop(path, None)
        if kids:
            for name in kids:
                self._unlink(f"{path}/{name}", removed)
        self.children.get(node.parent, set()).discard(node.name)

    def _link(self, node: Node) -> None:
        self.nodes[node.path] = node
        self.children.setdefault(node.parent, set()).add(node.name)
        if node.type == "file" and node.source[1] >= 0:
            self._refs[node.source] = self._refs.get(node.source, 0) + 1
        if node.type == "dir":
            self.children.setdefault(node.path, set())

    def apply(self, scan: LayerScan) -> LayerChanges:
        """Apply one layer: its whiteouts first (they only hide lower layers' files), then
        its entries in tar order."""
        before: dict[str, Node | None] = {}
        removed: list[Node] = []
        index = scan.index
        for target in scan.whiteouts:
            real = self.resolve(target, follow_last=False)
            if real is not None and real in self.nodes:
                self._drop(real, before, removed)
        for directory in scan.opaques:
            real = self.resolve(directory, follow_last=True) if directory else ""
            if real is None or (real and not self._is_dir(real)):
                continue
            for name in list(self.children.get(real, ())):
                self._drop(f"{real}/{name}" if real else name, before, removed)
        for entry in scan.entries:
            self._put(entry, before, removed)
        self.layers = max(self.layers, index)
        return self._changes(index, before, removed)

    def _drop(self, path: str, before: dict[str, Node | None], removed: list[Node]) -> None:
        start = len(removed)
        self._unlink(path, removed)
        for node in removed[start:]:
            before.setdefault(node.path, node)

    def _put(self, entry: Node, before: dict[str, Node | None], removed: list[Node]) -> None:
        real = self.resolve(entry.path, follow_last=False)
        if real is None or not real:
            log.warning("layer %d: %s lies behind a symlink loop; skipped", entry.layer,
                        entry.path)
            return
        self._ensure_parents(real, entry.layer, before, removed)
        node = entry if real == entry.path else replace(entry, path=real)
        if node.type == "hardlink":
            node = self._hardlink(node)
        old = self.nodes.get(real)
        before.setdefault(real, old)
        if old is not None and not (old.type == "dir" and node.type == "dir"):
            self._drop(real, before, removed)
        elif old is not None:
            removed.append(old)  # metadata replaced; the children stay
        self._link(node)

    def _ensure_parents(self, path: str, layer: int, before: dict[str, Node | None],
                        removed: list[Node]) -> None:
        """Create missing ancestors as directories (0755, root), as tar extractors do."""
        parent = path.rpartition("/")[0]
        if not parent or self._is_dir(parent):
            return  # the usual case: every ancestor of a key is a directory already
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            anc = "/".join(parts[:i])
            node = self.nodes.get(anc)
            if node is not None and node.type == "dir":
                continue
            before.setdefault(anc, node)
            if node is not None:
                log.warning("layer %d: %s is a %s but %s needs it as a directory; replaced",
                            layer, anc, node.type, path)
                self._drop(anc, before, removed)
            self._link(Node(anc, "dir", 0o755, layer=layer, implicit=True))

    def _hardlink(self, node: Node) -> Node:
        """A hardlink shares its target's inode: same type, content, mode and owner."""
        real = self.resolve(node.hardlink, follow_last=False)
        target = self.nodes.get(real) if real is not None else None
        if target is None or target.type == "dir":
            log.warning("layer %d: hardlink %s -> %s has no target; kept as a dangling link",
                        node.layer, node.path, node.hardlink)
            return node
        return replace(target, path=node.path, hardlink=target.path, layer=node.layer,
                       implicit=False)

    def _changes(self, index: int, before: dict[str, Node | None], removed: list[Node]
                 ) -> LayerChanges:
        wasted: dict[int, int] = {}
        wasted_paths: dict[str, int] = {}
        for layer, path, size in self._wasted:
            wasted[layer] = wasted.get(layer, 0) + size
            wasted_paths[path] = wasted_paths.get(path, 0) + size
        self._wasted = []
        added: dict[str, Node] = {}
        modified: dict[str, Node] = {}
        deleted: dict[str, Node] = {}
        for path, old in before.items():
            new = self.nodes.get(path)
            if old is None and new is not None:
                added[path] = new
            elif old is not None and new is None:
                deleted[path] = old
                self.removed_by[path] = index
            elif (old is not None and new is not None and new.layer == index
                  and (old.type != "dir" or old.differences(new))):
                modified[path] = new  # a directory listed again unchanged is no change
        for path in added:
            self.removed_by.pop(path, None)
        return LayerChanges(index, added, modified, deleted, wasted, wasted_paths,
                            frozenset(before))


def merged_view(scans: Iterable[LayerScan]) -> tuple[View, list[LayerChanges]]:
    view = View()
    changes = [view.apply(scan) for scan in scans]
    return view, changes


def _scans(image: ImageInput, store: Any, progress: Progress | None,
           layers: Sequence[LayerRef] | None = None, *,
           hash_content: bool | Callable[[str], bool] = True) -> list[LayerScan]:
    return scan_all(list(image.layers if layers is None else layers), store=store,
                    progress=progress, hash_content=hash_content)


def scan_all(layers: Sequence[LayerRef], *, store: Any = None,
             progress: Progress | None = None,
             hash_content: bool | Callable[[str], bool] = True) -> list[LayerScan]:
    """Scan ``layers`` one after the other (results in their order).

    Measured on the 2-CPU box: threads do not overlap (parsing tar headers holds the GIL)
    and forked workers lose more to start-up and to shipping the metadata back than they
    win, for distribution-sized images; so plainly in turn."""
    return [scan_layer(x, store=store, progress=progress, hash_content=hash_content)
            for x in layers]


# --- per-layer statistics -------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class LayerStats:
    """One row of ``puller layers``."""
    index: int
    digest: str
    diff_id: str
    media_type: str
    compressed_size: int
    size: int
    created_by: str
    entries: int
    added: int
    added_bytes: int
    modified: int
    modified_bytes: int
    deleted: int
    deleted_bytes: int
    whiteouts: int
    opaques: int
    wasted_bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "digest": self.digest, "diff_id": self.diff_id,
                "media_type": self.media_type, "compressed_size": self.compressed_size,
                "size": self.size, "created_by": self.created_by, "entries": self.entries,
                "added": {"count": self.added, "bytes": self.added_bytes},
                "modified": {"count": self.modified, "bytes": self.modified_bytes},
                "deleted": {"count": self.deleted, "bytes": self.deleted_bytes,
                            "whiteouts": self.whiteouts, "opaques": self.opaques},
                "wasted_bytes": self.wasted_bytes}


@dataclass(frozen=True, slots=True)
class Analysis:
    """``puller layers``: the rows, the efficiency, the largest wasted paths."""
    layers: tuple[LayerStats, ...]
    total_bytes: int          # content bytes stored in all layers
    wasted_bytes: int
    wasted_paths: tuple[tuple[str, int, int], ...]   # (path, bytes, times), largest first
    final_entries: int
    final_bytes: int

    @property
    def efficiency(self) -> float:
        """dive's score as the issue states it: 1 - wasted / total (1.0 for no bytes)."""
        return 1.0 - self.wasted_bytes / self.total_bytes if self.total_bytes else 1.0


def analyse(image: ImageInput, *, store: Any = None, progress: Progress | None = None,
            top: int = 10) -> Analysis:
    """Scan every layer once and merge them: per-layer change counts and wasted bytes."""
    scans = _scans(image, store, progress, hash_content=False)
    view, changes = merged_view(scans)
    wasted: dict[int, int] = {}
    per_path: dict[str, list[int]] = {}
    for ch in changes:
        for layer, n in ch.wasted.items():
            wasted[layer] = wasted.get(layer, 0) + n
        for path, n in ch.wasted_paths.items():
            slot = per_path.setdefault(path, [0, 0])
            slot[0] += n
            slot[1] += 1
    rows = []
    for ref, scan, ch in zip(image.layers, scans, changes):
        rows.append(LayerStats(
            ref.index, ref.digest, scan.diff_id, ref.media_type, ref.size, scan.size,
            ref.created_by, len(scan.entries) + len(scan.whiteouts) + len(scan.opaques),
            len(ch.added), sum(n.own_bytes for n in ch.added.values()),
            len(ch.modified), sum(n.own_bytes for n in ch.modified.values()),
            len(ch.deleted), sum(n.own_bytes for n in ch.deleted.values()),
            len(scan.whiteouts), len(scan.opaques), wasted.get(ref.index, 0)))
    biggest = sorted(((p, b, t) for p, (b, t) in per_path.items()), key=lambda x: (-x[1], x[0]))
    return Analysis(tuple(rows), sum(s.stored_bytes for s in scans), sum(wasted.values()),
                    tuple(biggest[:top]), len(view),
                    sum(n.own_bytes for n in view.nodes.values()))


# --- single paths ---------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PathEvent:
    """``puller which``: one layer's effect on a path."""
    layer: int
    action: str            # added, modified, deleted
    node: Node             # the new node (added/modified) or the one deleted
    how: str = ""          # for deletions: whiteout, opaque, replaced


def which(image: ImageInput, path: str, *, store: Any = None,
          progress: Progress | None = None) -> list[PathEvent]:
    """The layers that wrote or deleted ``path`` (its real path, parents' symlinks
    followed in each layer's view), in order."""
    scans = _scans(image, store, progress)
    view = View()
    events = []
    for scan in scans:
        ch = view.apply(scan)
        real = view.resolve(path, follow_last=False) or path
        for key in dict.fromkeys((path, real)):
            if key in ch.added:
                events.append(PathEvent(scan.index, "added", ch.added[key]))
            elif key in ch.modified:
                events.append(PathEvent(scan.index, "modified", ch.modified[key]))
            elif key in ch.deleted:
                events.append(PathEvent(scan.index, "deleted", ch.deleted[key],
                                        _deletion_cause(scan, key)))
    return events


def _deletion_cause(scan: LayerScan, path: str) -> str:
    parts = path.split("/")
    prefixes = {"/".join(parts[:i]) for i in range(1, len(parts) + 1)}
    if prefixes & set(scan.whiteouts):
        return "whiteout"
    if {"/".join(parts[:i]) for i in range(len(parts))} & set(scan.opaques):
        return "opaque"
    return "replaced"


def read_file(image: ImageInput, path: str, *, store: Any = None,
              progress: Progress | None = None) -> tuple[Node, Iterator[bytes]]:
    """The merged view's file at ``path`` (symlinks followed inside the image) and an
    iterator over its content, read from the layer that holds its bytes and checked
    against the hash taken when the layer was scanned."""
    view, _ = merged_view(_scans(image, store, progress))
    node = view.lookup(path, follow=True)
    if node is None:
        raise PathError(f"{'/' + path} does not exist in {image.name}")
    if node.type != "file" or node.source[1] < 0:
        raise PathError(f"{'/' + path} is a {node.type}, not a regular file, in {image.name}")
    layer = image.layers[node.source[0] - 1]
    return node, _content(layer, node)


def _content(layer: LayerRef, node: Node) -> Iterator[bytes]:
    h = hashlib.sha256()
    with LayerReader(layer.open()) as reader:
        for ordinal, _entry in enumerate(reader):
            if ordinal == node.source[1]:
                for chunk in reader.read_chunks():
                    h.update(chunk)
                    yield bytes(chunk)
                break
        else:
            raise LayerError(f"layer {layer.index} ended before entry {node.source[1]}")
    if node.digest and "sha256:" + h.hexdigest() != node.digest:
        raise DigestMismatch(f"{node.path} in layer {layer.index} does not match its scan")


# --- diffs ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Change:
    """One path that differs: ``status`` added, removed or changed; ``what`` changed;
    ``layer_b`` the layer of B that made the change (wrote it, or deleted it), ``layer_a``
    the layer of A whose version it replaces."""
    path: str
    status: str
    a: Node | None
    b: Node | None
    what: tuple[str, ...] = ()
    layer_a: int | None = None
    layer_b: int | None = None


@dataclass(frozen=True, slots=True)
class ConfigChange:
    """A runtime-config field (or one Env variable / label / port / volume) that differs."""
    field: str
    key: str | None
    a: Any
    b: Any


@dataclass(frozen=True, slots=True)
class DiffResult:
    changes: tuple[Change, ...]
    config: tuple[ConfigChange, ...]
    notes: tuple[str, ...]
    shared_layers: int            # leading layers both sides share (merged once)
    layers_read: int              # layer blobs actually read (not from the scan cache)

    @property
    def same(self) -> bool:
        return not self.changes and not self.config


def _selected(image: ImageInput) -> ImageInput:
    if image.upto is None:
        return image
    if not 1 <= image.upto <= len(image.layers):
        raise UsageError(f"{image.name} has {len(image.layers)} layers; there is no layer "
                         f"{image.upto} (layers are numbered from 1)")
    return replace(image, layers=image.layers[:image.upto])


def _shared_prefix(a: ImageInput, b: ImageInput) -> int:
    n = 0
    for x, y in zip(a.chain(), b.chain()):
        if x != y:
            break
        n += 1
    return n


class _ReadCounter:
    """A progress callback counting the layer blobs a diff had to read (not cached)."""

    def __init__(self) -> None:
        self.read = 0

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("event") == "layer-scan":
            self.read += 1


def diff(a: ImageInput, b: ImageInput, *, store: Any = None, mtime: bool = False,
         progress: Progress | None = None) -> DiffResult:
    """The merged filesystem and runtime config of ``a`` against ``b``.

    The leading layers both share (same DiffIDs, hence same ChainIDs) are merged once; when
    the chains are equal nothing is read at all, else only the paths that either side's
    upper layers touch are compared (everything else is the shared base on both sides)."""
    a, b = _selected(a), _selected(b)
    counter = _ReadCounter()

    def emit(event: dict[str, Any]) -> None:
        counter(event)
        if progress:
            progress(event)

    shared = _shared_prefix(a, b)
    changes: list[Change] = []
    if not (shared == len(a.layers) == len(b.layers)):
        uppers = scan_all([*a.layers[shared:], *b.layers[shared:]], store=store,
                          progress=emit)
        ups_a, ups_b = uppers[:len(a.layers) - shared], uppers[len(a.layers) - shared:]
        base = scan_all(a.layers[:shared], store=store, progress=emit,
                        hash_content=_touched_by(uppers))
        view_a, view_b, touched = _merge_pair(base, ups_a, ups_b)
        if _unhashed(touched, view_a, view_b):  # a path reached through a base symlink
            base = scan_all(a.layers[:shared], store=store, progress=emit)
            view_a, view_b, touched = _merge_pair(base, ups_a, ups_b)
        changes = _compare(view_a, view_b, touched, mtime)
    notes = _notes(a, b, shared)
    return DiffResult(tuple(changes), tuple(config_diff(a, b)), tuple(notes), shared,
                      counter.read)


def _touched_by(uppers: Sequence[LayerScan]) -> Callable[[str], bool]:
    """Which shared-base files a diff must hash: those the upper layers name, and those
    under what they delete or replace (whiteouts, opaque directories, non-directories)."""
    names: set[str] = set()
    roots: set[str] = set()
    for scan in uppers:
        names.update(n.path for n in scan.entries)
        names.update(n.hardlink for n in scan.entries if n.hardlink)
        roots.update(scan.whiteouts)
        roots.update(scan.opaques)
        roots.update(n.path for n in scan.entries if n.type != "dir")
    if "" in roots:
        return lambda _path: True

    def wanted(path: str) -> bool:
        if path in names:
            return True
        while path:
            path = path.rpartition("/")[0]
            if path in roots:
                return True
        return False
    return wanted


def _merge_pair(base: Sequence[LayerScan], ups_a: Sequence[LayerScan],
                ups_b: Sequence[LayerScan]) -> tuple[View, View, set[str]]:
    """Both merged views over one shared base, and every path either side's uppers touched."""
    view_b = View()
    for scan in base:
        view_b.apply(scan)
    view_a = view_b.copy()
    touched: set[str] = set()
    for scan in ups_a:
        touched |= view_a.apply(scan).touched
    for scan in ups_b:
        touched |= view_b.apply(scan).touched
    return view_a, view_b, touched


def _unhashed(paths: Iterable[str], view_a: View, view_b: View) -> bool:
    """Whether a file present on both sides lacks the content hash the comparison needs."""
    for path in paths:
        na, nb = view_a.nodes.get(path), view_b.nodes.get(path)
        if (na is not None and nb is not None and na.type == nb.type == "file"
                and not (na.digest and nb.digest)):
            return True
    return False


def _sort_key(path: str) -> list[str]:
    return path.split("/")


def _compare(view_a: View, view_b: View, paths: Iterable[str], mtime: bool) -> list[Change]:
    out = []
    for path in sorted(paths, key=_sort_key):
        na, nb = view_a.nodes.get(path), view_b.nodes.get(path)
        if na is None and nb is None:
            continue
        if na is None:
            out.append(Change(path, "added", None, nb, (), None, nb.layer if nb else None))
        elif nb is None:
            out.append(Change(path, "removed", na, None, (), na.layer,
                              view_b.removed_by.get(path)))
        else:
            what = na.differences(nb, mtime=mtime)
            if what:
                out.append(Change(path, "changed", na, nb, what, na.layer, nb.layer))
    return out


def diff_layers(a: ImageInput, b: ImageInput, *, store: Any = None, mtime: bool = False,
                progress: Progress | None = None) -> DiffResult:
    """Layer ``a.upto`` of ``a`` against layer ``b.upto`` of ``b``: their own entries
    (whiteouts and opaque markers included), not the merged views."""
    la, lb = (_selected(x).layers[-1] for x in (a, b))
    counter = _ReadCounter()
    views = []
    for layer in (la, lb):
        scan = scan_layer(layer, store=store, progress=counter)
        view = View()
        for node in scan.entries:
            view.nodes[node.path] = node
        for path in scan.whiteouts:
            view.nodes[_marker(path, False)] = Node(_marker(path, False), "whiteout", 0,
                                                    layer=layer.index)
        for path in scan.opaques:
            view.nodes[_marker(path, True)] = Node(_marker(path, True), "opaque", 0,
                                                   layer=layer.index)
        views.append(view)
    changes = _compare(views[0], views[1], set(views[0].nodes) | set(views[1].nodes), mtime)
    notes = [] if la.diff_id != lb.diff_id or not la.diff_id else [
        f"the two layers are the same blob content ({la.diff_id})"]
    return DiffResult(tuple(changes), (), tuple(notes), 0, counter.read)


def _marker(path: str, opaque: bool) -> str:
    head, _, name = path.rpartition("/")
    leaf = ".wh..wh..opq" if opaque else f".wh.{name}"
    base = path if opaque else head
    return f"{base}/{leaf}" if base else leaf


def _env(values: Any) -> dict[str, str]:
    out = {}
    for item in values or ():
        key, _, value = str(item).partition("=")
        out[key] = value
    return out


def config_diff(a: ImageInput, b: ImageInput) -> list[ConfigChange]:
    """Differences of the runtime config (and platform): what makes two images behave
    differently when run. Env and Labels are compared per key, ports and volumes per entry."""
    out = []
    if a.platform != b.platform:
        out.append(ConfigChange("platform", None, a.platform, b.platform))
    ra, rb = a.runtime, b.runtime
    for name in RUNTIME_FIELDS:
        va, vb = ra.get(name), rb.get(name)
        if name == "Env":
            va, vb = _env(va), _env(vb)
        elif name in ("ExposedPorts", "Volumes", "Labels"):
            va, vb = dict(va or {}), dict(vb or {})
        else:
            va, vb = va or None, vb or None
        if va == vb:
            continue
        if isinstance(va, dict) and isinstance(vb, dict):
            for key in sorted(set(va) | set(vb)):
                if va.get(key, _MISSING) != vb.get(key, _MISSING):
                    out.append(ConfigChange(name, key, va.get(key), vb.get(key)))
        else:
            out.append(ConfigChange(name, None, va, vb))
    return out


_MISSING = object()


def _notes(a: ImageInput, b: ImageInput, shared: int) -> list[str]:
    """What differs but does not make the images different: format, compression, sizes."""
    notes = []
    if a.media_type and b.media_type and a.media_type != b.media_type:
        notes.append(f"manifest media type: {a.media_type} vs {b.media_type}")
    if len(a.layers) != len(b.layers):
        notes.append(f"layer count: {len(a.layers)} vs {len(b.layers)}")
    ta = [layer.media_type for layer in a.layers]
    tb = [layer.media_type for layer in b.layers]
    if ta != tb and len(a.layers) == len(b.layers):
        notes.append("layer media types differ: " + ", ".join(sorted(set(ta))) + " vs "
                     + ", ".join(sorted(set(tb))))
    if [x.digest for x in a.layers] != [x.digest for x in b.layers]:
        ca, cb = sum(x.size for x in a.layers), sum(x.size for x in b.layers)
        notes.append(f"compressed size: {ca} vs {cb} bytes")
        if a.chain() == b.chain():
            notes.append("layer blobs differ but their contents (DiffIDs) are the same")
    if shared:
        notes.append(f"{shared} leading layer(s) shared; their contents were merged once")
    return notes
