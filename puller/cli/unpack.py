"""``puller unpack``: apply an image's layers into a directory."""
from __future__ import annotations

from pathlib import Path

import typer

from .common import (CacheOpt, InsecureOpt, JsonOpt, MirrorOpt, OfflineOpt, PlatformOpt,
                     ProgressOpt, QuietOpt, VerboseOpt, handle_errors, offline_default,
                     progress_for, registry_options)
from .output import emit_json


def register(app: typer.Typer) -> None:
    app.command("unpack", help="Unpack an image into DEST (pulls it first if needed).")(unpack_cmd)


def cached_image(image: str, *, cache, wanted, offline: bool):
    """``(store, image)`` from the cache; image is None when it must be pulled first."""
    from ..errors import NotCached
    from ..image import lookup_ref, resolve
    from ..reference import parse
    from ..store import Store
    ref = parse(image)
    store = Store(cache)
    entry = lookup_ref(store, ref) if store.exists() else None
    img = resolve(store, entry, wanted) if entry is not None else None
    if img is None and offline:
        raise NotCached(f"{ref.familiar} is not in the cache (offline mode)")
    return store, img


def resolve_image(image: str, *, cache, wanted, offline: bool, progress, options):
    """A ref from the cache, pulled first when it is not complete there."""
    from ..image import lookup_ref, resolve
    from ..pull import pull
    from ..reference import parse
    store, img = cached_image(image, cache=cache, wanted=wanted, offline=offline)
    if img is None:
        ref = parse(image)
        pull(ref, store=store, platform=wanted, options=options, progress=progress)
        img = resolve(store, lookup_ref(store, ref), wanted)
    return store, img


@handle_errors
def unpack_cmd(args: list[str] = typer.Argument(..., metavar="[IMAGE] DEST", show_default=False),
               layout: str = typer.Option(None, "--layout", metavar="DIR[:REF]", help="Read the image from an OCI layout on disk instead of the cache."),
               force: bool = typer.Option(False, "--force", help="Replace DEST if it exists."),
               platform: PlatformOpt = None, cache: CacheOpt = None, offline: OfflineOpt = False,
               quiet: QuietOpt = False, verbose: VerboseOpt = False, progress: ProgressOpt = "auto",
               json_out: JsonOpt = False, registry_mirror: MirrorOpt = None,
               insecure_registry: InsecureOpt = None) -> int:
    import os
    from ..errors import UsageError
    from ..platform import parse_platform
    from ..unpack import unpack
    if len(args) != (1 if layout else 2):
        raise UsageError("usage: puller unpack IMAGE DEST, or puller unpack --layout DIR[:REF] DEST")
    image, dest = (None, Path(args[0])) if layout else (args[0], Path(args[1]))
    wanted = parse_platform(platform)
    prog = progress_for(quiet, progress, verbose)
    try:
        img = None
        if layout:
            from ..image import layout_image
            store, img = layout_image(layout, wanted)
        else:
            store, img = cached_image(image, cache=cache, wanted=wanted, offline=offline_default(offline))
        if img is None:  # not cached: pull and unpack at once, layer n while n+1 downloads
            from ..pipeline import pull_and_unpack
            from ..reference import parse
            img, result, record = pull_and_unpack(
                parse(image), store, wanted, dest, force=force, progress=prog,
                options=registry_options(registry_mirror, insecure_registry))
        else:
            record = None
            if os.geteuid() != 0:
                record = store.root / "rootless" / f"{img.local_digest.split(':')[1]}.json"
                record.parent.mkdir(parents=True, exist_ok=True)
            result = unpack(img.layer_openers(store), img.diff_ids, dest, force=force, record=record,
                            progress=prog)
    finally:
        prog.close()
    if json_out:
        emit_json({"ref": img.name, "digest": img.manifest_digest, "dest": str(dest),
                   "record": str(record) if record else None,
                   **({"result": result.to_json()} if hasattr(result, "to_json") else {})})
    return 0
