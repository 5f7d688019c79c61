"""argparse for the commands on hot paths, which ``entry.py`` dispatches before typer."""
from __future__ import annotations

import argparse
import os

from ..errors import UsageError

__all__ = ["Parser"]


class Parser(argparse.ArgumentParser):
    """argparse that raises UsageError (one line and the command's usage exit code) instead
    of printing its usage and exiting with 2.

    argparse builds a help formatter for every ``add_argument``, and the stock one imports
    shutil (and with it bz2 and lzma) to ask for the terminal's width: 3 ms of a cold pull.
    Here the width is ``$COLUMNS`` (or 100) until help is actually shown."""

    def __init__(self, *args, **kwargs) -> None:
        self._width = int(os.environ.get("COLUMNS") or 0) or 100
        kwargs.setdefault("formatter_class",
                          lambda prog: argparse.HelpFormatter(prog, width=self._width - 2))
        super().__init__(*args, **kwargs)

    def format_help(self) -> str:
        self._measure()
        return super().format_help()

    def format_usage(self) -> str:
        self._measure()
        return super().format_usage()

    def _measure(self) -> None:
        import shutil
        self._width = shutil.get_terminal_size((self._width, 24)).columns

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)
