"""Descriptors, manifests and indexes, parsed from the registry's raw bytes.

A manifest keeps the exact bytes it was parsed from: its digest is the hash of those bytes,
never of re-serialised JSON. Docker media types are kept as they are; ``to_oci`` makes the
equivalent OCI document over the same config and layer blobs, which is what the cache
layout refers to so that skopeo and umoci can read it.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from .errors import ManifestError
from .platform import Platform

TYPE_CHECKING = False  # typing costs more to import than this module: names for checkers only
if TYPE_CHECKING:
    from typing import Any

__all__ = ["Descriptor", "Manifest", "Index", "parse", "digest_of", "MANIFEST_ACCEPT",
           "MAX_MANIFEST_SIZE"]

MAX_MANIFEST_SIZE = 4 * 1024 * 1024

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v1+prettyjws")
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
MANIFEST_ACCEPT = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))

# Docker media type -> OCI media type, for the OCI twin written into the cache layout.
_TO_OCI = {
    DOCKER_LIST: OCI_INDEX,
    DOCKER_MANIFEST: OCI_MANIFEST,
    DOCKER_CONFIG: OCI_CONFIG,
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar": "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip":
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
}

REGISTRY_DIGEST = "io.puller.registry.digest"      # annotation: the registry's own digest
REGISTRY_MEDIA_TYPE = "io.puller.registry.mediaType"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _check_digest(value: Any) -> str:
    if not isinstance(value, str) or ":" not in value:
        raise ManifestError(f"invalid digest in manifest: {value!r}")
    algo, _, hexpart = value.partition(":")
    want = {"sha256": 64, "sha512": 128}.get(algo)
    if want is None or len(hexpart) != want or any(c not in "0123456789abcdef" for c in hexpart):
        raise ManifestError(f"invalid digest in manifest: {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A typed, sized pointer to content by digest (OCI image-spec descriptor)."""

    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: tuple[tuple[str, str], ...] = ()
    urls: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_digest(self.digest)
        if not isinstance(self.size, int) or self.size < 0:
            raise ManifestError(f"invalid size in descriptor {self.digest}: {self.size!r}")

    @classmethod
    def from_json(cls, d: Any) -> "Descriptor":
        if not isinstance(d, dict):
            raise ManifestError("descriptor is not a JSON object")
        ann = d.get("annotations") or {}
        return cls(str(d.get("mediaType", "")), d.get("digest"), d.get("size"),
                   Platform.from_dict(d["platform"]) if isinstance(d.get("platform"), dict) else None,
                   tuple(sorted((str(k), str(v)) for k, v in ann.items())) if isinstance(ann, dict) else (),
                   tuple(str(u) for u in d.get("urls") or ()))

    def annotation(self, key: str) -> str | None:
        return dict(self.annotations).get(key)

    def to_json(self) -> dict:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.platform is not None:
            out["platform"] = self.platform.to_dict()
        if self.urls:
            out["urls"] = list(self.urls)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


@dataclass(frozen=True, slots=True)
class Manifest:
    """A single-platform image manifest: a config and its layers, in order."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    raw: bytes = field(repr=False)
    annotations: tuple[tuple[str, str], ...] = ()

    @property
    def digest(self) -> str:
        return digest_of(self.raw)

    @property
    def is_index(self) -> bool:
        return False

    def to_oci(self) -> "Manifest":
        """The OCI twin of a Docker manifest (itself when already OCI)."""
        if self.media_type == OCI_MANIFEST:
            return self
        doc = json.loads(self.raw)
        doc["mediaType"] = OCI_MANIFEST
        for d in [doc["config"], *doc["layers"]]:
            d["mediaType"] = _TO_OCI.get(d["mediaType"], d["mediaType"])
        return parse(json.dumps(doc, indent=2).encode(), OCI_MANIFEST)


@dataclass(frozen=True, slots=True)
class Index:
    """A multi-platform index (OCI image index or Docker manifest list)."""

    media_type: str
    manifests: tuple[Descriptor, ...]
    raw: bytes = field(repr=False)

    @property
    def digest(self) -> str:
        return digest_of(self.raw)

    @property
    def is_index(self) -> bool:
        return True

    def images(self) -> list[Descriptor]:
        """Entries that are images for some platform (attestations and unknown types skipped)."""
        return [d for d in self.manifests
                if (d.media_type in MANIFEST_TYPES + INDEX_TYPES or not d.media_type)
                and not (d.platform and d.platform.is_attestation)
                and d.annotation("vnd.docker.reference.type") != "attestation-manifest"]

    def with_children(self, children: list[Descriptor]) -> "Index":
        """An OCI index listing ``children`` (the OCI twins of the entries we pulled)."""
        doc = {"schemaVersion": 2, "mediaType": OCI_INDEX,
               "manifests": [c.to_json() for c in children]}
        return parse(json.dumps(doc, indent=2).encode(), OCI_INDEX)


def _media_type(doc: dict, content_type: str | None) -> str:
    ct = (content_type or "").split(";")[0].strip().lower()
    field_mt = doc.get("mediaType")
    if field_mt and ct and ct not in ("application/json", "application/octet-stream") and field_mt != ct:
        raise ManifestError(f"manifest mediaType {field_mt!r} disagrees with Content-Type {ct!r}")
    mt = field_mt or (ct if ct not in ("", "application/json", "application/octet-stream") else "")
    if not mt:  # OCI allows the field to be absent: decide by shape
        mt = OCI_INDEX if "manifests" in doc else OCI_MANIFEST
    return mt


def parse(raw: bytes, content_type: str | None = None) -> Manifest | Index:
    """Parse a manifest or index from its raw bytes; refuse what we cannot use."""
    if len(raw) > MAX_MANIFEST_SIZE:
        raise ManifestError(f"manifest is larger than {MAX_MANIFEST_SIZE // (1024 * 1024)} MiB")
    ct = (content_type or "").split(";")[0].strip().lower()
    if ct in DOCKER_SCHEMA1:
        raise ManifestError("image uses the Docker schema 1 manifest format, which was removed "
                            "from Docker in v28.2; re-push it with a current tool")
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        hint = " (an HTML page?)" if raw.lstrip()[:1] == b"<" else ""
        raise ManifestError(f"manifest is not valid JSON{hint}") from None
    if not isinstance(doc, dict):
        raise ManifestError("manifest is not a JSON object")
    if doc.get("schemaVersion") == 1:
        raise ManifestError("image uses the Docker schema 1 manifest format, which was removed "
                            "from Docker in v28.2; re-push it with a current tool")
    mt = _media_type(doc, content_type)
    try:
        if mt in INDEX_TYPES:
            return Index(mt, tuple(Descriptor.from_json(d) for d in doc.get("manifests") or ()), raw)
        if mt in MANIFEST_TYPES:
            if not isinstance(doc.get("layers"), list):
                raise ManifestError("manifest has no layers list")
            ann = doc.get("annotations") or {}
            return Manifest(mt, Descriptor.from_json(doc.get("config")),
                            tuple(Descriptor.from_json(d) for d in doc["layers"]), raw,
                            tuple(sorted(ann.items())) if isinstance(ann, dict) else ())
    except (TypeError, KeyError) as e:
        raise ManifestError(f"malformed manifest: {e}") from None
    raise ManifestError(f"unsupported manifest media type {mt!r}")


def to_oci_media_type(media_type: str) -> str:
    return _TO_OCI.get(media_type, media_type)
