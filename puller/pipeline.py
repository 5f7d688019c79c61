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
from typing import Callable

from .errors import CacheError, PullerError
from .image import CachedImage, lookup_ref, resolve
from .manifest import Manifest, parse
from .platform import Platform
from .store import Store

__all__ = ["pull_and_unpack"]


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


def pull_and_unpack(ref, store: Store, wanted: Platform, dest: Path, *, options=None, jobs: int = 4,
                    force: bool = False, progress=None, limits=None) -> tuple[CachedImage, object, Path | None]:
    """Pull ``ref`` into ``store`` and unpack it into ``dest``, overlapping the two.

    Returns the cached image, the unpack result and the rootless record path (or None)."""
    from .pull import pull
    from .unpack import Limits, unpack
    watch = _Watch(progress)

    def run_pull() -> None:
        try:
            pull(ref, store=store, platform=wanted, options=options, jobs=jobs, progress=watch)
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
            watch.error = e
        finally:
            with watch.cond:
                watch.finished = True
                watch.cond.notify_all()

    thread = threading.Thread(target=run_pull, name="pull", daemon=True)
    thread.start()
    try:
        watch.wait_for(lambda: watch.manifest is not None)
        m = parse(store.read_blob(watch.manifest)) if watch.manifest else None
        if not isinstance(m, Manifest):
            raise CacheError("expected a platform manifest")
        watch.wait_for(lambda: store.has_blob(m.config.digest, m.config.size))
        import json
        diff_ids = list(json.loads(store.read_blob(m.config.digest)).get("rootfs", {}).get("diff_ids") or [])

        def opener(d):
            def open_when_ready():
                watch.wait_for(lambda: store.has_blob(d.digest, d.size))
                return store.open_blob(d.digest, d.size)
            return open_when_ready

        local = m.to_oci()
        record = None
        if os.geteuid() != 0:
            record = store.root / "rootless" / f"{local.digest.split(':')[1]}.json"
            record.parent.mkdir(parents=True, exist_ok=True)
        result = unpack([opener(d) for d in m.layers], diff_ids, dest, force=force,
                        limits=limits or Limits(), record=record, progress=progress)
    except PullerError:
        thread.join()
        if watch.error is not None and isinstance(watch.error, PullerError):
            raise watch.error from None  # the pull's own error says more
        raise
    thread.join()
    if watch.error is not None:
        raise watch.error
    img = resolve(store, lookup_ref(store, ref), wanted)
    if img is None:
        raise CacheError(f"{ref.familiar} was pulled but is not complete in the cache")
    return img, result, record
