"""Run one container: :class:`RunSpec` in, exit status out.

``run(spec)`` is the runner process of :mod:`runner.namespace`: it stays in the host's
namespaces, prepares the container's directories and cgroup, forks the keeper, answers
its requests (user-namespace maps), forwards SIGINT/TERM/HUP/QUIT/WINCH to PID 1, relays
the terminal, and cleans up. Errors come back as :class:`puller.errors.RunError` with
Docker's exit codes (125 setup failed, 126 cannot execute, 127 not found).

Usage::

    spec = RunSpec(rootfs=Path("/cache/rootfs/abc"), argv=("sh", "-c", "echo $$"))
    status = run(spec)     # 0, the command's status, or 128+N if killed by signal N
"""
from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from puller.errors import RunError, UsageError
from runner import namespace, steps, userns
from runner.init import Forwarder
from runner.limits import Limits

if TYPE_CHECKING:
    from pathlib import Path

    from runner.network import Slirp

__all__ = ["NETWORKS", "RunSpec", "Volume", "run"]

NETWORKS = ("host", "none", "private")
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGWINCH)


@dataclass(frozen=True, slots=True)
class Volume:
    """A bind mount from the host (Docker's ``-v SRC:DST[:ro]``)."""
    source: str
    dest: str
    readonly: bool = False

    def __post_init__(self) -> None:
        if not self.dest.startswith("/"):
            raise UsageError(f"volume destination must be an absolute path: {self.dest!r}")
        if ".." in self.dest.split("/"):
            raise UsageError(f"volume destination must not contain '..': {self.dest!r}")

    @classmethod
    def parse(cls, text: str) -> Volume:
        """Parse ``SRC:DST[:ro|rw]``; a relative SRC is taken from the current directory."""
        parts = text.split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
            raise UsageError(f"invalid volume {text!r}: expected SRC:DST[:ro]")
        mode = parts[2] if len(parts) == 3 else "rw"
        if mode not in ("ro", "rw"):
            raise UsageError(f"invalid volume mode {mode!r} in {text!r}: use ro or rw")
        return cls(os.path.abspath(parts[0]), parts[1], mode == "ro")


@dataclass(frozen=True, slots=True)
class RunSpec:
    """What to run and how; the process fields are already resolved from the image config
    (see :mod:`runner.process`), except ``user``, which is looked up inside the root."""
    rootfs: Path                     # the shared, read-only base rootfs (never modified)
    argv: tuple[str, ...]
    env: tuple[str, ...] = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)
    workdir: str = "/"
    user: str = ""                   # NAME|UID[:GROUP|GID], "" = root
    hostname: str | None = None      # default: the container's short id
    volumes: tuple[Volume, ...] = ()
    network: str = "host"            # host | none
    read_only: bool = False
    tty: bool | None = None          # None: a pty exactly when stdin is a terminal
    init: bool = False
    limits: Limits = field(default_factory=Limits)
    name: str | None = None          # keep the writable layer under containers_dir/NAME
    containers_dir: Path | None = None
    state_dir: Path | None = None    # where throw-away upper dirs go (default $TMPDIR)
    sidecar: Path | None = None      # rootless unpack record of the image, if any
    image: str = ""                  # shown by `puller ps`
    container_id: str | None = None  # 64 hex digits; random when None

    def __post_init__(self) -> None:
        if not self.argv:
            raise UsageError("no command to run")
        if self.network not in NETWORKS:
            raise UsageError(f"unsupported network {self.network!r}: use host, none or "
                             "private")
        if not self.workdir.startswith("/"):
            raise UsageError(f"the working directory {self.workdir!r} must be absolute")
        if self.name is not None and self.containers_dir is None:
            raise UsageError("a named container needs containers_dir")
        if self.name is not None and (not self.name or "/" in self.name
                                      or self.name.startswith(".")):
            raise UsageError(f"invalid container name {self.name!r}")


_Dirs = tuple[str, str, str, "str | None"]  # tmp (throw-away), upper, work, named dir


