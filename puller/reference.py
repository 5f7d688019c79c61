"""Image references, parsed and normalised exactly as Docker does it.

A reference is what a user types (``alpine``, ``localhost:5000/app:1.2``,
``ghcr.io/o/r@sha256:...``); puller turns it into a :class:`Reference` whose string form is
the fully qualified, normalised name the cache records and the registry client uses::

    >>> str(parse("alpine"))
    'docker.io/library/alpine:latest'
    >>> parse("localhost:5000/app:1.2").api_host
    'localhost:5000'

The rules are Docker's (``distribution/reference``'s grammar and ``normalize.go``), because
users paste references from Docker docs and expect the same image:

- the first ``/``-separated component names a registry only if it contains ``.`` or ``:``
  or is ``localhost``; otherwise the registry is ``docker.io``;
- ``index.docker.io`` and ``registry-1.docker.io`` are spellings of ``docker.io``;
- on ``docker.io`` a one-component name lives under ``library/``;
- the tag defaults to ``latest``; ``name:tag@digest`` pulls the digest (the tag is kept for
  display only).

Only the standard library is imported: this module sits on the warm-pull path.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from collections.abc import Iterable

from puller.errors import BadReference

__all__ = ["DOCKER_HUB", "Reference", "is_loopback_host", "parse", "parse_digest"]

DOCKER_HUB = "docker.io"
"""The canonical name of Docker Hub in references."""

_DOCKER_HUB_API = "registry-1.docker.io"
_DOCKER_HUB_ALIASES = frozenset({DOCKER_HUB, "index.docker.io", _DOCKER_HUB_API})
_OFFICIAL_NAMESPACE = "library/"
_NAME_MAX = 255
_TAG_MAX = 128

# Grammar from distribution/reference (regexp.go). ASCII only: Go's \w is [0-9A-Za-z_].
_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*", re.ASCII)
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::([0-9]+))?",
    re.ASCII,
)
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_HEX64 = re.compile(r"[a-f0-9]{64}", re.ASCII)
_DIGEST_ALGORITHMS = {"sha256": 64, "sha512": 128}
_DIGEST_HEX = re.compile(r"[a-f0-9]+", re.ASCII)


def _quote(text: str) -> str:
    """Quote user input for a one-line message: escapes control characters, caps the length."""
    shown = text if len(text) <= 80 else text[:77] + "..."
    escaped = shown.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(c if c.isprintable() else repr(c)[1:-1] for c in escaped) + '"'


def _digest_problem(digest: str) -> str | None:
    """Say what is wrong with ``algo:hex``, or None when it is a digest we can verify."""
    algorithm, sep, encoded = digest.partition(":")
    if not sep or not algorithm or not encoded:
        return "invalid digest: expected algorithm:hex, e.g. sha256:<64 hex digits>"
    if algorithm not in _DIGEST_ALGORITHMS:
        return f"invalid digest: unsupported algorithm {_quote(algorithm)} (use sha256 or sha512)"
    length = _DIGEST_ALGORITHMS[algorithm]
    if len(encoded) != length or not _DIGEST_HEX.fullmatch(encoded):
        return f"invalid digest: {algorithm} needs {length} lowercase hex digits"
    return None


def parse_digest(digest: str) -> str:
    """Return ``digest`` unchanged if it is a ``sha256:``/``sha512:`` digest, else raise.

    Only the algorithms puller can verify are accepted, so that every digest it stores can be
    checked against the bytes.
    """
    if not isinstance(digest, str):
        raise BadReference(f"invalid digest {digest!r}: not a string")
    problem = _digest_problem(digest)
    if problem:
        raise BadReference(f"{problem}: {_quote(digest)}")
    return digest


def _registry_problem(registry: str) -> str | None:
    match = _HOST.fullmatch(registry)
    if not match:
        return f"invalid registry host {_quote(registry)}"
    port = match.group(1)
    if port is not None and (len(port) > 5 or not 0 < int(port) < 65536):
        return f"invalid registry port {_quote(port)}"
    if registry.startswith("[") and not _is_ipv6(registry[1:registry.index("]")]):
        return f"invalid IPv6 address in registry host {_quote(registry)}"
    if registry in _DOCKER_HUB_ALIASES and registry != DOCKER_HUB:
        return f"registry {_quote(registry)} is spelt {DOCKER_HUB} in a reference"
    return None


def _repository_problem(registry: str, repository: str) -> str | None:
    if not repository:
        return "repository name is empty"
    if repository != repository.lower():
        return "repository name must be lowercase"
    for component in repository.split("/"):
        if not component:
            return "repository name has an empty path component"
        if not _PATH_COMPONENT.fullmatch(component):
            return (f"invalid repository path component {_quote(component)}: use a-z, 0-9 "
                    "joined by '.', '_', '__' or dashes")
    if registry == DOCKER_HUB and "/" not in repository:
        return f"a docker.io repository needs a namespace ({_OFFICIAL_NAMESPACE}{repository})"
    if len(registry) + 1 + len(repository) > _NAME_MAX:
        return f"repository name is longer than {_NAME_MAX} characters"
    return None


def _tag_problem(tag: str) -> str | None:
    if len(tag) > _TAG_MAX:
        return f"tag is longer than {_TAG_MAX} characters"
    if not _TAG.fullmatch(tag):
        return (f"invalid tag {_quote(tag)}: a tag starts with a letter, digit or '_' "
                "and continues with those, '.' or '-'")
    return None


@dataclass(frozen=True, slots=True)
class Reference:
    """A normalised image reference: registry, repository and a tag and/or a digest.

    Instances are always canonical (``docker.io``, ``library/`` added), so two references to
    the same image compare equal; build them with :func:`parse` rather than by hand.
    """

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    def __post_init__(self) -> None:
        for name in ("registry", "repository", "tag", "digest"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise BadReference(f"invalid reference: {name} must be a string, not {value!r}")
        problem = (_registry_problem(self.registry)
                   or _repository_problem(self.registry, self.repository)
                   or (self.tag is not None and _tag_problem(self.tag))
                   or (self.digest is not None and _digest_problem(self.digest)))
        if problem:
            raise BadReference(f"invalid reference {_quote(self._join())}: {problem}")

    def _join(self) -> str:
        return f"{self.registry}/{self.repository}{self._suffix()}"

    def _suffix(self) -> str:
        """``:tag``, ``@digest``, both or neither, as the reference has them."""
        return (f":{self.tag}" if self.tag is not None else "") + \
            (f"@{self.digest}" if self.digest is not None else "")

    def __str__(self) -> str:
        return self._join()

    @property
    def name(self) -> str:
        """Registry and repository without tag or digest: ``docker.io/library/alpine``."""
        return f"{self.registry}/{self.repository}"

    @property
    def identifier(self) -> str | None:
        """What to ask the registry for: the digest when there is one (it wins), else the tag."""
        return self.digest if self.digest is not None else self.tag

    @property
    def familiar(self) -> str:
        """The short form Docker shows: ``alpine:3.10``, ``user/app``, ``ghcr.io/o/r:1``."""
        path = self.repository
        if self.registry == DOCKER_HUB:
            rest = path[len(_OFFICIAL_NAMESPACE):]
            if path.startswith(_OFFICIAL_NAMESPACE) and "/" not in rest:
                path = rest
            # Docker would print docker.io/a.b/c as a.b/c, which then parses as host a.b.
            text = f"{DOCKER_HUB}/{path}" if _looks_like_host(path) else path
        else:
            text = f"{self.registry}/{path}"
        return text + self._suffix()

    @property
    def api_host(self) -> str:
        """The ``host[:port]`` that serves the v2 API (Docker Hub's is not ``docker.io``)."""
        return _DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def is_loopback(self) -> bool:
        """Whether the registry is on this machine; Docker allows plain HTTP only for those."""
        return is_loopback_host(self.registry)

    def scope(self, actions: str | Iterable[str] = "pull") -> str:
        """The token scope for this repository, e.g. ``repository:library/alpine:pull``."""
        joined = actions if isinstance(actions, str) else ",".join(actions)
        return f"repository:{self.repository}:{joined}"

    def with_tag(self, tag: str) -> Reference:
        """The same repository at ``tag`` (any digest is dropped: it named other content)."""
        return replace(self, tag=tag, digest=None)

    def with_digest(self, digest: str) -> Reference:
        """The same repository pinned to ``digest``; the tag stays for display."""
        return replace(self, digest=parse_digest(digest))


def _is_ipv6(text: str) -> bool:
    import ipaddress  # only bracketed hosts need it

    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def is_loopback_host(registry: str) -> bool:
    """Whether ``host[:port]`` is this machine (localhost, 127.0.0.0/8, ::1): Docker allows
    plain HTTP only for those."""
    host = registry
    if host.startswith("["):
        host = host[1:host.find("]")] if "]" in host else host
    else:
        host = host.partition(":")[0]
    if host.lower() == "localhost":
        return True
    import ipaddress  # only the TLS decision needs it

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _looks_like_host(name: str) -> bool:
    first, sep, _ = name.partition("/")
    return bool(sep) and ("." in first or ":" in first or first == "localhost")


def _split_domain(name: str) -> tuple[str, str]:
    """Docker's ``splitDockerDomain``: decide whether the first component is a registry."""
    if _looks_like_host(name):
        registry, _, repository = name.partition("/")
    else:
        registry, repository = DOCKER_HUB, name
    if registry in _DOCKER_HUB_ALIASES:
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in repository:
        repository = _OFFICIAL_NAMESPACE + repository
    return registry, repository


def parse(text: str, *, default_tag: str | None = "latest") -> Reference:
    """Parse what a user typed into a normalised :class:`Reference`.

    ``default_tag`` is used when there is neither tag nor digest (pass None to keep the tag
    unset, e.g. to list tags). Raises :class:`BadReference` saying what is wrong.
    """
    if not isinstance(text, str):
        raise BadReference(f"invalid reference {text!r}: not a string")
    if not text:
        raise BadReference('invalid reference "": it is empty')
    if _HEX64.fullmatch(text):
        raise BadReference(f"invalid reference {_quote(text)}: a 64-hex-digit string is an "
                           "image ID, not a repository name")
    remainder, at, digest = text.partition("@")
    if at and "@" in digest:
        raise BadReference(f"invalid reference {_quote(text)}: more than one '@'")
    colon = remainder.rfind(":")
    tag: str | None = None
    if colon > remainder.rfind("/"):
        remainder, tag = remainder[:colon], remainder[colon + 1:]
    problem = ((_digest_problem(digest) if at else None)
               or (_tag_problem(tag) if tag is not None else None)
               or _name_problem(remainder))
    if problem:
        raise BadReference(f"invalid reference {_quote(text)}: {problem}")
    registry, repository = _split_domain(remainder)
    if tag is None and not at:
        tag = default_tag
    return Reference(registry, repository, tag, digest if at else None)


def _name_problem(name: str) -> str | None:
    """Check the part before the tag in Docker's order, so the message names the first fault."""
    if not name:
        return "repository name is empty"
    registry, repository = _split_domain(name)
    return _registry_problem(registry) or _repository_problem(registry, repository)
