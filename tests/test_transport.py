"""What a local registry cannot produce: 429 storms, expiring tokens, CDN redirects, broken
connections, lying or endless bodies, servers that never answer. Each ends well, or in a
clear one-line error within a bounded time, and the cache stays valid."""
from __future__ import annotations

import email.utils
import random
import json
import threading
import time

import pytest

from fixtures import cli
from fixtures.images import F, build_image, tar_layer
from fixtures.netfaults import ScriptedServer, endless_body, reply
from puller.errors import (DigestMismatch, ManifestError, NetworkError, NotFound, RateLimited,
                           RegistryError)
from puller.platform import Platform
from puller.pull import pull
from puller.reference import parse as parse_ref
from puller.registry import RegistryOptions
from puller.store import Store
from puller.transport.http import Client
from puller.transport.transport import RateLimit, RetryPolicy, Transport, parse_retry_after

FAST = RetryPolicy(retries=3, delay=0.01, max_delay=0.05, max_total=5, stall=1.0, connect_timeout=2)
IMG = build_image([tar_layer(F("etc/hello", "hello world\n" * 2000),
                             F("big", random.Random(7).randbytes(2 * 1024 * 1024)))])
BLOB = IMG.layers[0]
LAYER = IMG.layer_digests[0]


def serve_image(srv: ScriptedServer, repo: str = "library/app", tag: str = "1", *, auth=None,
                blob_handler=None, manifest_headers=None) -> None:
    """Routes that make ``srv`` a minimal registry serving IMG at repo:tag."""
    def check(h) -> bool:
        if auth is None or auth(h):
            return True
        reply(h, 401, b'{"errors":[{"code":"UNAUTHORIZED"}]}',
              {"WWW-Authenticate": f'Bearer realm="{srv.url}/token",service="test"'})
        return False

    @srv.route("GET", "/v2/")
    def ping(h, s):
        if h.path == "/v2/" and check(h):
            reply(h, 200, b"{}")

    def manifest(h, s):
        if check(h):
            reply(h, 200, IMG.manifest, {"Content-Type": IMG.media_type,
                                         "Docker-Content-Digest": IMG.digest, **(manifest_headers or {})})
    srv.routes[("GET", f"/v2/{repo}/manifests/")] = manifest
    srv.routes[("HEAD", f"/v2/{repo}/manifests/")] = manifest

    def blob(h, s):
        if not check(h):
            return
        digest = h.path.split("?")[0].rsplit("/", 1)[1]
        data = IMG.blobs[digest]
        if blob_handler and digest == LAYER:
            blob_handler(h, data)
        else:
            reply(h, 200, data)
    srv.routes[("GET", f"/v2/{repo}/blobs/")] = blob


def do_pull(srv, cache, **kw):
    opts = RegistryOptions.build(config={}, retry=kw.pop("retry", FAST))
    return pull(parse_ref(f"{srv.host}/library/app:1"), store=Store(cache),
                platform=Platform("linux", "amd64"), options=opts, **kw)


def assert_cache_valid(cache):
    store = Store(cache)
    for d in store.iter_blobs():
        store.read_blob(d, max_size=1 << 30)
    assert not any((cache / "tmp").iterdir()) if (cache / "tmp").exists() else True


# --- Retry-After and 429 ------------------------------------------------------------

def test_retry_after_forms():
    assert parse_retry_after("7") == 7
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= parse_retry_after(future) <= 31
    assert parse_retry_after("garbage") is None


@pytest.mark.parametrize("form", ["seconds", "date"])
def test_429_storm_then_success(tmp_path, form):
    with ScriptedServer() as srv:
        serve_image(srv)
        left = {"n": 3}
        plain = srv.routes[("GET", "/v2/library/app/manifests/")]

        def storm(h, s):
            if left["n"] > 0:
                left["n"] -= 1
                after = "0" if form == "seconds" else email.utils.formatdate(time.time(), usegmt=True)
                reply(h, 429, b'{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}',
                      {"Retry-After": after})
            else:
                plain(h, s)
        srv.routes[("HEAD", "/v2/library/app/manifests/")] = storm
        res = do_pull(srv, tmp_path / "c")
        assert res.digest == IMG.digest
        assert [x.method for x in srv.seen if "/manifests/" in x.path].count("HEAD") == 4


