"""Time ``puller layers`` and ``puller diff`` against ``tar -tzf`` over the same layers.

Two distribution-like images (~40 MB each, uncompressed) built from the host's files:
a shared base layer (Python's standard library and Perl's modules) and one upper layer each
(CMake's modules / MIME and X11 data), the uppers also rewriting and whiting out files of
the base. They are written as an OCI layout, so those runs are cold (puller never writes
its scan cache into a user's layout); the "warm" rows use the same images loaded into a
puller cache, where a first run kept each layer's scan; the "lean" rows skip typer's
start-up (``python -m puller.cli.compare``, the argparse path). Baselines: ``tar -tzf`` over A's
layers (for ``layers``) and over the three distinct layers (for ``diff``). puller and tar
runs alternate, so load on the machine hits both alike; medians of --runs (>= 3, default 5).

Usage: ``python bench/bench_compare.py [--runs N]``. Prints the ratios (target <= 2x).
"""
from __future__ import annotations

import argparse
import io
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import byte_compile
from fixtures.images import build_image, write_oci_layout

PULLER = [str(Path(sys.executable).parent / "puller")]
# As installed: byte-code cached (a PYTHONDONTWRITEBYTECODE shell would compile every run).
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
BASE = ["usr/lib/python3.11", "usr/share/perl"]
EXCLUDE = ["__pycache__", "usr/lib/python3.11/test", "usr/lib/python3.11/idlelib",
           "usr/lib/python3.11/lib2to3", "usr/lib/python3.11/config-3.11-x86_64-linux-gnu"]


def host_tar(paths: list[str]) -> bytes:
    cmd = ["tar", "-C", "/", "-cf", "-", *(f"--exclude={e}" for e in EXCLUDE)]
    return subprocess.run(cmd + [p for p in paths if Path("/", p).exists()],
                          check=True, capture_output=True).stdout


def with_changes(tar: bytes, files: dict[str, bytes], whiteouts: list[str]) -> bytes:
    """``tar`` plus rewritten files and whiteouts (entries appended to the archive)."""
    buf = io.BytesIO(tar)
    with tarfile.open(fileobj=buf, mode="a") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        for path in whiteouts:
            head, _, leaf = path.rpartition("/")
            t.addfile(tarfile.TarInfo(f"{head}/.wh.{leaf}"), io.BytesIO(b""))
    return buf.getvalue()


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def once(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run: CPU time is what other load disturbs least."""
    start, cpu = time.perf_counter(), _cpu()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV,
                          check=False)  # diff exits 1 when the images differ
    elapsed = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.decode()[:300]}")
    return elapsed, _cpu() - cpu


def tar_list(blobs: list[Path]) -> list[str]:
    return ["sh", "-c", "; ".join(f"tar -tzf {b} > /dev/null" for b in blobs)]


def compare(ours: list[str], baseline: list[str], runs: int) -> list[float]:
    """Medians of ``runs`` alternating runs, after one warm-up of each (page cache, .pyc):
    [our wall, tar wall, our CPU, tar CPU]."""
    once(baseline)
    once(ours)
    a, b = [], []
    for _ in range(runs):
        b.append(once(baseline))
        a.append(once(ours))
    return [statistics.median(x[k] for x in side) for k in (0, 1) for side in (a, b)]


def row(name: str, blobs: int, m: list[float]) -> None:
    print(f"{name:<18} {m[0]:5.2f} s  tar -tzf {blobs} layers {m[1]:5.2f} s  "
          f"{m[0] / m[1]:4.2f}x tar   (CPU {m[2]:5.2f} s vs {m[3]:5.2f} s: "
          f"{m[2] / m[3]:4.2f}x)")


def warm_cache(layout: Path, root: Path) -> str | None:
    """Load the layout into a puller cache and scan both images once (None: no loader)."""
    try:
        from puller.archive import load
    except ImportError:
        return None
    from puller.store import Store
    load(layout, Store(root).ensure())
    for cmd in (["layers", "a"], ["diff", "a", "b"]):
        subprocess.run(PULLER + cmd + ["--offline", "--cache", str(root)],
                       stdout=subprocess.DEVNULL, check=False)
    return str(root)


def engine_rows(layout: Path, rows: list, runs: int) -> None:
    """The same work in-process (no interpreter and CLI start-up), to show where time goes."""
    from puller.compare import analyse, diff
    from puller.compare_sources import from_cached
    from puller.image import resolve
    from puller.platform import parse_platform
    from puller.store import Store
    store = Store(layout)
    refs = {r.name: r for r in store.refs()}
    a, b = (from_cached(store, resolve(store, refs[n], parse_platform(None)), n)
            for n in ("a", "b"))
    for name, fn, blobs in (("  engine layers A", lambda: analyse(a), rows[0][2]),
                            ("  engine diff A B", lambda: diff(a, b), rows[1][2])):
        ours, tar = [], []
        for _ in range(runs):
            tar.append(once(tar_list(blobs)))
            start, cpu = time.perf_counter(), time.process_time()
            fn()
            ours.append((time.perf_counter() - start, time.process_time() - cpu))
        row(name, len(blobs), [statistics.median(x[k] for x in side)
                               for k in (0, 1) for side in (ours, tar)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    runs = max(3, parser.parse_args().runs)
    byte_compile()
    base = host_tar(BASE)
    upper_a = with_changes(host_tar(["usr/share/cmake-3.25"]),
                           {"usr/lib/python3.11/os.py": b"# replaced\n"}, [])
    upper_b = with_changes(host_tar(["usr/share/mime", "usr/share/X11"]), {},
                           ["usr/lib/python3.11/email", "usr/share/perl/5.36/unicore"])
    a, b = build_image([base, upper_a], fmt="oci"), build_image([base, upper_b], fmt="oci")
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
        layout = write_oci_layout(Path(tmp) / "layout", {"a": a, "b": b})
        blob = {d: layout / "blobs" / "sha256" / d.split(":")[1]
                for d in a.layer_digests + b.layer_digests}
        mb = lambda img: sum(len(t) for t in (base, upper_a if img is a else upper_b)) / 1e6
        print(f"images: A {mb(a):.1f} MB, B {mb(b):.1f} MB uncompressed "
              f"(base layer {len(base) / 1e6:.1f} MB shared); {runs} runs each")
        rows = [
            ("puller layers A", PULLER + ["layers", f"oci:{layout}:a"],
             [blob[d] for d in a.layer_digests]),
            ("puller diff A B", PULLER + ["diff", f"oci:{layout}:a", f"oci:{layout}:b"],
             [blob[d] for d in dict.fromkeys(a.layer_digests + b.layer_digests)]),
        ]
        lean = [sys.executable, "-m", "puller.cli.compare"]  # what entry.py may dispatch to
        rows += [("  lean layers A", lean + ["layers", f"oci:{layout}:a"], rows[0][2]),
                 ("  lean diff A B", lean + ["diff", f"oci:{layout}:a", f"oci:{layout}:b"],
                  rows[1][2])]
        cache = warm_cache(layout, Path(tmp) / "cache")
        if cache is not None:  # the same images in a puller cache: scans are kept there
            rows += [
                ("  warm layers A", PULLER + ["layers", "a", "--offline", "--cache", cache],
                 rows[0][2]),
                ("  warm diff A B", PULLER + ["diff", "a", "b", "--offline", "--cache", cache],
                 rows[1][2]),
            ]
        for name, cmd, blobs in rows:
            row(name, len(blobs), compare(cmd, tar_list(blobs), runs))
        engine_rows(layout, rows, runs)


if __name__ == "__main__":
    main()
