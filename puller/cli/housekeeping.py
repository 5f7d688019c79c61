"""``puller push``, ``sync``, ``prune``, ``du`` and ``verify``: copying images out of the
cache and keeping it tidy and sound."""
from __future__ import annotations

import sys
from pathlib import Path

import typer

from .common import (
    CacheOpt,
    InsecureOpt,
    JobsOpt,
    JsonOpt,
    MirrorOpt,
    OfflineOpt,
    PlatformOpt,
    ProgressOpt,
    QuietOpt,
    VerboseOpt,
    handle_errors,
    offline_default,
    open_store,
    progress_for,
    registry_options,
)
from .output import emit_json, human_size


def register(app: typer.Typer) -> None:
    app.command("push", help="Copy a cached image to a registry (pulls it first if needed).")(push_cmd)
    app.command("sync", help="Pull many images into one OCI layout directory (resumable).")(sync_cmd)
    app.command("prune", help="Remove what no ref or kept container uses (never prompts).")(prune_cmd)
    app.command("du", help="Show the cache's disk usage.")(du_cmd)
    app.command("verify", help="Re-hash every cached blob (exit 1 if any is bad).")(verify_cmd)


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        sys.stderr.write(f"puller: {text}\n")


@handle_errors
def push_cmd(source: str = typer.Argument(..., metavar="SRC"),
             dest: str | None = typer.Argument(None, metavar="DST",
                                                  help="Where to push (default: SRC's own name)."),
             present_only: bool = typer.Option(False, "--present-only",
                                               help="Push an index of the platforms in the cache only (a new digest)."),
             chunked: bool = typer.Option(False, "--chunked", help="Upload every blob in PATCH chunks."),
             chunk_size: int = typer.Option(16 * 1024 * 1024, "--chunk-size", min=1,
                                            help="Bytes per chunk of a chunked upload."),
             cache: CacheOpt = None, offline: OfflineOpt = False, json_out: JsonOpt = False,
             quiet: QuietOpt = False, verbose: VerboseOpt = False, progress: ProgressOpt = "auto",
             jobs: JobsOpt = 4, registry_mirror: MirrorOpt = None,
             insecure_registry: InsecureOpt = None) -> int:
    from ..push import push
    from ..reference import parse
    src = parse(source)
    dst = parse(dest) if dest else src
    prog = progress_for(quiet, progress, verbose)
    lines = not quiet and (progress == "plain" or verbose)

    def on_event(e: dict) -> None:
        prog(e)  # pulls and fetches of missing entries draw as in 'puller pull'
        if lines and e.get("event") == "push-blob":
            _say(False, f"{e['digest'][:19]}: {e['action']} ({human_size(e.get('size'))})")
        elif lines and e.get("event") == "push-manifest":
            _say(False, f"manifest {e['digest'][:19]} pushed as {e['ident']}")
    try:
        result = push(open_store(cache), src, dst, options=registry_options(registry_mirror, insecure_registry),
                      progress=on_event, offline=offline_default(offline), present_only=present_only,
                      chunked=chunked, chunk_size=chunk_size, jobs=jobs)
    finally:
        prog.close()
    if json_out:
        emit_json(result.to_json())
        return 0
    if result.note:
        _say(quiet, result.note)
    _say(quiet, f"{result.uploaded} blobs uploaded ({human_size(result.bytes_uploaded)}), "
                f"{result.mounted} mounted, {result.skipped} already there")
    print(f"{result.ref}@{result.digest}" if "@" not in result.ref else result.ref)
    return 0


