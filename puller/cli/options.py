"""Option helpers shared by the typer commands and the lean argparse ones (no typer here)."""
from __future__ import annotations

import os

from .output import Progress


def offline_default(flag: bool) -> bool:
    return flag or os.environ.get("PULLER_OFFLINE", "") not in ("", "0", "false", "no")


def registry_options(mirrors=None, insecure=None, retries: int = 4, retry_delay: float = 0.5,
                     stall: float = 30.0):
    from ..registry import RegistryOptions
    from ..transport.transport import RetryPolicy
    return RegistryOptions.build(mirrors=tuple(mirrors or ()), insecure=tuple(insecure or ()),
                                 retry=RetryPolicy(retries=retries, delay=retry_delay, stall=stall))


def progress_for(quiet: bool, mode: str = "auto", verbose: bool = False) -> Progress:
    return Progress("quiet" if quiet else mode, verbose=verbose)
