"""``puller run`` (the same as ``pull-and-run``), ``ps`` and ``rm`` in the command group.

``puller run`` is normally dispatched by ``entry.py`` before typer is even imported; this
registration is what makes it appear in ``puller --help`` and work when called through the
group (e.g. ``python -m puller run``)."""
from __future__ import annotations

import typer

from .common import CacheOpt, register_passthrough


def register(app: typer.Typer) -> None:
    from .run import main
    register_passthrough(app, "run", "Run a command in a new container (pulls the image first if needed).", main)
    app.command("ps", help="List kept containers (started with --name).")(ps_cmd)
    app.command("rm", help="Remove kept containers.")(rm_cmd)


def ps_cmd(cache: CacheOpt = None,
           quiet: bool = typer.Option(False, "-q", "--quiet", help="Only show names.")) -> None:
    from .run import ps_main
    raise typer.Exit(ps_main(str(cache) if cache else None, quiet=quiet))


def rm_cmd(names: list[str] = typer.Argument(..., metavar="NAME..."), cache: CacheOpt = None,
           force: bool = typer.Option(False, "-f", "--force", help="Also remove a running container.")) -> None:
    from .run import rm_main
    raise typer.Exit(rm_main(names, str(cache) if cache else None, force=force))
