"""Push: copy a cached image to any v2 registry, keeping its digest.

What is pushed are the registry's ORIGINAL manifest bytes, kept as blobs in the cache (the
``registry_digest`` of a ref, the ``io.puller.registry.digest`` annotation of an OCI twin),
so the pushed image has the digest it had where it was pulled from. In order:

1. each blob: ``HEAD`` first (present: skipped); else a cross-repository mount
   (``POST .../blobs/uploads/?mount=D&from=REPO``) when another cached ref of the same
   registry uses it; else an upload: monolithic (``POST`` then ``PUT ?digest=``), or chunked
   (``PATCH`` per chunk) for blobs over ``CHUNKED_OVER`` bytes or when asked;
2. each platform manifest of an index by digest, then the top manifest by tag, last.

An index is pushed with all its children (attestations too: registries check that every
child of an index exists). Children that are not in the cache are fetched first from the
repository the image was pulled from, unless offline. When they cannot be had, push
refuses, naming them, unless ``present_only``: then it pushes an index that lists only the
children present, which has a new digest (the result says so).
"""
from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urljoin

from ._log import get_logger
from .errors import CacheError, NotCached, PullerError, RegistryError, UsageError
from .manifest import Descriptor, Index, Manifest, digest_of, parse
from .store import RefEntry, Store

log = get_logger("puller.push")

__all__ = ["CHUNKED_OVER", "CHUNK_SIZE", "PushResult", "Uploader", "push"]

CHUNKED_OVER = 64 * 1024 * 1024   # blobs larger than this go up in PATCH chunks
CHUNK_SIZE = 16 * 1024 * 1024
_READ = 1 << 20
_ATTEMPTS = 3

Emit = Callable[[dict], None]


@dataclass(frozen=True, slots=True)
class PushResult:
    """What a push did: the digest now behind ``ref``, and how each blob got there."""

    ref: str
    digest: str
    media_type: str
    uploaded: int
    mounted: int
    skipped: int
    bytes_uploaded: int
    manifests: int
    note: str = ""

    def to_json(self) -> dict:
        return {"ref": self.ref, "digest": self.digest, "mediaType": self.media_type,
                "uploaded": self.uploaded, "mounted": self.mounted, "skipped": self.skipped,
                "bytes_uploaded": self.bytes_uploaded, "manifests": self.manifests,
                **({"note": self.note} if self.note else {})}


class _Body:
    """A blob file as a request body: a known length (sent as Content-Length, not chunked
    transfer encoding) and bytes read as they are sent."""

    def __init__(self, f, size: int) -> None:
        self._f, self._size = f, size

    def __len__(self) -> int:
        return self._size

    def read(self, n: int = -1) -> bytes:
        return self._f.read(_READ if n is None or n < 0 else n)


