"""What happens inside the forks, top to bottom, each step with why (as bubblewrap's main).

Three processes (``run`` in :mod:`runner.container` is the first):

1. the **runner** stays in the host's namespaces: it owns the cgroup, the tty relay and
   signal forwarding, and writes the user-namespace maps when that needs privilege;
2. the **keeper** (:func:`keeper`) unshares the user, pid, uts, ipc (and net)
   namespaces, forks PID 1, and when PID 1 is gone removes the container's throw-away
   directories *from inside the user namespace* (files owned by mapped sub-ids cannot be
   removed from outside) and its cgroup; if the runner dies, it kills PID 1 first;
3. **PID 1** (:func:`container_init`) joins the cgroup, unshares its own mount and cgroup
   namespaces (so pivot_root moves nobody else), applies the mount plan of
   :mod:`runner.steps` (:func:`build_plan`), pivots, and execs the command, or with
   ``--init`` forks it and becomes the reaper of :mod:`runner.init`.

Errors travel to the runner as one line ``err CODE MESSAGE`` on the report pipe
(close-on-exec, so a clean exec closes it); the runner turns them into RunError.
"""
from __future__ import annotations

import os
import signal
from dataclasses import dataclass

from runner import libc, steps
from runner.process import Identity, lookup_user
from runner.userns import Mapping, write_self_map

__all__ = ["DEFAULT_CAPS", "Channels", "Launch", "build_plan", "keeper", "remove_tree"]

# Docker's default capability set (moby oci/caps/defaults.go), by number.
DEFAULT_CAPS = (0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31)
_RESET_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGHUP,
                  signal.SIGQUIT, signal.SIGWINCH, signal.SIGCHLD, signal.SIGUSR1,
                  signal.SIGUSR2)
_ORPHANED = signal.SIGUSR1  # the keeper's parent-death signal (never forwarded to it)
_KEEPER_IGNORES = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                   signal.SIGWINCH)
TIOCSCTTY = 0x540E
TIOCSPTLCK = 0x40045431
TIOCGPTN = 0x80045430
TIOCGWINSZ = 0x5413
TIOCSWINSZ = 0x5414


@dataclass(frozen=True, slots=True)
class Launch:
    """Everything the forks need, computed by the runner before forking."""
    plan: tuple[steps.Step, ...]
    merged: str                      # host path where the container root is mounted
    argv: tuple[str, ...]
    env: tuple[str, ...]
    workdir: str
    user: str
    hostname: str
    mapping: Mapping
    network: str = "host"            # host | none | private (the last two: own netns)
    tty: bool = False
    init: bool = False
    cgroup_paths: tuple[str, ...] = ()
    sidecar: str | None = None
    cleanup: tuple[str, ...] = ()    # directories the keeper removes after PID 1 exits
    ignored: tuple[int, ...] = ()    # signals the runner's caller ignores (nohup): kept so


@dataclass(frozen=True, slots=True)
class Channels:
    """The child ends of the runner's pipes."""
    report: int        # child -> runner: "map", "net", "pid N", "warn ...", "err CODE MSG"
    go: int            # runner -> child: one byte once the maps are written
    pty: int | None    # unix socket to send the pty master over (SCM_RIGHTS)


class SetupError(Exception):
    """A setup failure with the Docker exit code it maps to."""

    def __init__(self, message: str, code: int = 125) -> None:
        super().__init__(message)
        self.code = code


def _say(ch: Channels, line: str) -> None:
    os.write(ch.report, (line.replace("\n", " ") + "\n").encode())


def _fail(ch: Channels, code: int, message: str) -> None:
    try:
        _say(ch, f"err {code} {message}")
    finally:
        os._exit(code)


def _describe(e: OSError) -> str:
    text = e.strerror or str(e)
    return text if e.filename is None else f"{text}: {e.filename}"


def _die_with_parent() -> None:
    """PR_SET_PDEATHSIG: if our parent dies, we get SIGKILL (and PID 1 takes the rest)."""
    parent = os.getppid()
    libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(125)


