"""The harness is real: the registries enforce auth themselves, the mirror proxies and
caches, and independent tools (skopeo, umoci) read what the fixtures pushed."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import requests

from fixtures.catalog import MULTI_EXPECTED, _build, catalog
from fixtures.images import DOCKER_LIST, OCI_INDEX, OCI_MANIFEST, sha256, write_oci_layout
from fixtures.push import Pusher, parse_challenge
from fixtures.registry import Proxy, RegistryProcess, RegistryStartError, TokenAuth
from fixtures.tokenserver import REGISTRY_LEEWAY, SigningKey, TokenServer

ACCEPT = ", ".join([OCI_INDEX, DOCKER_LIST, OCI_MANIFEST,
                    "application/vnd.docker.distribution.manifest.v2+json"])
PULL_ALPINE = [{"type": "repository", "name": "library/alpine", "actions": ["pull"]}]


def get_manifest(reg: RegistryProcess, repo: str, ref: str,
                 token: str | None = None, auth: tuple[str, str] | None = None
                 ) -> requests.Response:
    headers = {"Accept": ACCEPT} | ({"Authorization": f"Bearer {token}"} if token else {})
    return requests.get(f"{reg.url}/v2/{repo}/manifests/{ref}", headers=headers,
                        auth=auth, timeout=10)


def fetch_token(ts: TokenServer, scope: str, auth: tuple[str, str] | None = None
                ) -> requests.Response:
    return requests.get(ts.realm, params={"service": ts.service, "scope": scope},
                        auth=auth, timeout=10)


# --- the process itself --------------------------------------------------------------

def test_start_failure_quotes_the_registry_log(tmp_path):
    bad = TokenAuth("http://127.0.0.1:1/token", "svc", "iss", b"not a certificate")
    with pytest.raises(RegistryStartError, match="(?s)exited with .*log .*registry.log"):
        RegistryProcess.start(tmp_path, token=bad)


def test_missing_binary_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RegistryStartError, match="apt-get install docker-registry"):
        RegistryProcess.start(tmp_path)


def test_stop_ends_the_process(registry_factory):
    reg = registry_factory()
    reg.stop()
    assert not reg.running
    with pytest.raises(requests.ConnectionError):
        requests.get(reg.url + "/v2/", timeout=5)


def test_hits_list_exactly_the_requests_since_a_mark(registry):
    mark = registry.mark()
    requests.head(f"{registry.url}/v2/library/alpine/manifests/3.10",
                  headers={"Accept": ACCEPT}, timeout=10)
    get_manifest(registry, "library/nope", "1")
    assert [(h.method, h.path, h.status) for h in registry.hits(since=mark)] == [
        ("HEAD", "/v2/library/alpine/manifests/3.10", 200),
        ("GET", "/v2/library/nope/manifests/1", 404)]


# --- bearer tokens -------------------------------------------------------------------

def test_token_registry_challenges_like_docker_hub(token_registry, token_server):
    r = get_manifest(token_registry, "library/alpine", "3.10")
    assert r.status_code == 401
    scheme, params = parse_challenge(r.headers["WWW-Authenticate"])
    assert scheme == "bearer"
    assert params == {"realm": token_server.realm, "service": token_server.service,
                      "scope": "repository:library/alpine:pull"}


def test_anonymous_token_pulls_library_image(token_registry, token_server):
    r = fetch_token(token_server, "repository:library/alpine:pull")
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"token", "access_token", "expires_in", "issued_at"}
    assert body["token"] == body["access_token"]
    r = get_manifest(token_registry, "library/alpine", "3.10", token=body["token"])
    assert r.status_code == 200
    assert r.content == catalog()["library/alpine:3.10"].manifest
    (req,) = token_server.requests
    assert req.authorization is None
    assert req.scopes == ["repository:library/alpine:pull"]


def test_registry_rejects_token_signed_by_another_key(token_registry, token_server):
    forged = token_server.mint(PULL_ALPINE, key=SigningKey.generate())
    assert get_manifest(token_registry, "library/alpine", "3.10", token=forged).status_code == 401
    genuine = token_server.mint(PULL_ALPINE)
    assert get_manifest(token_registry, "library/alpine", "3.10", token=genuine).status_code == 200


def test_registry_rejects_expired_token(token_registry, token_server):
    # the registry allows 60 s of clock skew, so expire it well before that
    expired = token_server.mint(PULL_ALPINE, now=time.time() - 600, expires_in=300)
    assert get_manifest(token_registry, "library/alpine", "3.10", token=expired).status_code == 401


def test_short_lived_tokens_really_expire(token_registry, token_server):
    token_server.set_expires_in(2)
    token_server.set_clock_offset(-REGISTRY_LEEWAY)
    token = fetch_token(token_server, "repository:library/alpine:pull").json()["token"]
    assert get_manifest(token_registry, "library/alpine", "3.10", token=token).status_code == 200
    _wait_until(lambda: get_manifest(token_registry, "library/alpine", "3.10",
                                     token=token).status_code == 401, "the token to expire")


def test_skewed_token_server_tokens_are_not_yet_valid(token_registry, token_server):
    token_server.set_clock_offset(2 * REGISTRY_LEEWAY)
    token = fetch_token(token_server, "repository:library/alpine:pull").json()["token"]
    assert get_manifest(token_registry, "library/alpine", "3.10", token=token).status_code == 401


def test_registry_rejects_token_for_another_service(token_registry, token_server):
    other = token_server.mint(PULL_ALPINE, audience="some-other-registry")
    assert get_manifest(token_registry, "library/alpine", "3.10", token=other).status_code == 401


def test_private_repo_needs_credentials(token_registry, token_server):
    scope = "repository:private/secret:pull"
    anon = fetch_token(token_server, scope).json()["token"]
    r = get_manifest(token_registry, "private/secret", "1", token=anon)
    assert r.status_code == 401
    assert 'error="insufficient_scope"' in r.headers["WWW-Authenticate"]
    assert fetch_token(token_server, scope, auth=("alice", "wrong")).status_code == 401
    assert fetch_token(token_server, scope, auth=("mallory", "x")).status_code == 401
    alice = fetch_token(token_server, scope, auth=("alice", "wonderland")).json()["token"]
    r = get_manifest(token_registry, "private/secret", "1", token=alice)
    assert r.status_code == 200
    assert r.content == catalog(private=True)["private/secret:1"].manifest


def test_anonymous_push_is_refused(token_registry, token_server):
    pusher = Pusher(token_registry.url)  # no credentials: gets a pull-only token
    with pytest.raises(RuntimeError, match="401"):
        pusher.put_blob("library/alpine", b"not allowed")


def test_token_server_knobs(token_registry, token_server):
    token_server.set_fields("access_token")
    token_server.set_expires_in(1)
    body = fetch_token(token_server, "repository:library/alpine:pull").json()
    assert set(body) == {"access_token"}
    token_server.fail_next(503)
    assert fetch_token(token_server, "repository:library/alpine:pull").status_code == 503
    assert len(token_server.requests) == 2


def test_oauth2_post_with_identity_token(token_registry, token_server):
    """Docker trades a config.json ``identitytoken`` for an access token by POST."""
    scope = "repository:private/secret:pull"
    refresh = token_server.issue_refresh_token("alice")
    r = requests.post(token_server.realm, timeout=10, data={
        "grant_type": "refresh_token", "refresh_token": refresh, "service": token_server.service,
        "scope": scope, "client_id": "puller"})
    assert r.status_code == 200
    token = r.json()["access_token"]
    assert get_manifest(token_registry, "private/secret", "1", token=token).status_code == 200
    assert token_server.requests[-1].form["client_id"] == ["puller"]
    bad = requests.post(token_server.realm, timeout=10, data={
        "grant_type": "refresh_token", "refresh_token": "forged", "service": token_server.service})
    assert bad.status_code == 401


def test_offline_token_returns_refresh_token(token_server):
    r = requests.get(token_server.realm, auth=("alice", "wonderland"), timeout=10, params={
        "service": token_server.service, "offline_token": "true"})
    assert token_server.refresh_tokens[r.json()["refresh_token"]] == "alice"


# --- basic auth ----------------------------------------------------------------------

def test_basic_registry_checks_passwords(basic_registry):
    r = get_manifest(basic_registry, "library/alpine", "3.10")
    assert r.status_code == 401
    assert parse_challenge(r.headers["WWW-Authenticate"])[0] == "basic"
    assert get_manifest(basic_registry, "library/alpine", "3.10",
                        auth=("alice", "nope")).status_code == 401
    r = get_manifest(basic_registry, "private/secret", "1", auth=("bob", "builder"))
    assert r.status_code == 200
    layer = json.loads(r.content)["layers"][0]["digest"]
    blob = requests.get(f"{basic_registry.url}/v2/private/secret/blobs/{layer}",
                        auth=("bob", "builder"), timeout=10)
    assert sha256(blob.content) == layer


# --- the anonymous registry and its mirror -------------------------------------------

def test_registry_serves_every_catalog_image(registry):
    for ref, image in registry.images.items():
        repo, _, tag = ref.rpartition(":")
        r = get_manifest(registry, repo, tag)
        assert r.status_code == 200, ref
        assert r.headers["Docker-Content-Digest"] == image.digest
        assert r.headers["Content-Type"] == image.media_type


def test_mirror_serves_from_upstream(mirror, registry):
    index = mirror.images["library/alpine:3.10"]
    mark = registry.mark()
    r = get_manifest(mirror, "library/alpine", "3.10")
    assert r.status_code == 200
    assert r.content == index.manifest
    asked = {(h.method, h.path) for h in registry.hits(since=mark)}
    assert ("HEAD", "/v2/library/alpine/manifests/3.10") in asked  # the tag is resolved upstream


def _wait_until(predicate, what: str, timeout: float = 10.0) -> None:
    """Bounded wait for a background effect (the mirror stores blobs asynchronously)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_mirror_keeps_serving_after_upstream_stops(registry_factory):
    index = catalog()["library/alpine:3.10"]
    upstream = registry_factory({"library/alpine:3.10": index})
    mirror = registry_factory(proxy=Proxy(upstream.url))
    amd64 = index.children[0]
    assert get_manifest(mirror, "library/alpine", "3.10").status_code == 200
    assert get_manifest(mirror, "library/alpine", amd64.digest).status_code == 200
    for digest in amd64.blobs:
        requests.get(f"{mirror.url}/v2/library/alpine/blobs/{digest}", timeout=10)
        _wait_until(lambda d=digest: mirror.has_blob(d), f"mirror to store {digest}")
    upstream.stop()
    assert get_manifest(mirror, "library/alpine", "3.10").content == index.manifest
    assert get_manifest(mirror, "library/alpine", amd64.digest).content == amd64.manifest
    for digest, data in amd64.blobs.items():
        r = requests.get(f"{mirror.url}/v2/library/alpine/blobs/{digest}", timeout=10)
        assert r.content == data


