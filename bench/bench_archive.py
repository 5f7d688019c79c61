"""``puller save`` / ``puller load`` of a ~40 MB image against ``skopeo copy`` between the
same formats, side by side: medians of N runs each, printed as ratios to skopeo.

    .venv/bin/python bench/bench_archive.py [-n 5] [--mb 40]

The image is built from host files (``/usr/lib``, ``/usr/bin``...: real binaries, which
compress like real images do) in three gzip layers, written as an OCI layout and loaded
into a fresh cache (not timed). Rows, each timing both tools as subprocesses:

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


def build_cache(work: Path, mb: int) -> Path:
    from fixtures.images import F, build_image, tar_layer, write_oci_layout
    from puller.archive import load
    from puller.store import Store
    files = host_files(mb << 20)
    thirds = [files[i::3] for i in range(3)]
    layers = [tar_layer(*[F(str(p).lstrip("/"), p.read_bytes(), 0o755) for p in part])
              for part in thirds]
    image = build_image(layers, fmt="oci")
    layout = write_oci_layout(work / "layout", {REF: image})
    cache = work / "cache"
    load(layout, Store(cache))
    size = sum(len(t) for t in layers)
    print(f"image: {len(files)} host files, {size / 1e6:.1f} MB uncompressed, "
          f"{sum(len(b) for b in image.layers) / 1e6:.1f} MB gzip, 3 layers")
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
    ap.add_argument("--mb", type=int, default=40, help="uncompressed image size in MB")
    args = ap.parse_args()
    if not shutil.which("skopeo"):
        print("skopeo is not installed: nothing to compare with")
        return 1
    import compileall
    compileall.compile_dir(str(REPO / "puller"), quiet=1)
    from puller.cli.archive import _RUN as RUN
    from puller.cli.archive import build_parser
    n = max(3, args.n)
    work = Path(tempfile.mkdtemp(prefix="bench-archive-"))
    try:
        cache = build_cache(work, args.mb)
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
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
