"""``puller images``, ``rmi`` and ``tag``: the refs of the cache."""
from __future__ import annotations

import typer

from .common import CacheOpt, JsonOpt, handle_errors, open_store
from .output import emit_json, human_size


def register(app: typer.Typer) -> None:
    app.command("images", help="List the cached images.")(images_cmd)
    app.command("rmi", help="Remove image refs from the cache (blobs stay until 'puller prune').")(rmi_cmd)
    app.command("tag", help="Give a cached image another name.")(tag_cmd)


def image_rows(store) -> list[dict]:
    """One row per ref: name, digest, platforms held, size of what is held."""
    from ..manifest import REGISTRY_DIGEST, Index, parse
    from ..reference import parse as parse_ref
    rows = []
    for entry in store.refs():
        platforms, size = [], 0
        manifests = []
        try:
            top = parse(store.read_blob(entry.descriptor.digest)) if store.has_blob(entry.descriptor.digest) else None
        except Exception:  # noqa: BLE001 - a damaged entry is listed, not fatal
            top = None
        if isinstance(top, Index):
            for d in top.images():
                if store.has_blob(d.digest):
                    m = parse(store.read_blob(d.digest))
                    manifests.append((str(d.platform), m, d.annotation(REGISTRY_DIGEST) or d.digest))
        elif top is not None:
            import json
            try:
                cfg = json.loads(store.read_blob(top.config.digest))
                plat = "/".join(x for x in (cfg.get("os"), cfg.get("architecture"), cfg.get("variant")) if x)
            except Exception:  # noqa: BLE001
                plat = "?"
            manifests.append((plat, top, entry.registry_digest))
        for plat, m, _ in manifests:
            platforms.append(plat)
            if not m.is_index:
                size += m.config.size + sum(layer.size for layer in m.layers)
        try:
            familiar = parse_ref(entry.name).familiar
        except Exception:  # noqa: BLE001
            familiar = entry.name
        rows.append({"ref": entry.name, "name": familiar, "digest": entry.registry_digest,
                     "local_digest": entry.descriptor.digest, "media_type": entry.registry_media_type,
                     "platforms": platforms, "size": size})
    return rows


@handle_errors
def images_cmd(cache: CacheOpt = None, json_out: JsonOpt = False,
               quiet: bool = typer.Option(False, "-q", "--quiet", help="Only show refs.")) -> int:
    store = open_store(cache)
    rows = image_rows(store) if store.exists() else []
    if json_out:
        emit_json(rows)
    elif quiet:
        for r in rows:
            print(r["name"])
    else:
        print(f"{'IMAGE':40} {'DIGEST':20} {'PLATFORMS':24} SIZE")
        for r in rows:
            print(f"{r['name']:40} {r['digest'][7:19]:20} {','.join(r['platforms']) or '-':24} {human_size(r['size'])}")
    return 0


@handle_errors
def rmi_cmd(images: list[str] = typer.Argument(..., metavar="IMAGE..."), cache: CacheOpt = None) -> int:
    from ..errors import NotCached
    from ..image import lookup_ref
    from ..reference import parse
    store = open_store(cache)
    for text in images:
        ref = parse(text)
        entry = lookup_ref(store, ref) if store.exists() else None
        if entry is None or not store.remove_ref(entry.name):
            raise NotCached(f"no such image in the cache: {text}")
        print(f"Untagged: {ref.familiar}")
    return 0


@handle_errors
def tag_cmd(source: str = typer.Argument(..., metavar="SOURCE"),
            target: str = typer.Argument(..., metavar="TARGET"), cache: CacheOpt = None) -> int:
    from ..errors import NotCached, UsageError
    from ..image import lookup_ref
    from ..reference import parse
    store = open_store(cache)
    src, dst = parse(source), parse(target)
    if dst.digest:
        raise UsageError(f"cannot tag with a digest: {target}")
    entry = lookup_ref(store, src) if store.exists() else None
    if entry is None:
        raise NotCached(f"no such image in the cache: {source}")
    store.set_ref(str(dst), entry.descriptor, registry_digest=entry.registry_digest,
                  registry_media_type=entry.registry_media_type)
    return 0
