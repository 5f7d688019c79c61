"""The core's warnings, through :mod:`logging`, imported only when one is given.

A warm pull is one HEAD request, and importing logging costs a fair part of that; so the
core's modules take their loggers from here: ``get_logger(name)`` is a stand-in whose
``warning``/``info`` import logging on first use. ``configure`` (called by the CLI) says
which levels reach stderr; messages below that level are dropped without the import.
"""
from __future__ import annotations

import sys

__all__ = ["configure", "get_logger"]

_INFO, _WARNING, _OFF = 20, 30, 51
_threshold = _WARNING  # without configure(): what logging's last-resort handler would show
_pending = False


def configure(*, verbose: bool) -> None:
    """Warnings on a terminal or with --verbose (info too with it); else nothing: a failing
    command's one error line is all it writes to stderr."""
    global _threshold, _pending
    _threshold = _INFO if verbose else (_WARNING if sys.stderr.isatty() else _OFF)
    _pending = True
    if "logging" in sys.modules:
        _apply()


def _apply() -> None:
    global _pending
    import logging
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("puller: %(levelname)s: %(message)s"))
    root = logging.getLogger("puller")
    root.handlers[:] = [handler]
    root.setLevel(_threshold)
    root.propagate = False
    _pending = False


class _Logger:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def warning(self, msg: str, *args: object) -> None:
        self._log(_WARNING, msg, args)

    def info(self, msg: str, *args: object) -> None:
        self._log(_INFO, msg, args)

    def _log(self, level: int, msg: str, args: tuple) -> None:
        if level < _threshold:
            return
        if _pending:
            _apply()
        import logging
        logging.getLogger(self.name).log(level, msg, *args)


def get_logger(name: str) -> _Logger:
    return _Logger(name)
