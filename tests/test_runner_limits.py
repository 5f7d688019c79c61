"""Resource limits: take effect as root (cgroup v1 or v2), clear error when impossible."""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fixtures.rootfs import Sandbox
from runner import cgroups

pytestmark = [pytest.mark.skipif(not Path("/bin/busybox").exists(), reason="needs busybox-static"),
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

CID = "c0ffee" * 10 + "abcd"
NAME = f"puller-{CID[:12]}"


@pytest.fixture(scope="module", params=["root", "rootless"])
def box(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    path = Path(tempfile.mkdtemp(prefix="puller-limits-", dir="/tmp"))
    yield Sandbox(path, rootless=request.param == "rootless")
    shutil.rmtree(path, ignore_errors=True)


def _host_dirs(controllers: set[str]) -> dict[str, str]:
    """Where the container's cgroup of each controller appears on the host."""
    _, v1 = cgroups._mounts()
    own = cgroups._own()
    return {c: f"{cgroups._join(v1[c], own.get(c, '/')).rstrip('/')}/{NAME}" for c in controllers}


def _skip_rootless(box: Sandbox) -> None:
    if box.rootless:
        out = box.run(["true"], limits={"pids": 10})
        assert out.returncode == 125
        assert "limits need root or a delegated cgroup v2 subtree" in out.stderr
        pytest.skip("rootless: no delegated cgroup v2 subtree with these controllers here "
                    "(the error above is what users see)")


def test_fork_bomb_stops_at_pids_limit(box: Sandbox) -> None:
    _skip_rootless(box)
    script = "i=0; while [ $i -lt 40 ]; do sleep 30 & i=$((i+1)); echo $i; done"
    out = box.run(["sh", "-c", script], limits={"pids": 10}, container_id=CID)
    started = out.stdout.split()
    assert len(started) == 9  # sh itself is the 10th task
    assert "can't fork" in out.stderr
    assert out.returncode != 0
    assert not any(os.path.exists(d) for d in _host_dirs({"pids"}).values())


def test_memory_hog_is_killed_with_137(box: Sandbox) -> None:
    _skip_rootless(box)
    out = box.run(["sh", "-c", "a=0123456789abcdef; while :; do a=$a$a; done"],
                  limits={"memory": 32 * 1024 * 1024}, container_id=CID)
    assert out.returncode == 137
    assert not any(os.path.exists(d) for d in _host_dirs({"memory"}).values())


def test_limits_are_written_where_the_container_runs(box: Sandbox) -> None:
    _skip_rootless(box)
    dirs = _host_dirs({"cpu", "pids", "memory"})
    script = "; ".join(f"cat {dirs['cpu']}/cpu.cfs_quota_us {dirs['pids']}/pids.max "
                       f"{dirs['memory']}/memory.limit_in_bytes".split(";"))
    # the container sees the host's /sys read-only, so it can read its own limits
    out = box.run(["sh", "-c", script + "; cat /proc/self/cgroup"],
                  limits={"cpus": 0.5, "pids": 64, "memory": 64 * 1024 * 1024},
                  container_id=CID)
    lines = out.stdout.split()
    assert lines[:3] == ["50000", "64", str(64 * 1024 * 1024)], out.stderr
    # its own cgroup namespace, rooted at the container's cgroup
    assert {line.rsplit(":", 1)[1] for line in lines[3:]} == {"/"}
    assert not any(os.path.exists(d) for d in dirs.values())


def test_limits_validate() -> None:
    with pytest.raises(ValueError):
        cgroups.Limits(memory=1024)
    with pytest.raises(ValueError):
        cgroups.Limits(cpus=0)
    with pytest.raises(ValueError):
        cgroups.Limits(pids=0)
    assert cgroups.Limits(memory=2**30, pids=5).controllers == {"memory", "pids"}


def test_v2_files_in_a_delegated_tree(tmp_path: Path) -> None:
    """The cgroup v2 writes, against a directory laid out like a delegated subtree (this
    machine's v2 hierarchy has no memory/pids/cpu controllers to test for real)."""
    own = tmp_path / "user.slice" / "app.scope"
    own.mkdir(parents=True)
    for directory in (tmp_path / "user.slice", own):
        (directory / "cgroup.controllers").write_text("cpu memory pids\n")
    (own / "cgroup.subtree_control").write_text("cpu memory pids\n")
    limits = cgroups.Limits(memory=64 << 20, cpus=1.5, pids=7)
    found = cgroups._v2((str(tmp_path), "/"), "/user.slice/app.scope", "puller-x", limits)
    assert found is not None and found.paths == (str(own / "puller-x"),)
    assert (own / "puller-x/memory.max").read_text() == str(64 << 20)
    assert (own / "puller-x/cpu.max").read_text() == "150000 100000"
    assert (own / "puller-x/pids.max").read_text() == "7"
    lacking = cgroups.Limits(memory=64 << 20)
    (own / "cgroup.controllers").write_text("pids\n")
    assert cgroups._v2((str(tmp_path), "/"), "/user.slice/app.scope", "y", lacking) is None


def test_cgroup_is_removed_when_the_runner_is_killed(box: Sandbox) -> None:
    import select
    import subprocess

    from fixtures.rootfs import REPO
    _skip_rootless(box)
    dirs = _host_dirs({"pids"})
    proc = subprocess.Popen(box.command(["sh", "-c", "echo ready; sleep 1000"],
                                        limits={"pids": 20}, container_id=CID),
                            cwd=REPO, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    assert all(os.path.isdir(d) for d in dirs.values())
    proc.kill()
    proc.wait()
    for _ in range(500):
        if not any(os.path.exists(d) for d in dirs.values()):
            break
        select.select([], [], [], 0.01)
    assert not any(os.path.exists(d) for d in dirs.values())