def keeper(launch: Launch, ch: Channels) -> None:
    """The first fork. Never returns."""
    try:
        os._exit(_keeper(launch, ch))
    except SetupError as e:
        _fail(ch, e.code, str(e))
    except OSError as e:
        _fail(ch, 125, _describe(e))
    except BaseException as e:  # noqa: BLE001 - a fork must never unwind into the runner
        _fail(ch, 125, f"{type(e).__name__}: {e}")


class _Orphan:
    """The keeper's parent-death signal: PID 1 is killed (the kernel then kills its whole
    PID namespace), the keeper cleans up as usual and exits."""

    def __init__(self) -> None:
        self.child: int | None = None

    def __call__(self, _signum: int, _frame: object) -> None:
        if self.child is None:
            os._exit(125)
        os.kill(self.child, signal.SIGKILL)


def _keeper(launch: Launch, ch: Channels) -> int:
    # The runner's forwarding handlers are not ours: keyboard signals for the whole process
    # group must not kill the keeper before it has cleaned up (the runner forwards them).
    for signum in _KEEPER_IGNORES:
        signal.signal(signum, signal.SIG_IGN)
    # If the runner dies (even by SIGKILL), take the container down and still clean up.
    orphan = _Orphan()
    signal.signal(_ORPHANED, orphan)
    parent = os.getppid()
    libc.prctl(libc.PR_SET_PDEATHSIG, _ORPHANED)
    if os.getppid() != parent:
        return 125
    # New user namespace plus the others at once: they are then owned by the new user
    # namespace, where we hold every capability. PID applies to our next fork.
    flags = (libc.CLONE_NEWUSER | libc.CLONE_NEWPID | libc.CLONE_NEWUTS | libc.CLONE_NEWIPC
             | (0 if launch.network == "host" else libc.CLONE_NEWNET))
    libc.unshare(flags)
    # Map ids: our own map when unprivileged with a single id, else the runner writes it.
    if launch.mapping.by_parent:
        _say(ch, "map")
        if os.read(ch.go, 1) != b"1":
            return 125
    else:
        write_self_map(launch.mapping)
    # --net private: the runner attaches slirp4netns to our network namespace now, before
    # PID 1 exists, so the network is up when the command starts.
    if launch.network == "private":
        _say(ch, "net")
        if os.read(ch.go, 1) != b"1":
            return 125
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
    pid = os.fork()
    if pid == 0:
        container_init(launch, ch)
    orphan.child = pid
    _say(ch, f"pid {pid}")
    for fd in (ch.report, ch.go) + (() if ch.pty is None else (ch.pty,)):
        os.close(fd)
    from runner.init import exit_code
    while True:
        waited, status = os.waitpid(pid, 0)
        if waited == pid:
            break
    for path in launch.cleanup:
        remove_tree(path)
    if launch.cgroup_paths:  # the runner removes it too; this covers a killed runner
        from runner.cgroups import Cgroup, remove
        remove(Cgroup(launch.cgroup_paths, 0))
    return exit_code(status)


