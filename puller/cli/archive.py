"""``puller save | load | export | import``: carry images and rootfs trees as tar files.

Parsed with argparse, like ``puller pull``: ``entry.py`` can dispatch these before typer is
imported (``main(command, argv)``), because typer's start-up (it builds every command of
the group, and imports pydantic when installed) costs more than saving or loading a small
image. ``register`` adds pass-through typer commands so that ``puller --help`` lists them.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import UsageError
from .output import emit_json, run_lean, setup_logging
from .parsing import Parser

TYPE_CHECKING = False  # typing costs more to import than this module: names for checkers only
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, BinaryIO

    from ..image import CachedImage
    from ..platform import Platform
    from ..store import Store

__all__ = ["COMMANDS", "build_parser", "main", "register"]

HELP = {
    "save": "Save images to a docker-archive (or OCI archive) tar.",
    "load": "Load images from a docker-archive, OCI archive or OCI layout.",
    "export": "Write an image's merged root file system as one tar.",
    "import": "Make a one-layer image REF from a root file system tar.",
}
COMMANDS = tuple(HELP)


def _common(p: argparse.ArgumentParser, *, pulls: bool) -> None:
    add = p.add_argument
    add("--cache", metavar="DIR", type=Path,
        help="cache directory (default: $PULLER_CACHE, $XDG_CACHE_HOME/puller, ~/.cache/puller)")
    add("-q", "--quiet", action="store_true", help="no progress output")
    add("--verbose", action="store_true", help="show warnings")
    add("--progress", default="auto", choices=("auto", "tty", "plain", "quiet"),
        help="auto: bars on a terminal; plain: periodic lines for CI logs")
    if pulls:
        add("--platform", help="os/arch[/variant], e.g. linux/arm64 (default: this host)")
        add("--offline", action="store_true",
            help="never touch the network: the images must be cached (also PULLER_OFFLINE=1)")
        add("--registry-mirror", action="append", default=[], metavar="URL",
            help="mirror for docker.io (repeatable; also PULLER_REGISTRY_MIRRORS)")
        add("--insecure-registry", action="append", default=[], metavar="HOST[:PORT]",
            help="a registry that may be reached over plain HTTP (repeatable)")


def build_parser(command: str) -> argparse.ArgumentParser:
    """The parser of one of :data:`COMMANDS`."""
    usage = {"save": "puller save [OPTIONS] IMAGE... [-o FILE|-]",
             "load": "puller load [OPTIONS] [-i FILE|DIR|-]",
             "export": "puller export [OPTIONS] IMAGE [-o FILE|-]",
             "import": "puller import [OPTIONS] SRC REF"}[command]
    p = Parser(prog=f"puller {command}", usage=usage, description=HELP[command])
    add = p.add_argument
    if command in ("save", "export"):
        add("images", nargs="+" if command == "save" else 1, metavar="IMAGE")
        add("-o", "--output", metavar="FILE|-",
            help="write here ('-': stdout, the default when it is not a terminal)")
    if command == "save":
        add("--format", dest="fmt", default="docker", choices=("docker", "oci"),
            help="docker: docker-archive (docker/podman load, skopeo docker-archive:); "
                 "oci: OCI image layout tar (skopeo oci-archive:)")
        add("--compress", action="store_true",
            help="docker format: keep the registry's compressed layers instead of plain tars")
    if command == "load":
        add("-i", "--input", default="-", metavar="FILE|DIR|-",
            help="archive file, OCI layout directory, or '-' for stdin (default)")
        add("--offline", action="store_true",
            help="accepted for scripts: load never uses the network")
        add("--json", action="store_true", help="print the loaded refs as JSON")
    if command == "import":
        add("src", metavar="SRC", help="root file system tar (plain, gzip or zstd), or '-' for stdin")
        add("ref", metavar="REF", help="name of the new image, e.g. mybase:1")
        add("--platform", help="os/arch[/variant] to record (default: this host)")
        add("--json", action="store_true", help="print the new ref and digest as JSON")
    _common(p, pulls=command in ("save", "export"))
    return p


def main(command: str, argv: list[str]) -> int:
    """Run ``puller COMMAND ARGV...``; errors become one line on stderr and an exit code."""
    def body() -> int:
        ns = build_parser(command).parse_args(argv)
        setup_logging(ns.verbose)
        return _RUN[command](ns)
    return run_lean(body)


def _output(target: str | None) -> Path | BinaryIO:
    """A path, or stdout's bytes; a terminal is refused, as docker save does."""
    if target in (None, "-"):
        if sys.stdout.isatty():
            raise UsageError("refusing to write an archive to a terminal; use -o FILE or a pipe")
        return sys.stdout.buffer
    return Path(target)


