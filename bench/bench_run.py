"""Warm ``pull-and-run IMAGE /bin/true`` against the unshare+chroot floor (and ch-run,
udocker when installed): medians of N runs each, printed as ratios to the floor.

    .venv/bin/python bench/bench_run.py [-n 15] [--image REF --cache DIR]

Without ``--image`` it starts the test registry of ``fixtures/`` on 127.0.0.1, pushes the
catalog's ``library/alpine:3.10`` (a busybox userland), pulls it once into a temporary
cache (cold, not timed), then times the warm path. If the registry binary is missing it
falls back to calling the runner directly on a ``fixtures.rootfs`` busybox rootfs, and
says so. The rows run interleaved, so load on the machine hits them alike.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._common import byte_compile  # noqa: E402 - after the path is set


def _time(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall time, and CPU time (user + sys of the whole process tree: steadier under load)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, check=False, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({done.returncode}): {done.stderr.decode()[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu


def _setup_registry(work: Path) -> tuple[str, Path, object] | None:
    from fixtures.catalog import catalog
    from fixtures.push import Pusher
    from fixtures.registry import RegistryProcess, RegistryStartError
    try:
        reg = RegistryProcess.start(work / "registry")
    except RegistryStartError as e:
        print(f"note: {e}")
        return None
    images = {k: v for k, v in catalog().items() if k == "library/alpine:3.10"}
    Pusher(reg.url).push_all(images)
    return f"{reg.host}/library/alpine:3.10", work / "cache", reg


def _rootfs_of(cache: Path) -> Path:
    roots = [p for p in (cache / "rootfs").iterdir() if p.is_dir()]
    return roots[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=15, help="runs per row (>= 10)")
    ap.add_argument("--image")
    ap.add_argument("--cache")
    args = ap.parse_args()
    n = max(args.n, 10)
    byte_compile()
    work = Path(tempfile.mkdtemp(prefix="puller-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULLER_")}
    env["TMPDIR"] = str(work)
    reg = None
    rows: dict[str, list[str]] = {}
    try:
        pull_and_run = str(REPO / ".venv/bin/pull-and-run")
        if not os.path.exists(pull_and_run):
            pull_and_run_cmd = [sys.executable, "-m", "puller.cli.run"]
        else:
            pull_and_run_cmd = [pull_and_run]
        image, cache = args.image, Path(args.cache) if args.cache else None
        if image is None:
            found = _setup_registry(work)
            if found is not None:
                image, cache, reg = found
        if image is not None and cache is not None:
            base = [*pull_and_run_cmd, "-q", "--cache", str(cache), image]
            _time([*base, "/bin/true"], env)  # the cold pull, not timed
            rows["pull-and-run IMAGE /bin/true (warm)"] = [*base, "/bin/true"]
            rootfs = _rootfs_of(cache)
        else:
            print("note: no image/registry: timing the runner directly on a fixtures rootfs "
                  "(python -m runner), not the CLI")
            from fixtures.rootfs import build_rootfs
            rootfs = build_rootfs(work / "rootfs")
        import json
        spec = json.dumps({"rootfs": str(rootfs), "argv": ["/bin/true"]})
        rows["runner direct (python -m runner)"] = [sys.executable, "-m", "runner", spec]
        rows["floor: unshare ... chroot"] = [
            "unshare", "--mount", "--uts", "--ipc", "--net", "--pid", "--fork", "--user",
            "--map-root-user", "chroot", str(rootfs), "/bin/true"]
        if shutil.which("ch-run"):
            rows["ch-run"] = ["ch-run", str(rootfs), "--", "/bin/true"]
        else:
            print("note: ch-run (charliecloud) not installed: row skipped")
        if shutil.which("udocker"):
            print("note: udocker installed but needs its own image store: row skipped")
        else:
            print("note: udocker not installed: row skipped")
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in rows}
        for _ in range(n):  # interleaved
            for name, cmd in rows.items():
                times[name].append(_time(cmd, {**env, "PYTHONPATH": str(REPO)}))
        floor_name = "floor: unshare ... chroot"
        floor = statistics.median(t for t, _ in times[floor_name])
        floor_cpu = statistics.median(c for _, c in times[floor_name])
        load = os.getloadavg()[0]
        print(f"median of {n} runs each; floor = {floor * 1000:.1f} ms wall, "
              f"{floor_cpu * 1000:.1f} ms cpu; load average {load:.2f} on {os.cpu_count()} CPUs")
        for name, values in times.items():
            wall = statistics.median(t for t, _ in values)
            cpu = statistics.median(c for _, c in values)
            print(f"  {name:38s} {wall * 1000:7.1f} ms {wall / floor:6.1f}x floor   "
                  f"cpu {cpu * 1000:6.1f} ms")
    finally:
        if reg is not None:
            reg.stop()  # type: ignore[attr-defined]
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