def _make_dirs(spec: RunSpec, cid: str) -> _Dirs:
    """A throw-away directory (mount point; upper and work too with --rm) and, for a named
    container, its kept directory."""
    base = str(spec.state_dir or os.environ.get("TMPDIR") or "/tmp")
    tmp = os.path.join(base, f"puller-run-{cid[:12]}")
    os.mkdir(tmp, 0o700)
    os.mkdir(f"{tmp}/merged")
    if spec.name is not None:
        from runner.containers import create_container
        assert spec.containers_dir is not None
        try:
            named = str(create_container(spec.containers_dir, spec.name, cid, spec))
        except BaseException:
            namespace.remove_tree(tmp)
            raise
        return tmp, f"{named}/upper", f"{named}/work", named
    os.mkdir(f"{tmp}/upper")
    os.mkdir(f"{tmp}/work")
    return tmp, f"{tmp}/upper", f"{tmp}/work", None


def _resolv_conf(network: str) -> str:
    """The host's resolv.conf; with --net none its loopback resolvers are dropped (the
    container's own lo has nothing listening); with --net private, slirp4netns's DNS."""
    if network == "private":
        from runner.network import SLIRP_RESOLV_CONF
        return SLIRP_RESOLV_CONF
    try:
        with open("/etc/resolv.conf") as f:
            text = f.read()
    except OSError:
        return ""
    if network == "host":
        return text
    keep = [line for line in text.splitlines()
            if not (line.split()[:1] == ["nameserver"] and len(line.split()) > 1
                    and (line.split()[1].startswith("127.") or line.split()[1] == "::1"))]
    return "\n".join(keep) + "\n"


def _volumes(spec: RunSpec) -> tuple[steps.BindMount, ...]:
    out = []
    for vol in spec.volumes:
        if not os.path.exists(vol.source):
            raise RunError(f"bind source path does not exist: {vol.source}", exit_code=125)
        out.append(steps.BindMount(vol.source, vol.dest, vol.readonly, why="-v volume"))
    return tuple(out)


