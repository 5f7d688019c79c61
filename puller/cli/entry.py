"""Console entry points, kept lean: ``pull-and-run`` and ``puller run`` go straight to the
runner's own parser without importing typer, requests or tqdm on the warm start path."""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "run":
        sys.exit(_run(args[1:]))
    if args and args[0] == "pull":  # the warm pull path: no typer
        from .pull import main as pull_main
        sys.exit(pull_main(args[1:]))
    from .app import build
    build()(args=args, prog_name="puller")


def pull_and_run(argv: list[str] | None = None) -> None:
    sys.exit(_run(sys.argv[1:] if argv is None else argv))


def _run(args: list[str]) -> int:
    from .run import main as run_main
    return run_main(args)
