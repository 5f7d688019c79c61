"""Resource limits (--memory, --cpus, --pids-limit) through cgroup v2 or v1.

Only used when a limit is asked for, so a plain run never touches /sys/fs/cgroup.
The container's cgroup is a child of the caller's own cgroup in each hierarchy (whoever
placed us keeps their accounting), named after the container id, and removed when the
container exits. On cgroup v2 a cgroup holding processes cannot also enable controllers
for children, so when ours does (the usual case for a shell in a systemd user session)
the container's cgroup goes next to ours, in the same delegated parent.

* cgroup v2 (unified, or the ``unified`` mount of a hybrid layout) is used when it offers
  every controller needed; as an unprivileged user only inside a delegated subtree.
* cgroup v1 controllers (``/sys/fs/cgroup/<controller>``) are used as root when v2 lacks
  a controller, as on hybrid hosts where memory/pids/cpu are still v1.

Memory includes swap (v2 ``memory.swap.max = 0``, v1 ``memsw`` = limit): past the limit the
kernel's OOM killer sends SIGKILL, so the container exits with 137, as in Docker.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

from puller.errors import RunError
from runner.limits import Limits

__all__ = ["Cgroup", "Limits", "create", "remove"]

_V1_CONTROLLERS = {"cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "net_cls",
                   "blkio", "perf_event", "net_prio", "hugetlb", "pids", "rdma", "misc"}
CFS_PERIOD = 100_000


@dataclass(frozen=True, slots=True)
class Cgroup:
    """The directories of one container's cgroup (one per v1 hierarchy, or one for v2)."""
    paths: tuple[str, ...]
    version: int


def _mounts() -> tuple[tuple[str, str] | None, dict[str, tuple[str, str]]]:
    """(v2 mount point, mount root) and {v1 controller: (mount point, mount root)}."""
    v2: tuple[str, str] | None = None
    v1: dict[str, tuple[str, str]] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if len(rfields) < 3:
                continue
            mount_root, point = fields[3], fields[4]
            if rfields[0] == "cgroup2" and v2 is None:
                v2 = (point, mount_root)
            elif rfields[0] == "cgroup":
                for opt in rfields[2].split(","):
                    if opt in _V1_CONTROLLERS:
                        v1.setdefault(opt, (point, mount_root))
    return v2, v1


def _own() -> dict[str, str]:
    """This process's cgroup path per hierarchy ("" is the v2 one)."""
    out = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            for ctrl in ctrls.split(",") if ctrls else [""]:
                out[ctrl] = path
    return out


def _join(mount: tuple[str, str], own: str) -> str:
    point, root = mount
    rel = own[len(root):] if root != "/" and own.startswith(root) else own
    return point.rstrip("/") + "/" + rel.strip("/")


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _controllers(path: str, name: str) -> set[str]:
    try:
        with open(f"{path}/{name}") as f:
            return set(f.read().split())
    except OSError:
        return set()


def _v2_parent(parent: str, limits: Limits) -> str:
    """Make ``parent`` able to host a limited child: enable the controllers in its
    subtree_control (refused with EBUSY while it holds processes: the "no internal
    processes" rule)."""
    missing = limits.controllers - _controllers(parent, "cgroup.subtree_control")
    if missing:
        _write(f"{parent}/cgroup.subtree_control", " ".join(f"+{c}" for c in sorted(missing)))
    return parent


def _v2(mount: tuple[str, str], own: str, name: str, limits: Limits) -> Cgroup | None:
    """Our own cgroup as the parent or, when it holds processes (we are in it), its parent:
    under systemd both are inside the user's delegated subtree."""
    own_dir = _join(mount, own).rstrip("/")
    if not limits.controllers <= _controllers(own_dir, "cgroup.controllers"):
        return None  # v2 lacks a controller here (hybrid host): v1 is the way
    candidates = [own_dir]
    if own_dir.rstrip("/") != mount[0].rstrip("/"):
        candidates.append(os.path.dirname(own_dir))
    errors = []
    for candidate in candidates:
        try:
            path = f"{_v2_parent(candidate, limits)}/{name}"
            os.mkdir(path)
            break
        except OSError as e:
            errors.append(f"{candidate}: {e.strerror}")
    else:
        raise RunError(f"cannot create a cgroup ({'; '.join(errors)}): resource limits need "
                       "root or a delegated cgroup v2 subtree", exit_code=125)
    try:
        if limits.memory is not None:
            _write(f"{path}/memory.max", str(limits.memory))
            if os.path.exists(f"{path}/memory.swap.max"):
                _write(f"{path}/memory.swap.max", "0")
        if limits.cpus is not None:
            _write(f"{path}/cpu.max", f"{int(limits.cpus * CFS_PERIOD)} {CFS_PERIOD}")
        if limits.pids is not None:
            _write(f"{path}/pids.max", str(limits.pids))
    except OSError as e:
        remove(Cgroup((path,), 2))
        raise RunError(f"cannot set cgroup v2 limits in {path}: {e.strerror}") from None
    return Cgroup((path,), 2)


def _v1(v1: dict[str, tuple[str, str]], own: dict[str, str], name: str,
        limits: Limits) -> Cgroup:
    missing = [c for c in sorted(limits.controllers) if c not in v1]
    if missing:
        raise RunError(f"no cgroup controller for {', '.join(missing)} on this host",
                       exit_code=125)
    if os.geteuid() != 0:
        raise RunError("resource limits need root or a delegated cgroup v2 subtree "
                       "(this host has them on cgroup v1 only)", exit_code=125)
    made: list[str] = []
    try:
        for ctrl in sorted(limits.controllers):
            path = f"{_join(v1[ctrl], own.get(ctrl, '/')).rstrip('/')}/{name}"
            if path in made:  # co-mounted controllers (cpu,cpuacct) share one directory
                continue
            os.mkdir(path)
            made.append(path)
            if ctrl == "memory":
                _write(f"{path}/memory.limit_in_bytes", str(limits.memory))
                if os.path.exists(f"{path}/memory.memsw.limit_in_bytes"):
                    _write(f"{path}/memory.memsw.limit_in_bytes", str(limits.memory))
            elif ctrl == "cpu" and limits.cpus is not None:
                _write(f"{path}/cpu.cfs_period_us", str(CFS_PERIOD))
                _write(f"{path}/cpu.cfs_quota_us", str(int(limits.cpus * CFS_PERIOD)))
            elif ctrl == "pids":
                _write(f"{path}/pids.max", str(limits.pids))
    except OSError as e:
        remove(Cgroup(tuple(made), 1))
        raise RunError(f"cannot set up cgroup v1 limits: {e.strerror} ({e.filename})") from None
    return Cgroup(tuple(made), 1)


def create(name: str, limits: Limits) -> Cgroup:
    """Create the container's cgroup with ``limits`` applied (v2 preferred, else v1)."""
    v2, v1 = _mounts()
    own = _own()
    if v2 is not None and "" in own:
        found = _v2(v2, own[""], name, limits)
        if found is not None:
            return found
    return _v1(v1, own, name, limits)


def remove(cgroup: Cgroup) -> None:
    """rmdir the container's cgroup; retried briefly while its last tasks are exiting."""
    for path in cgroup.paths:
        for attempt in range(50):
            try:
                os.rmdir(path)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.01 * (attempt + 1) if attempt < 10 else 0.1)
