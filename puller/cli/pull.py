"""``puller pull``: fetch an image into the cache."""
from __future__ import annotations

import sys

import typer

from .common import (CacheOpt, InsecureOpt, JobsOpt, JsonOpt, MirrorOpt, OfflineOpt, PlatformOpt,
                     ProgressOpt, QuietOpt, RetriesOpt, RetryDelayOpt, StallOpt, VerboseOpt, handle_errors,
                     offline_default, progress_for, registry_options)
from .output import emit_json


def register(app: typer.Typer) -> None:
    app.command("pull", help="Pull an image (or a platform of it) into the cache.")(pull_cmd)


@handle_errors
def pull_cmd(image: str = typer.Argument(..., metavar="IMAGE", help="e.g. alpine:3.10, ghcr.io/org/app@sha256:..."),
             platform: PlatformOpt = None, cache: CacheOpt = None, json_out: JsonOpt = False,
             quiet: QuietOpt = False, verbose: VerboseOpt = False, offline: OfflineOpt = False,
             jobs: JobsOpt = 4, progress: ProgressOpt = "auto", registry_mirror: MirrorOpt = None,
             insecure_registry: InsecureOpt = None, retries: RetriesOpt = 4,
             retry_delay: RetryDelayOpt = 0.5, stall_timeout: StallOpt = 30.0) -> int:
    from ..platform import parse_platform
    from ..pull import pull
    from ..reference import parse
    from ..store import Store
    ref = parse(image)
    prog = progress_for(quiet, progress, verbose)
    try:
        result = pull(ref, store=Store(cache), platform=parse_platform(platform),
                      options=None if offline_default(offline) else registry_options(registry_mirror, insecure_registry, retries, retry_delay, stall_timeout),
                      jobs=jobs, offline=offline_default(offline), progress=prog)
    finally:
        prog.close()
    if json_out:
        emit_json(result.to_json())
        return 0
    if result.note and not quiet:
        sys.stderr.write(f"puller: {result.note}\n")
    if verbose and result.ratelimit:
        rl = result.ratelimit
        sys.stderr.write(f"puller: rate limit: {rl.get('remaining')} of {rl.get('limit')} pulls left\n")
    print(result.digest)
    return 0