@handle_errors
def sync_cmd(images: list[str] | None = typer.Argument(None, metavar="IMAGE..."),
             list_file: Path | None = typer.Option(None, "--list", metavar="FILE",
                                                      help="A file of references, one a line ('#' comments); '-' reads stdin."),
             directory: Path = typer.Option(..., "--dir", metavar="DIR", help="The target OCI layout (a puller cache)."),
             all_platforms: bool = typer.Option(False, "--all-platforms", help="Every platform of each index."),
             platform: PlatformOpt = None, json_out: JsonOpt = False, quiet: QuietOpt = False,
             verbose: VerboseOpt = False, jobs: JobsOpt = 4, progress: ProgressOpt = "auto",
             registry_mirror: MirrorOpt = None, insecure_registry: InsecureOpt = None) -> int:
    from ..errors import UsageError
    from ..platform import parse_platform
    from ..sync import read_list, sync
    if all_platforms and platform:
        raise UsageError("give either --platform or --all-platforms, not both")
    if list_file == Path("-"):
        listed = [line.split("#", 1)[0].strip() for line in sys.stdin]
        listed = [line for line in listed if line]
    else:
        listed = read_list(list_file) if list_file else []
    refs = [*listed, *(images or [])]
    prog = progress_for(quiet, progress, verbose)
    try:
        result = sync(refs, directory, all_platforms=all_platforms,
                      platform=parse_platform(platform) if platform else None,
                      options=registry_options(registry_mirror, insecure_registry), jobs=jobs,
                      progress=prog)
    finally:
        prog.close()
    if json_out:
        emit_json(result.to_json())
    else:
        for item in result.items:
            state = f"error: {item.error}" if item.error else (
                "complete" if item.cached else f"pulled {human_size(item.downloaded_bytes)}")
            print(f"{item.ref} {item.platform or '-'} {state}")
    return 0 if result.ok else 1


@handle_errors
def prune_cmd(dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would be removed."),
              cache: CacheOpt = None, json_out: JsonOpt = False, quiet: QuietOpt = False,
              verbose: VerboseOpt = False) -> int:
    from ..housekeeping import prune
    report = prune(open_store(cache), dry_run=dry_run)
    if json_out:
        emit_json(report.to_json())
        return 0
    verb = "would remove" if dry_run else "removed"
    if dry_run or verbose:
        for r in report.removed:
            print(f"{verb} {r.kind} {r.path} ({human_size(r.size)})")
    kinds = ", ".join(f"{report.count(k)} {k}" for k in ("blob", "partial", "tmp", "meta", "rootfs", "rootless")
                      if report.count(k))
    _say(quiet, f"{verb} {kinds or 'nothing'}; {human_size(report.bytes)} "
                f"{'reclaimable' if dry_run else 'reclaimed'}")
    return 0


@handle_errors
def du_cmd(cache: CacheOpt = None, json_out: JsonOpt = False) -> int:
    from ..housekeeping import du
    usage = du(open_store(cache))
    if json_out:
        emit_json(usage.to_json())
        return 0
    print(f"{'IMAGE':50} {'SIZE':>10} {'EXCLUSIVE':>10}")
    for img in usage.images:
        print(f"{', '.join(img.refs)[:50]:50} {human_size(img.size):>10} {human_size(img.exclusive):>10}")
    rows = (("blobs", usage.blobs), ("  shared between images", usage.shared),
            ("  unreferenced (prune removes)", usage.unreferenced), ("unpacked rootfs", usage.rootfs),
            ("containers", usage.containers), ("partial downloads", usage.partial),
            ("tmp", usage.tmp), ("meta", usage.meta), ("total", usage.total))
    for name, n in rows:
        print(f"{name:50} {human_size(n):>10}")
    return 0


@handle_errors
def verify_cmd(repair: bool = typer.Option(False, "--repair", help="Delete bad blobs and fetch them again."),
               cache: CacheOpt = None, json_out: JsonOpt = False, quiet: QuietOpt = False,
               verbose: VerboseOpt = False, offline: OfflineOpt = False,
               registry_mirror: MirrorOpt = None, insecure_registry: InsecureOpt = None) -> int:
    from ..errors import UsageError
    from ..housekeeping import verify
    if repair and offline_default(offline):
        raise UsageError("--repair fetches blobs again and cannot work --offline")
    report = verify(open_store(cache), repair=repair,
                    options=registry_options(registry_mirror, insecure_registry))
    if json_out:
        emit_json(report.to_json())
    else:
        for b in report.bad:
            state = "repaired" if b.repaired else "BAD"
            print(f"{state} {b.digest}: {b.reason}" + (f" ({b.note})" if b.note else ""))
        _say(quiet, f"{report.checked} blobs checked, {len(report.bad)} bad"
                    + (f", {sum(b.repaired for b in report.bad)} repaired" if repair else ""))
    return 0 if report.ok else 1
