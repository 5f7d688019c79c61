"""Options shared by many commands, and the wrapper that turns errors into exit codes.

Each command declares the options it takes with these ``Annotated`` aliases, so a flag
means the same thing (and has Docker's name, where Docker has one) everywhere.
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from .options import offline_default, progress_for, registry_options  # noqa: F401 (re-exported)
from .output import fail, os_error, setup_logging

CacheOpt = Annotated[Optional[Path], typer.Option(
    "--cache", help="Cache directory (default: $PULLER_CACHE, $XDG_CACHE_HOME/puller, ~/.cache/puller).",
    show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
QuietOpt = Annotated[bool, typer.Option("-q", "--quiet", help="No progress output.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", help="Show warnings, retries and rate-limit figures.")]
OfflineOpt = Annotated[bool, typer.Option("--offline", help="Never touch the network; use the cache only (also PULLER_OFFLINE=1).")]
PlatformOpt = Annotated[Optional[str], typer.Option("--platform", help="os/arch[/variant], e.g. linux/arm64 (default: this host).", show_default=False)]
MirrorOpt = Annotated[Optional[list[str]], typer.Option("--registry-mirror", help="Mirror URL for docker.io (repeatable; also PULLER_REGISTRY_MIRRORS).", show_default=False)]
InsecureOpt = Annotated[Optional[list[str]], typer.Option("--insecure-registry", help="HOST[:PORT] that may be reached over plain HTTP (repeatable).", show_default=False)]
JobsOpt = Annotated[int, typer.Option("--jobs", "-j", min=1, max=64, help="Parallel blob downloads.")]
ProgressOpt = Annotated[str, typer.Option("--progress", help="auto (bars on a terminal), plain (periodic lines, for CI logs), tty or quiet.")]


def open_store(cache: Path | None):
    from ..store import Store
    return Store(cache)


def handle_errors(fn: Callable) -> Callable:
    """Run a command body; a PullerError becomes one line on stderr and its exit code."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from ..errors import PullerError
        setup_logging(bool(kwargs.get("verbose")))
        try:
            code = fn(*args, **kwargs)
        except PullerError as e:
            raise typer.Exit(fail(e)) from None
        except OSError as e:
            raise typer.Exit(fail(os_error(e))) from None
        except KeyboardInterrupt:
            sys.stderr.write("puller: interrupted\n")
            raise typer.Exit(130) from None
        except BrokenPipeError:
            raise typer.Exit(141) from None
        if code:
            raise typer.Exit(code)
    return wrapper


def register_passthrough(app: typer.Typer, name: str, help: str, main: Callable[[list[str]], int]) -> None:
    """A typer command that hands its arguments, untouched, to an argparse ``main(argv)``:
    the commands on hot paths parse with argparse (``entry.py`` calls them before typer is
    imported), and this makes them appear in ``puller --help`` and work through the group."""
    def run(ctx: typer.Context) -> None:
        raise typer.Exit(main(list(ctx.args)))
    run.__annotations__ = {"ctx": typer.Context, "return": None}  # typer reads real objects
    run.__name__ = f"{name}_cmd"
    app.command(name, help=f"{help} See 'puller {name} --help'.", add_help_option=False,
                context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(run)
