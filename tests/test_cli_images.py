"""``puller images``, ``tag`` and ``rmi``: refs come and go, blobs stay until prune."""
from __future__ import annotations

import json

from fixtures import cli
from puller.store import Store


def test_tag_and_rmi(registry, cache_dir):
    src = f"{registry.host}/library/shared-a:1"
    assert cli.run("pull", "-q", "--cache", str(cache_dir), src).returncode == 0
    p = cli.run("tag", "--cache", str(cache_dir), src, "example.com/team/base:v1")
    assert p.returncode == 0, p.stderr
    rows = {r["ref"]: r for r in json.loads(cli.run("images", "--cache", str(cache_dir), "--json").stdout)}
    assert set(rows) == {src, "example.com/team/base:v1"}
    assert rows[src]["digest"] == rows["example.com/team/base:v1"]["digest"]
    blobs = set(Store(cache_dir).iter_blobs())
    p = cli.run("rmi", "--cache", str(cache_dir), src)
    assert p.returncode == 0 and "Untagged" in p.stdout
    assert [r["ref"] for r in json.loads(cli.run("images", "--cache", str(cache_dir), "--json").stdout)] == \
        ["example.com/team/base:v1"]
    assert set(Store(cache_dir).iter_blobs()) == blobs  # the blobs stay until prune
    p = cli.run("rmi", "--cache", str(cache_dir), src)
    assert p.returncode == 1 and "no such image" in p.stderr
    p = cli.run("tag", "--cache", str(cache_dir), "example.com/team/base:v1", "x.io/a@sha256:" + "a" * 64)
    assert p.returncode == 2 and "digest" in p.stderr
    # The new name is a real image: it runs, unpacks and inspects offline.
    p = cli.run("inspect", "--cache", str(cache_dir), "--offline", "--json", "example.com/team/base:v1")
    assert p.returncode == 0 and json.loads(p.stdout)["Cached"] is True


def test_images_of_an_empty_cache(cache_dir):
    assert json.loads(cli.run("images", "--cache", str(cache_dir), "--json").stdout) == []
    assert cli.run("images", "--cache", str(cache_dir)).stdout.startswith("IMAGE")
