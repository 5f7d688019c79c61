"""Registry credentials, found and saved where Docker keeps them.

Users already ran ``docker login`` (or a cloud CLI that set up a credential helper), so
puller reads the same file, ``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``:

- ``credHelpers[host]`` names a helper for one registry, ``credsStore`` one for all others;
  a helper is the program ``docker-credential-<name>``, spoken to with the ``get``/``store``/
  ``erase`` verbs on stdin and JSON on stdout (docker-credential-helpers' protocol);
- otherwise ``auths[key].auth`` is base64 of ``user:password`` and ``auths[key].identitytoken``
  an OAuth refresh token from ``docker login`` on Docker Hub.

When that file has nothing for a registry, podman's and skopeo's ``auth.json`` (same
format) is read next. Keys are matched the way docker/cli matches them: Docker Hub's key is
``https://index.docker.io/v1/``, and ``docker.io``, ``index.docker.io`` and
``registry-1.docker.io`` name the same registry; any other key matches on ``host[:port]``
whatever scheme or path (``https://r:5000/v2/``) it was written with.

:func:`store` and :func:`erase` are ``puller login`` and ``puller logout``: they change only
the entry of that registry, write the file atomically with mode 0600, and leave every other
key as it was, so Docker keeps working with the same file. Nothing here prints, and nothing
heavy is imported until a helper has to run or the file has to be written.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from puller.errors import AuthError, DiskFull, UsageError

TYPE_CHECKING = False  # typing costs an import on the warm path; only checkers need it
if TYPE_CHECKING:
    from typing import Any

__all__ = ["DOCKER_HUB_KEY", "Credentials", "config_file", "containers_auth_files", "erase", "lookup", "store"]

DOCKER_HUB_KEY = "https://index.docker.io/v1/"
"""The key Docker writes Docker Hub's credentials under (and sends to helpers)."""

_HUB_HOSTS = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
_TOKEN_USERNAME = "<token>"  # the helper protocol's marker for an identity token
_HELPER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_NOT_FOUND = "credentials not found"
_SECRET_FIELDS = ("auth", "identitytoken", "password")


