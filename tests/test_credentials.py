"""Credential lookup and login/logout against Docker's config.json and credential helpers.

The helper tests run a real ``docker-credential-test`` program (a small Python script the
test writes) found on PATH, so the stdin/stdout protocol is exercised for real.
"""
from __future__ import annotations

import base64
import json
import os
import stat
import sys
from pathlib import Path

import pytest

from puller.errors import AuthError, PullerError, UsageError
from puller.transport.credentials import (
    DOCKER_HUB_KEY, Credentials, config_file, erase, lookup, store)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return tmp_path / "docker" / "config.json"


def write(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


# --- where the file is ------------------------------------------------------------------

def test_config_file_follows_docker_config_then_home(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "d"))
    assert config_file() == tmp_path / "d" / "config.json"
    monkeypatch.delenv("DOCKER_CONFIG")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert config_file() == tmp_path / "home" / ".docker" / "config.json"
    assert config_file(tmp_path / "x.json") == tmp_path / "x.json"


def test_lookup_uses_docker_config_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write(tmp_path / "d" / "config.json", {"auths": {"r.example": {"auth": b64("u:p")}}})
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "d"))
    assert lookup("r.example") == Credentials("u", "p")


# --- auths entries ----------------------------------------------------------------------

def test_missing_or_empty_file_means_anonymous(config: Path) -> None:
    assert lookup("docker.io", config_path=config) is None
    write(config, "")
    assert lookup("docker.io", config_path=config) is None
    write(config, {"auths": {}})
    assert lookup("docker.io", config_path=config) is None


def test_basic_auth_entry(config: Path) -> None:
    write(config, {"auths": {"localhost:5000": {"auth": b64("alice:s3cr:et")}}})
    creds = lookup("localhost:5000", config_path=config)
    assert creds == Credentials("alice", "s3cr:et")  # only the first ':' splits
    assert lookup("localhost:5001", config_path=config) is None


def test_identity_token_entry(config: Path) -> None:
    # What docker login writes after an OAuth flow: "user:" plus the token.
    write(config, {"auths": {DOCKER_HUB_KEY: {"auth": b64("bob:"), "identitytoken": "tok"}}})
    creds = lookup("docker.io", config_path=config)
    assert creds == Credentials("bob", None, "tok")


def test_legacy_username_password_fields(config: Path) -> None:
    write(config, {"auths": {"r.example": {"username": "u", "password": "p"}}})
    assert lookup("r.example", config_path=config) == Credentials("u", "p")


def test_empty_placeholder_entry_means_anonymous(config: Path) -> None:
    write(config, {"auths": {DOCKER_HUB_KEY: {}}})
    assert lookup("docker.io", config_path=config) is None


@pytest.mark.parametrize("key", [
    DOCKER_HUB_KEY, "https://index.docker.io/v1", "index.docker.io/v1", "index.docker.io",
    "docker.io", "registry-1.docker.io", "https://registry-1.docker.io/v2/", "HTTPS://Docker.IO",
])
@pytest.mark.parametrize("registry", ["docker.io", "index.docker.io", "registry-1.docker.io",
                                      DOCKER_HUB_KEY])
def test_docker_hub_aliases_are_one_registry(config: Path, key: str, registry: str) -> None:
    write(config, {"auths": {key: {"auth": b64("hub:pw")}}})
    assert lookup(registry, config_path=config) == Credentials("hub", "pw")


@pytest.mark.parametrize("key", [
    "r.example:5000", "https://r.example:5000", "http://r.example:5000",
    "https://r.example:5000/v1/", "r.example:5000/v2/", "R.Example:5000",
])
def test_other_registries_match_on_host_and_port(config: Path, key: str) -> None:
    write(config, {"auths": {key: {"auth": b64("u:p")}}})
    assert lookup("r.example:5000", config_path=config) == Credentials("u", "p")
    assert lookup("r.example", config_path=config) is None
    assert lookup("docker.io", config_path=config) is None


