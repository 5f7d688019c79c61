"""The host side of a container's terminal: raw mode, byte relay, window size.

The pty itself lives on the container's own devpts (PID 1 opens it and sends us the
master). Here the host terminal goes raw, so ^C, ^Z and line editing are bytes the
container's line discipline interprets: ^C interrupts the container's foreground job,
not the runner. The window size is copied at start and on every SIGWINCH.
"""
from __future__ import annotations

import errno
import fcntl
import os
import select
import signal
import termios

__all__ = ["copy_winsize", "relay"]

_WINSZ = b"\0" * 8


def copy_winsize(src: int, dst: int) -> None:
    """Give the pty ``dst`` the window size of terminal ``src`` (the kernel then sends
    SIGWINCH to the container's foreground process group)."""
    try:
        size = fcntl.ioctl(src, termios.TIOCGWINSZ, _WINSZ)
        fcntl.ioctl(dst, termios.TIOCSWINSZ, size)
    except OSError:
        pass


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def relay(master: int, stdin: int = 0, stdout: int = 1) -> None:
    """Copy stdin -> master and master -> stdout until the container side closes."""
    is_tty = os.isatty(stdin)
    saved = None
    if is_tty:
        import tty
        saved = termios.tcgetattr(stdin)
        copy_winsize(stdin, master)
        previous = signal.signal(signal.SIGWINCH, lambda *_: copy_winsize(stdin, master))
        tty.setraw(stdin, termios.TCSANOW)
    try:
        _pump(master, stdin, stdout, is_tty)
    finally:
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSAFLUSH, saved)
            signal.signal(signal.SIGWINCH, previous)


def _pump(master: int, stdin: int, stdout: int, is_tty: bool) -> None:
    readers = [master, stdin]
    while True:
        ready, _, _ = select.select(readers, [], [])
        if master in ready:
            try:
                data = os.read(master, 65536)
            except OSError as e:
                if e.errno == errno.EIO:  # every slave fd is closed: the container is done
                    return
                raise
            if not data:
                return
            try:
                _write_all(stdout, data)
            except BrokenPipeError:  # nobody reads us: closing the master hangs up the tty
                return
        if stdin in ready:
            data = os.read(stdin, 65536)
            if data:
                _write_all(master, data)
            else:  # stdin ended (a pipe with -t): send EOF to the container's terminal
                readers.remove(stdin)
                if not is_tty:
                    _write_all(master, b"\x04")
