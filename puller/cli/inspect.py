"""``puller inspect`` and ``puller tags``: look at an image without pulling its layers."""
from __future__ import annotations

import json
import sys

import typer

from .common import (CacheOpt, InsecureOpt, JsonOpt, MirrorOpt, OfflineOpt, PlatformOpt,
                     handle_errors, offline_default, open_store, registry_options)
from .output import emit_json, human_size


def register(app: typer.Typer) -> None:
    app.command("inspect", help="Show an image's manifest, config or a summary (from the cache, else the registry).")(inspect_cmd)
    app.command("tags", help="List a repository's tags.")(tags_cmd)


def _from_cache(store, ref, wanted):
    from ..image import lookup_ref, resolve
    entry = lookup_ref(store, ref) if store.exists() else None
    if entry is None:
        return None
    img = resolve(store, entry, wanted)
    if img is None:
        return None
    return store.read_blob(entry.registry_digest) if store.has_blob(entry.registry_digest) else None, img


def _from_registry(ref, wanted, opts):
    """The top manifest's raw bytes, the platform manifest and its config, from the registry."""
    from ..errors import DigestMismatch
    from ..manifest import Index, digest_of
    from ..platform import Platform, select
    from ..registry import Registry
    reg = Registry(ref.registry, opts)
    top = reg.get_manifest(ref.repository, ref.identifier or "latest")
    m = top
    if isinstance(top, Index):
        child = select([(d.platform or Platform("", ""), d) for d in top.images()], wanted)
        m = reg.get_manifest(ref.repository, child.digest)
    resp = reg.open_blob(ref.repository, m.config.digest)
    try:
        cfg = resp.read(16 * 1024 * 1024)
    finally:
        resp.close()
    if digest_of(cfg) != m.config.digest:
        raise DigestMismatch(f"config {m.config.digest} failed verification")
    return top, m, cfg


@handle_errors
def inspect_cmd(image: str = typer.Argument(..., metavar="IMAGE"),
                raw: bool = typer.Option(False, "--raw", help="The manifest (or index) exactly as the registry serves it."),
                config: bool = typer.Option(False, "--config", help="The image config."),
                json_out: JsonOpt = False, platform: PlatformOpt = None, cache: CacheOpt = None,
                offline: OfflineOpt = False, registry_mirror: MirrorOpt = None,
                insecure_registry: InsecureOpt = None) -> int:
    from ..errors import NotCached
    from ..manifest import parse
    from ..platform import parse_platform
    from ..reference import parse as parse_ref
    ref = parse_ref(image)
    wanted = parse_platform(platform)
    store = open_store(cache)
    found = _from_cache(store, ref, wanted)
    if found is not None:
        top_raw, img = found
        top = parse(top_raw) if top_raw else img.manifest
        m, cfg_raw, digest = img.manifest, img.config_raw, img.registry_digest
        manifest_raw = store.read_blob(img.manifest_digest) if store.has_blob(img.manifest_digest) else m.raw
    elif offline_default(offline):
        raise NotCached(f"{ref.familiar} is not in the cache (offline mode)")
    else:
        top, m, cfg_raw = _from_registry(ref, wanted, registry_options(registry_mirror, insecure_registry))
        digest = top.digest
        manifest_raw = m.raw
    if raw:
        sys.stdout.buffer.write(top.raw if found is None or top_raw else manifest_raw)
        sys.stdout.flush()
        return 0
    cfg = json.loads(cfg_raw)
    if config:
        emit_json(cfg)
        return 0
    c = cfg.get("config") or {}
    summary = {
        "Name": ref.name, "Digest": digest, "ManifestDigest": json.loads(manifest_raw) and _digest(manifest_raw),
        "MediaType": top.media_type, "Created": cfg.get("created"),
        "Architecture": cfg.get("architecture"), "Os": cfg.get("os"), "Variant": cfg.get("variant"),
        "Layers": [d.digest for d in m.layers], "Size": sum(d.size for d in m.layers),
        "Env": c.get("Env"), "Entrypoint": c.get("Entrypoint"), "Cmd": c.get("Cmd"),
        "WorkingDir": c.get("WorkingDir"), "User": c.get("User"), "Labels": c.get("Labels"),
        "Cached": found is not None,
    }
    if json_out:
        emit_json(summary)
        return 0
    for k, v in summary.items():
        if k == "Layers":
            print("Layers:")
            for d in m.layers:
                print(f"  {d.digest}  {human_size(d.size)}")
        elif k == "Size":
            print(f"Size: {human_size(v)}")
        elif v not in (None, [], {}):
            print(f"{k}: {v if not isinstance(v, (list, dict)) else json.dumps(v)}")
    return 0


def _digest(raw: bytes) -> str:
    from ..manifest import digest_of
    return digest_of(raw)


@handle_errors
def tags_cmd(repository: str = typer.Argument(..., metavar="REPOSITORY"), json_out: JsonOpt = False,
             registry_mirror: MirrorOpt = None, insecure_registry: InsecureOpt = None) -> int:
    from ..reference import parse
    from ..registry import Registry
    ref = parse(repository, default_tag=None)
    reg = Registry(ref.registry, registry_options(registry_mirror, insecure_registry))
    tags = list(reg.tags(ref.repository))
    if json_out:
        emit_json({"repository": ref.name, "tags": tags})
    else:
        for t in tags:
            print(t)
    return 0
