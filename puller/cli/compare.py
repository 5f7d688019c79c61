"""``puller layers / ls / cat / which / diff``: look inside images without unpacking them.

Every command reads layers as streams (see :mod:`puller.compare`), takes ``--json``, pulls
what is not cached unless ``--offline``, and numbers layers from 1. Paths are printed as
they are, with control characters (and bytes that are not UTF-8) escaped as ``\\xNN``.

Parsed with argparse, like ``pull`` and ``save``: ``entry.py`` can dispatch to
``main(command, argv)`` before typer is imported (typer's start-up costs about as much as
reading a 40 MB image); ``register`` adds pass-through typer commands for ``puller --help``.

JSON fields (stable):

* a *node*: ``path`` (absolute), ``type`` (file, dir, symlink, hardlink, char, block, fifo,
  whiteout, opaque), ``mode`` (octal string, permission bits), ``uid``, ``gid``, ``size``,
  ``mtime`` (RFC 3339, UTC), ``layer`` (1-based); when relevant ``sha256``, ``link``
  (symlink target), ``hardlink`` (the path it links to), ``device`` ([major, minor]),
  ``xattrs`` (name -> base64 value).
* ``layers``: one object: ``image``, ``layers`` (``index``, ``digest``, ``diff_id``,
  ``media_type``, ``compressed_size``, ``size``, ``created_by``, ``entries``,
  ``added``/``modified``/``deleted`` {``count``, ``bytes``; deleted also ``whiteouts``,
  ``opaques``}, ``wasted_bytes``), ``summary`` (``layers``, ``compressed_size``, ``size``,
  ``total_bytes``, ``wasted_bytes``, ``efficiency``, ``entries``, ``bytes``),
  ``wasted_paths`` [{``path``, ``bytes``, ``times``}].
* ``ls``: JSON lines, one node each. ``which``: one object {``path``, ``events``: [{``layer``,
  ``action`` (added, modified, deleted), ``how`` (whiteout, opaque, replaced), ``node``}]}.
  ``cat``: one object {``path``, ``layer``, ``size``, ``sha256``, ``content_base64``}.
* ``diff``: JSON lines, each with ``record``: ``change`` {``path``, ``status`` (added,
  removed, changed), ``what`` [type, content, size, mode, uid, gid, link, device, xattrs,
  mtime], ``a``, ``b`` (nodes or null), ``layer_a``, ``layer_b``}; ``config`` {``field``,
  ``key``, ``a``, ``b``}; ``note`` {``text``}; last ``summary`` {``same``, ``added``,
  ``removed``, ``changed``, ``added_bytes``, ``removed_bytes``, ``config_changes``,
  ``shared_layers``, ``layers_read``, ``a``, ``b``}.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import stat
import sys
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import PullerError, UsageError
from .options import offline_default, progress_for, registry_options
from .output import emit_json, fail, human_size, run_lean, setup_logging
from .parsing import Parser

__all__ = ["COMMANDS", "bar", "build_parser", "escape", "fold", "main", "register"]

HELP = {
    "layers": "One line per layer: sizes, created_by, +added ~modified -deleted, wasted "
              "bytes; the image's efficiency.",
    "ls": "List a directory of the merged view (or of one layer) without unpacking.",
    "cat": "Print a file of the image, read from the layer that holds it.",
    "which": "Which layers wrote or deleted PATH, in order.",
    "diff": "Compare the filesystems and configs of two images (exit 0 same, 1 different, "
            "2 trouble).",
}
COMMANDS = tuple(HELP)
_IMAGE_HELP = ("a ref (alpine:3.10, REF@sha256:...), oci:DIR[:REF] or "
               "docker-archive:FILE[:REF]; REF@N: its first N layers")


def _common(p: argparse.ArgumentParser, *, verbose_short: bool) -> None:
    add = p.add_argument
    add("--platform", help="os/arch[/variant], e.g. linux/arm64 (default: this host)")
    add("--cache", metavar="DIR", type=Path,
        help="cache directory (default: $PULLER_CACHE, $XDG_CACHE_HOME/puller, ~/.cache/puller)")
    add("--offline", action="store_true",
        help="never touch the network; use the cache only (also PULLER_OFFLINE=1)")
    add("--json", dest="json_out", action="store_true",
        help="print the result as JSON on stdout (documented, stable fields)")
    add("-q", "--quiet", action="store_true", help="no progress output")
    if not verbose_short:
        add("--verbose", action="store_true", help="show warnings")
    add("--registry-mirror", action="append", default=[], metavar="URL",
        help="mirror for docker.io (repeatable; also PULLER_REGISTRY_MIRRORS)")
    add("--insecure-registry", action="append", default=[], metavar="HOST[:PORT]",
        help="a registry that may be reached over plain HTTP (repeatable)")


def _layer_number(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise UsageError(f"--layer {text!r}: a layer number (1-based)") from None
    if n < 1:
        raise UsageError("--layer: layers are numbered from 1")
    return n


def build_parser(command: str) -> argparse.ArgumentParser:
    """The argparse parser of one of :data:`COMMANDS`."""
    p = Parser(prog=f"puller {command}", description=HELP[command])
    add = p.add_argument
    if command == "diff":
        add("a", metavar="A", help=_IMAGE_HELP + " (with --layer: layer N)")
        add("b", metavar="B", help="the same kinds as A")
        add("--layer", action="store_true",
            help="A@N B@M: compare the two layers' own entries, not the merged views")
        add("--filter", dest="filter_", metavar="PATH", help="only this subtree")
        add("--only", choices=("added", "removed", "changed"), help="only this kind")
        add("--mtime", action="store_true", help="also compare mtimes")
        add("-v", "--verbose", action="store_true",
            help="list every path (no folding of whole added/removed trees); show warnings")
    else:
        add("image", metavar="IMAGE", help=_IMAGE_HELP)
    if command == "layers":
        add("--top", type=int, default=10, metavar="N",
            help="how many of the largest wasted paths to list (default 10)")
    elif command == "ls":
        add("path", nargs="?", default="/", metavar="PATH", help="default: /")
        add("-l", "--long", action="store_true",
            help="mode, owner, size, date, layer and link targets")
        add("-R", "--recursive", action="store_true", help="list subtrees")
        add("--layer", type=_layer_number, metavar="N",
            help="one layer's own entries (1-based) instead of the merged view")
    elif command in ("cat", "which"):
        add("path", metavar="PATH")
    _common(p, verbose_short=command == "diff")
    return p


def main(command: str, argv: list[str]) -> int:
    """Run ``puller COMMAND ARGV...``: the exit status; errors become one line on stderr.

    ``diff`` exits as diff(1): 0 same, 1 different, 2 for any error (the other commands
    use the CLI's table of exit codes); 130 on ^C, 141 when the output pipe closes."""
    def body() -> int:
        ns = build_parser(command).parse_args(argv)
        setup_logging(ns.verbose)
        return _RUN[command](ns)
    return run_lean(body, trouble=_diff_trouble if command == "diff" else fail)


def _diff_trouble(e: PullerError) -> int:
    fail(e)
    return 2


def register(app: Any) -> None:
    """Pass-through typer commands, so that ``puller --help`` lists them."""
    from .common import register_passthrough
    for command in COMMANDS:
        register_passthrough(app, command, HELP[command],
                             lambda argv, command=command: main(command, argv))


# --- helpers --------------------------------------------------------------------------

class _Context:
    """What every command needs to open its images: cache, platform, network policy.

    A cached image is taken straight from the cache; the pull machinery (and the HTTP
    client with it) is imported only when something must be fetched."""

    def __init__(self, cache: Any, platform: str | None, offline: bool, quiet: bool,
                 verbose: bool, mirrors: Any, insecure: Any) -> None:
        from ..platform import parse_platform
        self.cache, self.offline = cache, offline_default(offline)
        self.wanted = parse_platform(platform)
        self.progress = progress_for(quiet, "auto", verbose)
        self._mirrors, self._insecure = mirrors, insecure

    def _image(self, ref: str) -> tuple[Any, Any]:
        from ..image import lookup_ref, resolve
        from ..reference import parse
        from ..store import Store
        store = Store(self.cache)
        entry = lookup_ref(store, parse(ref)) if store.exists() else None
        img = resolve(store, entry, self.wanted) if entry is not None else None
        if img is not None:
            return store, img
        from .unpack import resolve_image
        options = None if self.offline else registry_options(self._mirrors, self._insecure)
        pulled: tuple[Any, Any] = resolve_image(
            ref, cache=self.cache, wanted=self.wanted, offline=self.offline,
            progress=self.progress, options=options)
        return pulled

    def open(self, spec: str) -> Any:
        from ..compare_sources import open_input
        try:
            return open_input(spec, wanted=self.wanted, resolve_image=self._image)
        finally:
            self.progress.close()


def escape(text: str) -> str:
    """Printable text as it is; control characters and undecodable bytes as escapes."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        o = ord(ch)
        if 0xDC80 <= o <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
            out.append(f"\\x{o - 0xDC00:02x}")
        elif o < 0x20 or 0x7F <= o < 0xA0:
            out.append({"\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(ch, f"\\x{o:02x}"))
        else:
            out.append(ch)
    return "".join(out)


def _abs(path: str) -> str:
    return "/" + path


def _user_path(text: str) -> str:
    from ..layer.reader import normalise_path
    return normalise_path(text)


def _mtime(ns: int) -> str:
    dt = datetime.fromtimestamp(ns // 1_000_000_000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def node_json(node: Any) -> dict[str, Any] | None:
    """A node as the documented JSON object."""
    if node is None:
        return None
    out: dict[str, Any] = {"path": _abs(node.path), "type": node.type,
                           "mode": f"{node.mode & 0o7777:04o}", "uid": node.uid,
                           "gid": node.gid, "size": node.size, "mtime": _mtime(node.mtime_ns),
                           "layer": node.layer}
    if node.digest:
        out["sha256"] = node.digest
    if node.link:
        out["link"] = node.link
    if node.hardlink:
        out["hardlink"] = _abs(node.hardlink)
    if node.type in ("char", "block"):
        out["device"] = list(node.device)
    if node.xattrs:
        out["xattrs"] = {k: base64.b64encode(v).decode() for k, v in node.xattrs}
    return out


def _json_line(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")


_IFMT = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK,
         "char": stat.S_IFCHR, "block": stat.S_IFBLK, "fifo": stat.S_IFIFO,
         "hardlink": stat.S_IFREG}


def _filemode(node: Any) -> str:
    if node.type in ("whiteout", "opaque"):
        return "w---------"
    return stat.filemode(_IFMT[node.type] | (node.mode & 0o7777))


class _Style:
    """ANSI colour only when stdout is a terminal (and NO_COLOR is not set)."""

    def __init__(self) -> None:
        self.on = sys.stdout.isatty() and not os.environ.get("NO_COLOR")

    def __call__(self, text: str, colour: str) -> str:
        codes = {"green": "32", "red": "31", "yellow": "33", "bold": "1", "dim": "2"}
        return f"\033[{codes[colour]}m{text}\033[0m" if self.on else text


def _context(ns: argparse.Namespace) -> _Context:
    return _Context(ns.cache, ns.platform, ns.offline, ns.quiet, ns.verbose,
                    ns.registry_mirror, ns.insecure_registry)


# --- layers ---------------------------------------------------------------------------

def _layers(ns: argparse.Namespace) -> int:
    from ..compare import analyse
    if ns.top < 0:
        raise UsageError("--top must be >= 0")
    source = _context(ns).open(ns.image)
    img = _first(source.image) if source.image.upto is not None else source.image
    result = analyse(img, store=source.cache, top=ns.top)
    if ns.json_out:
        emit_json(_layers_json(img, result))
    else:
        _print_layers(img, result)
    return 0


def _first(img: Any) -> Any:
    from dataclasses import replace
    return replace(img, layers=img.layers[:img.upto], upto=None)


def _layers_json(img: Any, result: Any) -> dict[str, Any]:
    size = sum(r.size for r in result.layers)
    return {"image": {"name": img.name, "digest": img.digest, "platform": img.platform},
            "layers": [r.to_json() for r in result.layers],
            "summary": {"layers": len(result.layers),
                        "compressed_size": sum(r.compressed_size for r in result.layers),
                        "size": size, "total_bytes": result.total_bytes,
                        "wasted_bytes": result.wasted_bytes,
                        "efficiency": round(result.efficiency, 6),
                        "entries": result.final_entries, "bytes": result.final_bytes},
            "wasted_paths": [{"path": _abs(p), "bytes": b, "times": t}
                             for p, b, t in result.wasted_paths]}


_BAR_WIDTH = 12
_EIGHTHS = " ▏▎▍▌▋▊▉"


def bar(share: float, width: int = _BAR_WIDTH) -> str:
    """A left-aligned bar of ``share`` (0..1) in ``width`` cells, to 1/8 of a cell."""
    eighths = round(max(0.0, min(1.0, share)) * width * 8)
    if share > 0 and not eighths:
        eighths = 1  # a sliver: the layer is there, however small
    full, part = divmod(eighths, 8)
    text = "█" * full + (_EIGHTHS[part] if part else "")
    return text.ljust(width)


def _print_layers(img: Any, result: Any) -> None:
    style = _Style()
    tty = sys.stdout.isatty()
    total = sum(r.size for r in result.layers) or 1
    head = f"{escape(img.name)}  {img.platform}  {img.digest[:19]}"
    print(style(head, "bold"))
    cols = f"{'#':>3}  {'DIGEST':<12}  {'COMPRESSED':>10}  {'SIZE':>9}  {'CHANGES':<18}  "
    cols += f"{'WASTED':>9}  " + (f"{'SHARE':<{_BAR_WIDTH + 5}}  " if tty else "") + "CREATED BY"
    print(cols)
    width = os.get_terminal_size().columns if tty else 0
    for r in result.layers:
        changes = f"+{r.added} ~{r.modified} -{r.deleted}"
        line = (f"{r.index:>3}  {r.digest.partition(':')[2][:12]:<12}  "
                f"{human_size(r.compressed_size):>10}  {human_size(r.size):>9}  "
                f"{changes:<18}  {human_size(r.wasted_bytes):>9}  ")
        if tty:
            line += style(bar(r.size / total), "green") + f" {100 * r.size / total:3.0f}%  "
        created = escape(" ".join(r.created_by.split()))
        if width:
            room = max(20, width - len(line) + (9 if style.on and tty else 0))
            created = created if len(created) <= room else created[:room - 1] + "…"
        print(line + created)
    compressed = sum(r.compressed_size for r in result.layers)
    print(f"\n{len(result.layers)} layers, {human_size(compressed)} compressed, "
          f"{human_size(total if result.layers else 0)} uncompressed; merged view: "
          f"{result.final_entries} paths, {human_size(result.final_bytes)}")
    print(f"efficiency {percent(result.efficiency)}: {human_size(result.wasted_bytes)} "
          f"wasted of {human_size(result.total_bytes)} written (file bytes a later layer "
          "overwrites or deletes)")
    if result.wasted_paths:
        print("largest wasted paths:")
        for path, n, times in result.wasted_paths:
            more = f"  ({times}×)" if times > 1 else ""
            print(f"  {human_size(n):>9}  {escape(_abs(path))}{more}")


def percent(share: float) -> str:
    """Two decimals, rounded down: an image with any waste never shows 100.00 %."""
    import math
    return f"{math.floor(share * 10000) / 100:.2f} %"


# --- ls -------------------------------------------------------------------------------

def _ls(ns: argparse.Namespace) -> int:
    source = _context(ns).open(ns.image)
    target = _user_path(ns.path)
    layer, recursive, long, json_out = ns.layer, ns.recursive, ns.long, ns.json_out
    nodes = (_layer_nodes(source, layer, target, recursive) if layer is not None
             else _view_nodes(source, target, recursive))
    for node in nodes:
        if json_out:
            _json_line(node_json(node))
        elif long:
            print(_long_line(node, recursive or layer is not None))
        else:
            name = node.path if (recursive or layer is not None) else node.name
            suffix = "/" if node.type == "dir" else ""
            mark = {"whiteout": " (whiteout)", "opaque": " (opaque)"}.get(node.type, "")
            print(escape(name) + suffix + mark)
    return 0


def _view_nodes(source: Any, target: str, recursive: bool) -> Iterator[Any]:
    from ..compare import PathError, merged_view, scan_all
    img = _first(source.image) if source.image.upto else source.image
    view, _ = merged_view(scan_all(img.layers, store=source.cache))
    real = view.resolve(target, follow_last=True) if target else ""
    if real is None or (real and real not in view.nodes):
        raise PathError(f"{_abs(target)} does not exist in {img.name}")
    if real and view.nodes[real].type != "dir":
        yield view.nodes[real]
        return
    yield from (view.walk(real) if recursive else view.listdir(real))


def _layer_nodes(source: Any, index: int, target: str, recursive: bool) -> Iterator[Any]:
    """A layer's own entries at or under ``target``: what the tar lists, whiteouts as such."""
    from ..compare import Node, scan_layer
    img = source.image
    if index > len(img.layers):
        from ..errors import UsageError
        raise UsageError(f"{img.name} has {len(img.layers)} layers; there is no layer {index}")
    scan = scan_layer(img.layers[index - 1], store=source.cache)
    nodes = list(scan.entries)
    nodes += [Node(p, "whiteout", 0, layer=index) for p in scan.whiteouts]
    nodes += [Node(p, "opaque", 0, layer=index) for p in scan.opaques]
    prefix = target + "/" if target else ""
    for node in sorted(nodes, key=lambda n: n.path.split("/")):
        inside = node.path == target or node.path.startswith(prefix)
        if inside and (recursive or node.path == target or node.parent == target
                       or not target):
            yield node


def _long_line(node: Any, full: bool) -> str:
    name = escape(_abs(node.path) if full else node.name)
    if node.type == "symlink":
        name += " -> " + escape(node.link)
    elif node.hardlink:
        name += " => " + escape(_abs(node.hardlink))
    elif node.type == "whiteout":
        name += "  (deleted by a whiteout)"
    elif node.type == "opaque":
        name += "  (opaque: lower layers' entries hidden)"
    size = (f"{node.device[0]},{node.device[1]}" if node.type in ("char", "block")
            else human_size(node.size))
    when = datetime.fromtimestamp(node.mtime_ns // 1_000_000_000, tz=UTC)
    return (f"{_filemode(node)} {node.uid:>5}:{node.gid:<5} {size:>9}  "
            f"{when:%Y-%m-%d %H:%M}  L{node.layer:<3} {name}")


# --- cat, which -----------------------------------------------------------------------

def _cat(ns: argparse.Namespace) -> int:
    from ..compare import read_file
    source = _context(ns).open(ns.image)
    path, json_out = ns.path, ns.json_out
    img = _first(source.image) if source.image.upto else source.image
    node, chunks = read_file(img, _user_path(path), store=source.cache)
    if json_out:
        data = b"".join(chunks)
        emit_json({"path": _abs(node.path), "layer": node.source[0], "size": node.size,
                   "sha256": node.digest, "content_base64": base64.b64encode(data).decode()})
        return 0
    out = sys.stdout.buffer
    for chunk in chunks:
        out.write(chunk)
    out.flush()
    return 0


def _which(ns: argparse.Namespace) -> int:
    from ..compare import which
    source = _context(ns).open(ns.image)
    path, json_out = ns.path, ns.json_out
    img = _first(source.image) if source.image.upto else source.image
    target = _user_path(path)
    events = which(img, target, store=source.cache)
    if json_out:
        emit_json({"path": _abs(target), "events": [
            {"layer": e.layer, "action": e.action, "how": e.how or None,
             "node": node_json(e.node)} for e in events]})
        return 0 if events else 1
    if not events:
        sys.stderr.write(f"puller: no layer of {img.name} wrote or deleted {_abs(target)}\n")
        return 1
    style = _Style()
    colours = {"added": "green", "modified": "yellow", "deleted": "red"}
    for e in events:
        created = escape(" ".join(img.layers[e.layer - 1].created_by.split()))[:60]
        detail = (f"({e.how})" if e.action == "deleted" else
                  f"{e.node.type} {human_size(e.node.size)} {e.node.mode:04o} "
                  f"{e.node.uid}:{e.node.gid}" + (f" {e.node.digest[:19]}" if e.node.digest
                                                  else ""))
        print(f"layer {e.layer:<3} {style(f'{e.action:<9}', colours[e.action])} "
              f"{escape(_abs(e.node.path))}  {detail}  {style(created, 'dim')}")
    return 0


# --- diff -----------------------------------------------------------------------------

def _diff(ns: argparse.Namespace) -> int:
    from ..compare import diff, diff_layers
    ctx = _context(ns)
    sa, sb = ctx.open(ns.a), ctx.open(ns.b)
    if ns.layer:
        if sa.image.upto is None or sb.image.upto is None:
            raise UsageError("--layer compares two layers: give them as A@N B@M")
        result = diff_layers(sa.image, sb.image, mtime=ns.mtime)  # layers know their cache
    else:
        result = diff(sa.image, sb.image, mtime=ns.mtime)
    subtree = _user_path(ns.filter_) if ns.filter_ else None
    changes = [c for c in result.changes if _keep(c, subtree, ns.only)]
    config = list(result.config) if subtree is None and ns.only is None else []
    if ns.json_out:
        _diff_json(sa.image, sb.image, result, changes, config)
    else:
        _print_diff(sa.image, sb.image, result, changes, config, folding=not ns.verbose)
    return 1 if changes or config else 0


def _keep(change: Any, subtree: str | None, only: str | None) -> bool:
    if only is not None and change.status != only:
        return False
    return subtree is None or not subtree or change.path == subtree or \
        change.path.startswith(subtree + "/")


def _totals(changes: list[Any]) -> dict[str, int]:
    counts = {"added": 0, "removed": 0, "changed": 0}
    for c in changes:
        counts[c.status] += 1
    return counts | {
        "added_bytes": sum(c.b.own_bytes for c in changes if c.status == "added"),
        "removed_bytes": sum(c.a.own_bytes for c in changes if c.status == "removed")}


def _diff_json(a: Any, b: Any, result: Any, changes: list[Any], config: list[Any]) -> None:
    for c in changes:
        _json_line({"record": "change", "path": _abs(c.path), "status": c.status,
                    "what": list(c.what), "a": node_json(c.a), "b": node_json(c.b),
                    "layer_a": c.layer_a, "layer_b": c.layer_b})
    for c in config:
        _json_line({"record": "config", "field": c.field, "key": c.key, "a": c.a, "b": c.b})
    for note in result.notes:
        _json_line({"record": "note", "text": note})
    _json_line({"record": "summary", "same": not changes and not config, **_totals(changes),
                "config_changes": len(config), "shared_layers": result.shared_layers,
                "layers_read": result.layers_read,
                "a": {"name": a.name, "digest": a.digest, "platform": a.platform},
                "b": {"name": b.name, "digest": b.digest, "platform": b.platform}})


def fold(changes: list[Any]) -> Iterator[tuple[Any, int, int]]:
    """(change, folded descendants, their bytes): a directory added or removed whole
    absorbs the lines of its subtree, which can only have the same status."""
    head: Any = None
    count = size = 0
    for c in changes:
        if head is not None and c.path.startswith(head.path + "/") and c.status == head.status:
            count += 1
            size += (c.b or c.a).own_bytes
            continue
        if head is not None:
            yield head, count, size
            head = None
        node = c.b if c.status == "added" else c.a
        if c.status in ("added", "removed") and node.type == "dir":
            head, count, size = c, 0, 0
        else:
            yield c, 0, 0
    if head is not None:
        yield head, count, size


_SIGN = {"added": ("+", "green"), "removed": ("-", "red"), "changed": ("~", "yellow")}


def _change_line(c: Any, folded: int, folded_bytes: int, style: _Style) -> str:
    sign, colour = _SIGN[c.status]
    node = c.b if c.b is not None else c.a
    name = escape(_abs(c.path)) + ("/" if node.type == "dir" else "")
    if c.status == "changed":
        detail = ", ".join(_what(c, w) for w in c.what)
    elif folded:
        detail = f"{folded} {'entry' if folded == 1 else 'entries'} below, " \
                 f"{human_size(folded_bytes)}"
    else:
        detail = human_size(node.size) if node.type == "file" else node.type
    where = (f"layer {c.layer_b}" if c.layer_b else "") + (
        f" (was layer {c.layer_a})" if c.layer_a else "")
    return f"  {style(sign + ' ' + name, colour)}  {detail}  {style(where.strip(), 'dim')}"


def _what(c: Any, what: str) -> str:
    a, b = c.a, c.b
    if what == "size":
        return f"size {human_size(a.size)} → {human_size(b.size)}"
    if what == "mode":
        return f"mode {a.mode:04o} → {b.mode:04o}"
    if what == "type":
        return f"{a.type} → {b.type}"
    if what in ("uid", "gid"):
        return f"{what} {getattr(a, what)} → {getattr(b, what)}"
    if what == "link":
        return f"link {escape(a.link) or '(none)'} → {escape(b.link) or '(none)'}"
    if what == "mtime":
        return f"mtime {_mtime(a.mtime_ns)} → {_mtime(b.mtime_ns)}"
    return what


def _print_diff(a: Any, b: Any, result: Any, changes: list[Any], config: list[Any], *,
                folding: bool) -> None:
    style = _Style()
    print(style(f"--- {escape(a.name)}  {a.platform}  {a.digest[:19]}", "red"))
    print(style(f"+++ {escape(b.name)}  {b.platform}  {b.digest[:19]}", "green"))
    for status, title in (("added", "Added"), ("removed", "Removed"), ("changed", "Changed")):
        group = [c for c in changes if c.status == status]
        if not group:
            continue
        print(f"\n{title} ({len(group)}):")
        rows = _fold_rows(group) if folding else ((c, 0, 0) for c in group)
        for c, n, size in rows:
            print(_change_line(c, n, size, style))
    if config:
        print("\nConfig:")
        for c in config:
            key = f" {escape(str(c.key))}" if c.key is not None else ""
            print(f"  ~ {c.field}{key}: {_show(c.a)} → {_show(c.b)}")
    if result.notes:
        print("\nNotes:")
        for note in result.notes:
            print(f"  {note}")
    t = _totals(changes)
    verdict = "same" if not changes and not config else "different"
    print(f"\n{t['added']} added ({human_size(t['added_bytes'])}), {t['removed']} removed "
          f"({human_size(t['removed_bytes'])}), {t['changed']} changed, {len(config)} config "
          f"change(s): {verdict}")


def _fold_rows(group: list[Any]) -> Iterable[tuple[Any, int, int]]:
    return fold(group)


def _show(value: Any) -> str:
    if value is None:
        return "(unset)"
    return escape(json.dumps(value, ensure_ascii=False))


_RUN: dict[str, Callable[[argparse.Namespace], int]] = {
    "layers": _layers, "ls": _ls, "cat": _cat, "which": _which, "diff": _diff}


if __name__ == "__main__":  # python -m puller.cli.compare COMMAND ...: the lean path
    sys.exit(main(sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else 2)
