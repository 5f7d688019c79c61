"""Docker's rules for turning an image config plus options into a process.

Pure functions, no namespaces: which argv (Entrypoint + Cmd, with user arguments replacing
Cmd and ``--entrypoint`` replacing Entrypoint *and* clearing Cmd), which environment
(image Env, then ``-e``, then defaults for PATH and HOME), and which identity a ``User``
string names (``name``, ``uid``, ``name:group``, ``uid:gid``, looked up in the image's own
/etc/passwd and /etc/group, read from inside the container's root).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from puller.errors import RunError

__all__ = ["DEFAULT_PATH", "Identity", "lookup_user", "merge_env", "parse_env_file", "resolve_argv"]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the command runs as, inside the container."""
    uid: int
    gid: int
    groups: tuple[int, ...] = ()
    home: str = "/"

    def __post_init__(self) -> None:
        if self.uid < 0 or self.gid < 0:
            raise ValueError("uid and gid must not be negative")


def _as_list(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):  # Docker's "shell form" in a config is already ["sh","-c",..]
        return [value]
    assert isinstance(value, (list, tuple)), f"expected a list, not {value!r}"
    return [str(v) for v in value]


def resolve_argv(config: dict[str, Any], command: tuple[str, ...] = (), entrypoint: str | None = None
                 ) -> tuple[str, ...]:
    """Entrypoint + Cmd as Docker builds them; raises RunError(125) if nothing is left."""
    if entrypoint is not None:
        ep = [entrypoint] if entrypoint else []
        cmd = list(command)  # --entrypoint resets the image's Cmd, as in Docker
    else:
        ep = _as_list(config.get("Entrypoint"))
        cmd = list(command) if command else _as_list(config.get("Cmd"))
    argv = tuple(ep + cmd)
    if not argv:
        raise RunError("no command specified (the image has no Entrypoint or Cmd)",
                       exit_code=125)
    return argv


def merge_env(image_env: list[str] | None, overrides: tuple[str, ...] = (), *,
              host_env: dict[str, str] | None = None, tty: bool = False) -> tuple[str, ...]:
    """Image Env, then ``-e`` values (``-e NAME`` copies the host's value if set), keeping
    Docker's order; PATH defaults to Docker's when the image has none; TERM when a tty."""
    merged: dict[str, str] = {}
    for item in list(image_env or []) + list(overrides):
        name, sep, value = item.partition("=")
        if not name:
            raise RunError(f"invalid environment variable: {item!r}", exit_code=125)
        if not sep:
            if host_env is None or name not in host_env:
                continue
            value = host_env[name]
        merged[name] = value
    merged.setdefault("PATH", DEFAULT_PATH)
    if tty:
        merged.setdefault("TERM", "xterm")
    return tuple(f"{k}={v}" for k, v in merged.items())


def parse_env_file(text: str) -> tuple[str, ...]:
    """Docker's --env-file format: one VAR=VAL (or VAR) per line, '#' comments."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line)
    return tuple(out)


def _table(text: str, width: int) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if line and not line.startswith("#"):
            fields = line.split(":")
            if len(fields) >= width:
                rows.append(fields)
    return rows


def lookup_user(user: str, passwd: str, group: str) -> Identity:
    """Resolve a Docker ``User`` value against the image's passwd and group files."""
    name, _, grp = (user or "0").partition(":")
    users = _table(passwd, 7)
    entry = next((r for r in users if r[0] == name), None)
    if entry is None and name.isdigit():
        entry = next((r for r in users if r[2] == name), None)
        uid, gid, home, login = int(name), 0, "/", None
    elif entry is None:
        raise RunError(f"unable to find user {name}: no matching entries in passwd file",
                       exit_code=125)
    if entry is not None:
        uid, gid, home, login = int(entry[2]), int(entry[3]), entry[5] or "/", entry[0]
    groups_rows = _table(group, 4)
    if grp:
        if grp.isdigit():
            gid = int(grp)
        else:
            row = next((r for r in groups_rows if r[0] == grp), None)
            if row is None:
                raise RunError(f"unable to find group {grp}: no matching entries in group file",
                               exit_code=125)
            gid = int(row[2])
    extra = tuple(int(r[2]) for r in groups_rows
                  if login and login in r[3].split(",") and int(r[2]) != gid)
    return Identity(uid, gid, (gid,) + extra, home)
