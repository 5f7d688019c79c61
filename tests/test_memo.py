"""The registries' memo: a warm pull from a token-auth registry is one HEAD; what the memo
holds never outlives its use, never holds a token got with credentials, and a stale memo
costs one 401, not a failure."""
from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

from puller.reference import parse as parse_ref
from puller.pull import pull
from puller.registry import RegistryOptions
from puller.store import Store
from puller.transport.memo import AuthMemo

CHALLENGE = ("bearer", {"realm": "https://auth.example/token", "service": "reg"})


def test_ping_and_tokens_round_trip_with_private_modes(tmp_path):
    memo = AuthMemo(tmp_path / "meta" / "hosts.json", tmp_path / "tmp")
    assert memo.recall("r.example") is None
    memo.save_ping("r.example", "https", CHALLENGE)
    memo.save_token("r.example", "repository:a:pull", "T", time.time() + 300)
    memo.save_token("r.example", "repository:b:pull", "short", time.time() + 2)  # not worth keeping
    again = AuthMemo(tmp_path / "meta" / "hosts.json")
    assert again.recall("r.example")[:2] == ("https", CHALLENGE)
    assert list(again.recall("r.example")[2]) == ["repository:a:pull"]
    assert stat.S_IMODE(os.stat(tmp_path / "meta" / "hosts.json").st_mode) == 0o600
    assert list((tmp_path / "tmp").iterdir()) == []
    memo.save_ping("r.example", "https", ("bearer", {"realm": "https://elsewhere/token"}))
    assert again.recall("r.example")[2] == {}  # a new authority: the old tokens go
    memo.forget("r.example")
    assert again.recall("r.example") is None


def test_an_old_or_torn_memo_is_ignored(tmp_path):
    path = tmp_path / "hosts.json"
    memo = AuthMemo(path)
    memo.save_ping("r.example", "https", None)
    doc = json.loads(path.read_text())
    doc["r.example"]["at"] -= 2 * 24 * 3600
    path.write_text(json.dumps(doc))
    assert memo.recall("r.example") is None
    path.write_text('{"r.example": {"scheme": "htt')
    assert memo.recall("r.example") is None


def _mirror_pull(reg, cache, **kw):
    """``alpine:3.10`` (docker.io) through ``reg`` as its mirror: a fixed scheme, as for
    Docker Hub itself, so the memo applies."""
    opts = RegistryOptions.build(config={}, mirrors=[f"http://{reg.host}"], **kw)
    return pull(parse_ref("alpine:3.10"), store=Store(cache), options=opts)


def test_a_warm_pull_is_one_head_with_no_ping_and_no_token_request(token_registry, token_server, tmp_path):
    first = _mirror_pull(token_registry, tmp_path / "c")
    assert len(token_server.requests) >= 1
    hosts = json.loads((tmp_path / "c" / "meta" / "registry" / "hosts.json").read_text())
    assert hosts[token_registry.host]["challenge"][0] == "bearer"
    asked, mark = len(token_server.requests), token_registry.mark()
    second = _mirror_pull(token_registry, tmp_path / "c")
    assert second.digest == first.digest and second.cached
    assert [(h.method, h.status) for h in token_registry.hits(since=mark)] == [("HEAD", 200)]
    assert len(token_server.requests) == asked


def test_tokens_got_with_credentials_are_not_written_down(token_registry, token_server, tmp_path):
    import base64
    cfg = Path(os.environ["DOCKER_CONFIG"]) / "config.json"
    cfg.write_text(json.dumps({"auths": {token_registry.host: {"auth": base64.b64encode(b"alice:wonderland").decode()}}}))
    _mirror_pull(token_registry, tmp_path / "c")
    assert any(r.authorization for r in token_server.requests)  # the tokens were got as alice
    hosts = json.loads((tmp_path / "c" / "meta" / "registry" / "hosts.json").read_text())
    assert hosts[token_registry.host]["tokens"] == {}


def test_a_stale_memo_costs_a_401_not_a_failure(token_registry, token_server, tmp_path):
    first = _mirror_pull(token_registry, tmp_path / "c")
    path = tmp_path / "c" / "meta" / "registry" / "hosts.json"
    hosts = json.loads(path.read_text())
    entry = hosts[token_registry.host]
    entry["tokens"] = {s: ["not-a-token", t[1]] for s, t in entry["tokens"].items()}
    path.write_text(json.dumps(hosts))
    assert _mirror_pull(token_registry, tmp_path / "c").digest == first.digest  # bad token: refetched
    entry["tokens"] = {}
    entry["challenge"] = None  # remembered as open, but the registry wants a token
    path.write_text(json.dumps(hosts))
    assert _mirror_pull(token_registry, tmp_path / "c").digest == first.digest
    assert json.loads(path.read_text())[token_registry.host]["challenge"][0] == "bearer"  # learnt again
