"""Time puller's unpack against umoci unpack and tar -xzf (per layer), side by side.

Two images: ~40 MB of the host's Debian files (one layer, gzip) and a many-small-files
layer (20,000 files). Each tool runs --runs times (default 3) into a fresh directory; the
medians are printed with ratios to umoci and to tar. Run as root (umoci and tar then apply
ownership, like puller). Usage: ``python bench/bench_unpack.py [--runs N] [--cli]``.
"""
from __future__ import annotations

import argparse
import gzip
import io
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fixtures.distro import distro_tar, small_files_tar
from fixtures.images import build_image, write_oci_layout
from puller.layer.applier import remove_tree
from puller.unpack import unpack


def timed(fn, runs: int, cleanup) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        cleanup()
    return statistics.median(times)


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
            subprocess.run([sys.executable, "-m", "puller.cli.entry", "unpack", "--layout",
                            f"{layout}:bench", str(out)], check=True, capture_output=True)
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
    t_p, t_u, t_t = (timed(f, runs, clean) for f in (puller, umoci, tar))
    print(f"{name:12s} {size / 1e6:6.1f} MB  puller {t_p:6.2f}s  umoci {t_u:6.2f}s  "
          f"tar -xzf {t_t:6.2f}s  |  puller {t_p / t_u:.2f}x umoci, {t_p / t_t:.2f}x tar")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cli", action="store_true", help="time `puller unpack --layout`")
    args = ap.parse_args()
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
