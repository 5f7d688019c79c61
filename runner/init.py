"""The ``--init`` reaper: PID 1 that forwards signals to the command and reaps zombies.

Without it the command itself is PID 1 of the new PID namespace, which the kernel shields
from every signal it has no handler for (so ``kill -TERM`` does nothing to a plain
``sleep``), and orphans re-parented to it are never waited for. With it, PID 1 is this
small loop (like tini): every forwarded signal goes to the command, every child that
exits is reaped, and when the command exits its status becomes ours.
"""
from __future__ import annotations

import os
import signal

__all__ = ["FORWARDED", "exit_code", "reap"]

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGWINCH,
             signal.SIGUSR1, signal.SIGUSR2, signal.SIGCONT)


def exit_code(status: int) -> int:
    """A wait status as a shell exit code: the code itself, or 128+N when killed by N."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def reap(child: int) -> int:
    """Forward signals to ``child`` and reap everything until ``child`` exits.

    The handlers run between ``waitpid`` calls (PEP 475 retries the interrupted wait), so
    a signal is forwarded as soon as it arrives.
    """
    def forward(signum: int, _frame: object) -> None:
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    for signum in FORWARDED:
        signal.signal(signum, forward)
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 0
        if pid == child:
            return exit_code(status)
