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

__all__ = ["FORWARDED", "Forwarder", "exit_code", "reap"]

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGWINCH,
             signal.SIGUSR1, signal.SIGUSR2, signal.SIGCONT)


def exit_code(status: int) -> int:
    """A wait status as a shell exit code: the code itself, or 128+N when killed by N."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


class Forwarder:
    """A signal handler that sends what it gets to ``target``, queueing until it is set
    (so a signal that arrives before the child exists is not lost)."""

    def __init__(self) -> None:
        self.target: int | None = None
        self.pending: list[int] = []

    def __call__(self, signum: int, _frame: object) -> None:
        if self.target is None:
            self.pending.append(signum)
            return
        try:
            os.kill(self.target, signum)
        except ProcessLookupError:
            pass

    def install(self, signals: tuple[int, ...], *, keep_ignored: bool = False
                ) -> dict[int, object]:
        """Handle ``signals``; with ``keep_ignored``, not those ignored on purpose by our
        caller (``nohup`` ignores SIGHUP: it stays ignored). Return the previous handlers."""
        return {s: signal.signal(s, self) for s in signals
                if not (keep_ignored and signal.getsignal(s) == signal.SIG_IGN)}

    def set_target(self, pid: int) -> None:
        self.target = pid
        pending, self.pending = self.pending, []
        for signum in pending:
            self(signum, None)


def reap(child: int, forward: Forwarder) -> int:
    """Forward signals to ``child`` and reap everything until ``child`` exits.

    ``forward`` was installed before ``child`` was forked; the handlers run between
    ``waitpid`` calls (PEP 475 retries the interrupted wait).
    """
    forward.set_target(child)
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 0
        if pid == child:
            return exit_code(status)
