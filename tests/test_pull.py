"""Pull against real registries: the cache layout, the request budget, auth, mirrors, errors."""
from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from fixtures import cli
from fixtures.images import F, build_image, tar_layer
from puller.errors import AuthError, NotCached, NotFound, PlatformError
from puller.manifest import REGISTRY_DIGEST, parse
from puller.platform import Platform, parse_platform
from puller.pull import pull
from puller.reference import parse as parse_ref
from puller.registry import RegistryOptions
from puller.store import Store
from puller.transport.http import Client

AMD64 = Platform("linux", "amd64")


class Counting(Client):
    """A client that records (method, path, status) of every request it sends."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[str, str, int]] = []

    def request(self, method, url, *a, **kw):
        resp = super().request(method, url, *a, **kw)
        self.log.append((method, urlsplit(url).path, resp.status_code))
        return resp

    def manifests(self, method: str | None = None) -> list:
        return [e for e in self.log if "/manifests/" in e[1] and (method is None or e[0] == method)]

    def blobs(self) -> list:
        return [e for e in self.log if "/blobs/" in e[1]]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pull(text: str, cache: Path, **kw):
    return pull(parse_ref(text), store=Store(cache), platform=kw.pop("platform", AMD64),
                options=kw.pop("options", RegistryOptions.build(config={})), **kw)


def test_cold_pull_writes_an_oci_layout_that_skopeo_reads(registry, cache_dir):
    ref = f"{registry.host}/library/alpine:3.10"
    res = _pull(ref, cache_dir)
    expected = registry.images["library/alpine:3.10"]
    assert res.digest == expected.digest                    # the registry's digest
    assert res.manifest_digest == expected.children[0].digest
    assert not res.cached and res.downloaded_bytes > 0
    store = Store(cache_dir)
    entry = store.get_ref(ref)
    assert entry.registry_digest == expected.digest
    assert entry.descriptor.media_type == "application/vnd.oci.image.index.v1+json"
    # The registry's original bytes are kept, and the OCI twin links to them.
    assert store.read_blob(expected.digest) == expected.manifest
    local = parse(store.read_blob(entry.descriptor.digest))
    assert local.manifests[0].annotation(REGISTRY_DIGEST) == expected.children[0].digest
    out = subprocess.run(["skopeo", "inspect", f"oci:{cache_dir}:{ref}"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["Layers"] == expected.children[0].layer_digests
    assert info["Architecture"] == "amd64"
    assert not any((cache_dir / "tmp").iterdir())


def test_another_platform_adds_to_the_same_ref(registry, cache_dir):
    ref = f"{registry.host}/library/alpine:3.10"
    _pull(ref, cache_dir)
    res = _pull(ref, cache_dir, platform=parse_platform("linux/arm64"))
    assert res.platform == "linux/arm64"
    store = Store(cache_dir)
    local = parse(store.read_blob(store.get_ref(ref).descriptor.digest))
    assert sorted(str(d.platform) for d in local.manifests) == ["linux/amd64", "linux/arm64"]
    for arch in ("amd64", "arm64"):
        out = subprocess.run(["skopeo", "--override-arch", arch, "inspect", f"oci:{cache_dir}:{ref}"],
                             capture_output=True, text=True)
        assert out.returncode == 0 and json.loads(out.stdout)["Architecture"] == arch


def test_warm_pull_is_one_head_and_no_get(registry, cache_dir):
    ref = f"{registry.host}/library/alpine:3.10"
    _pull(ref, cache_dir)
    s = Counting()
    res = _pull(ref, cache_dir, session=s)
    assert res.cached and res.downloaded_bytes == 0
    assert s.manifests() == [("HEAD", "/v2/library/alpine/manifests/3.10", 200)]
    assert s.blobs() == []
    assert all(m != "GET" or p == "/v2/" for m, p, _ in s.log)


def test_multi_arch_cold_pull_gets_index_and_one_manifest(registry, cache_dir):
    s = Counting()
    _pull(f"{registry.host}/library/busybox:latest", cache_dir, session=s,
          platform=parse_platform("linux/arm64/v8"))
    gets = s.manifests("GET")
    assert len(gets) == 2, gets
    idx = registry.images["library/busybox:latest"]
    arm64 = next(c for c in idx.children if c.platform.get("architecture") == "arm64")
    assert gets[1][1].endswith(arm64.digest)
    # Each blob exactly once.
    blob_paths = [p for _, p, _ in s.blobs()]
    assert len(blob_paths) == len(set(blob_paths)) == len(arm64.blobs)


def test_pull_by_digest_with_everything_cached_makes_no_request(registry, cache_dir):
    img = registry.images["library/shared-a:1"]
    ref = f"{registry.host}/library/shared-a@{img.digest}"
    _pull(ref, cache_dir)
    s = Counting()
    res = _pull(ref, cache_dir, session=s)
    assert s.log == [] and res.cached and res.digest == img.digest


def test_shared_layers_download_once(registry, cache_dir):
    a = registry.images["library/shared-a:1"]
    b = registry.images["library/shared-b:1"]
    _pull(f"{registry.host}/library/shared-a:1", cache_dir)
    s = Counting()
    _pull(f"{registry.host}/library/shared-b:1", cache_dir, session=s)
    fetched = {p.rsplit("/", 1)[1] for _, p, _ in s.blobs()}
    shared = set(a.layer_digests) & set(b.layer_digests)
    assert shared and not (shared & fetched)
    assert fetched == set(b.blobs) - set(a.blobs)


def test_repeated_layer_in_one_manifest_is_fetched_once(registry_factory, cache_dir):
    layer = tar_layer(F("x", "same"))
    img = build_image([layer, tar_layer(F("y", "other")), layer])
    reg = registry_factory({"library/twice:1": img})
    s = Counting()
    _pull(f"{reg.host}/library/twice:1", cache_dir, session=s)
    assert len(s.blobs()) == 3  # config + 2 distinct layers


def test_mixed_compression_oci_image(registry, cache_dir):
    res = _pull(f"{registry.host}/library/mixed:1", cache_dir)
    img = registry.images["library/mixed:1"]
    store = Store(cache_dir)
    assert all(store.has_blob(d) for d in img.blobs)
    assert res.digest == img.digest


def test_platform_errors_list_what_the_image_has(registry, cache_dir):
    with pytest.raises(PlatformError) as e:
        _pull(f"{registry.host}/library/busybox:latest", cache_dir, platform=parse_platform("linux/s390x"))
    msg = str(e.value)
    assert "linux/amd64" in msg and "linux/arm64" in msg and "linux/arm/v7" in msg
    assert "unknown" not in msg


def test_arm_variant_fallback(registry, cache_dir):
    res = _pull(f"{registry.host}/library/busybox:latest", cache_dir, platform=parse_platform("linux/arm/v8"))
    assert res.platform == "linux/arm/v7"


def test_offline_never_touches_the_network(registry, cache_dir):
    ref = f"{registry.host}/library/alpine:3.10"
    _pull(ref, cache_dir)
    s = Counting()
    res = _pull(ref, cache_dir, offline=True, session=s)
    assert s.log == [] and res.offline
    with pytest.raises(NotCached):
        _pull(f"{registry.host}/library/alpine:3.11", cache_dir, offline=True)


def test_unreachable_registry_falls_back_to_the_cache(registry_factory, cache_dir):
    reg = registry_factory({"library/gone:1": build_image([tar_layer(F("a", "1"))])})
    ref = f"{reg.host}/library/gone:1"
    _pull(ref, cache_dir)
    reg.stop()
    p = cli.run("pull", "--cache", str(cache_dir), "--retries", "0", ref)
    assert p.returncode == 0, p.stderr
    assert "used the cache" in p.stderr
    p = cli.run("pull", "--cache", str(cache_dir), "--retries", "0", f"{reg.host}/library/other:1")
    assert p.returncode == 1 and "Connection refused" in p.stderr
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr


def test_token_auth_anonymous_pull_of_library(token_registry, token_server, cache_dir):
    res = _pull(f"{token_registry.host}/library/alpine:3.10", cache_dir)
    assert not res.cached
    reqs = token_server.requests
    assert reqs, "the token server was never asked"
    assert all(r.authorization is None for r in reqs)
    assert any("repository:library/alpine:pull" in r.scopes for r in reqs)


def test_token_auth_private_repo_needs_credentials(token_registry, token_server, cache_dir, isolated_env):
    ref = f"{token_registry.host}/private/secret:1"
    with pytest.raises((NotFound, AuthError), match="not found or requires authentication|refused"):
        _pull(ref, cache_dir)
    cfg = Path(os.environ["DOCKER_CONFIG"]) / "config.json"
    cfg.write_text(json.dumps({"auths": {token_registry.host: {"auth": base64.b64encode(b"alice:wonderland").decode()}}}))
    res = _pull(ref, cache_dir)
    assert res.digest == token_registry.images["private/secret:1"].digest
    assert any((r.authorization or "").startswith("Basic ") for r in token_server.requests)


def test_token_auth_bad_password(token_registry, cache_dir):
    opts = RegistryOptions.build(config={}, username="alice", password="wrong")
    with pytest.raises(AuthError, match="refused"):
        _pull(f"{token_registry.host}/private/secret:1", cache_dir, options=opts)


def test_basic_auth(basic_registry, cache_dir):
    ref = f"{basic_registry.host}/private/secret:1"
    with pytest.raises((NotFound, AuthError)):
        _pull(ref, cache_dir)
    opts = RegistryOptions.build(config={}, username="bob", password="builder")
    assert _pull(ref, cache_dir, options=opts).digest == basic_registry.images["private/secret:1"].digest
    p = cli.run("login", "-u", "bob", "--password-stdin", basic_registry.host, input="builder\n")
    assert p.returncode == 0, p.stderr
    cfg = Path(os.environ["DOCKER_CONFIG"]) / "config.json"
    assert oct(cfg.stat().st_mode & 0o777) == "0o600"
    p = cli.run("pull", "--cache", str(cache_dir / "2"), "-q", ref)
    assert p.returncode == 0, p.stderr
    p = cli.run("login", "-u", "bob", "--password-stdin", basic_registry.host, input="nope\n")
    assert p.returncode == 1 and "refused" in p.stderr


def test_a_skopeo_login_is_enough(basic_registry, cache_dir):
    """Credentials that ``skopeo login`` / ``podman login`` wrote (and Docker's file lacks)."""
    ref = f"{basic_registry.host}/private/secret:1"
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_CONFIG"}  # else skopeo writes Docker's file
    p = subprocess.run(["skopeo", "login", "--tls-verify=false", "-u", "bob", "--password-stdin",
                        basic_registry.host], input="builder\n", capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    assert (Path(os.environ["XDG_RUNTIME_DIR"]) / "containers" / "auth.json").exists()
    assert not (Path(os.environ["DOCKER_CONFIG"]) / "config.json").exists()
    p = cli.run("pull", "--cache", str(cache_dir), "--json", ref)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["digest"] == basic_registry.images["private/secret:1"].digest


def test_docker_hub_names_through_a_mirror(mirror, cache_dir):
    """``alpine:3.10`` means docker.io/library/alpine:3.10; a mirror serves it offline."""
    s = Counting()
    opts = RegistryOptions.build(config={}, mirrors=[f"http://{mirror.host}"])
    res = _pull("alpine:3.10", cache_dir, options=opts, session=s)
    assert res.ref == "docker.io/library/alpine:3.10"
    assert s.log and all(path.startswith("/v2/") for _, path, _ in s.log)
    assert Store(cache_dir).get_ref("docker.io/library/alpine:3.10") is not None


def test_broken_mirror_falls_back_to_the_next(mirror, cache_dir, monkeypatch):
    monkeypatch.setenv("PULLER_REGISTRY_MIRRORS", f"http://127.0.0.1:{closed_port()},http://{mirror.host}")
    p = cli.run("pull", "--cache", str(cache_dir), "--retries", "0", "--json", "alpine:3.11")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["ref"] == "docker.io/library/alpine:3.11"


def test_mirror_from_config_file(mirror, cache_dir, tmp_path, monkeypatch):
    conf = tmp_path / "config.json"
    conf.write_text(json.dumps({"registry-mirrors": [f"http://{mirror.host}"]}))
    monkeypatch.setenv("PULLER_CONFIG", str(conf))
    p = cli.run("pull", "--cache", str(cache_dir), "-q", "library/busybox:multi")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == mirror.images["library/busybox:multi"].digest


def test_not_found_message(registry, cache_dir):
    p = cli.run("pull", "--cache", str(cache_dir), f"{registry.host}/library/nope:1")
    assert p.returncode == 1
    assert p.stderr == f"puller: error: {registry.host}/library/nope:1: not found\n" or "not found" in p.stderr
    assert p.stderr.count("\n") == 1


def test_unknown_host_is_one_line(cache_dir):
    p = cli.run("pull", "--cache", str(cache_dir), "--retries", "0", "no-such-host.invalid/x:1")
    assert p.returncode == 1 and "unknown host" in p.stderr and p.stderr.count("\n") == 1


def test_bad_reference_is_one_line(cache_dir):
    p = cli.run("pull", "--cache", str(cache_dir), "UPPER/case:x")
    assert p.returncode == 2 and "must be lowercase" in p.stderr and p.stderr.count("\n") == 1


def test_json_and_quiet_and_plain_progress(registry, cache_dir):
    ref = f"{registry.host}/library/busybox:multi"
    p = cli.run("pull", "--cache", str(cache_dir), "--progress", "plain", ref)
    assert p.returncode == 0
    assert "resolved to" in p.stderr and "pulled" in p.stderr
    assert p.stdout.strip() == registry.images["library/busybox:multi"].digest
    p = cli.run("pull", "--cache", str(cache_dir), "--json", ref)
    doc = json.loads(p.stdout)
    assert doc["cached"] is True and doc["digest"] == registry.images["library/busybox:multi"].digest
    assert p.stderr == ""  # stderr is not a terminal: no bars
    p = cli.run("pull", "--cache", str(cache_dir / "q"), "-q", "--progress", "plain", ref)
    assert p.returncode == 0 and p.stderr == ""


def test_images_and_inspect(registry, cache_dir):
    ref = f"{registry.host}/library/config:1"
    assert cli.run("pull", "--cache", str(cache_dir), ref).returncode == 0
    rows = json.loads(cli.run("images", "--cache", str(cache_dir), "--json").stdout)
    assert [r["ref"] for r in rows] == [ref] and rows[0]["platforms"] == ["linux/amd64"]
    assert rows[0]["size"] > 0
    info = json.loads(cli.run("inspect", "--cache", str(cache_dir), "--json", ref).stdout)
    cfg = json.loads(registry.images["library/config:1"].config)["config"]
    assert info["Entrypoint"] == cfg["Entrypoint"] and info["Cached"] is True
    raw = cli.run("inspect", "--cache", str(cache_dir), "--raw", ref).stdout
    assert raw.encode() == registry.images["library/config:1"].manifest
    conf = json.loads(cli.run("inspect", "--cache", str(cache_dir), "--config", ref).stdout)
    assert conf["config"] == cfg
    # Not cached: straight from the registry, nothing written.
    other = cache_dir.parent / "other"
    info = json.loads(cli.run("inspect", "--cache", str(other), "--json",
                              f"{registry.host}/library/alpine:3.10").stdout)
    assert info["Cached"] is False and info["Architecture"] == "amd64"
    assert not (other / "blobs").exists()


def test_tags(registry):
    p = cli.run("tags", "--json", f"{registry.host}/library/alpine")
    assert json.loads(p.stdout)["tags"] == ["3.10", "3.11"]


def test_disk_full_leaves_nothing_half_written(registry, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mnt)], check=True)
    try:
        p = cli.run("pull", "--cache", str(mnt / "c"), f"{registry.host}/library/alpine:3.10")
        assert p.returncode == 1 and "no space left" in p.stderr, p.stderr
        assert list((mnt / "c" / "tmp").iterdir()) == []
        store = Store(mnt / "c")
        assert store.get_ref(f"{registry.host}/library/alpine:3.10") is None
        for d in store.iter_blobs():  # whatever is under blobs/ is whole and verified
            store.read_blob(d, max_size=1 << 30)
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_progress_renders_every_kind_of_event():
    """The CLI's renderer takes the core's dict events and the unpacker's event objects."""
    import io
    from puller.cli.output import Progress
    from puller.unpack import UnpackEvent

    class Tty(io.StringIO):
        def isatty(self):
            return True
    for mode in ("plain", "tty"):
        out = Tty()
        p = Progress(mode, stream=out)
        p({"event": "blobs", "total": 1, "missing": 1, "bytes": 10})
        p({"event": "blob-start", "digest": "sha256:" + "a" * 64, "size": 10})
        p({"event": "blob-progress", "digest": "sha256:" + "a" * 64, "n": 10})
        p({"event": "blob-done", "digest": "sha256:" + "a" * 64, "size": 10})
        p(UnpackEvent("layer-start", 0, 2))
        p(UnpackEvent("layer-done", 0, 2))
        p(UnpackEvent("done", 1, 2))
        p.close()
        if mode == "plain":
            assert "applying layer 1 of 2" in out.getvalue()
        else:  # tqdm bars: the total download, one per blob, one over the layers
            text = out.getvalue()
            assert "total:" in text and "aaaaaaaaaaaa:" in text and "unpack:" in text
            assert "applying layer 1" in text


