"""Named containers (``--name``): their kept writable layer, ``puller ps`` and ``puller rm``.

A named container lives in ``<cache>/containers/NAME/``: ``upper/`` and ``work/`` of its
overlay, and ``container.json`` (id, image, command, created, status). Names are unique,
as in Docker: running with a name in use is an error until ``puller rm NAME``.
Files written by a container under a 65536-id mapping belong to sub-ids the caller cannot
delete; removal then runs inside a user namespace with the same mapping.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from puller.errors import RunError, UsageError

__all__ = [
    "ContainerInfo",
    "create_container",
    "list_containers",
    "mark_exited",
    "remove_container",
]

META = "container.json"


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    """One row of ``puller ps``."""
    name: str
    id: str
    image: str
    command: str
    created: str
    status: str        # running | exited (N) | dead


def create_container(containers_dir: Path, name: str, cid: str, spec: object) -> Path:
    """Make the container's directory; a name already in use is an error, as in Docker."""
    containers_dir.mkdir(parents=True, exist_ok=True)
    path = containers_dir / name
    try:
        path.mkdir()
    except FileExistsError:
        raise RunError(f'the container name "{name}" is already in use; remove it with: '
                       f"puller rm {name}", exit_code=125) from None
    (path / "upper").mkdir()
    (path / "work").mkdir()
    # rootfs: the shared base this container's layer sits on; prune keeps it while we exist.
    meta = {"id": cid, "name": name, "image": getattr(spec, "image", ""),
            "rootfs": str(getattr(spec, "rootfs", "")),
            "command": list(getattr(spec, "argv", ())),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "status": "running", "pid": os.getpid(), "exit_code": None}
    _write_meta(path, meta)
    return path


def _write_meta(path: Path, meta: dict[str, Any]) -> None:
    tmp = path / (META + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, path / META)


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads((path / META).read_text())
        return meta if isinstance(meta, dict) else {}
    except (OSError, ValueError):
        return {}


def mark_exited(path: Path, status: int | None) -> None:
    """Record that the container has exited (status None: it never started)."""
    meta = _read_meta(path)
    if meta:
        meta.update(status="exited", exit_code=status, pid=None)
        _write_meta(path, meta)


def _alive(pid: object) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _status(meta: dict[str, Any]) -> str:
    if meta.get("status") == "running":
        return "running" if _alive(meta.get("pid")) else "dead"
    code = meta.get("exit_code")
    return "exited" if code is None else f"exited ({code})"


def list_containers(containers_dir: Path) -> list[ContainerInfo]:
    """Every named container under ``containers_dir``, sorted by name."""
    if not containers_dir.is_dir():
        return []
    rows = []
    for path in sorted(containers_dir.iterdir()):
        meta = _read_meta(path)
        if not meta:
            continue
        rows.append(ContainerInfo(name=path.name, id=str(meta.get("id", ""))[:12],
                                  image=str(meta.get("image", "")),
                                  command=" ".join(meta.get("command") or []),
                                  created=str(meta.get("created", "")), status=_status(meta)))
    return rows


def remove_container(containers_dir: Path, name: str, *, force: bool = False) -> None:
    """Delete a named container's directory (refused while it runs, unless ``force``)."""
    if not name or "/" in name or name.startswith("."):
        raise UsageError(f"invalid container name {name!r}")
    path = containers_dir / name
    meta = _read_meta(path)
    if not path.is_dir() or not meta:
        raise UsageError(f"no such container: {name}")
    if _status(meta) == "running":
        if not force:
            raise RunError(f"container {name} is running; stop it first or use --force",
                           exit_code=125)
        os.kill(meta["pid"], 15)
    import shutil
    try:
        shutil.rmtree(path)
    except PermissionError:
        _rmtree_in_userns(path)


def _rmtree_in_userns(path: Path) -> None:
    """Remove files owned by mapped sub-ids from inside a user namespace with that map."""
    from runner import libc, userns
    mapping = userns.choose()
    if not mapping.by_parent:
        raise RunError(f"cannot remove {path}: permission denied", exit_code=125)
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            libc.unshare(libc.CLONE_NEWUSER)
            os.write(ready_w, b"1")
            if os.read(go_r, 1) == b"1":
                import shutil
                shutil.rmtree(path)
                code = 0
        finally:
            os._exit(code)
    os.read(ready_r, 1)
    try:
        userns.write_parent_map(mapping, pid)
        os.write(go_w, b"1")
    finally:
        for fd in (ready_r, ready_w, go_r, go_w):
            os.close(fd)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RunError(f"cannot remove {path}", exit_code=125)