class Uploader:
    """The blob and manifest write side of the distribution API for one repository.

    ``transport`` is a ``puller.transport.transport.Transport`` (auth, retries, redirects);
    requests that carry a body are not retried blindly, the whole upload is restarted."""

    def __init__(self, transport, repo: str, *, what: str | None = None) -> None:
        self.t, self.repo = transport, repo
        self.scope = f"repository:{repo}:pull,push"
        self.what = what or f"{transport.host}/{repo}"

    def _fail(self, resp, what: str) -> None:
        """Raise for an error answer; a refusal names push access, not a missing image."""
        if resp.status_code in (401, 403):
            from .errors import AuthError
            resp.close()
            raise AuthError(f"{what}: push access denied (log in with 'puller login "
                            f"{self.t.host}', and check your rights on {self.repo})",
                            status=resp.status_code)
        self.t.raise_for(resp, what)

    def _url(self, location: str) -> str:
        return urljoin(self.t.base + "/", location)

    def exists(self, digest: str) -> bool:
        resp = self.t.request("HEAD", f"/v2/{self.repo}/blobs/{digest}", scope=self.scope)
        if resp.status_code == 200:
            resp.close()
            return True
        if resp.status_code == 404:
            resp.close()
            return False
        self._fail(resp, f"blob {digest} of {self.what}")
        return False  # pragma: no cover - _fail raises

    def mount(self, digest: str, source_repo: str) -> tuple[bool, str | None]:
        """Ask the registry to link ``digest`` from ``source_repo``: (mounted, upload URL).
        A registry that cannot mount answers 202 with an upload session instead."""
        scope = f"{self.scope} repository:{source_repo}:pull"
        resp = self.t.request("POST", f"/v2/{self.repo}/blobs/uploads/?mount={digest}&from={source_repo}",
                              scope=scope)
        if resp.status_code == 201:
            resp.close()
            return True, None
        if resp.status_code == 202 and resp.headers.get("Location"):
            resp.close()
            return False, self._url(resp.headers["Location"])
        self._fail(resp, f"mount of {digest} into {self.what}")
        return False, None  # pragma: no cover

    def start(self) -> str:
        resp = self.t.request("POST", f"/v2/{self.repo}/blobs/uploads/", scope=self.scope)
        if resp.status_code != 202 or not resp.headers.get("Location"):
            self._fail(resp, f"upload to {self.what}")
        resp.close()
        return self._url(resp.headers["Location"])

    def upload(self, store: Store, d: Descriptor, *, chunked: bool, chunk_size: int,
               location: str | None = None, emit: Emit) -> None:
        """Upload one cached blob; a failed attempt starts a fresh upload session."""
        from .errors import NetworkError
        for attempt in range(_ATTEMPTS):
            loc = location if (attempt == 0 and location) else self.start()
            try:
                with store.open_blob(d.digest, d.size) as f:
                    if chunked:
                        self._chunked(loc, f, d, chunk_size, emit)
                    else:
                        self._monolithic(loc, f, d)
                return
            except (NetworkError, RegistryError) as e:
                if attempt + 1 == _ATTEMPTS or (isinstance(e, RegistryError) and not e.retryable):
                    raise
                emit({"event": "push-retry", "digest": d.digest, "reason": str(e)})

    def _monolithic(self, loc: str, f, d: Descriptor) -> None:
        sep = "&" if "?" in loc else "?"
        resp = self.t.request("PUT", f"{loc}{sep}digest={d.digest}", scope=self.scope,
                              headers={"Content-Type": "application/octet-stream",
                                       "Content-Length": str(d.size)},
                              data=_Body(f, d.size), retry=False)
        if resp.status_code not in (201, 204):
            self._fail(resp, f"upload of {d.digest} to {self.what}")
        resp.close()

    def _chunked(self, loc: str, f, d: Descriptor, chunk_size: int, emit: Emit) -> None:
        offset = 0
        while offset < d.size:
            data = f.read(min(chunk_size, d.size - offset))
            if not data:
                raise CacheError(f"cached blob {d.digest} is shorter than its descriptor says")
            resp = self.t.request("PATCH", loc, scope=self.scope, data=data, retry=False,
                                  headers={"Content-Type": "application/octet-stream",
                                           "Content-Length": str(len(data)),
                                           "Content-Range": f"{offset}-{offset + len(data) - 1}"})
            if resp.status_code != 202 or not resp.headers.get("Location"):
                self._fail(resp, f"chunk of {d.digest} to {self.what}")
            resp.close()
            loc = self._url(resp.headers["Location"])
            offset += len(data)
            emit({"event": "push-progress", "digest": d.digest, "offset": offset, "size": d.size})
        f.read()  # EOF: the cache's digest check
        sep = "&" if "?" in loc else "?"
        resp = self.t.request("PUT", f"{loc}{sep}digest={d.digest}", scope=self.scope,
                              headers={"Content-Length": "0"}, data=b"", retry=False)
        if resp.status_code not in (201, 204):
            self._fail(resp, f"upload of {d.digest} to {self.what}")
        resp.close()

    def put_manifest(self, ident: str, raw: bytes, media_type: str) -> None:
        resp = self.t.request("PUT", f"/v2/{self.repo}/manifests/{ident}", scope=self.scope,
                              headers={"Content-Type": media_type}, data=raw)
        if resp.status_code not in (200, 201, 202):
            self._fail(resp, f"manifest {ident} of {self.what}")
        resp.close()


@dataclass
class _Tally:
    """What happened to the blobs so far (added to from the upload threads)."""

    uploaded: int = 0
    mounted: int = 0
    skipped: int = 0
    bytes: int = 0
    manifests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, action: str, size: int) -> None:
        with self.lock:
            if action == "exists":
                self.skipped += 1
            elif action == "mounted":
                self.mounted += 1
            else:
                self.uploaded += 1
                self.bytes += size


@dataclass(frozen=True, slots=True)
class _Plan:
    """How this push writes blobs: where, from which mount sources, in what pieces."""

    store: Store
    up: Uploader
    mounts: dict[str, list[str]]
    chunked: bool
    chunk_size: int
    jobs: int
    emit: Emit