def test_rate_limit_reached_says_so_and_is_bounded(tmp_path, monkeypatch):
    import puller.transport.transport as tr
    slept: list[float] = []
    real_sleep = tr.time.sleep
    monkeypatch.setattr(tr.time, "sleep", lambda s: (slept.append(s), real_sleep(min(s, 0.01))))
    with ScriptedServer() as srv:
        serve_image(srv)

        def limited(h, s):
            reply(h, 429, b'{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your pull rate limit."}]}',
                  {"Retry-After": "3600", "ratelimit-limit": "100;w=21600", "ratelimit-remaining": "0;w=21600"})
        srv.routes[("HEAD", "/v2/library/app/manifests/")] = limited
        with pytest.raises(RateLimited) as e:
            do_pull(srv, tmp_path / "c")
        assert all(s < 60 for s in slept)  # a reset an hour away is reported, not slept on
        assert "pull rate limit was reached" in str(e.value) and "1 h" in str(e.value)


def test_docker_hub_rate_limit_message_mentions_login():
    t = Transport("registry-1.docker.io")
    with ScriptedServer() as srv:
        srv.routes[("GET", "/v2/x")] = lambda h, s: reply(h, 429, b'{"errors":[{"code":"TOOMANYREQUESTS"}]}')
        resp = Client().request("GET", f"{srv.url}/v2/x")
        with pytest.raises(RateLimited, match="Logging in"):
            t.raise_for(resp, "docker.io/library/alpine:3.10", docker_hub=True)


def test_ratelimit_headers_are_reported(tmp_path):
    with ScriptedServer() as srv:
        serve_image(srv, manifest_headers={"ratelimit-limit": "100;w=21600",
                                           "ratelimit-remaining": "76;w=21600",
                                           "docker-ratelimit-source": "203.0.113.9"})
        res = do_pull(srv, tmp_path / "c")
        assert res.ratelimit == {"limit": 100, "remaining": 76, "window_seconds": 21600,
                                 "source": "203.0.113.9"}
        p = cli.run("pull", "--cache", str(tmp_path / "c"), "--json", f"{srv.host}/library/app:1")
        assert json.loads(p.stdout)["ratelimit"]["remaining"] == 76
        p = cli.run("pull", "--cache", str(tmp_path / "c"), "--verbose", f"{srv.host}/library/app:1")
        assert "76 of 100" in p.stderr


def test_ratelimit_parse():
    assert RateLimit.from_headers({}) is None
    rl = RateLimit.from_headers({"ratelimit-limit": "200", "ratelimit-remaining": "3;w=3600"})
    assert (rl.limit, rl.remaining, rl.window) == (200, 3, 3600)