def test_exact_docker_key_wins_over_an_alias(config: Path) -> None:
    write(config, {"auths": {"docker.io": {"auth": b64("old:1")},
                             DOCKER_HUB_KEY: {"auth": b64("new:2")}}})
    assert lookup("docker.io", config_path=config) == Credentials("new", "2")


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "not valid JSON"),
    ("[]", "JSON object"),
    ({"auths": []}, '"auths" must be an object'),
    ({"auths": {"r.example": {"auth": "!!!notbase64"}}}, "not base64"),
    ({"auths": {"r.example": {"auth": b64("nocolon")}}}, "not base64"),
    ({"auths": {"r.example": {"auth": b64("user:"), "identitytoken": ""}}}, "no password"),
    ({"credsStore": "../../bin/sh"}, "not a credential helper name"),
    ({"credHelpers": {"r.example": "a b"}}, "not a credential helper name"),
])
def test_broken_config_is_a_clear_error(config: Path, content: object, message: str) -> None:
    write(config, content)
    with pytest.raises(UsageError, match=message) as info:
        lookup("r.example", config_path=config)
    assert str(config) in str(info.value) and "\n" not in str(info.value)


# --- Credentials ------------------------------------------------------------------------

def test_repr_hides_secrets() -> None:
    creds = Credentials("alice", "hunter2", "tok-abc")
    assert "hunter2" not in repr(creds) and "tok-abc" not in repr(creds)
    assert "hunter2" not in str(creds)
    assert "alice" in repr(creds)


def test_credentials_validate() -> None:
    with pytest.raises(UsageError):
        Credentials("alice")
    with pytest.raises(UsageError):
        Credentials(None, "pw")
    with pytest.raises(UsageError):
        Credentials("", "pw")
    assert Credentials(identity_token="t").username is None


# --- store / erase (login / logout) -----------------------------------------------------

def test_store_writes_auth_with_private_modes(config: Path) -> None:
    store("docker.io", "alice", "pw", config_path=config)
    data = json.loads(config.read_text())
    assert data == {"auths": {DOCKER_HUB_KEY: {"auth": b64("alice:pw")}}}
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert stat.S_IMODE(config.parent.stat().st_mode) == 0o700
    assert lookup("registry-1.docker.io", config_path=config) == Credentials("alice", "pw")


def test_store_keeps_other_keys_and_tightens_mode(config: Path) -> None:
    original = {"auths": {"other.example": {"auth": b64("o:p")},
                          "r.example:5000": {"auth": b64("old:x"), "email": "a@b"}},
                "proxies": {"default": {"httpProxy": "http://p:3128"}},
                "psFormat": "table {{.ID}}", "currentContext": "ctx"}
    write(config, original)
    config.chmod(0o644)
    store("https://r.example:5000/v2/", "new", "pw", config_path=config)
    data = json.loads(config.read_text())
    assert data["auths"]["r.example:5000"] == {"auth": b64("new:pw"), "email": "a@b"}
    assert data["auths"]["other.example"] == original["auths"]["other.example"]
    assert {k: v for k, v in data.items() if k != "auths"} == {
        k: v for k, v in original.items() if k != "auths"}
    assert stat.S_IMODE(config.stat().st_mode) == 0o600


def test_store_is_atomic_and_leaves_no_temp_files(config: Path) -> None:
    write(config, {"auths": {}})
    before = config.stat().st_ino
    store("r.example", "u", "p", config_path=config)
    assert config.stat().st_ino != before  # replaced by rename, not rewritten in place
    assert sorted(p.name for p in config.parent.iterdir()) == ["config.json"]


def test_store_writes_through_a_symlinked_config(tmp_path: Path) -> None:
    real = write(tmp_path / "dotfiles" / "docker.json", {"auths": {}})
    link = tmp_path / "docker" / "config.json"
    link.parent.mkdir()
    link.symlink_to(real)
    store("r.example", "u", "p", config_path=link)
    assert link.is_symlink()
    assert lookup("r.example", config_path=real) == Credentials("u", "p")


def test_store_refuses_a_corrupt_file_instead_of_clobbering_it(config: Path) -> None:
    write(config, "{oops")
    with pytest.raises(UsageError, match="not valid JSON"):
        store("r.example", "u", "p", config_path=config)
    assert config.read_text() == "{oops"


@pytest.mark.parametrize(("username", "password"), [("", "p"), ("a:b", "p"), ("u", "")])
def test_store_refuses_bad_input(config: Path, username: str, password: str) -> None:
    with pytest.raises(UsageError):
        store("r.example", username, password, config_path=config)
    assert not config.exists()


def test_erase_removes_every_alias_and_keeps_the_rest(config: Path) -> None:
    write(config, {"auths": {"docker.io": {"auth": b64("a:1")},
                             DOCKER_HUB_KEY: {"auth": b64("b:2")},
                             "r.example": {"auth": b64("c:3")}}, "credHelpers": {}})
    assert erase("index.docker.io", config_path=config) is True
    data = json.loads(config.read_text())
    assert data == {"auths": {"r.example": {"auth": b64("c:3")}}, "credHelpers": {}}
    assert lookup("docker.io", config_path=config) is None
    assert erase("docker.io", config_path=config) is False