def push(store: Store, image_ref_in_cache, dest_ref=None, *, options=None,
         progress: Emit | None = None, offline: bool = False, present_only: bool = False,
         chunked: bool = False, chunk_size: int = CHUNK_SIZE, jobs: int = 4) -> PushResult:
    """Copy the cached image ``image_ref_in_cache`` (a Reference) to ``dest_ref`` (default:
    the same name). A source that is not cached is pulled first, unless ``offline``;
    ``jobs`` blobs of a manifest go up in parallel."""
    from .registry import Registry, RegistryOptions
    src, dst = image_ref_in_cache, dest_ref or image_ref_in_cache
    emit = progress or (lambda e: None)
    options = options or RegistryOptions.build()
    if chunk_size < 1 or jobs < 1:
        raise UsageError("the chunk size and the number of jobs must be at least 1")
    store.ensure()
    entry = _source_entry(store, src, offline=offline, options=options, progress=emit)
    with store.gc_lock(shared=True):
        top_raw = _original_top(store, entry)
        top = parse(top_raw)
        reg = Registry(dst.registry, options, on_event=emit)
        up = Uploader(reg.primary, dst.repository, what=f"{dst.registry}/{dst.repository}")
        plan = _Plan(store, up, _mount_sources(store, dst), chunked, chunk_size, jobs, emit)
        tally, note = _Tally(), ""
        if isinstance(top, Index):
            top, note = _complete_index(store, entry, top, offline=offline, options=options,
                                        present_only=present_only, emit=emit)
        elif not offline and not _manifest_complete(store, top.digest):
            _fetch_children(store, entry, [Descriptor(top.media_type, top.digest, len(top.raw))],
                            options, emit)  # e.g. a layer lost since the pull
        if dst.digest and dst.digest != top.digest:
            raise UsageError(f"{dst} names digest {dst.digest}, but the image's is {top.digest}")
        if isinstance(top, Index):
            for child in top.manifests:
                m = parse(store.read_blob(child.digest))
                _push_manifest(plan, m, child.digest, tally)
        ident = dst.digest or dst.tag or "latest"
        _push_manifest(plan, top, ident, tally)
    emit({"event": "pushed", "ref": str(dst), "digest": top.digest})
    return PushResult(str(dst), top.digest, top.media_type, tally.uploaded, tally.mounted,
                      tally.skipped, tally.bytes, tally.manifests, note)


def _source_entry(store: Store, src, *, offline: bool, options, progress: Emit) -> RefEntry:
    from .image import lookup_ref
    entry = lookup_ref(store, src) if store.exists() else None
    if entry is None:
        if offline:
            raise NotCached(f"{src.familiar} is not in the cache (offline mode)")
        from .pull import pull
        pull(src, store=store, options=options, progress=progress)
        entry = lookup_ref(store, src)
        if entry is None:
            raise CacheError(f"{src.familiar} was pulled but is not in the cache")
    return entry


def _original_top(store: Store, entry: RefEntry) -> bytes:
    """The registry's own bytes of what the ref names (kept as a blob when pulled)."""
    for digest in (entry.registry_digest, entry.descriptor.digest):
        if store.has_blob(digest):
            return store.read_blob(digest)
    raise CacheError(f"{entry.name}: the cache holds neither the registry's manifest "
                     f"{entry.registry_digest} nor its local copy; pull it again")


def _mount_sources(store: Store, dst) -> dict[str, list[str]]:
    """Blob digest -> other repositories of the destination registry whose cached images
    use it: candidates for a cross-repository mount."""
    from .housekeeping import reachable
    graph = reachable(store)
    prefix = f"{dst.registry}/"
    out: dict[str, list[str]] = {}
    for digest, repos in graph.repos.items():
        cands = sorted(r[len(prefix):] for r in repos
                       if r.startswith(prefix) and r[len(prefix):] != dst.repository)
        if cands:
            out[digest] = cands
    return out


def _manifest_complete(store: Store, digest: str) -> bool:
    if not store.has_blob(digest):
        return False
    try:
        m = parse(store.read_blob(digest))
    except PullerError:
        return False
    if isinstance(m, Index):
        return all(_manifest_complete(store, c.digest) for c in m.manifests)
    return all(store.has_blob(d.digest, d.size) for d in (m.config, *m.layers) if not d.urls)


def _source_repos(store: Store, entry: RefEntry) -> list[tuple[str, str]]:
    """(registry, repository) pairs the image can be fetched from: its own name first, then
    other refs to the same registry digest (after ``puller tag SRC DST``)."""
    from .reference import parse as parse_ref
    out: list[tuple[str, str]] = []
    names = [entry.name] + [r.name for r in store.refs()
                            if r.registry_digest == entry.registry_digest and r.name != entry.name]
    for name in names:
        try:
            ref = parse_ref(name)
        except PullerError:
            continue
        if (ref.registry, ref.repository) not in out:
            out.append((ref.registry, ref.repository))
    return out


