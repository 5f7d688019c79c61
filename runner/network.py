"""``--net private``: a user-mode network stack (slirp4netns) for the container's own
network namespace, so a rootless container gets outbound networking without privileges.

slirp4netns runs beside the container, in the host's namespaces, attached to the
keeper's network namespace: it creates ``tap0`` (10.0.2.100/24, gateway 10.0.2.2, DNS
10.0.2.3) and forwards connections through ordinary host sockets. The host's loopback is
not reachable from inside (``--disable-host-loopback``). It exits when the runner closes
its exit pipe.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from puller.errors import RunError

__all__ = ["SLIRP_RESOLV_CONF", "Slirp", "find_slirp", "start_slirp", "stop_slirp"]

SLIRP_RESOLV_CONF = "nameserver 10.0.2.3\n"


@dataclass(frozen=True, slots=True)
class Slirp:
    """A running slirp4netns: its pid and the pipe end whose closing stops it."""
    pid: int
    exit_fd: int


def find_slirp() -> str | None:
    """slirp4netns on $PATH, or None."""
    for directory in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep):
        candidate = os.path.join(directory or ".", "slirp4netns")
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def start_slirp(pid: int) -> Slirp:
    """Attach slirp4netns to the network namespace of ``pid``; return once tap0 is up."""
    exe = find_slirp()
    if exe is None:
        raise RunError("--net private needs slirp4netns (apt-get install slirp4netns)",
                       exit_code=125)
    if not os.access("/dev/net/tun", os.R_OK | os.W_OK):
        raise RunError("--net private needs /dev/net/tun, which this user cannot open",
                       exit_code=125)
    ready_r, ready_w = os.pipe()
    exit_r, exit_w = os.pipe()
    os.set_inheritable(ready_w, True)
    os.set_inheritable(exit_r, True)
    args = [exe, "--configure", "--mtu=65520", "--disable-host-loopback",
            f"--ready-fd={ready_w}", f"--exit-fd={exit_r}", str(pid), "tap0"]
    quiet = [(os.POSIX_SPAWN_OPEN, fd, "/dev/null", os.O_WRONLY, 0) for fd in (1, 2)]
    try:
        child = os.posix_spawn(exe, args, dict(os.environ), file_actions=quiet)
    finally:
        os.close(ready_w)
        os.close(exit_r)
    try:
        ready = os.read(ready_r, 1)
    finally:
        os.close(ready_r)
    if not ready:
        os.close(exit_w)
        os.waitpid(child, 0)
        raise RunError("slirp4netns could not set up the container's network", exit_code=125)
    return Slirp(child, exit_w)


def stop_slirp(slirp: Slirp) -> None:
    """Close the exit pipe and reap slirp4netns."""
    os.close(slirp.exit_fd)
    os.waitpid(slirp.pid, 0)
