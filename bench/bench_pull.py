"""Pull benchmarks, side by side with skopeo in one run, against one local registry.

Rows (medians of --runs runs, default 7; the sides alternate run by run):
  cold pull   puller pull into an empty cache   vs  skopeo copy docker://... oci:EMPTY
  warm pull   puller pull of an unchanged tag   vs  skopeo copy again into the same layout
  resume      puller pull through a link that drops the connection twice: bytes fetched
              relative to the image size, and time relative to an uninterrupted pull
  cold unpack puller unpack into an empty cache (pull and apply overlap)
              vs  skopeo copy docker://... oci:EMPTY + umoci unpack

Usage: .venv/bin/python bench/bench_pull.py [--runs N]
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import byte_compile, registry_sized_image
from fixtures.netfaults import ThrottleProxy
from fixtures.push import Pusher
from fixtures.registry import RegistryProcess

PULLER = str(Path(sys.executable).parent / "puller")


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    byte_compile()
    work = Path(tempfile.mkdtemp(prefix="bench-pull-"))
    reg = RegistryProcess.start(work / "registry")
    try:
        img = registry_sized_image(work)
        size = sum(len(b) for b in img.blobs.values()) + len(img.manifest)
        Pusher(reg.url).push("library/bench", "1", img)
        ref = f"{reg.host}/library/bench:1"
        print(f"image: {size / 1e6:.1f} MB in {len(img.layers)} layers")

        cold_p, cold_s, warm_p, warm_s = [], [], [], []
        for i in range(args.runs):
            cache, oci = work / f"c{i}", work / f"o{i}"
            cold_p.append(timed([PULLER, "pull", "-q", "--cache", str(cache), ref]))
            cold_s.append(timed(["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{ref}", f"oci:{oci}:x"]))
            warm_p.append(timed([PULLER, "pull", "-q", "--cache", str(cache), ref]))
            warm_s.append(timed(["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{ref}", f"oci:{oci}:x"]))
            shutil.rmtree(cache)
            shutil.rmtree(oci)
        print(f"cold pull   puller {med(cold_p):6.3f} s   skopeo {med(cold_s):6.3f} s   ratio {med(cold_p) / med(cold_s):.2f}x  (target <= 1.0x)")
        print(f"warm pull   puller {med(warm_p):6.3f} s   skopeo {med(warm_s):6.3f} s   ratio {med(warm_p) / med(warm_s):.2f}x  (target <= 0.15 s)")

        cu_p, cu_s = [], []
        for i in range(args.runs):
            cu_p.append(timed([PULLER, "unpack", "-q", "--cache", str(work / f"uc{i}"), ref, str(work / f"ur{i}")]))
            t = time.perf_counter()
            subprocess.run(["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{ref}", f"oci:{work}/uo{i}:x"],
                           check=True, capture_output=True)
            subprocess.run(["umoci", "unpack", "--image", f"{work}/uo{i}:x", str(work / f"ub{i}")],
                           check=True, capture_output=True)
            cu_s.append(time.perf_counter() - t)
            for d in (f"uc{i}", f"ur{i}", f"uo{i}", f"ub{i}"):
                shutil.rmtree(work / d, ignore_errors=True)
        print(f"cold unpack puller {med(cu_p):6.3f} s   skopeo+umoci {med(cu_s):6.3f} s   ratio {med(cu_p) / med(cu_s):.2f}x  (target <= 0.8x)")

        port = int(reg.host.rsplit(":", 1)[1])
        plain, dropped, ratios = [], [], []
        biggest = max(len(b) for b in img.layers)
        for i in range(args.runs):
            with ThrottleProxy(port) as proxy:
                plain.append(timed([PULLER, "pull", "-q", "--cache", str(work / f"p{i}"),
                                    f"{proxy.host}/library/bench:1"]))
            with ThrottleProxy(port, drop_after=biggest // 3, drops=2) as proxy:
                dropped.append(timed([PULLER, "pull", "-q", "--jobs", "1", "--retry-delay", "0.05",
                                      "--cache", str(work / f"d{i}"), f"{proxy.host}/library/bench:1"]))
                ratios.append(proxy.bytes_down / size)
            shutil.rmtree(work / f"p{i}")
            shutil.rmtree(work / f"d{i}")
        print(f"resume      2 dropped connections: bytes {med(ratios):.3f}x the image (target <= 1.05), "
              f"time {med(dropped) / med(plain):.2f}x an uninterrupted pull")
    finally:
        reg.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