def _stdio_open() -> None:
    """A closed fd 0, 1 or 2 would be reused by our pipes and then clobbered by the
    container's stdio: give it /dev/null, as a shell would."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open("/dev/null", os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            os.set_inheritable(fd, True)  # Python opens close-on-exec


def _check_threads() -> None:
    """fork() with other threads alive copies their locks mid-use; refuse to risk it."""
    threading = sys.modules.get("threading")
    if threading is not None and threading.active_count() > 1:
        raise RunError("internal error: cannot start a container while other threads run",
                       exit_code=125)


def run(spec: RunSpec) -> int:
    """Run the container to completion and return its exit status."""
    cid = spec.container_id or os.urandom(32).hex()
    hostname = spec.hostname or cid[:12]
    mapping = userns.choose()
    tty = os.isatty(0) if spec.tty is None else spec.tty
    if not os.path.isdir(spec.rootfs):
        raise RunError(f"rootfs {spec.rootfs} is not a directory", exit_code=125)
    volumes = _volumes(spec)
    _check_threads()
    _stdio_open()
    try:
        tmp, upper, work, named = _make_dirs(spec, cid)
    except OSError as e:
        raise RunError(f"cannot create the container's directories: {e.strerror}: "
                       f"{e.filename}", exit_code=125) from None
    cgroup = None
    status: int | None = None
    try:
        if spec.limits.controllers:
            from runner import cgroups
            cgroup = cgroups.create(f"puller-{cid[:12]}", spec.limits)
        merged = f"{tmp}/merged"
        plan = namespace.build_plan(
            rootfs=str(spec.rootfs), merged=merged, upper=upper, work=work, mapping=mapping,
            own_netns=spec.network != "host", hostname=hostname,
            resolv_conf=_resolv_conf(spec.network),
            volumes=volumes, read_only=spec.read_only)
        launch = namespace.Launch(
            plan=plan, merged=merged, argv=spec.argv, env=spec.env, workdir=spec.workdir,
            user=spec.user, hostname=hostname, mapping=mapping, network=spec.network, tty=tty,
            init=spec.init, cgroup_paths=() if cgroup is None else cgroup.paths,
            sidecar=None if spec.sidecar is None else str(spec.sidecar),
            cleanup=(tmp,) if named is None else (tmp, f"{work}/work"),
            ignored=tuple(s for s in _FORWARDED if signal.getsignal(s) == signal.SIG_IGN))
        status = _launch(launch, mapping)
        return status
    finally:
        if cgroup is not None:
            from runner import cgroups
            cgroups.remove(cgroup)
        if os.path.lexists(tmp):  # the keeper removes it; not if it never got that far
            namespace.remove_tree(tmp)
        if named is not None:
            from pathlib import Path

            from runner.containers import mark_exited
            mark_exited(Path(named), status)


def _launch(launch: namespace.Launch, mapping: userns.Mapping) -> int:
    report_r, report_w = os.pipe()
    go_r, go_w = os.pipe()
    pty_parent = pty_child = None
    if launch.tty:
        import socket
        pty_parent, pty_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    channels = namespace.Channels(report_w, go_r, None if pty_child is None
                                  else pty_child.detach())
    # Handlers first: a signal that comes while the children start is queued, not lost
    # (the keeper replaces them with its own at once).
    forward = Forwarder()
    previous = forward.install(_FORWARDED if not launch.tty else _FORWARDED[:-1],
                               keep_ignored=True)
    pid = os.fork()
    if pid == 0:
        os.close(report_r)
        os.close(go_w)
        if pty_parent is not None:
            os.close(pty_parent.detach())
        namespace.keeper(launch, channels)  # never returns
    os.close(report_w)
    os.close(go_r)
    if channels.pty is not None:
        os.close(channels.pty)
    served = _Served()
    try:
        _serve(report_r, go_w, pid, mapping, forward, served)
        if pty_parent is not None and served.error is None:
            _relay(pty_parent)
        status = _wait(pid)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)  # type: ignore[arg-type]
        if pty_parent is not None:
            pty_parent.close()
        if served.slirp is not None:
            from runner.network import stop_slirp
            stop_slirp(served.slirp)
    if served.error is not None:
        raise RunError(served.error[1], exit_code=served.error[0])
    return status


class _Served:
    """What answering the children left behind: the first error, a slirp4netns to stop."""

    def __init__(self) -> None:
        self.error: tuple[int, str] | None = None
        self.slirp: Slirp | None = None


def _serve(report_r: int, go_w: int, pid: int, mapping: userns.Mapping,
           forward: Forwarder, served: _Served) -> None:
    """Answer the children until the report pipe closes (PID 1 exec'd, or they failed)."""
    with os.fdopen(report_r, "rb") as report:
        for raw in report:
            verb, _, rest = raw.decode(errors="replace").rstrip("\n").partition(" ")
            if verb in ("map", "net"):
                try:
                    if verb == "map":
                        userns.write_parent_map(mapping, pid)
                    else:
                        from runner.network import start_slirp
                        served.slirp = start_slirp(pid)
                    os.write(go_w, b"1")
                except (OSError, RunError) as e:
                    os.write(go_w, b"0")
                    served.error = (125, str(e) if isinstance(e, RunError) else
                                    f"cannot write the user namespace maps: {e}")
            elif verb == "pid":
                forward.set_target(int(rest))
            elif verb == "warn":
                import logging
                logging.getLogger("runner").warning("%s", rest)
            elif verb == "err" and served.error is None:
                code, _, message = rest.partition(" ")
                served.error = (int(code), message)
    os.close(go_w)


def _relay(sock: object) -> None:
    import socket

    from runner.tty import relay
    assert isinstance(sock, socket.socket)
    try:
        _, fds, _, _ = socket.recv_fds(sock, 1, 1)
    except OSError:
        return
    if not fds:
        return
    try:
        relay(fds[0])
    finally:
        os.close(fds[0])


def _wait(pid: int) -> int:
    from runner.init import exit_code
    while True:
        waited, status = os.waitpid(pid, 0)
        if waited == pid:
            return exit_code(status)
