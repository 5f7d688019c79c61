"""Shared fixtures: real registries on 127.0.0.1 with the test catalog pushed, a token
server, and an environment that keeps tests away from the real user's files.

Session-scoped (started once, stopped by pid at the end of the session, also on failure):

- ``registry``: anonymous registry, ``catalog()`` pushed. ``.url``, ``.host``, ``.images``.
- ``basic_registry``: htpasswd basic auth (``.users``), ``catalog(private=True)`` pushed.
- ``token_registry``: bearer tokens from the token server, ``catalog(private=True)`` pushed.
- ``mirror``: a pull-through cache (``proxy.remoteurl``) in front of ``registry``.

Each is a ``fixtures.registry.RegistryProcess``: ``.url`` (``http://127.0.0.1:PORT``),
``.host``, ``.images`` (``"repo:tag"`` -> Image/Index, see ``fixtures.catalog``), ``.users``,
``.pid``, ``.log_path``, ``.hits(since=reg.mark())`` (requests served, from the access
log) and ``.has_blob(digest)``. Session registries are shared: never push to or delete
from them; use ``registry_factory`` for that.

Function-scoped:

- ``token_server``: the token server behind ``token_registry``, reset for each test
  (recorded requests cleared, ``expires_in`` and response fields back to defaults).
- ``registry_factory``: ``registry_factory(images=..., users=..., token=..., proxy=...)``
  starts a throw-away registry (stopped after the test), e.g. an upstream a test may kill.
- ``cache_dir``: ``tmp_path / "cache"`` (not created: puller must create it).
- ``isolated_env`` (autouse): ``HOME``, ``DOCKER_CONFIG``, ``XDG_*`` point into tmp dirs and
  ``PULLER_*`` variables are removed.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fixtures.catalog import catalog
from fixtures.push import Pusher
from fixtures.registry import Proxy, RegistryProcess, TokenAuth
from fixtures.tokenserver import TokenServer

USERS = {"alice": "wonderland", "bob": "builder"}
PUSHER = ("alice", "wonderland")  # the account the fixtures push with


def _start(tmp_path_factory: pytest.TempPathFactory, name: str,
           images: dict[str, Any] | None = None, *, push_auth: tuple[str, str] | None = None,
           **kw: Any) -> RegistryProcess:
    """Start a registry in a pytest-kept tmp dir (its log survives for debugging) and push
    ``images``; on a failed push the process is stopped before the error propagates."""
    reg = RegistryProcess.start(tmp_path_factory.mktemp(name), **kw)
    try:
        if images:
            Pusher(reg.url, auth=push_auth).push_all(images)
            reg.images = dict(images)
    except BaseException:
        reg.stop()
        raise
    return reg


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    reg = _start(tmp_path_factory, "registry", catalog())
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    reg = _start(tmp_path_factory, "basic-registry", catalog(private=True),
                 push_auth=PUSHER, users=USERS)
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def _token_server() -> Iterator[TokenServer]:
    with TokenServer(users=USERS) as ts:
        yield ts


@pytest.fixture
def token_server(_token_server: TokenServer) -> Iterator[TokenServer]:
    _token_server.reset()
    yield _token_server
    _token_server.reset()


def token_auth(ts: TokenServer) -> TokenAuth:
    """The registry ``auth: token:`` section that trusts ``ts``."""
    return TokenAuth(ts.realm, ts.service, ts.issuer, ts.cert_pem)


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory: pytest.TempPathFactory,
                   _token_server: TokenServer) -> Iterator[RegistryProcess]:
    reg = _start(tmp_path_factory, "token-registry", catalog(private=True),
                 push_auth=PUSHER, token=token_auth(_token_server))
    reg.users = dict(USERS)
    _token_server.reset()
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def mirror(tmp_path_factory: pytest.TempPathFactory,
           registry: RegistryProcess) -> Iterator[RegistryProcess]:
    reg = _start(tmp_path_factory, "mirror", proxy=Proxy(registry.url))
    reg.images = registry.images  # what it can serve (fetched from upstream on demand)
    yield reg
    reg.stop()


@pytest.fixture
def registry_factory(tmp_path_factory: pytest.TempPathFactory
                     ) -> Iterator[Callable[..., RegistryProcess]]:
    """Start extra registries for one test; all are stopped (by pid) after it."""
    started: list[RegistryProcess] = []

    def start(images: dict[str, Any] | None = None, *,
              push_auth: tuple[str, str] | None = None, **kw: Any) -> RegistryProcess:
        reg = _start(tmp_path_factory, "registry-fn", images, push_auth=push_auth, **kw)
        started.append(reg)
        return reg

    yield start
    for reg in started:
        reg.stop()


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory: pytest.TempPathFactory,
                 monkeypatch: pytest.MonkeyPatch) -> Path:
    """No test may read or write the real user's docker config, cache or puller settings."""
    root = tmp_path_factory.mktemp("env")
    for var, sub in (("HOME", "home"), ("DOCKER_CONFIG", "home/.docker"),
                     ("XDG_CACHE_HOME", "xdg-cache"), ("XDG_CONFIG_HOME", "xdg-config"),
                     ("XDG_RUNTIME_DIR", "xdg-runtime")):
        (root / sub).mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv(var, str(root / sub))
    for var in [v for v in os.environ if v.startswith("PULLER_")] + ["REGISTRY_AUTH_FILE"]:
        monkeypatch.delenv(var, raising=False)
    return root