def test_mirror_of_an_auth_registry_uses_its_credentials(registry_factory, token_registry):
    proxied = registry_factory(proxy=Proxy(token_registry.url, "alice", "wonderland"))
    r = get_manifest(proxied, "private/secret", "1")
    assert r.status_code == 200
    assert r.content == token_registry.images["private/secret:1"].manifest


def test_delete_manifest(registry_factory):
    image = catalog()["library/shared-a:1"]
    reg = registry_factory({"library/shared-a:1": image})
    Pusher(reg.url).delete_manifest("library/shared-a", image.digest)
    assert get_manifest(reg, "library/shared-a", "1").status_code == 404


# --- independent readers: skopeo and umoci -------------------------------------------

def _run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60).stdout


def test_skopeo_reads_what_was_pushed(registry):
    ref = f"docker://{registry.host}/library/alpine:3.10"
    index = registry.images["library/alpine:3.10"]
    raw = _run("skopeo", "inspect", "--tls-verify=false", "--raw", ref)
    assert sha256(raw.encode()) == index.digest
    info = json.loads(_run("skopeo", "inspect", "--tls-verify=false",
                           "--override-arch", "arm64", "--override-variant", "v8", ref))
    assert info["Architecture"] == "arm64"
    assert info["Layers"] == index.children[1].layer_digests


