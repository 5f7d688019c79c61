"""An interactive session through a pseudo-terminal, as a person at a terminal has it."""
from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import shutil
import struct
import subprocess
import tempfile
import termios
from collections.abc import Iterator
from pathlib import Path

import pytest

from fixtures.rootfs import REPO, Sandbox

pytestmark = [pytest.mark.skipif(not Path("/bin/busybox").exists(), reason="needs busybox-static"),
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (runs root and rootless)")]


@pytest.fixture(scope="module", params=["root", "rootless"])
def box(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    path = Path(tempfile.mkdtemp(prefix="puller-tty-", dir="/tmp"))
    yield Sandbox(path, rootless=request.param == "rootless")
    shutil.rmtree(path, ignore_errors=True)


class Terminal:
    """The far end of a pty: write keys, wait for text (bounded, never a timing assert)."""

    def __init__(self, master: int) -> None:
        self.master = master
        self.seen = b""

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def expect(self, pattern: bytes, limit: float = 20.0) -> re.Match[bytes]:
        while True:
            found = re.search(pattern, self.seen)
            if found:
                self.seen = self.seen[found.end():]
                return found
            ready, _, _ = select.select([self.master], [], [], limit)
            assert ready, f"no {pattern!r} in {self.seen!r}"
            try:
                self.seen += os.read(self.master, 4096)
            except OSError:
                raise AssertionError(f"terminal closed before {pattern!r}: {self.seen!r}")


def _set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _wait_for_process(cmdline: str) -> None:
    for _ in range(2000):
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if Path(f"/proc/{pid}/cmdline").read_text() == cmdline:
                    return
            except OSError:
                pass
        select.select([], [], [], 0.01)
    raise AssertionError(f"{cmdline!r} never started")


@pytest.mark.parametrize("init", [False, True], ids=["pid1", "init"])
def test_interactive_shell(box: Sandbox, init: bool) -> None:
    master, slave = pty.openpty()
    _set_size(master, 40, 100)
    command = ["sh", "-c", "stty size; exec sh"]  # the size is there before the command runs
    proc = subprocess.Popen(box.command(command, env=["PATH=/bin", "HOME=/root"], init=init),
                            cwd=REPO,
                            stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    term = Terminal(master)
    try:
        term.expect(rb"^40 100\r\n")
        term.expect(rb"# ")                           # the prompt appears
        term.send(b"echo pid=$$\r")
        term.expect(rb"pid=2\r\n" if init else rb"pid=1\r\n")  # PID 1 (or the reaper's child)
        term.expect(rb"# ")
        term.send(b"stty size; tty\r")
        term.expect(rb"40 100\r\n/dev/pts/0\r\n")     # window size copied, pty inside
        term.expect(rb"# ")
        _set_size(master, 33, 77)
        proc.send_signal(28)                          # SIGWINCH, as the terminal would
        term.send(b"stty size\r")
        term.expect(rb"33 77\r\n")                    # ... and it follows
        term.expect(rb"# ")
        term.send(b"sleep 100.4242\r")
        _wait_for_process("sleep\x00100.4242\x00")
        term.send(b"\x03")                            # Ctrl-C: interrupts sleep, not us
        term.expect(rb"# ")
        term.send(b"echo status=$?\r")
        term.expect(rb"status=130\r\n")
        term.send(b"exit 3\r")
        assert proc.wait(timeout=30) == 3
    finally:
        proc.kill()
        proc.wait()
        os.close(master)