def _complete_index(store: Store, entry: RefEntry, index: Index, *, offline: bool, options,
                    present_only: bool, emit: Emit) -> tuple[Index, str]:
    """Make every child of ``index`` complete in the cache, or decide what to push instead."""
    missing = [c for c in index.manifests if not _manifest_complete(store, c.digest)]
    if missing and not offline:
        _fetch_children(store, entry, missing, options, emit)
        missing = [c for c in index.manifests if not _manifest_complete(store, c.digest)]
    if not missing:
        return index, ""
    names = ", ".join(sorted(str(c.platform) if c.platform else c.digest for c in missing))
    if not present_only:
        raise UsageError(f"{entry.name}: {len(missing)} of {len(index.manifests)} entries of the "
                         f"index are not in the cache ({names}); push online so they are fetched, "
                         "or use --present-only to push an index of the present ones (new digest)")
    keep = [c for c in index.manifests if c not in missing]
    if not any(c in index.images() for c in keep):
        raise NotCached(f"{entry.name}: no platform of the index is complete in the cache")
    doc = json.loads(index.raw)
    wanted = {c.digest for c in keep}
    doc["manifests"] = [m for m in doc["manifests"] if m.get("digest") in wanted]
    raw = json.dumps(doc, indent=3).encode()
    store.put_bytes(raw, digest_of(raw))
    reduced = parse(raw)
    assert isinstance(reduced, Index)
    note = (f"pushed an index of the {len(keep)} entries present (without {names}): its digest "
            f"{reduced.digest} differs from the original {index.digest}")
    log.warning("%s", note)
    return reduced, note


def _fetch_children(store: Store, entry: RefEntry, missing: list[Descriptor], options,
                    emit: Emit) -> None:
    """Fetch missing index children (manifests and blobs) from where the image came from."""
    from .pull import ByteCounter, fetch_blob
    from .registry import Registry
    for registry, repo in _source_repos(store, entry):
        try:
            reg = Registry(registry, options, on_event=emit)
            for child in missing:
                if not store.has_blob(child.digest):
                    store.put_bytes(reg.get_manifest(repo, child.digest).raw, child.digest)
                m = parse(store.read_blob(child.digest))
                if isinstance(m, Manifest):
                    for d in (m.config, *m.layers):
                        if not d.urls and not store.has_blob(d.digest, d.size):
                            fetch_blob(reg, store, repo, d, emit, ByteCounter())
            return
        except PullerError as e:
            log.info("cannot fetch the missing entries from %s/%s: %s", registry, repo, e)
            emit({"event": "push-fetch-failed", "from": f"{registry}/{repo}", "reason": str(e)})


def _push_manifest(plan: _Plan, m: Manifest | Index, ident: str, tally: _Tally) -> None:
    """The blobs of ``m`` (each once, in parallel), then ``m`` itself under ``ident``."""
    if isinstance(m, Manifest):
        todo = {d.digest: d for d in (m.config, *m.layers)
                if not (d.urls and not plan.store.has_blob(d.digest))}  # foreign layers stay out
        if plan.jobs == 1 or len(todo) <= 1:
            for d in todo.values():
                tally.add(_push_blob(plan, d), d.size)
        else:
            with ThreadPoolExecutor(max_workers=min(plan.jobs, len(todo)),
                                    thread_name_prefix="push") as pool:
                futures = {pool.submit(_push_blob, plan, d): d for d in todo.values()}
                errors = []
                for f, d in futures.items():
                    try:
                        tally.add(f.result(), d.size)
                    except BaseException as e:  # noqa: BLE001 - report the first, after all stopped
                        errors.append(e)
                if errors:
                    raise errors[0]
    plan.up.put_manifest(ident, m.raw, m.media_type)
    tally.manifests += 1
    plan.emit({"event": "push-manifest", "ident": ident, "digest": m.digest})


def _push_blob(plan: _Plan, d: Descriptor) -> str:
    """One blob into the destination; returns what it took: exists, mounted or uploaded."""
    up, emit = plan.up, plan.emit
    if up.exists(d.digest):
        emit({"event": "push-blob", "digest": d.digest, "action": "exists", "size": d.size})
        return "exists"
    location = None
    for repo in plan.mounts.get(d.digest, ()):
        mounted, location = up.mount(d.digest, repo)
        if mounted:
            emit({"event": "push-blob", "digest": d.digest, "action": "mounted", "from": repo,
                  "size": d.size})
            return "mounted"
        break  # the registry refused to mount: upload into the session it opened
    if not plan.store.has_blob(d.digest, d.size):
        raise NotCached(f"blob {d.digest} is not in the cache; pull the image again")
    up.upload(plan.store, d, chunked=plan.chunked or d.size > CHUNKED_OVER,
              chunk_size=plan.chunk_size, location=location, emit=emit)
    emit({"event": "push-blob", "digest": d.digest, "action": "uploaded", "size": d.size})
    return "uploaded"
