"""The registry client: manifests, blobs and tags of one registry, through its mirrors.

A ``Registry`` speaks the distribution API (``/v2/<name>/manifests|blobs|tags``) to one
registry and, for pulls, to the mirrors configured for it first (Docker's
``registry-mirrors``): each mirror is tried in turn, and any failure of a mirror falls back
to the next one and finally to the registry itself. Manifests are checked against the
digest they were asked by, or against ``Docker-Content-Digest``, on their raw bytes.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ._log import get_logger
from .errors import (ManifestError, NetworkError, PullerError, RegistryError,
                     UsageError, DigestMismatch)
from .reference import is_loopback_host
from .manifest import MANIFEST_ACCEPT, MAX_MANIFEST_SIZE, Index, Manifest, digest_of, parse

log = get_logger("puller.registry")

__all__ = ["Registry", "RegistryOptions", "ManifestHead", "load_config"]

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"


def load_config(path: str | os.PathLike | None = None) -> dict:
    """puller's own config file: ``$PULLER_CONFIG`` or ``~/.config/puller/config.json``.

    Keys (all optional): ``registry-mirrors`` (list of URLs, for docker.io, as Docker's
    daemon.json), ``mirrors`` ({registry: [URLs]}), ``insecure-registries`` (list).
    """
    explicit = path or os.environ.get("PULLER_CONFIG")
    p = Path(explicit or Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "puller" / "config.json")
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        return {}
    except PermissionError:
        if explicit:
            raise UsageError(f"cannot read config file {p}: permission denied") from None
        log.warning("ignoring unreadable config file %s", p)  # e.g. another user's HOME
        return {}
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read config file {p}: {e}") from None
    if not isinstance(doc, dict):
        raise UsageError(f"config file {p} is not a JSON object")
    return doc


@dataclass(frozen=True, slots=True)
class RegistryOptions:
    """How to reach registries: mirrors, insecure hosts, retry policy, credentials file."""

    mirrors: tuple[tuple[str, tuple[str, ...]], ...] = ()   # (registry, (mirror URLs...))
    insecure_registries: frozenset[str] = frozenset()
    insecure_tls: bool = False
    retry: object = None            # transport.RetryPolicy; None = defaults
    docker_config: Path | None = None
    username: str | None = None     # explicit credentials override the config file
    password: str | None = None

    @classmethod
    def build(cls, *, mirrors: list[str] | tuple[str, ...] = (), insecure: list[str] | tuple[str, ...] = (),
              config: dict | None = None, **kw) -> "RegistryOptions":
        """Merge --registry-mirror flags, $PULLER_REGISTRY_MIRRORS and the config file."""
        config = load_config() if config is None else config
        table: dict[str, list[str]] = {}
        env = [m.strip() for m in os.environ.get("PULLER_REGISTRY_MIRRORS", "").split(",") if m.strip()]
        for url in [*mirrors, *env, *(config.get("registry-mirrors") or [])]:
            table.setdefault(DOCKER_HUB, []).append(_check_mirror(url))
        for reg, urls in (config.get("mirrors") or {}).items():
            for url in urls:
                table.setdefault(_norm_registry(reg), []).append(_check_mirror(url))
        ins = frozenset([*insecure, *(config.get("insecure-registries") or [])])
        return cls(tuple((k, tuple(dict.fromkeys(v))) for k, v in table.items()), ins, **kw)

    def mirrors_for(self, registry: str) -> tuple[str, ...]:
        return dict(self.mirrors).get(registry, ())


def _norm_registry(reg: str) -> str:
    reg = reg.lower()
    return DOCKER_HUB if reg in ("index.docker.io", "registry-1.docker.io", "docker.io") else reg


def _check_mirror(url: str) -> str:
    u = urlsplit(url if "://" in url else "https://" + url)
    if u.scheme not in ("http", "https") or not u.netloc:
        raise UsageError(f"invalid registry mirror {url!r}: expected a URL like https://mirror.example:5000")
    return f"{u.scheme}://{u.netloc}"


@dataclass(frozen=True, slots=True)
class ManifestHead:
    """What a HEAD on a manifest tells: its digest, media type and size."""

    digest: str
    media_type: str
    size: int | None


class Registry:
    """One registry (``docker.io``, ``127.0.0.1:5000``...) and its mirrors."""

    def __init__(self, registry: str, options: RegistryOptions = RegistryOptions(), *,
                 on_event: Callable[[dict], None] | None = None, session=None, memo=None) -> None:
        from .transport.http import Client
        from .transport.transport import RetryPolicy, Transport
        self.registry = registry
        self.options = options
        self.on_event = on_event or (lambda e: None)
        retry = options.retry or RetryPolicy()
        self._owned = None if session is not None else Client()
        session = session or self._owned  # one pool: the registry, its mirrors, their CDNs
        host = DOCKER_HUB_API if registry == DOCKER_HUB else registry
        self.is_docker_hub = registry == DOCKER_HUB
        self.primary = Transport(host, credentials=self._credentials(registry),
                                 plain_http=is_loopback_host(host) or host in options.insecure_registries,
                                 insecure_tls=options.insecure_tls or host in options.insecure_registries,
                                 retry=retry, session=session,
                                 on_event=self.on_event, memo=memo)
        self.mirrors = []
        # A mirror that fails is left quickly for the next one (and the registry itself).
        mirror_retry = dataclasses.replace(retry, retries=min(1, retry.retries))
        for url in options.mirrors_for(registry):
            u = urlsplit(url)
            allowed_http = is_loopback_host(u.netloc) or u.netloc in options.insecure_registries
            if u.scheme == "http" and not allowed_http:
                log.warning("ignoring plain-http mirror %s (add it to insecure-registries)", url)
                continue
            self.mirrors.append(Transport(u.netloc, credentials=self._credentials(u.netloc, mirror=True),
                                          scheme=u.scheme,
                                          insecure_tls=options.insecure_tls or u.netloc in options.insecure_registries,
                                          plain_http=allowed_http, retry=mirror_retry, session=session,
                                          on_event=self.on_event, memo=memo))
        self._dead: set[int] = set()

    def close(self) -> None:
        """Close the idle connections this registry opened (not those of a client passed in)."""
        if self._owned is not None:
            self._owned.close()

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _credentials(self, host: str, *, mirror: bool = False):
        from .transport.credentials import Credentials, lookup
        if self.options.username is not None and not mirror:
            return Credentials(self.options.username, self.options.password, None)
        try:
            return lookup(host, config_path=self.options.docker_config)
        except PullerError:
            raise
        except Exception as e:  # noqa: BLE001 - a broken config must not become a traceback
            raise UsageError(f"cannot read Docker credentials: {e}") from None

    # --- endpoints -----------------------------------------------------------------
    def _endpoints(self, *, pull: bool = True):
        eps = [(i, t) for i, t in enumerate(self.mirrors) if i not in self._dead] if pull else []
        return [*eps, (-1, self.primary)]

    def _try(self, fn, *, pull: bool = True):
        """Run ``fn(transport)`` on each mirror, then the registry; the registry's error wins."""
        last: Exception | None = None
        for i, t in self._endpoints(pull=pull):
            try:
                return fn(t)
            except (NetworkError, RegistryError, ManifestError, DigestMismatch) as e:
                if i < 0:
                    raise
                if isinstance(e, NetworkError):
                    self._dead.add(i)
                log.info("mirror %s failed (%s); falling back", t.host, e)
                self.on_event({"event": "mirror-fallback", "mirror": t.host, "reason": str(e)})
                last = e
        raise last or NetworkError("no endpoint")  # pragma: no cover - primary always last

    # --- manifests -----------------------------------------------------------------
    def head_manifest(self, repo: str, ident: str) -> ManifestHead | None:
        """The digest a tag points to, for free: Docker Hub does not count HEAD requests.
        None when the registry does not say (then the caller GETs)."""
        def go(t):
            resp = t.request("HEAD", f"/v2/{repo}/manifests/{ident}", scope=f"repository:{repo}:pull",
                             headers={"Accept": MANIFEST_ACCEPT})
            if resp.status_code != 200:
                t.raise_for(resp, f"{self.registry}/{repo}:{ident}", docker_hub=self.is_docker_hub)
            d = resp.headers.get("Docker-Content-Digest")
            resp.close()
            if not d:
                return None
            size = resp.headers.get("Content-Length")
            return ManifestHead(d, resp.headers.get("Content-Type", "").split(";")[0].strip(),
                                int(size) if size and size.isdigit() else None)
        return self._try(go)

    def get_manifest(self, repo: str, ident: str) -> Manifest | Index:
        """GET a manifest or index by tag or digest; verified on its raw bytes."""
        def go(t):
            resp = t.request("GET", f"/v2/{repo}/manifests/{ident}", scope=f"repository:{repo}:pull",
                             headers={"Accept": MANIFEST_ACCEPT})
            what = f"{self.registry}/{repo}{'@' if ':' in ident else ':'}{ident}"
            try:
                if resp.status_code != 200:
                    t.raise_for(resp, what, docker_hub=self.is_docker_hub)
                raw = _read_capped(resp, MAX_MANIFEST_SIZE, what)
            finally:
                resp.close()
            actual = digest_of(raw)
            if ":" in ident and ident != actual:
                raise DigestMismatch(f"{what}: manifest digest is {actual}, not the requested one")
            header = resp.headers.get("Docker-Content-Digest")
            if header and header.startswith("sha256:") and header != actual:
                raise DigestMismatch(f"{what}: manifest bytes hash to {actual} but the registry "
                                     f"says {header}")
            return parse(raw, resp.headers.get("Content-Type"))
        return self._try(go)

    # --- blobs ---------------------------------------------------------------------
    def open_blob(self, repo: str, digest: str, *, offset: int = 0):
        """A streaming response for a blob (200, or 206 from ``offset``); the caller closes
        it. Asks the registry URL anew each time, so a signed redirect is always fresh. A
        416 for the kept range means the server cannot resume: the whole blob then."""
        def go(t, start: int = offset):
            headers = {"Range": f"bytes={start}-"} if start else {}
            resp = t.request("GET", f"/v2/{repo}/blobs/{digest}", scope=f"repository:{repo}:pull",
                             headers=headers)
            if resp.status_code == 416 and start:
                resp.close()
                return go(t, 0)
            if resp.status_code not in (200, 206):
                t.raise_for(resp, f"blob {digest} of {self.registry}/{repo}", docker_hub=self.is_docker_hub)
            return resp
        return self._try(go)

    # --- tags ----------------------------------------------------------------------
    def tags(self, repo: str, *, page_size: int = 1000) -> Iterator[str]:
        """Every tag of ``repo``, following the ``Link`` header for pagination."""
        path: str | None = f"/v2/{repo}/tags/list?n={page_size}"
        t = self.primary
        seen = 0
        while path and seen < 10_000:
            seen += 1
            def go(tr, path=path):
                resp = tr.request("GET", path, scope=f"repository:{repo}:pull")
                if resp.status_code != 200:
                    tr.raise_for(resp, f"{self.registry}/{repo}", docker_hub=self.is_docker_hub)
                return resp
            resp = self._try(go) if seen == 1 else go(t)
            try:
                doc = resp.json()
            except ValueError:
                raise RegistryError(f"{self.registry}/{repo}: tag list is not JSON") from None
            yield from (doc.get("tags") or [])
            path = _next_link(resp.headers.get("Link"))

    @property
    def ratelimit(self):
        for t in [*self.mirrors, self.primary]:
            if t.last_ratelimit is not None:
                return t.last_ratelimit
        return None


def _next_link(header: str | None) -> str | None:
    if not header:
        return None
    for part in header.split(","):
        if 'rel="next"' in part or "rel=next" in part:
            start, end = part.find("<"), part.find(">")
            if 0 <= start < end:
                return part[start + 1:end]
    return None


def _read_capped(resp, cap: int, what: str) -> bytes:
    """Read a body of at most ``cap`` bytes: a lying or endless server is cut off."""
    try:
        raw = resp.read(cap + 1)
    except NetworkError as e:
        raise NetworkError(f"{what}: connection broke while reading the manifest ({e})") from None
    if len(raw) > cap:
        raise ManifestError(f"{what}: manifest is larger than {cap // (1024 * 1024)} MiB")
    return raw
