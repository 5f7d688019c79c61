"""Which user-namespace mapping a container gets, and writing it.

Three cases, chosen once per run by :func:`choose`:

* ``root``: the caller is root. Full identity mapping (``0 0 4294967295``): file ownership
  is real, yet every capability the container holds is confined to namespaces it owns
  (no module loading, no host mounts, no raw devices), which is safer than running in
  the host's user namespace, and keeps one code path for root and rootless.
* ``wide``: unprivileged, with ``newuidmap``/``newgidmap`` and a >= 65535-id range in
  /etc/subuid and /etc/subgid: root inside is the caller, ids 1..65535 are the range, so an
  image's files owned by other users (and ``apk``/``apt-get`` inside) work.
* ``single``: unprivileged without a range: only root inside (= the caller) is mapped,
  ``setgroups`` is denied; other users in the image show as ``nobody``.

The parent (in the host's user namespace) writes ``root`` and ``wide`` maps for the child,
which waits for it; ``single`` is written by the child itself, with no round trip.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from puller.errors import RunError

__all__ = ["Mapping", "choose", "write_parent_map", "write_self_map"]

_HELPERS = ("/usr/bin/newuidmap", "/usr/bin/newgidmap")
SUBID_COUNT = 65535


@dataclass(frozen=True, slots=True)
class Mapping:
    """The mapping decided for this run."""
    kind: str              # root | wide | single
    uid: int               # the caller's uid and gid in the host's namespace
    gid: int
    subuid: int = 0        # first subordinate ids (wide only)
    subgid: int = 0

    @property
    def by_parent(self) -> bool:
        """Whether the parent must write the maps (the child cannot, lacking privilege)."""
        return self.kind != "single"

    def mapped(self, container_id: int) -> bool:
        """Whether an id inside the container maps to something (setuid to it can work)."""
        return self.kind == "root" or container_id == 0 or (
            self.kind == "wide" and container_id <= SUBID_COUNT)


def _subid(path: str, name: str, uid: int) -> int | None:
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.strip().split(":")
        if len(fields) == 3 and fields[0] in (name, str(uid)) and fields[1].isdigit() \
                and fields[2].isdigit() and int(fields[2]) >= SUBID_COUNT:
            return int(fields[1])
    return None


def choose(*, allow_wide: bool = True) -> Mapping:
    """Pick root, wide or single mapping for the calling user."""
    uid, gid = os.geteuid(), os.getegid()
    if uid == 0:
        return Mapping("root", 0, 0)
    if allow_wide and all(os.access(h, os.X_OK) for h in _HELPERS):
        import pwd
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = str(uid)
        sub_u, sub_g = _subid("/etc/subuid", name, uid), _subid("/etc/subgid", name, uid)
        if sub_u is not None and sub_g is not None:
            return Mapping("wide", uid, gid, sub_u, sub_g)
    return Mapping("single", uid, gid)


def write_self_map(mapping: Mapping) -> None:
    """In the child, right after unshare(CLONE_NEWUSER): map the caller to root."""
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")  # required before an unprivileged gid_map write
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"0 {mapping.uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"0 {mapping.gid} 1")


def write_parent_map(mapping: Mapping, pid: int) -> None:
    """In the parent: write the child's maps (root) or have newuidmap/newgidmap do it."""
    if mapping.kind == "root":
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{pid}/{name}", "w") as f:
                f.write("0 0 4294967295")
        return
    for helper, own, sub in ((_HELPERS[0], mapping.uid, mapping.subuid),
                             (_HELPERS[1], mapping.gid, mapping.subgid)):
        args = [helper, str(pid), "0", str(own), "1", "1", str(sub), str(SUBID_COUNT)]
        child = os.posix_spawn(helper, args, dict(os.environ))
        _, status = os.waitpid(child, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RunError(f"{os.path.basename(helper)} failed for pid {pid}", exit_code=125)
