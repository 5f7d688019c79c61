"""Pull: reference -> manifest -> verified blobs in the cache, spending as few requests as can be.

The request budget, which is what Docker Hub's rate limit counts:

* by digest, everything cached: no request at all;
* by tag, unchanged and cached: one HEAD (Docker Hub does not count HEADs);
* cold, multi-platform: GET the index and the one platform manifest, then the blobs that
  are not cached yet, in parallel (``jobs``), each once even when layers repeat.

Blobs are streamed to disk while hashed and renamed into place only once verified; an
interrupted download keeps its bytes in ``partial/`` and the next attempt (in this run or a
later one) continues with a Range request.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from ._log import get_logger
from .errors import (DigestMismatch, NetworkError, NotCached, PullerError)
from .image import lookup_ref, pulled_image, resolve
from .manifest import (INDEX_TYPES, REGISTRY_DIGEST, Descriptor, Index, Manifest, parse)
from .platform import Platform, select
from .registry import Registry, RegistryOptions
from .store import Store

log = get_logger("puller.pull")

__all__ = ["pull", "PullResult"]

_CHUNK = 256 * 1024  # small enough that a broken connection loses little


@dataclass(frozen=True, slots=True)
class PullResult:
    """What a pull did and where the image is now."""

    ref: str                  # normalised reference
    digest: str               # the registry's digest of what the ref names (index or manifest)
    manifest_digest: str      # the registry's digest of the chosen platform's manifest
    platform: str
    cached: bool              # nothing had to be downloaded
    offline: bool             # the network was not used (or was unreachable)
    downloaded_bytes: int
    ratelimit: dict | None
    note: str = ""

    def to_json(self) -> dict:
        return {"ref": self.ref, "digest": self.digest, "manifest_digest": self.manifest_digest,
                "platform": self.platform, "cached": self.cached, "offline": self.offline,
                "downloaded_bytes": self.downloaded_bytes, "ratelimit": self.ratelimit,
                **({"note": self.note} if self.note else {})}


def _ref_name(ref) -> str:
    return f"{ref.name}@{ref.digest}" if ref.digest else str(ref)


def pull(ref, *, store: Store | None = None, platform: Platform | None = None,
         options: RegistryOptions | None = None, jobs: int = 4, offline: bool = False,
         progress: Callable[[dict], None] | None = None, session=None) -> PullResult:
    """Make ``ref`` (a parsed Reference) complete in ``store`` for ``platform``."""
    from .platform import host_platform
    store = (store or Store()).ensure()
    wanted = platform or host_platform()
    emit = progress or (lambda e: None)
    name = _ref_name(ref)
    with store.gc_lock(shared=True):
        entry = lookup_ref(store, ref)
        cached = resolve(store, entry, wanted) if entry is not None else None
        if ref.digest and cached is not None:
            emit({"event": "cached", "ref": name})
            return _result(ref, cached, cached=True, offline=True)
        if offline:
            if cached is None:
                raise NotCached(f"{ref.familiar} is not in the cache (offline mode)")
            return _result(ref, cached, cached=True, offline=True, note="used the cache (offline)")
        try:
            with Registry(ref.registry, options or RegistryOptions.build(), on_event=emit,
                          session=session, memo=_memo(store)) as reg:
                return _pull_online(ref, reg, store, wanted, jobs, emit, cached)
        except NetworkError as e:
            if cached is None:
                raise
            emit({"event": "offline-fallback", "reason": str(e)})
            log.warning("registry unreachable (%s); using the cached image", e)
            return _result(ref, cached, cached=True, offline=True,
                           note=f"registry unreachable; used the cache ({e})")


def _memo(store: Store):
    """The registries' memo in this cache (``meta/registry/hosts.json``, see transport.memo)."""
    from .transport.memo import AuthMemo
    return AuthMemo(store.root / "meta" / "registry" / "hosts.json", store.tmp_dir)


def _result(ref, img, *, cached: bool, offline: bool, downloaded: int = 0, ratelimit=None,
            note: str = "") -> PullResult:
    return PullResult(_ref_name(ref), img.registry_digest, img.manifest_digest, str(img.platform),
                      cached, offline, downloaded, ratelimit.to_json() if ratelimit else None, note)