@pytest.mark.parametrize("args,needle", [
    (["nosuch"], "No such command"),
    (["images", "--bogus"], "No such option"),
    (["unpack"], "Missing argument"),
    (["pull"], "the following arguments are required: IMAGE"),
])
def test_usage_errors_are_one_line(args, needle):
    p = cli.run(*args)
    assert p.returncode == 2 and needle in p.stderr, p.stderr
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("puller: error:")


def test_identity_token_from_docker_config(token_registry, token_server, cache_dir):
    refresh = token_server.issue_refresh_token("alice")
    cfg = Path(os.environ["DOCKER_CONFIG"]) / "config.json"
    cfg.write_text(json.dumps({"auths": {token_registry.host: {"identitytoken": refresh}}}))
    res = _pull(f"{token_registry.host}/private/secret:1", cache_dir)
    assert res.digest == token_registry.images["private/secret:1"].digest
    posts = [r for r in token_server.requests if r.method == "POST"]
    assert posts and posts[0].param("grant_type") == "refresh_token"
    assert all(r.authorization is None for r in posts)  # the refresh token is the credential


def test_login_keeps_the_identity_token_not_the_password(token_registry, token_server, cache_dir):
    """As ``docker login``: a token server that issues refresh tokens gets the password once."""
    p = cli.run("login", "-u", "alice", "--password-stdin", token_registry.host, input="wonderland\n")
    assert p.returncode == 0, p.stderr
    cfg = Path(os.environ["DOCKER_CONFIG"]) / "config.json"
    entry = json.loads(cfg.read_text())["auths"][token_registry.host]
    assert entry["identitytoken"] in token_server.refresh_tokens
    assert base64.b64decode(entry["auth"]) == b"alice:" and "wonderland" not in cfg.read_text()
    token_server.requests.clear()
    p = cli.run("pull", "--cache", str(cache_dir), "--json", f"{token_registry.host}/private/secret:1")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["digest"] == token_registry.images["private/secret:1"].digest
    assert [r.param("grant_type") for r in token_server.requests] == ["refresh_token"]
    p = cli.run("login", "-u", "alice", "--password-stdin", token_registry.host, input="wrong\n")
    assert p.returncode == 1 and "credentials refused" in p.stderr


