"""Platforms: what the host is, what the user asked for, and which index entry fits.

Docker's rules, as containerd and containers/image apply them: the host platform from
``uname -m`` in Go's names; arm64 ``v8`` is the same as no variant; a 32-bit arm host can run
older variants (v8 -> v7 -> v6 -> v5); attestation entries (``unknown/unknown``) are never
images.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import PlatformError, UsageError

__all__ = ["Platform", "host_platform", "parse_platform", "select"]

_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
         "armv8l": "arm", "armv7l": "arm", "armv6l": "arm", "armv5tel": "arm", "armhf": "arm",
         "i386": "386", "i686": "386", "ppc64le": "ppc64le", "s390x": "s390x",
         "riscv64": "riscv64", "mips64": "mips64"}
_ARM_FALLBACK = ("v8", "v7", "v6", "v5")


@dataclass(frozen=True, slots=True)
class Platform:
    """An image platform in Go's names; ``variant`` normalised (arm64 v8 -> '')."""

    os: str
    architecture: str
    variant: str = ""

    def __post_init__(self) -> None:
        if self.architecture == "arm64" and self.variant == "v8":
            object.__setattr__(self, "variant", "")

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    @classmethod
    def from_dict(cls, d: dict | None) -> "Platform":
        d = d or {}
        return cls(str(d.get("os", "")), str(d.get("architecture", "")), str(d.get("variant", "") or ""))

    def to_dict(self) -> dict:
        out = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        return out

    @property
    def is_attestation(self) -> bool:
        return self.os == "unknown" or self.architecture == "unknown"

    def candidates(self) -> tuple["Platform", ...]:
        """This platform, then what it can also run, best first."""
        if self.architecture == "arm" and self.variant in _ARM_FALLBACK:
            i = _ARM_FALLBACK.index(self.variant)
            return tuple(Platform(self.os, "arm", v) for v in _ARM_FALLBACK[i:]) + (Platform(self.os, "arm", ""),)
        return (self,)


def _arm_variant() -> str:
    """The arm variant of this CPU, read from /proc/cpuinfo as containers/image does."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("cpu architecture"):
                    value = line.split(":", 1)[1].strip()
                    return {"8": "v8", "7": "v7", "6": "v6", "5": "v5", "AArch64": "v8"}.get(value, "v7")
    except OSError:
        pass
    return "v7"


def host_platform() -> Platform:
    machine = os.uname().machine.lower()  # not the stdlib platform module: slow to import
    arch = _ARCH.get(machine, machine)
    variant = _arm_variant() if arch == "arm" else ""
    return Platform("linux", arch, variant)


def parse_platform(text: str | None) -> Platform:
    """``os/arch[/variant]`` as ``--platform`` takes it; ``None``/empty is the host."""
    if not text:
        env = os.environ.get("PULLER_PLATFORM") or os.environ.get("DOCKER_DEFAULT_PLATFORM")
        return parse_platform(env) if env else host_platform()
    parts = text.strip().lower().split("/")
    if len(parts) == 1 and parts[0] in _ARCH.values():  # a bare arch, as some tools accept
        parts = ["linux", parts[0]]
    if len(parts) not in (2, 3) or not all(parts):
        raise UsageError(f"invalid platform {text!r}: expected os/arch[/variant], e.g. linux/arm64")
    arch = _ARCH.get(parts[1], parts[1])
    variant = parts[2] if len(parts) == 3 else ""
    if arch == "arm" and not variant:
        variant = "v7"
    return Platform(parts[0], arch, variant)


def select(entries: Iterable[tuple[Platform, object]], wanted: Platform) -> object:
    """The entry whose platform best fits ``wanted``; PlatformError lists what there is."""
    entries = [(p, e) for p, e in entries if not p.is_attestation]
    for cand in wanted.candidates():
        for p, e in entries:
            if p.os == cand.os and p.architecture == cand.architecture and p.variant == cand.variant:
                return e
    # An index entry without a variant fits a wanted variant (e.g. arm/v7 host, arm image).
    for p, e in entries:
        if p.os == wanted.os and p.architecture == wanted.architecture and not p.variant:
            return e
    have = ", ".join(sorted({str(p) for p, _ in entries})) or "none"
    raise PlatformError(f"no image for platform {wanted} (the image has: {have})")