def _pull_online(ref, reg: Registry, store: Store, wanted: Platform, jobs: int, emit,
                 cached) -> PullResult:
    repo, name = ref.repository, _ref_name(ref)
    ident = ref.digest or ref.tag or "latest"
    if not ref.digest:
        head = reg.head_manifest(repo, ident)
        if head is not None and cached is not None and head.digest == cached.registry_digest:
            emit({"event": "up-to-date", "ref": name, "digest": head.digest})
            return _result(ref, cached, cached=True, offline=False, ratelimit=reg.ratelimit)
        if head is not None:
            ident = head.digest  # GET by digest: what we fetch is what HEAD named
    top = _get_manifest(reg, store, repo, ident)
    emit({"event": "resolved", "ref": name, "digest": top.digest, "mediaType": top.media_type})
    counter = ByteCounter()
    if isinstance(top, Index):
        local_top = _pull_index(reg, store, repo, top, wanted, name, emit, jobs, counter)
    else:
        _fetch_image(reg, store, repo, top, emit, jobs, counter)
        local_top = _store_twin(store, top)
    store.set_ref(name, local_top, registry_digest=top.digest, registry_media_type=top.media_type)
    img = pulled_image(store, ref, wanted)
    emit({"event": "done", "ref": name, "digest": top.digest, "bytes": counter.n})
    return _result(ref, img, cached=counter.n == 0, offline=False, downloaded=counter.n,
                   ratelimit=reg.ratelimit)


def _get_manifest(reg: Registry, store: Store, repo: str, ident: str) -> Manifest | Index:
    """By digest from the cache when we have it; else from the registry, kept as a blob."""
    if ident.startswith("sha256:") and store.has_blob(ident):
        try:
            return parse(store.read_blob(ident))
        except PullerError:
            pass
    m = reg.get_manifest(repo, ident)
    store.put_bytes(m.raw, m.digest)
    return m


def _store_twin(store: Store, m: Manifest, platform: Platform | None = None) -> Descriptor:
    """Store the OCI twin of ``m`` and return its descriptor (annotated with m's digest)."""
    twin = m.to_oci()
    store.put_bytes(twin.raw, twin.digest)
    ann = ((REGISTRY_DIGEST, m.digest),) if twin.digest != m.digest else ()
    return Descriptor(twin.media_type, twin.digest, len(twin.raw), platform, ann)


def _pull_index(reg, store, repo, index: Index, wanted, name, emit, jobs, counter):
    entries = [(d.platform or Platform("", ""), d) for d in index.images()]
    child: Descriptor = select(entries, wanted)  # type: ignore[assignment]
    emit({"event": "platform", "ref": name, "platform": str(child.platform), "digest": child.digest})
    m = _get_manifest(reg, store, repo, child.digest)
    if isinstance(m, Index):
        raise PullerError(f"{name}: nested indexes are not supported")
    _fetch_image(reg, store, repo, m, emit, jobs, counter)
    if index.media_type == INDEX_TYPES[0]:  # already OCI: the layout refers to it as it is
        return Descriptor(index.media_type, index.digest, len(index.raw))
    # A Docker manifest list: an OCI index over the OCI twins of the platforms we hold,
    # keeping the ones pulled earlier for the same list.
    prev = store.get_ref(name)
    children: dict[str, Descriptor] = {}
    if prev is not None and prev.registry_digest == index.digest and store.has_blob(prev.descriptor.digest):
        old = parse(store.read_blob(prev.descriptor.digest))
        if isinstance(old, Index):
            children = {str(d.platform): d for d in old.manifests if store.has_blob(d.digest)}
    twin = _store_twin(store, m, child.platform)
    children[str(child.platform)] = twin
    local = index.with_children(list(children.values()))
    store.put_bytes(local.raw, local.digest)
    return Descriptor(local.media_type, local.digest, len(local.raw),
                      annotations=((REGISTRY_DIGEST, index.digest),))


class ByteCounter:
    """Bytes downloaded, summed across the threads of one pull."""

    def __init__(self) -> None:
        self.n = 0
        self._lock = threading.Lock()

    def add(self, k: int) -> None:
        with self._lock:
            self.n += k


