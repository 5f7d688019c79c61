"""Pull and unpack in one pass: layer n is applied while layers n+1... still download.

The pull runs in a thread of its own and announces the platform manifest (its ``blobs``
event) and each finished blob; the unpacker opens layer n as soon as its blob is verified in
the cache. Nothing unverified is ever applied: a layer is read from the cache, never from the
wire, and the DiffID check still runs on every layer.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from collections.abc import Callable

from .errors import CacheError, PullerError
from .image import CachedImage, pulled_image
from .manifest import Manifest, parse
from .platform import Platform
from .store import Store

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO

__all__ = ["pull_and_unpack", "pull_into_rootfs"]


class _Watch:
    """What the pull thread has done so far, for the unpacking thread to wait on."""

    def __init__(self, progress: Callable | None) -> None:
        self.cond = threading.Condition()
        self.manifest: str | None = None
        self.finished = False
        self.error: BaseException | None = None
        self.progress = progress

    def __call__(self, event: dict) -> None:
        if self.progress is not None:
            self.progress(event)
        kind = event.get("event")
        if kind in ("blobs", "blob-done"):
            with self.cond:
                if kind == "blobs" and self.manifest is None:
                    self.manifest = event.get("manifest")
                self.cond.notify_all()

    def wait_for(self, ready: Callable[[], bool]) -> None:
        with self.cond:
            while not ready():
                if self.finished:
                    if ready():
                        return
                    raise self.error or CacheError("the pull ended without this blob")
                self.cond.wait(0.5)


class _Pulling:
    """The pull running in its own thread, with what the unpacker needs from it: the
    platform manifest and its DiffIDs as soon as they are in, and per layer an opener that
    waits until that blob is verified in the cache. Leaving the block joins the thread; the
    pull's own error, when it has one, is the one raised."""

    def __init__(self, ref, store: Store, wanted: Platform, options, jobs: int, progress) -> None:
        self.ref, self.store, self.wanted = ref, store, wanted
        self.watch = _Watch(progress)
        self._thread = threading.Thread(target=self._run, args=(options, jobs), name="pull", daemon=True)

    def _run(self, options, jobs: int) -> None:
        from .pull import pull
        watch = self.watch
        try:
            pull(self.ref, store=self.store, platform=self.wanted, options=options, jobs=jobs,
                 progress=watch)
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
            watch.error = e
        finally:
            with watch.cond:
                watch.finished = True
                watch.cond.notify_all()

    def __enter__(self) -> "_Pulling":
        self._thread.start()
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if exc is not None and not isinstance(exc, PullerError):
            return  # Ctrl-C and the like: the daemon thread ends with the process
        self._thread.join()
        error = self.watch.error
        if exc is not None:
            if isinstance(error, PullerError):
                raise error from None  # the pull's own error says more
            return
        if error is not None:
            raise error

    def manifest(self) -> tuple[Manifest, list[str]]:
        """The platform manifest being pulled and the DiffIDs its config lists."""
        watch, store = self.watch, self.store
        watch.wait_for(lambda: watch.manifest is not None)
        m = parse(store.read_blob(watch.manifest)) if watch.manifest else None
        if not isinstance(m, Manifest):
            raise CacheError("expected a platform manifest")
        watch.wait_for(lambda: store.has_blob(m.config.digest, m.config.size))
        import json
        config = json.loads(store.read_blob(m.config.digest))
        return m, list(config.get("rootfs", {}).get("diff_ids") or [])

    def openers(self, m: Manifest) -> list[Callable[[], BinaryIO]]:
        def opener(d):
            def open_when_ready():
                self.watch.wait_for(lambda: self.store.has_blob(d.digest, d.size))
                return self.store.open_blob(d.digest, d.size)
            return open_when_ready
        return [opener(d) for d in m.layers]

    def image(self) -> CachedImage:
        return pulled_image(self.store, self.ref, self.wanted)


def pull_and_unpack(ref, store: Store, wanted: Platform, dest: Path, *, options=None, jobs: int = 4,
                    force: bool = False, progress=None, limits=None) -> tuple[CachedImage, object, Path | None]:
    """Pull ``ref`` into ``store`` and unpack it into ``dest``, overlapping the two.

    Returns the cached image, the unpack result and the rootless record path (or None)."""
    from .unpack import Limits, unpack
    with _Pulling(ref, store, wanted, options, jobs, progress) as p:
        m, diff_ids = p.manifest()
        record = None
        if os.geteuid() != 0:
            record = store.root / "rootless" / f"{m.to_oci().digest.split(':')[1]}.json"
            record.parent.mkdir(parents=True, exist_ok=True)
        result = unpack(p.openers(m), diff_ids, dest, force=force,
                        limits=limits or Limits(), record=record, progress=progress)
    return p.image(), result, record


def pull_into_rootfs(ref, store: Store, wanted: Platform, *, options=None, jobs: int = 4,
                     progress=None) -> tuple[CachedImage, Path, Path | None]:
    """A cold ``pull-and-run``: pull ``ref`` and unpack it as the image's shared base rootfs
    (``CACHE/rootfs/<digest>``, see ``image.unpack_base``), overlapping the two. Returns the
    cached image, the rootfs and its rootless record (or None)."""
    from .image import unpack_base
    with _Pulling(ref, store, wanted, options, jobs, progress) as p:
        m, diff_ids = p.manifest()
        rootfs, record = unpack_base(store, m.to_oci().digest, p.openers(m), diff_ids, progress=progress)
    return p.image(), rootfs, record
