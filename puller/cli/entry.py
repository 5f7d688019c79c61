"""Console entry points, kept lean: ``pull-and-run`` and ``puller run`` go straight to the
runner's own parser without importing typer, tqdm or the HTTP client on the warm start path;
``pull``, ``save``/``load``..., ``layers``... likewise go to argparse parsers of their own."""
from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    lean = _lean(args[0]) if args else None
    if lean is not None:  # hot paths parse with argparse: typer costs more than their work
        if argv is None and args[0] == "pull":
            # A process of its own, doing one pull: without the cyclic collector, which at
            # start-up only rescans what the imports create, ~2.5 ms of a ~130 ms cold pull
            # are saved, and the work makes no cycles to collect (chunks, events and
            # responses are freed as their last reference goes).
            import gc
            gc.disable()
        code = lean(args[1:])
        if argv is None:
            _exit_now(code)
        sys.exit(code)
    from .app import build
    try:
        rc = build()(args=args, prog_name="puller", standalone_mode=False)
    except Exception as e:  # click's usage errors (typer vendors click): one line, as every error
        if not (hasattr(e, "format_message") and hasattr(e, "exit_code")):
            raise
        if type(e).__name__ == "NoArgsIsHelpError":
            e.show()  # type: ignore[attr-defined] - prints the help
            sys.exit(0)
        ctx = getattr(e, "ctx", None)
        cmd = f" {ctx.info_name}" if ctx is not None and ctx.parent is not None else ""
        hint = f" (see 'puller{cmd} --help')" if type(e).__name__ != "ClickException" else ""
        sys.stderr.write(f"puller: error: {e.format_message()}{hint}\n")
        sys.exit(e.exit_code)
    sys.exit(rc if isinstance(rc, int) else 0)


def _lean(command: str):
    """The argparse-based ``main`` of a command on a hot path, or None for typer's."""
    if command == "run":
        return _run
    if command == "pull":
        from .pull import main as pull_main
        return pull_main
    if command in ("save", "load", "export", "import"):
        from .archive import main as archive_main
        return lambda argv: archive_main(command, argv)
    if command in ("layers", "ls", "cat", "which", "diff"):
        from .compare import main as compare_main
        return lambda argv: compare_main(command, argv)
    return None


def pull_and_run(argv: list[str] | None = None) -> None:
    code = _run(sys.argv[1:] if argv is None else argv)
    if argv is not None:
        sys.exit(code)
    _exit_now(code)


def _exit_now(code: int) -> None:
    """The command is done and has closed what it opened: skip the interpreter's teardown
    (module finalisers, gc), several ms on every run."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _run(args: list[str]) -> int:
    from .run import main as run_main
    return run_main(args)
