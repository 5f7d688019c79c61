"""``pull-and-run`` / ``puller run``: Docker's ``run`` options on argparse, then the runner.

Lean on purpose: this module is the warm start path of every ``pull-and-run``, so it
imports neither typer nor tqdm nor the HTTP client (the image side imports it only when
it has to pull; progress bars are created on the first progress event). Options stop at
the image name, as in Docker: ``pull-and-run -e A=1 alpine ls -l`` passes ``-l`` to ``ls``.

Errors are one line on stderr with Docker's exit codes: 125 when the run could not start
(bad options, image not found, setup failed), 126 when the command cannot be executed,
127 when it is not found; otherwise the container's own status (128+N if killed by N).
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import PullerError, RunError, UsageError
from .parsing import Parser

if TYPE_CHECKING:
    from runner import RunSpec

    from ..image import PreparedImage

__all__ = ["build_parser", "main", "parse_args", "parse_bytes", "ps_main", "rm_main"]

PROG = "pull-and-run"
_BYTES = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgtp]?)i?b?$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_bytes(text: str) -> int:
    """Docker's memory sizes: ``256m``, ``1g``, ``512MiB``, ``1048576`` (binary units)."""
    found = _BYTES.match(text.strip())
    if not found:
        raise UsageError(f"invalid size {text!r}: use e.g. 256m or 1g")
    return int(float(found.group(1)) * _UNITS[found.group(2).lower()])


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The option table (Docker's names and meanings; ``-h`` is --hostname, as in Docker)."""
    p = Parser(prog=prog, add_help=False, usage=f"{prog} [OPTIONS] IMAGE [COMMAND [ARG...]]",
                description="Pull IMAGE if needed and run COMMAND in it, in new namespaces.")
    add = p.add_argument
    add("--help", action="help", help="show this help and exit")
    add("-i", "--interactive", action="store_true", help="keep stdin open (always the case)")
    add("-t", "--tty", action="store_true", help="allocate a pseudo-terminal (default: when "
        "stdin is a terminal)")
    add("-e", "--env", action="append", default=[], metavar="VAR[=VAL]")
    add("--env-file", action="append", default=[], metavar="FILE")
    add("-w", "--workdir", metavar="DIR")
    add("-u", "--user", metavar="NAME|UID[:GROUP|GID]")
    add("-v", "--volume", action="append", default=[], metavar="SRC:DST[:ro]")
    add("-h", "--hostname")
    add("--net", "--network", dest="network", default="host", choices=("host", "none",
                                                                          "private"))
    add("--entrypoint")
    add("--read-only", action="store_true", help="mount the root filesystem read-only")
    add("--rm", action="store_true", help="throw the container's writes away (the default)")
    add("--name", help="keep the container's writable layer under this name")
    add("-m", "--memory", type=parse_bytes, help="memory limit, swap included (e.g. 256m)")
    add("--cpus", type=float)
    add("--pids-limit", type=int)
    add("--init", action="store_true", help="run a reaper as PID 1 that forwards signals")
    add("--pull", default="missing", choices=("missing", "always", "never"))
    add("--platform")
    add("--cache", metavar="DIR")
    add("-q", "--quiet", action="store_true", help="no pull progress on stderr")
    add("--offline", action="store_true")
    add("--registry-mirror", action="append", default=[], metavar="URL")
    add("--insecure-registry", action="append", default=[], metavar="HOST")
    return p


def _takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0


def _split(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[list[str], list[str]]:
    """Options, then IMAGE and the command: the first token that is not an option (or an
    option's value) is the image; everything after it belongs to the container."""
    actions = parser._option_string_actions
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok == "--":
            return argv[:i], argv[i + 1:]
        if not tok.startswith("-") or tok == "-":
            return argv[:i], argv[i:]
        if tok.startswith("--"):
            action = actions.get(tok.split("=", 1)[0])
            i += 2 if action is not None and _takes_value(action) and "=" not in tok else 1
            continue
        j, skip = 1, 1
        while j < len(tok):  # a cluster of short flags: -it, -e FOO, -eFOO=bar
            action = actions.get("-" + tok[j])
            if action is not None and _takes_value(action):
                skip = 1 if j + 1 < len(tok) else 2
                break
            j += 1
        i += skip
    return argv, []


def parse_args(argv: list[str], prog: str = PROG) -> tuple[argparse.Namespace, str, list[str]]:
    """Parse ``[OPTIONS] IMAGE [COMMAND [ARG...]]`` into (options, image, command)."""
    parser = build_parser(prog)
    options, rest = _split(parser, argv)
    ns = parser.parse_args(options)
    if not rest:
        raise UsageError(f'"{prog}" requires at least 1 argument: IMAGE [COMMAND [ARG...]]')
    return ns, rest[0], rest[1:]


def _progress(quiet: bool) -> object:
    """A progress callback that creates the bars on the first event (stderr only on a
    terminal: stdout belongs to the container)."""
    if quiet or not sys.stderr.isatty():
        return None
    state: dict[str, object] = {}

    def progress(event: object) -> None:
        if "bar" not in state:
            from .output import Progress
            state["bar"] = Progress("auto")
        state["bar"](event)  # type: ignore[operator]

    progress.state = state  # type: ignore[attr-defined]
    return progress


def _close(progress: object) -> None:
    bar = getattr(progress, "state", {}).get("bar")
    if bar is not None:
        bar.close()


def _registry_options(ns: argparse.Namespace) -> object:
    if not ns.registry_mirror and not ns.insecure_registry:
        return None
    from ..registry import RegistryOptions
    return RegistryOptions.build(mirrors=tuple(ns.registry_mirror),
                                 insecure=tuple(ns.insecure_registry))


def _env_files(paths: list[str]) -> tuple[str, ...]:
    from runner.process import parse_env_file
    out: list[str] = []
    for path in paths:
        try:
            out.extend(parse_env_file(Path(path).read_text()))
        except OSError as e:
            raise UsageError(f"cannot read --env-file {path}: {e.strerror}") from None
    return tuple(out)


def _spec(ns: argparse.Namespace, img: PreparedImage, command: list[str]) -> RunSpec:
    from runner import Limits, RunSpec, Volume
    from runner.process import merge_env, resolve_argv
    config: dict[str, Any] = img.config or {}
    tty = True if ns.tty else (False if ns.interactive else os.isatty(0))
    try:
        limits = Limits(memory=ns.memory, cpus=ns.cpus,
                        pids=None if ns.pids_limit in (None, -1, 0) else ns.pids_limit)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return RunSpec(
        rootfs=img.rootfs,
        argv=resolve_argv(config, tuple(command), ns.entrypoint),
        env=merge_env(config.get("Env"), _env_files(ns.env_file) + tuple(ns.env),
                      host_env=dict(os.environ), tty=tty),
        workdir=ns.workdir or config.get("WorkingDir") or "/",
        user=ns.user if ns.user is not None else (config.get("User") or ""),
        hostname=ns.hostname, volumes=tuple(Volume.parse(v) for v in ns.volume),
        network=ns.network, read_only=ns.read_only, tty=tty, init=ns.init, limits=limits,
        name=ns.name, containers_dir=Path(img.cache_root) / "containers",
        sidecar=img.sidecar, image=img.ref)


def _fail(prog: str, e: BaseException) -> int:
    text = str(e).strip().splitlines()
    sys.stderr.write(f"{prog}: error: {text[0] if text else type(e).__name__}\n")
    return e.exit_code if isinstance(e, RunError) else 125


def main(argv: list[str], prog: str = PROG) -> int:
    """Run ``pull-and-run`` with ``argv`` (without the program name); return the status."""
    try:
        ns, image, command = parse_args(argv, prog)
        from ..image import prepare_rootfs
        progress = _progress(ns.quiet)
        try:
            img = prepare_rootfs(image, cache=ns.cache, pull=ns.pull, platform=ns.platform,
                                 offline=ns.offline, progress=progress,  # type: ignore[arg-type]
                                 registry_options=_registry_options(ns))
        finally:
            _close(progress)
        from runner import run
        status = run(_spec(ns, img, command))
        if ns.rm and ns.name:  # --rm with --name: named while it runs, removed at exit
            from runner.containers import remove_container
            remove_container(Path(img.cache_root) / "containers", ns.name)
        return status
    except PullerError as e:
        return _fail(prog, e)
    except KeyboardInterrupt:
        return 130


def _containers_dir(cache: str | None) -> Path:
    from ..store import default_cache_dir
    return (Path(cache) if cache else default_cache_dir()) / "containers"


def ps_main(cache: str | None = None, *, quiet: bool = False) -> int:
    """``puller ps``: print the named containers as a table (``quiet``: names only)."""
    from runner.containers import list_containers
    rows = list_containers(_containers_dir(cache))
    if quiet:
        for info in rows:
            print(info.name)
        return 0
    table: list[tuple[str, ...]] = [("NAME", "CONTAINER ID", "IMAGE", "COMMAND", "CREATED",
                                     "STATUS")]
    table += [(r.name, r.id, r.image, r.command[:30], r.created, r.status) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(6)]
    for line in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip())
    return 0


def rm_main(names: list[str], cache: str | None = None, *, force: bool = False) -> int:
    """``puller rm NAME...``: remove named containers; 1 if any could not be removed."""
    from runner.containers import remove_container
    status = 0
    for name in names:
        try:
            remove_container(_containers_dir(cache), name, force=force)
            print(name)
        except PullerError as e:
            sys.stderr.write(f"puller: error: {e}\n")
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
