"""The exception tree of puller.

Everything puller raises on purpose derives from :class:`PullerError`; the CLI turns each
class into a one-line message and an exit code (``puller.cli.app.EXIT_CODES``), so nothing
below the CLI ever prints or exits.

    PullerError
    ├── BadReference          (also ValueError) a reference that does not parse
    ├── UsageError            (also ValueError) a bad option value or combination
    ├── NetworkError          unknown host, connection refused, timeouts, stalls
    │   └── TLSError          certificate or handshake failure
    ├── RegistryError         the registry answered with an error status
    │   ├── NotFound          tag/repo/blob unknown (or private: Docker Hub answers 401)
    │   ├── AuthError         credentials refused
    │   └── RateLimited       429 / TOOMANYREQUESTS
    ├── ManifestError         a manifest we cannot or will not use (schema 1, too big, not JSON)
    ├── PlatformError         no manifest for the wanted platform
    ├── DigestMismatch        bytes do not hash to the digest they claim
    ├── CacheError            the cache cannot serve the request
    │   └── NotCached         offline and the image is not in the cache
    ├── DiskFull              not enough free space to go on
    ├── LayerError            a layer we refuse to apply
    │   ├── UnsafeLayer       it would reach outside the rootfs, or an invalid whiteout
    │   └── LimitExceeded     a bomb guard (bytes, entries, depth, path length) tripped
    ├── UnpackError           the target directory cannot be used
    ├── ArchiveError          a docker-archive / OCI archive that is corrupt or unreadable
    └── RunError              the container could not be started (exit_code 125/126/127)
"""
from __future__ import annotations

__all__ = [
    "PullerError", "BadReference", "UsageError", "NetworkError", "TLSError",
    "RegistryError", "NotFound", "AuthError", "RateLimited", "ManifestError",
    "PlatformError", "DigestMismatch", "CacheError", "NotCached", "DiskFull",
    "LayerError", "UnsafeLayer", "LimitExceeded", "UnpackError", "ArchiveError", "RunError",
]


class PullerError(Exception):
    """Root of every error puller raises on purpose; its ``str`` is the one-line message."""


class BadReference(PullerError, ValueError):
    """An image reference that does not follow Docker's grammar."""


class UsageError(PullerError, ValueError):
    """An option value or combination that cannot work."""


class NetworkError(PullerError):
    """The network failed us: DNS, refused connections, timeouts, stalled transfers."""


class TLSError(NetworkError):
    """TLS verification or handshake failed (use --insecure-registry only if you mean it)."""


class RegistryError(PullerError):
    """An error status from a registry, with the decoded error codes of its body."""

    def __init__(self, message: str, *, status: int | None = None,
                 codes: tuple[str, ...] = (), retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.codes = codes
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """Whether trying again later may succeed (5xx, 408, 429)."""
        return self.status is not None and (self.status >= 500 or self.status in (408, 429))


class NotFound(RegistryError):
    """Tag, repository or blob unknown, or private (Docker Hub says 401 for both)."""


class AuthError(RegistryError):
    """The registry or token server refused the credentials."""


class RateLimited(RegistryError):
    """429 Too Many Requests, e.g. Docker Hub's pull rate limit."""


class ManifestError(PullerError):
    """A manifest that is malformed, too large, or of a kind we refuse (schema 1)."""


class PlatformError(PullerError):
    """No entry of an index matches the wanted platform."""


class DigestMismatch(PullerError):
    """Content whose digest (or size) is not what its descriptor promised."""


class CacheError(PullerError):
    """The cache is unusable for this request."""


class NotCached(CacheError):
    """The image is not in the cache and the network may not be used."""


class DiskFull(PullerError):
    """Free space ran out (or would drop below the safety margin)."""


class LayerError(PullerError):
    """A layer that cannot be applied."""


class UnsafeLayer(LayerError):
    """A layer entry that would escape the rootfs, or an invalid whiteout name."""


class LimitExceeded(LayerError):
    """A guard against decompression or tar bombs was hit; the limit can be raised."""


class UnpackError(PullerError):
    """The unpack target cannot be used (exists and is not empty, not a directory...)."""


class ArchiveError(PullerError):
    """An image archive (docker-archive, OCI archive or layout) that is corrupt or unreadable."""


class RunError(PullerError):
    """The container could not be started; ``exit_code`` follows Docker (125, 126, 127)."""

    def __init__(self, message: str, *, exit_code: int = 125) -> None:
        super().__init__(message)
        self.exit_code = exit_code
