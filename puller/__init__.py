"""puller: pull, cache, unpack, compare and run container images without a Docker daemon.

The library surface, imported lazily so that ``import puller`` costs nothing::

    from puller import parse, pull, Store, unpack
    ref = parse("alpine:3.10")
    pull(ref, store=Store("/tmp/cache"))

Errors are the classes of :mod:`puller.errors`, all subclasses of :class:`PullerError`.
"""
from __future__ import annotations

from importlib import import_module

from .errors import *  # noqa: F403 - the error tree is part of the surface
from .errors import __all__ as _errors

_LAZY = {
    "parse": "reference", "Reference": "reference",
    "Platform": "platform", "parse_platform": "platform",
    "Registry": "registry", "RegistryOptions": "registry",
    "Store": "store",
    "pull": "pull", "PullResult": "pull",
    "unpack": "unpack", "Limits": "unpack",
    "diff": "compare", "analyse": "compare",
}

__all__ = sorted([*_LAZY, *_errors])


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'puller' has no attribute {name!r}")
