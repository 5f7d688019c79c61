"""``puller save | load | export | import``: carry images and rootfs trees as tar files."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, BinaryIO

import typer

from .common import (
    CacheOpt,
    InsecureOpt,
    JsonOpt,
    MirrorOpt,
    OfflineOpt,
    PlatformOpt,
    ProgressOpt,
    QuietOpt,
    VerboseOpt,
    handle_errors,
)
from .options import offline_default, progress_for, registry_options

if TYPE_CHECKING:
    from ..image import CachedImage
    from ..store import Store
from .output import emit_json

OutputOpt = Annotated[str | None, typer.Option(
    "-o", "--output", metavar="FILE|-", help="Write here ('-': stdout, the default when it is not a terminal).",
    show_default=False)]


def register(app: typer.Typer) -> None:
    app.command("save", help="Save images to a docker-archive (or OCI archive) tar.")(save_cmd)
    app.command("load", help="Load images from a docker-archive, OCI archive or OCI layout.")(load_cmd)
    app.command("export", help="Write an image's merged root file system as one tar.")(export_cmd)
    app.command("import", help="Make a one-layer image REF from a root file system tar.")(import_cmd)


def _output(target: str | None) -> Path | BinaryIO:
    """A path, or stdout's bytes; a terminal is refused, as docker save does."""
    from ..errors import UsageError
    if target in (None, "-"):
        if sys.stdout.isatty():
            raise UsageError("refusing to write an archive to a terminal; use -o FILE or a pipe")
        return sys.stdout.buffer
    return Path(target)


def _image(image: str, *, cache: Path | None, wanted: Any, offline: bool, progress: Any,
           mirrors: list[str] | None, insecure: list[str] | None) -> tuple[Store, CachedImage]:
    """``(store, CachedImage)``: from the cache when it is complete there (without loading
    the HTTP stack at all), else pulled first unless offline."""
    from ..image import lookup_ref, resolve
    from ..reference import parse
    from ..store import Store
    from .unpack import resolve_image
    store = Store(cache)
    entry = lookup_ref(store, parse(image)) if store.exists() else None
    img = resolve(store, entry, wanted) if entry is not None else None
    if img is not None:
        return store, img
    pulled: tuple[Store, CachedImage] = resolve_image(
        image, cache=cache, wanted=wanted, offline=offline, progress=progress,
        options=None if offline else registry_options(mirrors, insecure))
    return pulled


@handle_errors
def save_cmd(images: Annotated[list[str], typer.Argument(metavar="IMAGE...", help="One or more images.")],
             output: OutputOpt = None,
             fmt: str = typer.Option("docker", "--format", help="docker (docker-archive) or oci (OCI image layout tar)."),
             compress: bool = typer.Option(False, "--compress", help="docker format: keep the registry's compressed layers."),
             platform: PlatformOpt = None, cache: CacheOpt = None, offline: OfflineOpt = False,
             quiet: QuietOpt = False, verbose: VerboseOpt = False, progress: ProgressOpt = "auto",
             registry_mirror: MirrorOpt = None, insecure_registry: InsecureOpt = None) -> int:
    from ..archive import SaveItem, save
    from ..errors import UsageError
    from ..platform import parse_platform
    if fmt not in ("docker", "oci"):
        raise UsageError(f"invalid --format {fmt!r}: expected docker or oci")
    wanted = parse_platform(platform)
    out = _output(output)
    prog = progress_for(quiet, progress, verbose)
    try:
        items: dict[str, tuple[CachedImage, list[str]]] = {}
        store: Store | None = None
        for image in images:
            store, img = _image(image, cache=cache, wanted=wanted, offline=offline_default(offline),
                                progress=prog, mirrors=registry_mirror, insecure=insecure_registry)
            names = items.setdefault(img.local_digest, (img, []))[1]
            if img.name not in names:
                names.append(img.name)
        assert store is not None  # typer requires at least one IMAGE
        save([SaveItem(img, tuple(names)) for img, names in items.values()], out,
             store=store, fmt=fmt, compress=compress, progress=prog)
    finally:
        prog.close()
    return 0


@handle_errors
def load_cmd(input_: str = typer.Option("-", "-i", "--input", metavar="FILE|DIR|-", help="Archive file, OCI layout directory, or '-' for stdin."),
             cache: CacheOpt = None, offline: OfflineOpt = False, quiet: QuietOpt = False,
             verbose: VerboseOpt = False, progress: ProgressOpt = "auto",
             json_out: JsonOpt = False) -> int:
    """``--offline`` is accepted for symmetry with the other commands: load never uses the
    network, whatever the archive names."""
    from ..archive import load
    from ..errors import UsageError
    from ..reference import parse
    from ..store import Store
    if input_ == "-" and sys.stdin.isatty():
        raise UsageError("no archive on stdin; use -i FILE or a pipe")
    source = sys.stdin.buffer if input_ == "-" else Path(input_)
    prog = progress_for(quiet, progress, verbose)
    try:
        names = load(source, Store(cache), progress=prog)
    finally:
        prog.close()
    if json_out:
        emit_json({"loaded": names})
    elif not quiet:
        for name in names:
            print(f"Loaded image: {parse(name).familiar}")
    return 0


@handle_errors
def export_cmd(image: str = typer.Argument(..., metavar="IMAGE"), output: OutputOpt = None,
               platform: PlatformOpt = None, cache: CacheOpt = None, offline: OfflineOpt = False,
               quiet: QuietOpt = False, verbose: VerboseOpt = False, progress: ProgressOpt = "auto",
               registry_mirror: MirrorOpt = None, insecure_registry: InsecureOpt = None) -> int:
    from ..archive import export
    from ..platform import parse_platform
    out = _output(output)
    prog = progress_for(quiet, progress, verbose)
    try:
        store, img = _image(image, cache=cache, wanted=parse_platform(platform),
                            offline=offline_default(offline), progress=prog,
                            mirrors=registry_mirror, insecure=insecure_registry)
        export(img, out, store, progress=prog)
    finally:
        prog.close()
    return 0


@handle_errors
def import_cmd(src: str = typer.Argument(..., metavar="SRC", help="Root file system tar (plain, gzip or zstd), or '-' for stdin."),
               ref: str = typer.Argument(..., metavar="REF", help="Name of the new image, e.g. mybase:1."),
               platform: PlatformOpt = None, cache: CacheOpt = None, quiet: QuietOpt = False,
               verbose: VerboseOpt = False, json_out: JsonOpt = False) -> int:
    from ..archive import import_tar
    from ..platform import parse_platform
    from ..reference import parse
    from ..store import Store
    store = Store(cache)
    source = sys.stdin.buffer if src == "-" else Path(src)
    name = import_tar(source, ref, store, platform=parse_platform(platform) if platform else None)
    entry = store.get_ref(name)
    digest = entry.descriptor.digest if entry else ""
    if json_out:
        emit_json({"ref": name, "digest": digest})
    elif not quiet:
        print(f"{parse(name).familiar} {digest}")
    return 0