def test_skopeo_copies_and_verifies_every_blob(registry, tmp_path):
    # skopeo checks each blob's digest while copying, so this proves the pushed bytes
    for ref in ("library/busybox:latest", "library/mixed:1"):
        _run("skopeo", "copy", "--all", "--src-tls-verify=false",
             f"docker://{registry.host}/{ref}", f"oci:{tmp_path / 'layout'}:{ref}")


@pytest.mark.skipif(os.geteuid() != 0, reason="umoci unpack keeps ownership as root only")
def test_umoci_agrees_with_multi_expected(tmp_path):
    """MULTI_EXPECTED is the oracle for the unpack tests; check it against umoci."""
    layout = write_oci_layout(tmp_path / "layout", {"multi": catalog()["library/busybox:multi"]})
    _run("umoci", "unpack", "--image", f"{layout}:multi", str(tmp_path / "bundle"))
    root = tmp_path / "bundle" / "rootfs"
    for path, want in MULTI_EXPECTED.items():
        assert _describe(root / path) == want, path
    assert os.stat(root / "link-to-lower").st_ino == os.stat(root / "lower-target").st_ino


def _describe(p: Path) -> tuple | None:
    if p.is_symlink():
        return ("symlink", os.readlink(p))
    if not p.exists():
        return None
    mode = p.stat().st_mode & 0o7777
    return ("dir", mode) if p.is_dir() else ("file", p.read_bytes(), mode)