def remove_tree(path: str) -> None:
    """rm -rf without following symlinks (shutil is a costly import on the start path)."""
    parent, name = os.path.split(path.rstrip("/"))
    try:
        fd = os.open(parent or "/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        _remove_entry(fd, name)
    finally:
        os.close(fd)


def _remove_entry(dir_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
        return
    except FileNotFoundError:
        return
    except (IsADirectoryError, PermissionError):
        pass
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                     dir_fd=dir_fd)
    except OSError:
        return
    try:
        for entry in os.listdir(fd):
            _remove_entry(fd, entry)
    finally:
        os.close(fd)
    try:
        os.rmdir(name, dir_fd=dir_fd)
    except OSError:
        pass


def container_init(launch: Launch, ch: Channels) -> None:
    """PID 1 of the new PID namespace. Never returns."""
    try:
        _container(launch, ch)
    except SetupError as e:
        _fail(ch, e.code, str(e))
    except OSError as e:
        _fail(ch, 125, _describe(e))
    except BaseException as e:  # noqa: BLE001
        _fail(ch, 125, f"{type(e).__name__}: {e}")
    os._exit(125)


def _container(launch: Launch, ch: Channels) -> None:
    # If the keeper dies, PID 1 dies, and the kernel kills the whole PID namespace.
    signal.signal(_ORPHANED, signal.SIG_DFL)  # the keeper's handler is not ours
    _die_with_parent()
    # Join the container's cgroup first: every process of the container descends from us
    # (the keeper stays out, so limits count only the container's own processes).
    for path in launch.cgroup_paths:
        with open(f"{path}/cgroup.procs", "w") as f:
            f.write("0")
    # Our own mount namespace (pivot_root then moves only us, not the keeper) and cgroup
    # namespace (rooted at the cgroup just joined: /proc/self/cgroup shows "/").
    libc.unshare(libc.CLONE_NEWNS | libc.CLONE_NEWCGROUP)
    # The mount plan: rprivate, root, /proc, /sys, /dev..., each step says why.
    root_fd = steps.apply(launch.plan, launch.merged, warn=lambda text: _say(ch, f"warn {text}"))
    # Ownership the unpacker could not set (rootless), now that ids beyond 0 are mapped.
    if launch.sidecar and launch.mapping.kind == "wide":
        from runner.sidecar import apply_sidecar
        apply_sidecar(root_fd, launch.sidecar)
    if launch.network != "host":
        _loopback_up()
    if launch.tty:
        # After pivot_root the host's Python library is gone: import what the pty needs now.
        for module in ("array", "fcntl", "socket"):
            __import__(module)
    _pivot(root_fd, ch)
    # Our own hostname, in our own UTS namespace.
    libc.sethostname(launch.hostname)
    # The pty is allocated inside, on the container's own devpts; the master goes out.
    slave = _open_pty(ch) if launch.tty else None
    ident = _identity(launch)
    _chdir_inside(launch.workdir)
    env = _final_env(launch, ident)
    # No privilege gains through setuid binaries or file capabilities from here on.
    _drop_bounding_caps()
    libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)
    if launch.init:
        # The reaper's handlers go in before the fork, so no early signal is lost.
        from runner.init import FORWARDED, Forwarder, reap
        _limit_caps()  # the reaper, too, keeps only Docker's default set
        forward = Forwarder()
        forward.install(FORWARDED)
        child = os.fork()
        if child == 0:
            _exec(launch, ch, ident, env, slave)
        if slave is not None:
            os.close(slave)
        os.close(ch.report)
        os._exit(reap(child, forward))
    _exec(launch, ch, ident, env, slave)


def _pivot(root_fd: int, ch: Channels) -> None:
    """pivot_root(".", ".") and detach the old root (stacked underneath): no path of the
    container reaches the host any more. chroot only if the kernel refuses (reported)."""
    os.fchdir(root_fd)
    try:
        libc.pivot_root(".", ".")
    except OSError as e:
        _say(ch, f"warn pivot_root failed ({e.strerror}); using chroot, which is weaker")
        os.chroot(".")
    else:
        libc.umount2(".", libc.MNT_DETACH)
    os.chdir("/")
    os.close(root_fd)


def _loopback_up() -> None:
    """--net none: bring up lo so that localhost works (SIOCSIFFLAGS on a socket)."""
    import fcntl
    import socket
    import struct
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH14s", b"lo", 0, b"")
        flags = struct.unpack("16sH14s", fcntl.ioctl(s, 0x8913, req))[1]  # SIOCGIFFLAGS
        fcntl.ioctl(s, 0x8914, struct.pack("16sH14s", b"lo", flags | 1, b""))  # IFF_UP