@dataclass(frozen=True, slots=True)
class Credentials:
    """What to authenticate with: a username and password, or an identity token.

    The secrets are left out of ``repr`` so that logging a value never leaks them.
    """

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    identity_token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for name in ("username", "password", "identity_token"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise UsageError(f"credentials: {name} must be a non-empty string or None")
        if self.password is not None and self.username is None:
            raise UsageError("credentials: a password needs a username")
        if self.password is None and self.identity_token is None:
            raise UsageError("credentials: need a password or an identity token")

    def __repr__(self) -> str:
        def shown(secret: str | None) -> str:
            return "None" if secret is None else "'***'"
        return (f"Credentials(username={self.username!r}, password={shown(self.password)}, "
                f"identity_token={shown(self.identity_token)})")


def config_file(config_path: Path | None = None) -> Path:
    """The file to use: ``config_path``, ``$DOCKER_CONFIG/config.json``, ``~/.docker/config.json``.

    Resolved at call time, so a changed environment (or a test's) is honoured.
    """
    if config_path is not None:
        return Path(config_path)
    directory = os.environ.get("DOCKER_CONFIG")
    base = Path(directory) if directory else Path.home() / ".docker"
    return base / "config.json"


def _hostname(key: str) -> str:
    """Reduce a registry name or config key to ``host[:port]``, Docker Hub to ``docker.io``.

    This is docker/cli's ``ConvertToHostname`` plus the Hub aliases, lower-cased because
    host names are case-insensitive.
    """
    host = key.strip()
    for scheme in ("https://", "http://"):
        if host.lower().startswith(scheme):
            host = host[len(scheme):]
            break
    host = host.split("/", 1)[0].lower()
    return "docker.io" if host in _HUB_HOSTS else host


def _config_key(host: str) -> str:
    """The key Docker itself would write for ``host`` (and send to a helper)."""
    return DOCKER_HUB_KEY if host == "docker.io" else host


def _checked_host(registry: str) -> str:
    if not isinstance(registry, str) or not _hostname(registry):
        raise UsageError(f"not a registry name: {registry!r}")
    return _hostname(registry)


# --- the config file --------------------------------------------------------------------

def _read_config(path: Path) -> dict[str, Any]:
    """Load the config file; a missing or empty file is an empty config, as for Docker."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not text.strip():
        return {}
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path} is not valid JSON (line {exc.lineno}): {exc.msg}") from None
    if not isinstance(config, dict):
        raise UsageError(f"{path} must hold a JSON object")
    return config


def _section(config: dict[str, Any], name: str, path: Path) -> dict[str, Any]:
    value = config.get(name, {})
    if not isinstance(value, dict):
        raise UsageError(f'{path}: "{name}" must be an object')
    return value


def _write_config(path: Path, config: dict[str, Any]) -> None:
    """Replace the file atomically (temp file in the same directory, then rename), mode 0600.

    A symlinked config (dotfile managers do this) is written through to its target, as
    Docker does, instead of being replaced by a regular file.
    """
    target = Path(os.path.realpath(path))
    data = (json.dumps(config, indent="\t") + "\n").encode("utf-8")
    try:
        if not target.parent.is_dir():
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _replace(target, data)
    except OSError as exc:
        import errno

        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(f"cannot write {path}: {exc.strerror}") from None
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None


def _replace(target: Path, data: bytes) -> None:
    import tempfile

    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


# --- credential helpers -----------------------------------------------------------------

def _helper_for(config: dict[str, Any], host: str, path: Path) -> str | None:
    """``credHelpers[host]`` if set, else ``credsStore``, else None (use ``auths``)."""
    for key, name in _section(config, "credHelpers", path).items():
        if _hostname(key) == host:  # "" opts this host out of credsStore, as in docker/cli
            return _checked_helper(name, f'credHelpers["{key}"]', path) if name else None
    name = config.get("credsStore")
    return _checked_helper(name, "credsStore", path) if name else None


def _checked_helper(name: object, where: str, path: Path) -> str:
    # The name becomes part of a program name: refuse anything that could be a path.
    if not isinstance(name, str) or not _HELPER_NAME.fullmatch(name):
        raise UsageError(f"{path}: {where} is not a credential helper name: {name!r}")
    return name


class _HelperNotFound(Exception):
    """Internal: the helper answered "credentials not found"."""


def _run_helper(name: str, verb: str, payload: str, path: Path) -> str:
    """Run ``docker-credential-<name> <verb>`` with ``payload`` on stdin; return stdout."""
    import subprocess

    program = f"docker-credential-{name}"
    try:
        done = subprocess.run([program, verb], input=payload, capture_output=True,
                              encoding="utf-8", errors="replace", check=False)
    except FileNotFoundError:
        raise UsageError(f"credential helper {program} not found on PATH "
                         f"(named in {path})") from None
    except OSError as exc:
        raise UsageError(f"cannot run credential helper {program}: {exc.strerror}") from None
    if done.returncode != 0:
        said = (done.stdout.strip() or done.stderr.strip() or f"exit status {done.returncode}")
        if _NOT_FOUND in said.lower():
            raise _HelperNotFound
        raise AuthError(f"credential helper {program} {verb} failed: {said.splitlines()[0]}")
    return done.stdout


def _helper_get(name: str, host: str, path: Path) -> Credentials | None:
    try:
        out = _run_helper(name, "get", _config_key(host), path)
    except _HelperNotFound:
        return None
    try:
        answer = json.loads(out)
    except json.JSONDecodeError:
        answer = None
    if not isinstance(answer, dict):
        raise AuthError(f"credential helper docker-credential-{name} get did not answer "
                        "with a JSON object")
    username, secret = answer.get("Username") or None, answer.get("Secret") or None
    if secret is None:
        return None  # an empty answer means anonymous
    if not isinstance(secret, str):
        raise AuthError(f"credential helper docker-credential-{name} get returned a Secret "
                        "that is not a string")
    if username == _TOKEN_USERNAME:
        return Credentials(identity_token=secret)
    if not isinstance(username, str):
        raise AuthError(f"credential helper docker-credential-{name} get returned a secret "
                        "without a username")
    return Credentials(username, secret)


# --- auths entries ----------------------------------------------------------------------

def _find_entry(auths: dict[str, Any], host: str) -> tuple[str, dict[str, Any]] | None:
    """The entry for ``host``: Docker's own key first, then any alias, in file order."""
    canonical = _config_key(host)
    keys = [canonical] if canonical in auths else []
    aliases = [k for k in auths if k != canonical and _hostname(k) == host]
    keys += sorted(aliases, key=lambda k: "/" in k.split("://", 1)[-1].rstrip("/"))  # host/ns keys last
    for key in keys:
        entry = auths[key]
        if _has_secret(entry):
            return key, entry
    return None


def _from_entry(key: str, entry: dict[str, Any], path: Path) -> Credentials:
    where = f'{path}: auths["{key}"]'
    username, password = entry.get("username") or None, entry.get("password") or None
    if entry.get("auth"):
        username, password = _decode_auth(entry["auth"], where)
    token = entry.get("identitytoken") or None
    for value in (username, password, token):
        if value is not None and not isinstance(value, str):
            raise UsageError(f"{where} holds a value that is not a string")
    if password is None and token is None:
        raise UsageError(f"{where} has a username but no password")
    return Credentials(username or None, password, token)


def _decode_auth(auth: object, where: str) -> tuple[str | None, str | None]:
    """Decode ``base64(user:password)``; Docker writes ``user:`` beside an identity token."""
    problem = f'{where}.auth is not base64 of "user:password"'
    if not isinstance(auth, str):
        raise UsageError(problem)
    try:
        text = base64.b64decode(auth + "=" * (-len(auth) % 4), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise UsageError(problem) from None
    username, colon, password = text.partition(":")
    if not colon:
        raise UsageError(problem)
    return username or None, password or None


# --- public API -------------------------------------------------------------------------

def lookup(registry: str, *, config_path: Path | None = None) -> Credentials | None:
    """Credentials for ``registry`` (``docker.io``, ``host:port``...), or None for anonymous.

    Follows Docker: a configured helper decides alone (its "credentials not found" means
    anonymous); without one, the ``auths`` entry is used. When Docker's file says nothing
    about the registry, the files ``podman login`` and ``skopeo login`` write are read the
    same way (see :func:`containers_auth_files`), unless ``config_path`` names one file.
    """
    host = _checked_host(registry)
    paths = [config_file(config_path)] + ([] if config_path is not None else containers_auth_files())
    for i, path in enumerate(paths):
        if i and not os.access(path, os.R_OK):
            continue  # podman's files are a fallback: one we cannot read is one we do not have
        config = _read_config(path)
        helper = _helper_for(config, host, path)
        if helper is not None:
            return _helper_get(helper, host, path)
        found = _find_entry(_section(config, "auths", path), host)
        if found:
            return _from_entry(*found, path)
    return None


def containers_auth_files() -> list[Path]:
    """Where podman, buildah and skopeo keep logins (containers-auth.json(5)):
    ``$REGISTRY_AUTH_FILE`` alone when it is set, else ``$XDG_RUNTIME_DIR/containers/auth.json``
    then ``$XDG_CONFIG_HOME/containers/auth.json`` (``~/.config/...``)."""
    env = os.environ.get("REGISTRY_AUTH_FILE")
    if env:
        return [Path(env)]
    files = []
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        files.append(Path(runtime) / "containers" / "auth.json")
    config_home = os.environ.get("XDG_CONFIG_HOME")
    files.append((Path(config_home) if config_home else Path.home() / ".config") / "containers" / "auth.json")
    return files


def store(registry: str, username: str, password: str, *, identity_token: str | None = None,
          config_path: Path | None = None) -> None:
    """Save credentials for ``registry`` as ``docker login`` does (``puller login``).

    With a helper configured for the registry the secret goes to the helper and the file
    gets an empty ``auths`` entry (Docker's marker); otherwise the file stores
    ``auths[key].auth``. Given an ``identity_token`` (the registry's token server issued
    one at login), that is the secret kept, not the password: ``auth`` then holds only
    ``user:`` and ``identitytoken`` the token, as Docker writes them. Every other key in
    the file is kept.
    """
    host = _checked_host(registry)
    if not isinstance(username, str) or not username or ":" in username:
        raise UsageError("username must be non-empty and must not contain ':'")
    if not isinstance(password, str) or not password:
        raise UsageError("password must not be empty")
    path = config_file(config_path)
    config = _read_config(path)
    auths = _section(config, "auths", path)
    key = _config_key(host)
    old = auths.get(key)
    entry = {k: v for k, v in (old if isinstance(old, dict) else {}).items()
             if k not in (*_SECRET_FIELDS, "username")}
    helper = _helper_for(config, host, path)
    if helper is not None:
        user, secret = (_TOKEN_USERNAME, identity_token) if identity_token else (username, password)
        payload = json.dumps({"ServerURL": key, "Username": user, "Secret": secret})
        _run_helper(helper, "store", payload, path)
    else:  # an identity token replaces the password: Docker then writes "user:" alone
        secret = "" if identity_token else password
        entry["auth"] = base64.b64encode(f"{username}:{secret}".encode()).decode("ascii")
        if identity_token:
            entry["identitytoken"] = identity_token
    config["auths"] = {**auths, key: entry}
    _write_config(path, config)


def erase(registry: str, *, config_path: Path | None = None) -> bool:
    """Forget the credentials for ``registry`` (``puller logout``); True if any were stored.

    Removes every ``auths`` key that names the registry (all Docker Hub aliases, say), so
    that no stale alias is found by the next :func:`lookup`, and erases from the helper.
    """
    host = _checked_host(registry)
    path = config_file(config_path)
    config = _read_config(path)
    helper = _helper_for(config, host, path)
    erased = False
    if helper is not None:
        try:
            _run_helper(helper, "erase", _config_key(host), path)
            erased = True
        except _HelperNotFound:
            pass
    auths = _section(config, "auths", path)
    stale = [k for k in auths if _hostname(k) == host]
    if stale:
        erased = erased or any(_has_secret(auths[k]) for k in stale)
        config["auths"] = {k: v for k, v in auths.items() if k not in stale}
        _write_config(path, config)
    return erased


def _has_secret(entry: object) -> bool:
    return isinstance(entry, dict) and any(entry.get(f) for f in _SECRET_FIELDS)