def test_erase_without_a_file_is_false(config: Path) -> None:
    assert erase("r.example", config_path=config) is False
    assert not config.exists()


# --- credential helpers -----------------------------------------------------------------

FAKE_HELPER = """\
#!{python}
# A docker-credential-* helper that keeps secrets in a JSON file next to itself.
import json, os, sys
here = os.path.dirname(os.path.abspath(__file__))
db_path = os.path.join(here, "store.json")
db = json.load(open(db_path)) if os.path.exists(db_path) else {{}}
verb, data = sys.argv[1], sys.stdin.read()
with open(os.path.join(here, "calls.log"), "a") as log:
    log.write(json.dumps([verb, data]) + "\\n")
if os.environ.get("FAKE_HELPER_BROKEN"):
    print("keychain is locked")
    sys.exit(1)
if verb == "get":
    if data not in db:
        print("credentials not found in native keychain")
        sys.exit(1)
    print(json.dumps({{"ServerURL": data, **db[data]}}))
elif verb == "store":
    req = json.loads(data)
    db[req["ServerURL"]] = {{"Username": req["Username"], "Secret": req["Secret"]}}
elif verb == "erase":
    if data not in db:
        print("credentials not found in native keychain")
        sys.exit(1)
    del db[data]
json.dump(db, open(db_path, "w"))
"""


@pytest.fixture
def helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Install ``docker-credential-test`` on PATH; returns its directory."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "docker-credential-test"
    script.write_text(FAKE_HELPER.format(python=sys.executable))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return bin_dir


def helper_db(bin_dir: Path, data: dict[str, dict[str, str]]) -> None:
    (bin_dir / "store.json").write_text(json.dumps(data))


def calls(bin_dir: Path) -> list[list[str]]:
    log = bin_dir / "calls.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_creds_store_get(config: Path, helper: Path) -> None:
    helper_db(helper, {DOCKER_HUB_KEY: {"Username": "hubuser", "Secret": "pw"}})
    write(config, {"credsStore": "test", "auths": {DOCKER_HUB_KEY: {}}})
    assert lookup("registry-1.docker.io", config_path=config) == Credentials("hubuser", "pw")
    assert calls(helper) == [["get", DOCKER_HUB_KEY]]  # Hub's key goes on stdin


def test_helper_token_username_means_identity_token(config: Path, helper: Path) -> None:
    helper_db(helper, {"r.example": {"Username": "<token>", "Secret": "refresh-me"}})
    write(config, {"credsStore": "test"})
    assert lookup("r.example", config_path=config) == Credentials(identity_token="refresh-me")


def test_helper_not_found_means_anonymous_even_with_an_auths_entry(config: Path,
                                                                   helper: Path) -> None:
    # Docker asks only the helper once one is configured.
    write(config, {"credsStore": "test", "auths": {"r.example": {"auth": b64("u:p")}}})
    assert lookup("r.example", config_path=config) is None


def test_cred_helpers_beat_creds_store_and_match_aliases(config: Path, helper: Path) -> None:
    helper_db(helper, {"r.example:5000": {"Username": "u", "Secret": "p"}})
    write(config, {"credsStore": "missing-store",
                   "credHelpers": {"https://r.example:5000": "test"}})
    assert lookup("r.example:5000", config_path=config) == Credentials("u", "p")
    assert calls(helper) == [["get", "r.example:5000"]]


def test_empty_cred_helper_opts_a_host_out_of_creds_store(config: Path, helper: Path) -> None:
    write(config, {"credsStore": "test", "credHelpers": {"r.example": ""},
                   "auths": {"r.example": {"auth": b64("file:pw")}}})
    assert lookup("r.example", config_path=config) == Credentials("file", "pw")
    assert calls(helper) == []


def test_missing_helper_binary_is_a_clear_error(config: Path, helper: Path) -> None:
    write(config, {"credsStore": "nosuchhelper"})
    with pytest.raises(UsageError, match="docker-credential-nosuchhelper not found on PATH"):
        lookup("docker.io", config_path=config)