def _open_pty(ch: Channels) -> int:
    """Open a pty on the container's devpts, send the master to the runner, keep the slave."""
    import array
    import fcntl
    import socket
    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, TIOCSPTLCK, array.array("i", [0]))  # unlockpt
    num = array.array("I", [0])
    fcntl.ioctl(master, TIOCGPTN, num)
    slave = os.open(f"/dev/pts/{num[0]}", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    try:  # the size before the command starts (our stdin is still the host's terminal)
        fcntl.ioctl(slave, TIOCSWINSZ, fcntl.ioctl(0, TIOCGWINSZ, b"\0" * 8))
    except OSError:
        pass
    assert ch.pty is not None
    with socket.socket(fileno=ch.pty) as sock:
        socket.send_fds(sock, [b"m"], [master])
    os.close(master)
    return slave


def _read_inside(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _identity(launch: Launch) -> Identity:
    """User names are looked up in the image's own files (we are inside the root now)."""
    ident = lookup_user(launch.user, _read_inside("/etc/passwd"), _read_inside("/etc/group"))
    for value, what in ((ident.uid, "user"), (ident.gid, "group")):
        if not launch.mapping.mapped(value):
            raise SetupError(f"{what} id {value} is not mapped in this rootless user namespace "
                             "(only root is; a /etc/subuid range and newuidmap lift this)")
    return ident


def _chdir_inside(workdir: str) -> None:
    """Resolve WorkingDir inside the root, no magic links (/proc/self/fd/N escapes, runc
    CVE-2024-21626); create it if missing, as Docker does."""
    root = os.open("/", libc.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fd = libc.openat2(root, workdir, libc.O_PATH | os.O_DIRECTORY,
                              libc.RESOLVE_IN_ROOT | libc.RESOLVE_NO_MAGICLINKS)
        except FileNotFoundError:
            os.makedirs(workdir, exist_ok=True)  # owned by root, as Docker creates it
            fd = libc.openat2(root, workdir, libc.O_PATH | os.O_DIRECTORY,
                              libc.RESOLVE_IN_ROOT | libc.RESOLVE_NO_MAGICLINKS)
    except NotADirectoryError:
        raise SetupError(f"working directory {workdir} is not a directory") from None
    except OSError as e:
        raise SetupError(f"cannot use working directory {workdir}: {e.strerror}") from None
    finally:
        os.close(root)
    os.fchdir(fd)
    os.close(fd)


def _final_env(launch: Launch, ident: Identity) -> dict[str, str]:
    env = dict(item.split("=", 1) for item in launch.env)
    env.setdefault("HOSTNAME", launch.hostname)
    env.setdefault("HOME", ident.home)
    return env


def _drop_bounding_caps() -> None:
    """Cut the bounding set to Docker's default capabilities (for everything we exec)."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last = int(f.read())
    except OSError:
        last = 40
    for cap in range(last + 1):
        if cap not in DEFAULT_CAPS:
            libc.prctl(libc.PR_CAPBSET_DROP, cap)


def _limit_caps() -> None:
    """Effective and permitted capabilities cut to Docker's default set."""
    mask = sum(1 << cap for cap in DEFAULT_CAPS)
    libc.capset(mask, mask, 0)


def _become(ident: Identity, mapping: Mapping) -> None:
    """Switch to the image user; as root, keep only Docker's default capabilities."""
    if mapping.kind != "single":
        os.setgroups(list(ident.groups))
    os.setresgid(ident.gid, ident.gid, ident.gid)
    os.setresuid(ident.uid, ident.uid, ident.uid)
    if ident.uid == 0:
        _limit_caps()
    # A uid change clears the parent-death signal: set it again.
    libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)


def _exec(launch: Launch, ch: Channels, ident: Identity, env: dict[str, str],
          slave: int | None) -> None:
    if slave is not None:
        # A session of its own with the pty as controlling terminal: job control, ^C.
        os.setsid()
        import fcntl
        fcntl.ioctl(slave, TIOCSCTTY, 0)
        for fd in (0, 1, 2):
            os.dup2(slave, fd)
    _become(ident, launch.mapping)
    # Python ignores SIGPIPE (and the keeper others): give the command default dispositions,
    # except for what our own caller chose to ignore.
    for signum in _RESET_SIGNALS:
        signal.signal(signum, signal.SIG_IGN if signum in launch.ignored else signal.SIG_DFL)
    # Close every fd but 0-2 (the report pipe is close-on-exec and says if exec fails).
    report = ch.report
    if report > 3:
        libc.close_range(3, report - 1)
    libc.close_range(report + 1)
    try:
        os.execvpe(launch.argv[0], list(launch.argv), env)
    except FileNotFoundError:
        _fail(ch, 127, f"{launch.argv[0]}: executable file not found in $PATH")
    except PermissionError:
        _fail(ch, 126, f"{launch.argv[0]}: permission denied")
    except OSError as e:
        _fail(ch, 126, f"{launch.argv[0]}: {e.strerror}")


_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
# Docker's defaults (moby oci/defaults.go): hidden, and read-only, kernel interfaces. As
# root the container's root is the host's uid 0, so /proc/sys or /proc/sysrq-trigger left
# writable would reach the host kernel; rootless it is defence in depth.
_MASKED = ("/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
           "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
           "/sys/firmware", "/sys/devices/virtual/powercap")
_READ_ONLY = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")


def build_plan(*, rootfs: str, merged: str, upper: str, work: str, mapping: Mapping,
               own_netns: bool, hostname: str, resolv_conf: str,
               volumes: tuple[steps.BindMount, ...], read_only: bool) -> tuple[steps.Step, ...]:
    """The ordered mount plan (bubblewrap's setup_newroot, as data), each step with why."""
    nosuid, nodev, noexec = libc.MS_NOSUID, libc.MS_NODEV, libc.MS_NOEXEC
    tty_gid = "" if mapping.kind == "single" else ",gid=5"  # unmapped gid: devpts refuses
    plan: list[steps.Step] = [
        steps.MakeRprivate(),
        steps.MountRoot(lower=rootfs, target=merged, upper=upper, work=work),
        steps.Mount("proc", "/proc", nosuid | nodev | noexec,
                    why="a fresh procfs shows only the new PID namespace's processes"),
        steps.Mount("sysfs", "/sys", libc.MS_RDONLY | nosuid | nodev | noexec,
                    why="our own network namespace allows a fresh, read-only sysfs")
        if own_netns else
        steps.BindMount("/sys", "/sys", readonly=True,
                        why="with the host's netns a fresh sysfs is refused: bind it, all ro"),
        *(steps.ProtectPath(path, mask=True) for path in _MASKED),
        *(steps.ProtectPath(path) for path in _READ_ONLY),
        steps.Mount("tmpfs", "/dev", nosuid, "mode=755",
                    why="a private /dev: none of the image's or the host's device nodes"),
        *(steps.BindMount(f"/dev/{name}", f"/dev/{name}", recursive=False,
                          why="mknod is refused in a user namespace: bind the host's node")
          for name in _DEVICES),
        steps.Mount("devpts", "/dev/pts", nosuid | noexec,
                    f"newinstance,ptmxmode=0666,mode=620{tty_gid}",
                    why="the container's own ptys, invisible to the host's"),
        steps.Symlink("pts/ptmx", "/dev/ptmx"),
        steps.Symlink("/proc/self/fd", "/dev/fd"),
        steps.Symlink("/proc/self/fd/0", "/dev/stdin"),
        steps.Symlink("/proc/self/fd/1", "/dev/stdout"),
        steps.Symlink("/proc/self/fd/2", "/dev/stderr"),
        steps.Mount("tmpfs", "/dev/shm", nosuid | nodev | noexec, "mode=1777",
                    why="POSIX shared memory private to the container"),
        steps.WriteFile("/etc/hostname", f"{hostname}\n"),
        steps.WriteFile("/etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost "
                        f"ip6-loopback\n127.0.1.1\t{hostname}\n"),
        steps.WriteFile("/etc/resolv.conf", resolv_conf),
        *volumes,
    ]
    if read_only:
        plan.append(steps.ReadOnlyRoot())
    return tuple(plan)
