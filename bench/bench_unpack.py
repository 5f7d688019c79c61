"""Time puller's unpack against umoci unpack and tar -xzf (per layer), side by side.

Two images: ~40 MB of the host's Debian files (one layer, gzip) and a many-small-files
layer (20,000 files). Each tool runs --runs times (default 3) into a fresh directory; the
medians are printed with ratios to umoci and to tar. Run as root (umoci and tar then apply
ownership, like puller). Usage: ``python bench/bench_unpack.py [--runs N] [--cli]``.
"""
from __future__ import annotations

import argparse
import gzip
import os
import resource
import io
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import byte_compile
from fixtures.distro import distro_tar, small_files_tar
from fixtures.images import build_image, write_oci_layout
from puller.layer.applier import remove_tree
from puller.unpack import unpack


def cpu_now() -> float:
    """CPU seconds (user + system) of this process and its finished children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def rounds(tools: dict, runs: int, cleanup) -> dict[str, tuple[float, float]]:
    """Run the tools in turn, ``runs`` rounds, so that load on a shared machine hits each
    alike; return median wall and CPU seconds per tool."""
    wall: dict[str, list[float]] = {k: [] for k in tools}
    cpu: dict[str, list[float]] = {k: [] for k in tools}
    for _ in range(runs):
        for name, fn in tools.items():
            os.sync()
            c0, t0 = cpu_now(), time.perf_counter()
            fn()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(cpu_now() - c0)
            cleanup()
    return {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in tools}


def bench_image(name: str, tars: list[bytes], work: Path, runs: int, cli: bool) -> None:
    image = build_image(tars, fmt="oci", compression="gzip")
    layout = write_oci_layout(work / f"{name}-layout", {"bench": image})
    blobs = [layout / "blobs/sha256" / d.split(":")[1] for d in image.layer_digests]
    out = work / "out"

    def clean() -> None:
        if out.exists():
            remove_tree(out)

    def puller() -> None:
        if cli:
            exe = Path(sys.executable).with_name("puller")
            subprocess.run([str(exe), "unpack", "-q", "--layout", f"{layout}:bench", str(out)],
                           check=True, capture_output=True)
        else:
            unpack([(lambda p=p: open(p, "rb")) for p in blobs], image.diff_ids, out)

    def umoci() -> None:
        subprocess.run(["umoci", "unpack", "--image", f"{layout}:bench", str(out)],
                       check=True, capture_output=True)

    def tar() -> None:
        out.mkdir()
        for blob in blobs:
            subprocess.run(["tar", "-xzf", str(blob), "-C", str(out)], check=True)

    size = sum(len(t) for t in tars)
    res = rounds({"puller": puller, "umoci": umoci, "tar": tar}, runs, clean)
    (pw, pc), (uw, uc), (tw, tc) = res["puller"], res["umoci"], res["tar"]
    print(f"{name:12s} {size / 1e6:5.1f} MB  wall: puller {pw:6.2f}s umoci {uw:6.2f}s "
          f"tar -xzf {tw:6.2f}s | puller {pw / uw:.2f}x umoci, {pw / tw:.2f}x tar")
    print(f"{'':12s} {'':8s}  cpu:  puller {pc:6.2f}s umoci {uc:6.2f}s "
          f"tar -xzf {tc:6.2f}s | puller {pc / uc:.2f}x umoci, {pc / tc:.2f}x tar")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cli", action="store_true", help="time `puller unpack --layout`")
    args = ap.parse_args()
    byte_compile()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; medians of {args.runs} interleaved rounds")
    with tempfile.TemporaryDirectory(prefix="puller-bench-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        distro = distro_tar(work)
        bench_image("debian-40MB", [distro], work, args.runs, args.cli)
        bench_image("20k-files", [small_files_tar(20_000)], work, args.runs, args.cli)
        inflate = gzip.compress(distro, 6)
        start = time.perf_counter()
        from puller.layer.reader import LayerReader
        LayerReader(io.BytesIO(inflate)).finish()
        print(f"read+inflate+hash only (debian): {time.perf_counter() - start:.2f}s")


if __name__ == "__main__":
    main()
