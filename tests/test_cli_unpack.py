"""``puller unpack`` from the CLI: pulls when needed, from the cache, from an OCI layout."""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

from fixtures import cli


def test_unpack_pulls_then_applies(registry, cache_dir, tmp_path):
    dest = tmp_path / "rootfs"
    p = cli.run("unpack", "--cache", str(cache_dir), "--json", f"{registry.host}/library/alpine:3.11", str(dest))
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["dest"] == str(dest)
    assert (dest / "etc/alpine-release").exists() and not (dest / "etc/motd").exists()
    assert not list((dest / "etc").glob(".wh.*"))
    # DEST must be empty unless --force.
    p = cli.run("unpack", "--cache", str(cache_dir), "--offline", f"{registry.host}/library/alpine:3.11", str(dest))
    assert p.returncode == 1 and "--force" in p.stderr
    p = cli.run("unpack", "--cache", str(cache_dir), "--force",
                f"{registry.host}/library/alpine:3.10", str(dest))
    assert p.returncode == 0 and (dest / "etc/motd").exists() and not (dest / "etc/alpine-release").exists()
    assert sorted(x.name for x in tmp_path.iterdir()) == ["cache", "rootfs"]  # no temp dirs beside it


def test_unpack_other_platform(registry, cache_dir, tmp_path):
    p = cli.run("unpack", "--cache", str(cache_dir), "--platform", "linux/arm64",
                f"{registry.host}/library/alpine:3.10", str(tmp_path / "arm"))
    assert p.returncode == 0, p.stderr
    assert not (tmp_path / "arm/bin/busybox").exists()  # the arm64 image is a different one


def test_unpack_from_a_layout_made_by_skopeo(registry, tmp_path):
    lay = tmp_path / "layout"
    subprocess.run(["skopeo", "copy", "--src-tls-verify=false", f"docker://{registry.host}/library/busybox:multi",
                    f"oci:{lay}:multi"], check=True, capture_output=True)
    p = cli.run("unpack", "--layout", f"{lay}:multi", str(tmp_path / "r"))
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "r/bin/busybox").exists()
    p = cli.run("unpack", "--layout", f"{lay}:nope", str(tmp_path / "r2"))
    assert p.returncode == 1 and "no image 'nope'" in p.stderr


def test_unpack_offline_not_cached(cache_dir, tmp_path):
    p = cli.run("unpack", "--cache", str(cache_dir), "--offline", "localhost:5999/x:1", str(tmp_path / "r"))
    assert p.returncode == 1 and "not in the cache" in p.stderr and not (tmp_path / "r").exists()


def test_unpack_as_an_unprivileged_user_records_ownership_in_the_cache(registry):
    base = Path(tempfile.mkdtemp(prefix="puller-unpack-"))
    try:
        os.chmod(base, 0o755)
        os.chown(base, 65534, 65534)
        env = dict(os.environ, HOME=str(base), PULLER_CACHE=str(base / "cache"))
        env.pop("DOCKER_CONFIG", None)
        p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                            str(cli.BIN / "puller"), "unpack", "--json", f"{registry.host}/library/config:1",
                            str(base / "dest")], capture_output=True, text=True, env=env)
        assert p.returncode == 0, p.stderr
        record = Path(json.loads(p.stdout)["record"])
        assert record.parent == base / "cache" / "rootless"
        entries = json.loads(record.read_text())["entries"]
        assert any(e["path"] == "/home/app" and e["uid"] == 1000 for e in entries)
        assert sorted(x.name for x in base.iterdir()) == ["cache", "dest"]  # nothing beside DEST
        assert (base / "dest" / "home" / "app").stat().st_uid == 65534
    finally:
        subprocess.run(["rm", "-rf", str(base)])
