"""Push a cached image to a second real registry; skopeo and a fresh pull are the oracles."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import requests

from fixtures import cli
from fixtures.catalog import catalog
from puller.errors import NotCached, UsageError
from puller.platform import Platform
from puller.pull import pull
from puller.push import push
from puller.reference import parse as parse_ref
from puller.registry import RegistryOptions
from puller.store import Store

AMD64 = Platform("linux", "amd64")
OPTS = RegistryOptions.build(config={})


def _pull(ref: str, cache: Path, platform: Platform = AMD64):
    return pull(parse_ref(ref), store=Store(cache), platform=platform, options=OPTS)


def _push(cache: Path, src: str, dst: str | None = None, **kw):
    return push(Store(cache), parse_ref(src), parse_ref(dst) if dst else None, options=OPTS, **kw)


def _skopeo_inspect(ref: str, *extra: str) -> dict:
    out = subprocess.run(["skopeo", "inspect", "--tls-verify=false", *extra, f"docker://{ref}"],
                         check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


_FIELD = re.compile(r'http\.request\.(id|method|uri)=("[^"]*"|\S+)')


def _access_log(reg) -> list[tuple[str, str]]:
    """(method, uri) of each request a debug-level registry logged, once per request id."""
    seen: dict[str, tuple[str, str]] = {}
    for line in reg.log_path.read_text(errors="replace").splitlines():
        fields = {k: v.strip('"') for k, v in _FIELD.findall(line)}
        if {"id", "method", "uri"} <= fields.keys():
            seen.setdefault(fields["id"], (fields["method"], fields["uri"]))
    return list(seen.values())


def test_push_single_image_keeps_digest_and_pulls_back(registry, registry_factory, cache_dir, tmp_path):
    dest = registry_factory()
    src = f"{registry.host}/library/shared-a:1"
    pulled = _pull(src, cache_dir)
    res = _push(cache_dir, src, f"{dest.host}/copies/shared-a:v1")
    assert res.digest == pulled.digest == registry.images["library/shared-a:1"].digest
    assert res.uploaded == 3 and res.skipped == 0 and res.manifests == 1
    info = _skopeo_inspect(f"{dest.host}/copies/shared-a:v1")
    assert info["Digest"] == pulled.digest
    assert info["Layers"] == registry.images["library/shared-a:1"].layer_digests
    fresh = _pull(f"{dest.host}/copies/shared-a:v1", tmp_path / "fresh")
    assert fresh.digest == pulled.digest and fresh.downloaded_bytes > 0
    again = _push(cache_dir, src, f"{dest.host}/copies/shared-a:v1", jobs=1)
    assert (again.uploaded, again.skipped) == (0, 3)  # HEAD first, existing blobs skipped


def test_push_multi_arch_fetches_missing_children(registry, registry_factory, cache_dir, tmp_path):
    dest = registry_factory()
    src = f"{registry.host}/library/alpine:3.10"
    _pull(src, cache_dir)  # amd64 only: arm64 and the attestation are fetched by push
    res = _push(cache_dir, src, f"{dest.host}/library/alpine:3.10")
    expected = registry.images["library/alpine:3.10"]
    assert res.digest == expected.digest and res.manifests == 4 and not res.note
    info = _skopeo_inspect(f"{dest.host}/library/alpine:3.10", "--raw")
    assert sorted(m["digest"] for m in info["manifests"]) == sorted(c.digest for c in expected.children)
    arm = _skopeo_inspect(f"{dest.host}/library/alpine:3.10", "--override-arch", "arm64")
    assert arm["Architecture"] == "arm64"
    fresh = _pull(f"{dest.host}/library/alpine:3.10", tmp_path / "fresh", Platform("linux", "arm64"))
    assert fresh.digest == expected.digest and fresh.manifest_digest == expected.children[1].digest


def test_push_offline_with_missing_platforms_refuses_or_pushes_present_only(registry, registry_factory,
                                                                             cache_dir):
    dest = registry_factory()
    src = f"{registry.host}/library/busybox:latest"
    _pull(src, cache_dir)
    with pytest.raises(UsageError, match="--present-only"):
        _push(cache_dir, src, f"{dest.host}/x/busybox:1", offline=True)
    res = _push(cache_dir, src, f"{dest.host}/x/busybox:1", offline=True, present_only=True)
    assert res.digest != registry.images["library/busybox:latest"].digest
    assert "differs from the original" in res.note
    raw = _skopeo_inspect(f"{dest.host}/x/busybox:1", "--raw")
    assert [m["platform"]["architecture"] for m in raw["manifests"]] == ["amd64"]


def test_mount_within_one_registry_uploads_nothing(registry_factory, cache_dir):
    reg = registry_factory(log_level="debug")
    reg.images = {}
    from fixtures.push import Pusher
    image = catalog()["library/shared-b:1"]
    Pusher(reg.url).push("library/shared-b", "1", image)
    _pull(f"{reg.host}/library/shared-b:1", cache_dir)
    before = len(_access_log(reg))
    res = _push(cache_dir, f"{reg.host}/library/shared-b:1", f"{reg.host}/team/b:1")
    assert res.mounted == 3 and res.uploaded == 0
    new = _access_log(reg)[before:]
    assert [m for m, uri in new if m in ("PUT", "PATCH") and "/blobs/" in uri] == []
    assert sum(1 for m, uri in new if m == "POST" and "mount=" in uri) == 3
    head = requests.head(f"{reg.url}/v2/team/b/blobs/{image.layer_digests[0]}", timeout=10)
    assert head.status_code == 200


def test_tag_then_push_and_chunked_upload(registry, registry_factory, cache_dir, tmp_path):
    dest = registry_factory()
    src = f"{registry.host}/library/mixed:1"
    _pull(src, cache_dir)
    target = f"{dest.host}/mirror/mixed:1"
    tagged = cli.run("tag", src, target, "--cache", str(cache_dir))
    assert tagged.returncode == 0, tagged.stderr
    out = cli.run("push", target, "--chunked", "--chunk-size", "100", "--json", "--cache", str(cache_dir))
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["digest"] == registry.images["library/mixed:1"].digest and doc["uploaded"] == 4
    fresh = _pull(target, tmp_path / "fresh")
    assert fresh.digest == doc["digest"]


def test_push_errors_are_one_line(registry, cache_dir):
    out = cli.run("push", f"{registry.host}/library/nope:1", "--offline", "--cache", str(cache_dir))
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "not in the cache" in out.stderr


def test_push_with_bearer_tokens_mounts_across_repositories(token_registry, token_server, cache_dir):
    opts = RegistryOptions.build(config={}, username="alice", password="wonderland")
    src = f"{token_registry.host}/library/shared-a:1"
    pull(parse_ref(src), store=Store(cache_dir), platform=AMD64, options=opts)
    token_server.reset()
    res = push(Store(cache_dir), parse_ref(src), parse_ref(f"{token_registry.host}/alice/shared-a:1"),
               options=opts)
    assert (res.mounted, res.uploaded) == (3, 0)
    scopes = {s for r in token_server.requests for s in r.scopes}
    assert "repository:alice/shared-a:pull,push" in scopes
    assert "repository:library/shared-a:pull" in scopes


def test_anonymous_push_is_refused_in_one_line(token_registry, registry, cache_dir):
    src = f"{registry.host}/library/config:1"
    _pull(src, cache_dir)
    out = cli.run("push", src, f"{token_registry.host}/library/config:1", "--cache", str(cache_dir))
    assert out.returncode == 1 and out.stderr.count("\n") == 1
    assert "push access denied" in out.stderr and "puller login" in out.stderr


def test_push_fetches_a_layer_lost_since_the_pull(registry, registry_factory, cache_dir):
    dest = registry_factory()
    src = f"{registry.host}/library/shared-b:1"
    _pull(src, cache_dir)
    lost = registry.images["library/shared-b:1"].layer_digests[1]
    Store(cache_dir).blob_path(lost).unlink()
    res = _push(cache_dir, src, f"{dest.host}/library/shared-b:1")
    assert res.uploaded == 3 and Store(cache_dir).has_blob(lost)
    with pytest.raises(NotCached, match="not in the cache"):
        Store(cache_dir).blob_path(lost).unlink()
        _push(cache_dir, src, f"{dest.host}/other/shared-b:1", offline=True)