def _image(image: str, ns: argparse.Namespace, wanted: Platform,
           progress: Any) -> tuple[Store, CachedImage]:
    """``(store, CachedImage)``: from the cache when it is complete there (without loading
    the HTTP stack at all), else pulled first unless offline."""
    from ..image import lookup_ref, resolve
    from ..reference import parse
    from ..store import Store
    store = Store(ns.cache)
    entry = lookup_ref(store, parse(image)) if store.exists() else None
    img = resolve(store, entry, wanted) if entry is not None else None
    if img is not None:
        return store, img
    # something must be pulled: only now the HTTP stack (and typer, via cli.unpack)
    from .options import offline_default, registry_options
    from .unpack import resolve_image
    offline = offline_default(ns.offline)
    pulled: tuple[Store, CachedImage] = resolve_image(
        image, cache=ns.cache, wanted=wanted, offline=offline, progress=progress,
        options=None if offline else registry_options(ns.registry_mirror, ns.insecure_registry))
    return pulled


def _progress(ns: argparse.Namespace) -> Any:
    from .options import progress_for
    return progress_for(ns.quiet, ns.progress, ns.verbose)


def _save(ns: argparse.Namespace) -> int:
    from ..archive import SaveItem, save
    from ..platform import parse_platform
    wanted = parse_platform(ns.platform)
    out = _output(ns.output)
    prog = _progress(ns)
    try:
        items: dict[str, tuple[CachedImage, list[str]]] = {}
        store: Store | None = None
        for image in ns.images:  # one image named twice is saved once, with both names
            store, img = _image(image, ns, wanted, prog)
            names = items.setdefault(img.local_digest, (img, []))[1]
            if img.name not in names:
                names.append(img.name)
        assert store is not None  # argparse requires at least one IMAGE
        save([SaveItem(img, tuple(names)) for img, names in items.values()], out,
             store=store, fmt=ns.fmt, compress=ns.compress, progress=prog)
    finally:
        prog.close()
    return 0


def _load(ns: argparse.Namespace) -> int:
    from ..archive import load
    from ..reference import parse
    from ..store import Store
    if ns.input == "-" and sys.stdin.isatty():
        raise UsageError("no archive on stdin; use -i FILE or a pipe")
    source = sys.stdin.buffer if ns.input == "-" else Path(ns.input)
    prog = _progress(ns)
    try:
        names = load(source, Store(ns.cache), progress=prog)
    finally:
        prog.close()
    if ns.json:
        emit_json({"loaded": names})
    elif not ns.quiet:
        for name in names:
            print(f"Loaded image: {parse(name).familiar}")
    return 0


def _export(ns: argparse.Namespace) -> int:
    from ..archive import export
    from ..platform import parse_platform
    out = _output(ns.output)
    prog = _progress(ns)
    try:
        store, img = _image(ns.images[0], ns, parse_platform(ns.platform), prog)
        export(img, out, store, progress=prog)
    finally:
        prog.close()
    return 0


def _import(ns: argparse.Namespace) -> int:
    from ..archive import import_tar
    from ..platform import parse_platform
    from ..reference import parse
    from ..store import Store
    store = Store(ns.cache)
    source = sys.stdin.buffer if ns.src == "-" else Path(ns.src)
    name = import_tar(source, ns.ref, store,
                      platform=parse_platform(ns.platform) if ns.platform else None)
    entry = store.get_ref(name)
    digest = entry.descriptor.digest if entry else ""
    if ns.json:
        emit_json({"ref": name, "digest": digest})
    elif not ns.quiet:
        print(f"{parse(name).familiar} {digest}")
    return 0


_RUN: dict[str, Callable[[argparse.Namespace], int]] = {
    "save": _save, "load": _load, "export": _export, "import": _import}


def register(app: Any) -> None:
    """Pass-through typer commands, so that ``puller --help`` lists them."""
    from .common import register_passthrough
    for command in COMMANDS:
        register_passthrough(app, command, HELP[command],
                             lambda argv, command=command: main(command, argv))
