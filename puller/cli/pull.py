"""``puller pull``: fetch an image into the cache.

Parsed with argparse and dispatched by ``entry.py`` before typer is imported: a warm pull
of an unchanged tag is one HEAD request, and the command around it must not cost more than
the request (typer builds every command of the group on each call)."""

import argparse
import sys

from ..errors import UsageError
from .output import emit_json, run_lean, setup_logging
from .parsing import Parser

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="puller pull", usage="puller pull [OPTIONS] IMAGE",
                description="Pull an image (or one platform of it) into the cache and print its digest.")
    add = p.add_argument
    add("image", metavar="IMAGE", help="e.g. alpine:3.10, ghcr.io/org/app@sha256:...")
    add("--platform", help="os/arch[/variant], e.g. linux/arm64 (default: this host)")
    add("--cache", metavar="DIR", help="cache directory (default: $PULLER_CACHE, $XDG_CACHE_HOME/puller, ~/.cache/puller)")
    add("--json", action="store_true", help="print the result as JSON on stdout")
    add("-q", "--quiet", action="store_true", help="no progress output")
    add("--verbose", action="store_true", help="show warnings, retries and rate-limit figures")
    add("--offline", action="store_true", help="never touch the network (also PULLER_OFFLINE=1)")
    add("-j", "--jobs", type=int, default=4, help="parallel blob downloads (default 4)")
    add("--progress", default="auto", choices=("auto", "tty", "plain", "quiet"),
        help="auto: bars on a terminal; plain: periodic lines for CI logs")
    add("--registry-mirror", action="append", default=[], metavar="URL",
        help="mirror for docker.io, tried before it (repeatable; also PULLER_REGISTRY_MIRRORS)")
    add("--insecure-registry", action="append", default=[], metavar="HOST[:PORT]",
        help="a registry that may be reached over plain HTTP (repeatable)")
    add("--retries", type=int, default=4, help="extra attempts after a network failure, 5xx or 429 (default 4)")
    add("--retry-delay", type=float, default=0.5, help="first backoff delay in seconds, doubling (default 0.5)")
    add("--stall-timeout", type=float, default=30.0,
        help="seconds without a byte before a transfer counts as stalled (default 30)")
    return p


def main(argv: list[str]) -> int:
    def body() -> int:
        ns = build_parser().parse_args(argv)
        setup_logging(ns.verbose)
        if not 1 <= ns.jobs <= 64 or ns.retries < 0 or ns.retry_delay < 0 or ns.stall_timeout <= 0:
            raise UsageError("--jobs must be 1-64; --retries, --retry-delay >= 0; --stall-timeout > 0")
        return _pull(ns)
    return run_lean(body)


def _pull(ns: argparse.Namespace) -> int:
    from ..platform import parse_platform
    from ..pull import pull
    from ..reference import parse
    from ..store import Store
    from .options import offline_default, progress_for, registry_options
    ref = parse(ns.image)
    offline = offline_default(ns.offline)
    prog = progress_for(ns.quiet, ns.progress, ns.verbose)
    try:
        options = None if offline else registry_options(ns.registry_mirror, ns.insecure_registry,
                                                        ns.retries, ns.retry_delay, ns.stall_timeout)
        result = pull(ref, store=Store(ns.cache), platform=parse_platform(ns.platform),
                      options=options, jobs=ns.jobs, offline=offline, progress=prog)
    finally:
        prog.close()
    if ns.json:
        emit_json(result.to_json())
        return 0
    if result.note and not ns.quiet:
        sys.stderr.write(f"puller: {result.note}\n")
    if ns.verbose and result.ratelimit:
        rl = result.ratelimit
        sys.stderr.write(f"puller: rate limit: {rl.get('remaining')} of {rl.get('limit')} pulls left\n")
    print(result.digest)
    return 0


def register(app) -> None:
    from .common import register_passthrough
    register_passthrough(app, "pull", "Pull an image (or a platform of it) into the cache.", main)
