"""The resource limits of a container (a value type, kept apart from :mod:`runner.cgroups`
so that a run without limits never imports the cgroup code)."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Limits"]


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits of one container; None means unlimited."""
    memory: int | None = None    # bytes, swap included
    cpus: float | None = None    # number of CPUs (0.5 = half of one)
    pids: int | None = None      # maximum number of tasks

    def __post_init__(self) -> None:
        if self.memory is not None and self.memory < 6 * 1024 * 1024:
            raise ValueError("--memory must be at least 6 MiB (as in Docker)")
        if self.cpus is not None and self.cpus <= 0:
            raise ValueError("--cpus must be positive")
        if self.pids is not None and self.pids < 1:
            raise ValueError("--pids-limit must be at least 1")

    @property
    def controllers(self) -> frozenset[str]:
        """The cgroup controllers these limits need."""
        return frozenset(name for name, value in (("memory", self.memory), ("cpu", self.cpus),
                                                   ("pids", self.pids)) if value is not None)