def test_failing_helper_reports_its_first_line(config: Path, helper: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    write(config, {"credsStore": "test"})
    monkeypatch.setenv("FAKE_HELPER_BROKEN", "1")
    with pytest.raises(AuthError, match="docker-credential-test get failed: keychain is locked"):
        lookup("docker.io", config_path=config)


def test_helper_store_and_erase(config: Path, helper: Path) -> None:
    write(config, {"credsStore": "test", "auths": {DOCKER_HUB_KEY: {"auth": b64("plain:old")}},
                   "detachKeys": "ctrl-e"})
    store("docker.io", "alice", "pw", config_path=config)
    stored = json.loads((helper / "store.json").read_text())
    assert stored == {DOCKER_HUB_KEY: {"Username": "alice", "Secret": "pw"}}
    data = json.loads(config.read_text())
    # The secret lives in the helper; the file keeps Docker's empty marker and nothing else.
    assert data == {"credsStore": "test", "auths": {DOCKER_HUB_KEY: {}}, "detachKeys": "ctrl-e"}
    assert "pw" not in config.read_text()
    assert lookup("docker.io", config_path=config) == Credentials("alice", "pw")

    assert erase("docker.io", config_path=config) is True
    assert json.loads((helper / "store.json").read_text()) == {}
    assert json.loads(config.read_text()) == {"credsStore": "test", "auths": {},
                                              "detachKeys": "ctrl-e"}
    assert erase("docker.io", config_path=config) is False
    assert [verb for verb, _ in calls(helper)] == ["store", "get", "erase", "erase"]


def test_an_identity_token_is_stored_instead_of_the_password(config: Path, helper: Path) -> None:
    store("r.example", "alice", "secret-pw", identity_token="refresh-1", config_path=config)
    entry = json.loads(config.read_text())["auths"]["r.example"]
    assert entry == {"auth": b64("alice:"), "identitytoken": "refresh-1"}  # as Docker writes it
    assert "secret-pw" not in config.read_text()
    assert lookup("r.example", config_path=config) == Credentials("alice", None, "refresh-1")
    write(config, {"credsStore": "test"})
    store("docker.io", "alice", "secret-pw", identity_token="refresh-2", config_path=config)
    assert json.loads((helper / "store.json").read_text()) == {
        DOCKER_HUB_KEY: {"Username": "<token>", "Secret": "refresh-2"}}  # the helper protocol's marker
    assert lookup("docker.io", config_path=config) == Credentials(identity_token="refresh-2")


def test_every_error_is_a_puller_error(config: Path) -> None:
    write(config, {"auths": {"r.example": {"auth": 42}}})
    with pytest.raises(PullerError):
        lookup("r.example", config_path=config)


def test_warm_path_modules_import_nothing_heavy() -> None:
    """References, challenges and credentials are read on every pull, warm ones included."""
    import subprocess

    code = ("import sys; before = set(sys.modules); import puller.reference, "
            "puller.transport.challenge, puller.transport.credentials; "
            "print(' '.join(sorted(set(sys.modules) - before)))")
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                check=True).stdout.split())
    # (ipaddress is not on the list: pathlib brings it with urllib.parse, which the HTTP
    # client needs on every pull anyway)
    heavy = {"requests", "urllib3", "subprocess", "tempfile", "typing", "typer", "logging"}
    assert "puller.transport.credentials" in loaded
    assert not loaded & heavy


# --- podman / skopeo logins ----------------------------------------------------------------

def test_podman_and_skopeo_logins_are_read_when_docker_has_none(tmp_path: Path) -> None:
    podman = write(Path(os.environ["XDG_RUNTIME_DIR"]) / "containers" / "auth.json",
                   {"auths": {"quay.example/team": {"auth": b64("ns:scoped")},
                              "quay.example": {"auth": b64("podman:pw")}}})
    assert lookup("quay.example") == Credentials("podman", "pw")  # the host's own key first
    write(Path(os.environ["DOCKER_CONFIG"]) / "config.json", {"auths": {"quay.example": {"auth": b64("docker:pw")}}})
    assert lookup("quay.example") == Credentials("docker", "pw")  # Docker's file wins
    assert lookup("other.example") is None
    assert lookup("quay.example", config_path=tmp_path / "none.json") is None  # one file only
    podman.unlink()


def test_registry_auth_file_replaces_the_default_places(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write(Path(os.environ["XDG_CONFIG_HOME"]) / "containers" / "auth.json",
          {"auths": {"r.example": {"auth": b64("home:pw")}}})
    assert lookup("r.example") == Credentials("home", "pw")
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(write(tmp_path / "auth.json",
                                                       {"auths": {"r.example": {"auth": b64("env:pw")}}})))
    assert lookup("r.example") == Credentials("env", "pw")

