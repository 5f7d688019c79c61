"""``puller save`` / ``puller load`` of a ~40 MB image against ``skopeo copy`` between the
same formats, side by side: medians of N runs each, printed as ratios to skopeo.

    .venv/bin/python bench/bench_archive.py [-n 5] [--mb 40]

Two images, each written as an OCI layout and loaded into a fresh cache (not timed):
the pull bench's image, ~40 MB as a registry counts it (compressed: a Debian tree, the
Python standard library, 17 MB of incompressible data), and ``--mb`` MB (uncompressed) of
host binaries (``/usr/lib``, ``/usr/bin``...) in three gzip layers, 16 MB compressed, the
case with the most inflating per byte. Rows, each timing both tools as subprocesses:

* save docker: ``puller save`` vs ``skopeo copy oci:CACHE:REF docker-archive:OUT``
* save oci:    ``puller save --format oci`` vs ``skopeo copy oci:CACHE:REF oci-archive:OUT``
* load docker: ``puller load`` into an empty cache vs ``skopeo copy docker-archive:IN oci:EMPTY``
  (both gzip the plain layers again)
* load oci:    ``puller load`` vs ``skopeo copy oci-archive:IN oci:EMPTY``

The sides of a row alternate run by run, so load on the machine hits them alike; puller's
sources are byte-compiled first, as an installed package's are (a PYTHONDONTWRITEBYTECODE
shell would compile every module on every run). Columns: ``puller`` is the console script as
installed, whose ``entry.py`` hands ``save`` and ``load`` to ``puller.cli.archive.main``
(argparse) before typer is ever imported; ``argparse`` runs that same ``main`` through
``python -c``, without the console script (which also skips the interpreter's teardown: the
two columns differ by that alone); ``in-proc`` is the command's work inside this process,
imports warm. skopeo does not inflate an OCI
archive's layers to check their DiffIDs; ``puller load`` does (every layer in one pass, the
layers side by side), so that row keeps a cost skopeo does not pay.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._common import byte_compile, registry_sized_image  # noqa: E402 - after the path is set
PULLER = str(Path(sys.executable).parent / "puller")
REF = "docker.io/bench/host:1"
# what ``puller save|load ...`` runs once entry.py dispatches these commands before typer
LEAN = "import sys; from puller.cli.archive import main; sys.exit(main(sys.argv[1], sys.argv[2:]))"


def host_files(limit: int) -> list[Path]:
    """Regular files from the host, largest directories first, up to ``limit`` bytes."""
    picked, total = [], 0
    for top in ("/usr/lib/x86_64-linux-gnu", "/usr/lib", "/usr/bin", "/usr/share"):
        for dirpath, _, files in os.walk(top):
            for name in sorted(files):
                p = Path(dirpath) / name
                try:
                    if not p.is_file() or p.is_symlink() or p.stat().st_size > 8 << 20:
                        continue
                    size = p.stat().st_size
                except OSError:
                    continue
                if not os.access(p, os.R_OK):
                    continue
                picked.append(p)
                total += size
                if total >= limit:
                    return picked
    return picked


def host_image(work: Path, mb: int):
    """``mb`` MB of host binaries (uncompressed) in three layers: the most inflating per byte."""
    from fixtures.images import F, build_image, tar_layer
    files = host_files(mb << 20)
    thirds = [files[i::3] for i in range(3)]
    layers = [tar_layer(*[F(str(p).lstrip("/"), p.read_bytes(), 0o755) for p in part])
              for part in thirds]
    return f"{len(files)} host files", build_image(layers, fmt="oci")


def build_cache(work: Path, what: str, image) -> Path:
    from fixtures.images import write_oci_layout
    from puller.archive import load
    from puller.store import Store
    layout = write_oci_layout(work / "layout", {REF: image})
    cache = work / "cache"
    load(layout, Store(cache))
    print(f"image: {what}, {sum(len(b) for b in image.layers) / 1e6:.1f} MB gzip "
          f"(as a registry counts it), {len(image.layers)} layers")
    return cache


def timed(cmd: list[str], before=None) -> float:
    if before:
        before()
    start = time.perf_counter()
    done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed ({done.returncode}): {done.stderr.decode()[-500:]}")
    return elapsed


def fresh(*paths: Path):
    def reset() -> None:
        for p in paths:
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    return reset


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=5, help="runs per side of a row (>= 3)")
    ap.add_argument("--mb", type=int, default=40, help="uncompressed size of the host-files image in MB")
    args = ap.parse_args()
    if not shutil.which("skopeo"):
        print("skopeo is not installed: nothing to compare with")
        return 1
    byte_compile()
    from puller.cli.archive import _RUN as RUN
    from puller.cli.archive import build_parser
    n = max(3, args.n)
    for make in (lambda w: ("the pull bench's image (a Debian tree, Python's stdlib, 17 MB of "
                            "incompressible data)", registry_sized_image(w, fmt="oci")),
                 lambda w: host_image(w, args.mb)):
        work = Path(tempfile.mkdtemp(prefix="bench-archive-"))
        try:
            bench_image(work, *make(work), n, RUN, build_parser)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def bench_image(work: Path, what: str, image, n: int, RUN, build_parser) -> None:
    cache = build_cache(work, what, image)
    sk = ["skopeo", "--insecure-policy", "copy", "-q"]
    docker_in, oci_in = work / "in.docker.tar", work / "in.oci.tar"
    subprocess.run([PULLER, "save", "--cache", str(cache), "-q", REF, "-o", str(docker_in)], check=True)
    subprocess.run([PULLER, "save", "--cache", str(cache), "-q", "--format", "oci", REF,
                    "-o", str(oci_in)], check=True)
    out, empty = work / "out.tar", work / "empty"
    rows = [
        ("save docker", ["save", "--cache", str(cache), "-q", REF, "-o", str(out)],
         sk + [f"oci:{cache}:{REF}", f"docker-archive:{out}:{REF}"], fresh(out)),
        ("save oci", ["save", "--cache", str(cache), "-q", "--format", "oci", REF, "-o", str(out)],
         sk + [f"oci:{cache}:{REF}", f"oci-archive:{out}:{REF}"], fresh(out)),
        ("load docker", ["load", "--cache", str(empty), "-q", "-i", str(docker_in)],
         sk + [f"docker-archive:{docker_in}", f"oci:{empty}:{REF}"], fresh(empty)),
        ("load oci", ["load", "--cache", str(empty), "-q", "-i", str(oci_in)],
         sk + [f"oci-archive:{oci_in}:{REF}", f"oci:{empty}:{REF}"], fresh(empty)),
    ]
    print(f"medians of {n} runs each (lower is better; target <= 1.0x); ratios to skopeo")
    print(f"{'row':<12} {'skopeo':>8} {'puller':>8} {'ratio':>6} {'argparse':>9} {'ratio':>6}"
          f" {'in-proc':>8} {'ratio':>6}")
    for name, args_, theirs_cmd, reset in rows:
        times: dict[str, list[float]] = {"skopeo": [], "puller": [], "lean": [], "call": []}
        for _ in range(n):
            times["skopeo"].append(timed(theirs_cmd, reset))
            times["puller"].append(timed([PULLER, *args_], reset))
            times["lean"].append(timed([sys.executable, "-c", LEAN, *args_], reset))
            reset()
            start = time.perf_counter()
            ns = build_parser(args_[0]).parse_args(args_[1:])
            RUN[args_[0]](ns)
            times["call"].append(time.perf_counter() - start)
        sko, ours, lean, call = (statistics.median(times[k]) for k in ("skopeo", "puller", "lean", "call"))
        print(f"{name:<12} {sko:7.3f}s {ours:7.3f}s {ours / sko:5.2f}x {lean:8.3f}s {lean / sko:5.2f}x"
              f" {call:7.3f}s {call / sko:5.2f}x")


if __name__ == "__main__":
    sys.exit(main())