def _fetch_image(reg, store: Store, repo: str, m: Manifest, emit, jobs: int, counter: ByteCounter) -> None:
    """The config and every layer of ``m`` into the cache, in parallel, each blob once."""
    wanted: dict[str, Descriptor] = {}
    for d in (m.config, *m.layers):
        wanted.setdefault(d.digest, d)
    todo = [d for d in wanted.values() if not store.has_blob(d.digest, d.size)]
    emit({"event": "blobs", "manifest": m.digest, "total": len(wanted), "missing": len(todo),
          "bytes": sum(d.size for d in todo)})
    if not todo:
        return
    if len(todo) == 1 or jobs <= 1:
        for d in todo:
            fetch_blob(reg, store, repo, d, emit, counter)
        return
    # Plain threads taking from one list: concurrent.futures would cost more to import
    # (it brings logging) than this whole loop.
    # Largest first: the biggest blob is the critical path, so it gets the first thread
    # and the first connection (pop() takes from the end).
    pending, errors = sorted(todo, key=lambda d: d.size), []

    def worker() -> None:
        while True:
            try:
                d = pending.pop()
            except IndexError:
                return
            try:
                fetch_blob(reg, store, repo, d, emit, counter)
            except BaseException as e:  # noqa: BLE001 - report the first, after all have stopped
                errors.append(e)
                pending.clear()
    threads = [threading.Thread(target=worker, name=f"pull-{i}", daemon=True)
               for i in range(min(jobs, len(todo)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def fetch_blob(reg, store: Store, repo: str, d: Descriptor, emit, counter: ByteCounter) -> None:
    """One blob into the cache: under its lock, resumable, verified; a digest failure is
    fetched once more from scratch before it is reported."""
    with store.lock_blob(d.digest):
        if store.has_blob(d.digest, d.size):
            return  # another process fetched it while we waited
        emit({"event": "blob-start", "digest": d.digest, "size": d.size})
        for verify_attempt in range(2):
            w = store.writer(d.digest, d.size, resumable=True)
            try:
                if w.offset:
                    emit({"event": "blob-resume", "digest": d.digest, "offset": w.offset})
                _download(reg, repo, d, w, emit, counter)
                w.commit()
                emit({"event": "blob-done", "digest": d.digest, "size": d.size})
                return
            except DigestMismatch:
                w.abort(keep=False)
                if verify_attempt == 1:
                    raise
                emit({"event": "blob-retry", "digest": d.digest, "reason": "digest mismatch"})
            except BaseException:
                w.abort()  # keep the partial bytes for the next run
                raise


def _download(reg, repo: str, d: Descriptor, w, emit, counter: ByteCounter) -> None:
    """Stream ``d`` into writer ``w``, continuing from ``w.offset`` after each break."""
    breaks = 0
    retries = (reg.options.retry.retries if reg.options.retry else 4) + 2
    while w.offset < d.size or d.size == 0:
        start = w.offset
        resp = reg.open_blob(repo, d.digest, offset=start)
        try:
            if start and resp.status_code == 200:
                w.restart()  # the server ignored Range: start over
            elif start and not _range_ok(resp.headers.get("Content-Range"), start):
                w.restart()
                resp.close()
                continue
            for chunk in resp.iter_content(_CHUNK):
                w.write(chunk)
                counter.add(len(chunk))
                emit({"event": "blob-progress", "digest": d.digest, "n": len(chunk), "offset": w.offset})
            if d.size == 0 or w.offset >= d.size:
                return
            raise NetworkError(f"blob {d.digest}: the server closed the body early "
                               f"({w.offset} of {d.size} bytes)")
        except NetworkError as e:
            breaks += 1
            if breaks > retries:
                raise NetworkError(f"blob {d.digest}: transfer kept breaking ({e})") from None
            emit({"event": "blob-break", "digest": d.digest, "offset": w.offset, "reason": str(e)})
        finally:
            resp.close()


def _range_ok(content_range: str | None, start: int) -> bool:
    """``bytes START-END/TOTAL`` must start where our kept bytes end."""
    if not content_range or not content_range.startswith("bytes "):
        return False
    try:
        return int(content_range[6:].split("-", 1)[0]) == start
    except ValueError:
        return False
