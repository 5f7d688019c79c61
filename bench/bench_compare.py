"""Time ``puller layers`` and ``puller diff`` against ``tar -tzf`` over the same layers.

Two distribution-like images (~40 MB each, uncompressed) built from the host's files:
a shared base layer (Python's standard library and Perl's modules) and one upper layer each
(CMake's modules / MIME and X11 data), the uppers also rewriting and whiting out files of
the base. They are written as an OCI layout, so every run is cold: puller never writes its
scan cache into a user's layout. Baselines: ``tar -tzf`` over A's layers (for ``layers``)
and over the three distinct layers (for ``diff``). Medians of --runs (default 3) runs.

Usage: ``python bench/bench_compare.py [--runs N]``. Prints the ratios (target <= 2x).
"""
from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fixtures.images import build_image, write_oci_layout

PULLER = [str(Path(sys.executable).parent / "puller")]
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


def median_time(cmd: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              check=False)  # diff exits 1 when the images differ
        times.append(time.perf_counter() - start)
        if proc.returncode not in (0, 1):
            raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.decode()[:300]}")
    return statistics.median(times)


def tar_list(blobs: list[Path], runs: int) -> float:
    script = "; ".join(f"tar -tzf {b} > /dev/null" for b in blobs)
    return median_time(["sh", "-c", script], runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    runs = max(3, parser.parse_args().runs)
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
        for name, cmd, blobs in rows:
            ours, tar = median_time(cmd, runs), tar_list(blobs, runs)
            print(f"{name:<18} {ours:6.2f} s   tar -tzf {len(blobs)} layers {tar:6.2f} s   "
                  f"{ours / tar:4.2f}x tar")


if __name__ == "__main__":
    main()