@pytest.mark.parametrize("fields", [("access_token",), ("token",)])
def test_token_server_answer_forms(token_registry, token_server, cache_dir, fields):
    """Docker Hub's token JSON has varied: only `token`, only `access_token`, no `expires_in`."""
    token_server.set_fields(*fields)
    res = _pull(f"{token_registry.host}/library/shared-b:1", cache_dir)
    assert res.digest == token_registry.images["library/shared-b:1"].digest


HEAVY = ("requests", "urllib3", "logging", "concurrent.futures", "typer", "tqdm", "click")


def test_the_pull_command_imports_nothing_heavy(registry, tmp_path):
    """A cold and a warm ``puller pull`` go through argparse and http.client only: their
    start-up is most of what they cost."""
    code = ("import sys; from puller.cli.entry import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))")
    for _ in ("cold", "warm"):
        p = subprocess.run([sys.executable, "-c", code, "pull", "-q", "--cache", str(tmp_path),
                            f"{registry.host}/library/alpine:3.10"], capture_output=True, text=True)
        assert p.returncode == 0 and p.stderr == "", p.stderr
        digest, loaded = p.stdout.splitlines()[0], p.stdout.splitlines()[1:]
        assert digest == registry.images["library/alpine:3.10"].digest
        assert loaded in ([], [""]), loaded