def test_secret_is_only_on_auth_registries(registry, basic_registry):
    assert "private/secret:1" not in registry.images
    assert get_manifest(registry, "private/secret", "1").status_code == 404
    assert "private/secret:1" in basic_registry.images


# --- the catalog ---------------------------------------------------------------------

def test_catalog_is_deterministic():
    first = {ref: img.digest for ref, img in catalog(private=True).items()}
    _build.cache_clear()
    assert {ref: img.digest for ref, img in catalog(private=True).items()} == first


def test_catalog_shapes():
    cat = catalog()
    platforms = [c.platform for c in cat["library/busybox:latest"].children]
    assert platforms == [{"architecture": "amd64", "os": "linux"},
                         {"architecture": "arm64", "os": "linux", "variant": "v8"},
                         {"architecture": "arm", "os": "linux", "variant": "v7"},
                         {"architecture": "unknown", "os": "unknown"}]
    a, b = cat["library/shared-a:1"], cat["library/shared-b:1"]
    assert a.layer_digests[0] == b.layer_digests[0] and a.layer_digests[1] != b.layer_digests[1]
    v310, v311 = cat["library/alpine:3.10"], cat["library/alpine:3.11"]
    assert v311.children[0].layer_digests[0] == v310.children[0].layer_digests[0]
    layers = json.loads(cat["library/mixed:1"].manifest)["layers"]
    assert [m["mediaType"].rpartition(".")[2] for m in layers] == ["tar+gzip", "tar+zstd", "tar"]
    config = json.loads(cat["library/config:1"].config)["config"]
    assert {"Entrypoint", "Cmd", "Env", "WorkingDir", "User"} <= set(config)