def test_4xx_is_not_retried_and_5xx_is(tmp_path):
    with ScriptedServer() as srv:
        serve_image(srv)
        srv.routes[("HEAD", "/v2/library/app/manifests/")] = lambda h, s: reply(h, 404, b"")
        srv.routes[("GET", "/v2/library/app/manifests/")] = lambda h, s: reply(h, 404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')
        with pytest.raises(NotFound):
            do_pull(srv, tmp_path / "c")
        assert sum(1 for x in srv.seen if "/manifests/" in x.path) == 1  # one HEAD, no retries
        srv.seen.clear()
        srv.routes[("HEAD", "/v2/library/app/manifests/")] = lambda h, s: reply(h, 503, b"")
        with pytest.raises(RegistryError, match="503"):
            do_pull(srv, tmp_path / "c")
        assert sum(1 for x in srv.seen if "/manifests/" in x.path) == 1 + FAST.retries


# --- tokens ---------------------------------------------------------------------------

def _token_registry(srv, lifetime: float, *, issued=True):
    """A registry whose tokens really expire after ``lifetime`` seconds."""
    issued_tokens: dict[str, float] = {}

    @srv.route("GET", "/token")
    def token(h, s):
        tok = f"t{len(issued_tokens)}"
        issued_tokens[tok] = time.time() + lifetime
        doc = {"token": tok, "expires_in": int(lifetime)}
        if issued:
            doc["issued_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        reply(h, 200, json.dumps(doc).encode(), {"Content-Type": "application/json"})

    def valid(h) -> bool:
        auth = h.headers.get("Authorization", "")
        tok = auth[7:] if auth.startswith("Bearer ") else ""
        return tok in issued_tokens and time.time() < issued_tokens[tok]
    return valid, issued_tokens


def test_token_is_refreshed_before_it_expires(tmp_path):
    with ScriptedServer() as srv:
        valid, issued = _token_registry(srv, lifetime=2)
        slow = {"first": True}

        def slow_blob(h, data):
            if slow["first"]:
                slow["first"] = False
                time.sleep(2.2)  # the token ran out while this blob was coming
            reply(h, 200, data)
        serve_image(srv, auth=valid, blob_handler=slow_blob)
        res = do_pull(srv, tmp_path / "c", jobs=1)
        assert res.digest == IMG.digest
        assert len(issued) >= 2
        assert_cache_valid(tmp_path / "c")


def test_401_mid_pull_refetches_the_token_once(tmp_path):
    with ScriptedServer() as srv:
        valid, issued = _token_registry(srv, lifetime=300)
        revoked = {"done": False}

        def revoking_valid(h):
            if "/blobs/" in h.path and not revoked["done"]:
                revoked["done"] = True
                issued.clear()  # the server forgot every token (clock skew, rotation)
                return False
            return valid(h)
        serve_image(srv, auth=revoking_valid)
        assert do_pull(srv, tmp_path / "c", jobs=1).digest == IMG.digest
        assert len(issued) >= 1


def test_token_scopes_are_per_repository_and_host():
    with ScriptedServer() as srv:
        srv.routes[("GET", "/v2/")] = lambda h, s: reply(h, 401, b"", {
            "WWW-Authenticate": f'Bearer realm="{srv.url}/token",service="reg"'} if h.path == "/v2/" else {})
        tokens = iter(["T1", "T2"])
        srv.routes[("GET", "/token")] = lambda h, s: reply(h, 200, json.dumps({"token": next(tokens)}).encode())
        srv.routes[("GET", "/v2/one/")] = srv.routes[("GET", "/v2/two/")] = lambda h, s: reply(h, 200, b"{}")
        t = Transport(srv.host, plain_http=True, retry=FAST)
        t.request("GET", "/v2/one/manifests/1", scope="repository:one:pull").close()
        t.request("GET", "/v2/two/manifests/1", scope="repository:two:pull").close()
        token_calls = [x.path for x in srv.seen if x.path.startswith("/token")]
        assert "scope=repository%3Aone%3Apull" in token_calls[0]
        assert "scope=repository%3Atwo%3Apull" in token_calls[1]
        reg_calls = [x for x in srv.seen if "/manifests/" in x.path]
        assert reg_calls[0].headers["Authorization"] == "Bearer T1"
        assert reg_calls[1].headers["Authorization"] == "Bearer T2"


# --- redirects ------------------------------------------------------------------------

def test_cdn_redirect_drops_authorization(tmp_path):
    with ScriptedServer() as cdn, ScriptedServer() as srv:
        valid, _ = _token_registry(srv, lifetime=300)

        def to_cdn(h, data):
            reply(h, 307, b"", {"Location": f"{cdn.url}/signed/{LAYER}?sig=abc"})

        @cdn.route("GET", "/signed/")
        def signed(h, s):
            reply(h, 200, BLOB)
        serve_image(srv, auth=valid, blob_handler=to_cdn)
        assert do_pull(srv, tmp_path / "c").digest == IMG.digest
        assert cdn.seen and all("Authorization" not in x.headers for x in cdn.seen)
        assert any("Authorization" in x.headers for x in srv.seen if "/blobs/" in x.path)


def test_same_origin_redirect_keeps_authorization(tmp_path):
    with ScriptedServer() as srv:
        valid, _ = _token_registry(srv, lifetime=300)

        def to_self(h, data):
            if "moved" in h.path:
                reply(h, 200, data)
            else:
                reply(h, 302, b"", {"Location": h.path + "?moved=1"})
        serve_image(srv, auth=valid, blob_handler=to_self)
        assert do_pull(srv, tmp_path / "c").digest == IMG.digest


def test_https_to_http_redirect_is_refused():
    with ScriptedServer(tls=True) as srv, ScriptedServer() as cdn:
        srv.routes[("GET", "/v2/")] = lambda h, s: reply(h, 200, b"{}")
        srv.routes[("GET", "/v2/r/blobs/")] = lambda h, s: reply(h, 307, b"", {"Location": f"{cdn.url}/blob"})
        t = Transport(srv.host, insecure_tls=True, retry=FAST)
        with pytest.raises(NetworkError, match="refusing redirect from https to http"):
            t.request("GET", "/v2/r/blobs/sha256:x")
        assert cdn.seen == []


def test_redirect_loop_is_an_error(tmp_path):
    with ScriptedServer() as srv:
        serve_image(srv, blob_handler=lambda h, d: reply(h, 307, b"", {"Location": h.path}))
        with pytest.raises(NetworkError, match="too many redirects"):
            do_pull(srv, tmp_path / "c")
        assert_cache_valid(tmp_path / "c")


class Refused(Client):
    """A client that records the URLs asked for and connects nowhere."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def request(self, method, url, **kw):
        self.urls.append(url)
        raise NetworkError(f"cannot connect to {url}: Connection refused")


def test_plain_http_only_where_allowed():
    assert Transport("reg.example").plain_http is False
    client = Refused()
    with pytest.raises(NetworkError):
        Transport("reg.example", retry=RetryPolicy(retries=0), session=client).request("GET", "/v2/x")
    assert client.urls and all(u.startswith("https://") for u in client.urls)
    client = Refused()
    with pytest.raises(NetworkError):
        Transport("127.0.0.1:5999", plain_http=True, retry=RetryPolicy(retries=0), session=client).request("GET", "/v2/x")
    assert client.urls[0].startswith("http://")  # a loopback registry: plain http first


# --- broken bodies --------------------------------------------------------------------

def test_dropped_connection_resumes_with_range(tmp_path):
    with ScriptedServer() as srv:
        ranges = []

        def flaky(h, data):
            rng = h.headers.get("Range")
            ranges.append(rng)
            start = int(rng[6:].split("-")[0]) if rng else 0
            part = data[start:]
            if len(ranges) <= 2:  # cut the first two attempts half way
                h.send_response(206 if start else 200)
                h.send_header("Content-Length", str(len(part)))
                if start:
                    h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                h.end_headers()
                h.wfile.write(part[: len(part) // 2])
                h.wfile.flush()
                h.close_connection = True
                return
            h.send_response(206)
            h.send_header("Content-Length", str(len(part)))
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            h.end_headers()
            h.wfile.write(part)
        serve_image(srv, blob_handler=flaky)
        res = do_pull(srv, tmp_path / "c")
        assert res.digest == IMG.digest
        assert ranges[0] is None and ranges[1] is not None and ranges[2] is not None
        assert res.downloaded_bytes <= len(BLOB) + len(IMG.config) + 10
        assert_cache_valid(tmp_path / "c")


def test_server_ignoring_range_means_a_full_download(tmp_path):
    with ScriptedServer() as srv:
        calls = []

        def no_range(h, data):
            calls.append(h.headers.get("Range"))
            h.send_response(200)
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data if len(calls) > 1 else data[:1024 * 1024])
            h.close_connection = True
        serve_image(srv, blob_handler=no_range)
        assert do_pull(srv, tmp_path / "c").digest == IMG.digest
        assert calls[0] is None and calls[1] and calls[1].startswith("bytes=")  # asked to resume...
        # ...got the whole body instead, and the kept bytes were thrown away, not doubled.


def test_short_content_length_fails_the_digest_once_more_then_reports(tmp_path):
    with ScriptedServer() as srv:
        n = []

        def liar(h, data):
            n.append(1)
            reply(h, 200, data[:-10] + b"X" * 10)  # right size, wrong bytes
        serve_image(srv, blob_handler=liar)
        with pytest.raises(DigestMismatch, match="discarded"):
            do_pull(srv, tmp_path / "c")
        assert len(n) == 2
        store = Store(tmp_path / "c")
        assert not store.has_blob(LAYER) and not store.partial_path(LAYER).exists()
        assert_cache_valid(tmp_path / "c")


def test_endless_blob_body_is_cut_off(tmp_path):
    with ScriptedServer() as srv:
        serve_image(srv, blob_handler=lambda h, data: endless_body(h, b"A" * 65536, 10_000))
        with pytest.raises(DigestMismatch, match="larger than its descriptor"):
            do_pull(srv, tmp_path / "c")
        assert_cache_valid(tmp_path / "c")


def test_endless_manifest_is_cut_off(tmp_path):
    with ScriptedServer() as srv:
        serve_image(srv)

        srv.routes[("HEAD", "/v2/library/app/manifests/")] = lambda h, s: reply(h, 200, b"", {"Content-Length": "10"})
        srv.routes[("GET", "/v2/library/app/manifests/")] = lambda h, s: endless_body(
            h, b" " * 65536, 200, {"Content-Type": IMG.media_type})
        with pytest.raises(ManifestError, match="larger than 4 MiB"):
            do_pull(srv, tmp_path / "c")


def test_html_page_with_200(tmp_path):
    with ScriptedServer() as srv:
        serve_image(srv)
        page = b"<html><body>Welcome to the captive portal</body></html>"
        srv.routes[("HEAD", "/v2/library/app/manifests/")] = lambda h, s: reply(h, 200, b"", {"Content-Type": "text/html"})
        srv.routes[("GET", "/v2/library/app/manifests/")] = lambda h, s: reply(h, 200, page, {"Content-Type": "text/html"})
        p = cli.run("pull", "--cache", str(tmp_path / "c"), f"{srv.host}/library/app:1")
        assert p.returncode == 1 and "not valid JSON (an HTML page?)" in p.stderr
        assert p.stderr.count("\n") == 1


def test_manifest_digest_header_must_match(tmp_path):
    with ScriptedServer() as srv:
        serve_image(srv, manifest_headers={"Docker-Content-Digest": "sha256:" + "0" * 64})
        srv.routes[("HEAD", "/v2/library/app/manifests/")] = lambda h, s: reply(h, 200, b"")
        with pytest.raises(DigestMismatch):
            do_pull(srv, tmp_path / "c")


def test_registry_that_never_answers_fails_in_bounded_time(tmp_path):
    with ScriptedServer() as srv:
        serve_image(srv)
        stop = threading.Event()
        srv.routes[("HEAD", "/v2/library/app/manifests/")] = lambda h, s: stop.wait(30)
        # cli.run's timeout is the bound: a hang fails the test with TimeoutExpired.
        p = cli.run("pull", "--cache", str(tmp_path / "c"), "--retries", "1", "--retry-delay", "0.01",
                    "--stall-timeout", "0.5", f"{srv.host}/library/app:1", timeout=60)
        stop.set()
        assert p.returncode == 1 and "stopped answering" in p.stderr


def test_stalled_blob_is_retried(tmp_path):
    with ScriptedServer() as srv:
        stalls = []

        def stall_once(h, data):
            if not stalls:
                stalls.append(1)
                h.send_response(200)
                h.send_header("Content-Length", str(len(data)))
                h.end_headers()
                h.wfile.write(data[:50])
                h.wfile.flush()
                time.sleep(2.5)
                h.close_connection = True
                return
            rng = h.headers.get("Range")
            start = int(rng[6:].split("-")[0]) if rng else 0
            reply(h, 206 if start else 200, data[start:],
                  {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"} if start else {})
        serve_image(srv, blob_handler=stall_once)
        assert do_pull(srv, tmp_path / "c").digest == IMG.digest


def test_tls_is_verified_unless_the_registry_is_named_insecure(tmp_path):
    with ScriptedServer(tls=True) as srv:
        serve_image(srv)
        ref = f"{srv.host}/library/app:1"
        p = cli.run("pull", "--cache", str(tmp_path / "c"), "--retries", "0", ref)
        assert p.returncode == 1 and "TLS verification failed" in p.stderr, p.stderr
        assert Store(tmp_path / "c").refs() == []
        p = cli.run("pull", "--cache", str(tmp_path / "c"), "--insecure-registry", srv.host, "--json", ref)
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["digest"] == IMG.digest
        # Or, verified: the registry's CA where Docker keeps it (here under PULLER_CERTS_DIR).
        (tmp_path / "certs.d" / srv.host).mkdir(parents=True)
        (tmp_path / "certs.d" / srv.host / "ca.crt").write_bytes(srv.cert_pem)
        p = cli.run("pull", "--cache", str(tmp_path / "d"), "--retries", "0", "--json", ref,
                    env={"PULLER_CERTS_DIR": str(tmp_path / "certs.d")})
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["digest"] == IMG.digest


def test_the_ping_is_retried_too(tmp_path):
    with ScriptedServer() as srv:
        serve_image(srv)
        left = {"n": 2}
        plain = srv.routes[("GET", "/v2/")]

        def flaky_ping(h, s):
            if h.path == "/v2/" and left["n"] > 0:
                left["n"] -= 1
                return reply(h, 503, b"")
            plain(h, s)
        srv.routes[("GET", "/v2/")] = flaky_ping
        assert do_pull(srv, tmp_path / "c").digest == IMG.digest
        assert [x.path for x in srv.seen].count("/v2/") == 3
