"""The headline, end to end: ``pull-and-run alpine:3.10 sh`` on a terminal, as root and as an
unprivileged user, with Docker Hub's name served by a pull-through mirror of a local registry."""
from __future__ import annotations

import os
import pty
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from fixtures import cli

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def _read_until(fd: int, needle: bytes, timeout: float = 30) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while needle not in out:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {needle!r} in {out!r}")
        r, _, _ = select.select([fd], [], [], left)
        if r:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    return out


@pytest.fixture(params=["root", "rootless"])
def user_env(request, mirror):
    base = Path(tempfile.mkdtemp(prefix="puller-headline-"))  # /tmp: reachable by any user
    home = base / "home"
    home.mkdir()
    env = dict(os.environ, HOME=str(home), PULLER_CACHE=str(home / "cache"),
               PULLER_REGISTRY_MIRRORS=f"http://{mirror.host}", TERM="xterm")
    env.pop("DOCKER_CONFIG", None)
    prefix: list[str] = []
    if request.param == "rootless":
        os.chmod(base, 0o755)
        os.chown(home, 65534, 65534)
        prefix = NOBODY
    yield prefix, env
    shutil.rmtree(base, ignore_errors=True)


def test_pull_and_run_alpine_sh_on_a_terminal(user_env):
    prefix, env = user_env
    master, slave = pty.openpty()
    proc = subprocess.Popen([*prefix, str(cli.BIN / "pull-and-run"), "alpine:3.10", "sh"],
                            stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True)
    os.close(slave)
    try:
        _read_until(master, b"# ", timeout=60)          # the image was pulled, the prompt shows
        os.write(master, b'echo "p""id=$$"\n')
        _read_until(master, b"pid=1\r\n")                # PID 1 of its own namespace
        os.write(master, b"sleep 100\n")
        time.sleep(0.5)
        os.write(master, b"\x03")                          # Ctrl-C interrupts sleep, not us
        _read_until(master, b"# ", timeout=10)
        os.write(master, b'ls /work 2>&1; echo "do""ne"\n')  # the host files are out of sight
        out = _read_until(master, b"done\r\n")
        assert b"No such file or directory" in out
        os.write(master, b"exit 3\n")
        assert proc.wait(15) == 3
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)


def test_pull_and_run_pipes_and_warm_start(user_env):
    prefix, env = user_env
    run = [*prefix, str(cli.BIN / "pull-and-run")]
    p = subprocess.run([*run, "alpine:3.10", "cat"], input=b"hi\n", capture_output=True, env=env, timeout=60)
    assert (p.returncode, p.stdout) == (0, b"hi\n"), p.stderr
    # Cached now: it starts without the mirror (point it at nothing at all).
    env = dict(env, PULLER_REGISTRY_MIRRORS="http://127.0.0.1:9")
    p = subprocess.run([*run, "alpine:3.10", "sh", "-c", "id -u; exit 7"], capture_output=True,
                       env=env, timeout=60, stdin=subprocess.DEVNULL)
    assert p.returncode == 7 and p.stdout == b"0\n" and p.stderr == b""
    rootfs = Path(env["PULLER_CACHE"]) / "rootfs"
    p = subprocess.run([*run, "alpine:3.10", "sh", "-c", "echo x > /etc/written"], env=env, timeout=60,
                       stdin=subprocess.DEVNULL)
    assert p.returncode == 0
    assert not list(rootfs.glob("*/etc/written"))  # the cached image never changes
