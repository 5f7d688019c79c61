"""Resume across restarts (SIGKILL in the middle of a big blob) and many pulls at once."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter

from fixtures import cli
from fixtures.images import F, build_image, tar_layer
from fixtures.netfaults import ThrottleProxy
from puller.store import Store

BIG = build_image([tar_layer(F("data/blob", random.Random(3).randbytes(6 * 1024 * 1024)))])
BIG_SIZE = sum(len(b) for b in BIG.blobs.values()) + len(BIG.manifest)


def _port(reg) -> int:
    return int(reg.host.rsplit(":", 1)[1])


def test_sigkill_mid_blob_then_resume(registry_factory, cache_dir):
    reg = registry_factory({"library/big:1": BIG})
    layer = BIG.layer_digests[0]
    with ThrottleProxy(_port(reg), rate=1_500_000) as proxy:
        ref = f"{proxy.host}/library/big:1"
        proc = subprocess.Popen([str(cli.BIN / "puller"), "pull", "-q", "--cache", str(cache_dir), ref],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        partial = Store(cache_dir).partial_path(layer)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if partial.exists() and partial.stat().st_size > len(BIG.layers[0]) * 0.4:
                break
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kept = partial.stat().st_size
        assert kept > 0 and not Store(cache_dir).has_blob(layer)
        assert not any((cache_dir / "blobs" / "sha256").glob(layer[7:] + "*"))
        proxy.rate = 0
        p = cli.run("pull", "--cache", str(cache_dir), "--json", ref)
        assert p.returncode == 0, p.stderr
        # Everything fetched over both runs, headers included, stays within 5% of the image.
        assert proxy.bytes_down <= 1.05 * BIG_SIZE, (proxy.bytes_down, BIG_SIZE)
        assert any("Range" in r or "blobs/" + layer in r for r in proxy.requests)
    store = Store(cache_dir)
    assert store.read_blob(layer, max_size=1 << 30) == BIG.layers[0]
    assert not partial.exists()


def _pull_many(cache: str, refs: list[str]) -> int:
    for ref in refs:
        p = subprocess.run([str(cli.BIN / "puller"), "pull", "-q", "--cache", cache, ref],
                           capture_output=True, text=True)
        if p.returncode != 0:
            sys.stderr.write(p.stderr)
            return p.returncode
    return 0


def test_eight_processes_share_one_cache(registry, cache_dir):
    names = ["library/shared-a:1", "library/shared-b:1", "library/alpine:3.10", "library/busybox:multi",
             "library/mixed:1", "library/config:1", "library/alpine:3.11"]
    with ThrottleProxy(_port(registry), rate=4_000_000) as proxy:
        refs = [f"{proxy.host}/{n}" for n in names]
        rnd = random.Random(11)
        plans = [rnd.sample(refs, 4) for _ in range(8)]
        procs = [subprocess.Popen([sys.executable, "-c",
                                   "import sys, json; from tests.test_resume import _pull_many; "
                                   "sys.exit(_pull_many(sys.argv[1], json.loads(sys.argv[2])))",
                                   str(cache_dir), __import__("json").dumps(plan)],
                                  cwd=os.path.dirname(os.path.dirname(__file__)))
                 for plan in plans]
        assert [p.wait(180) for p in procs] == [0] * 8
        blob_gets = Counter(r.split()[1].rsplit("/", 1)[1] for r in proxy.requests
                            if r.startswith("GET ") and "/blobs/" in r)
    assert blob_gets and max(blob_gets.values()) == 1, blob_gets.most_common(3)
    store = Store(cache_dir)
    wanted = {r for plan in plans for r in plan}
    assert {e.name for e in store.refs()} == wanted
    for d in store.iter_blobs():
        store.read_blob(d, max_size=1 << 30)
    assert list((cache_dir / "tmp").iterdir()) == []
