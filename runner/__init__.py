"""Run a command in an unpacked image rootfs, in fresh Linux namespaces, without a daemon.

Public surface: :class:`RunSpec`, :class:`Volume`, :class:`Limits` and :func:`run`; named
containers via :mod:`runner.containers`. Everything else is the setup machinery:
:mod:`runner.namespace` (the ordered setup), :mod:`runner.steps` (mount steps as data),
:mod:`runner.libc` (ctypes), :mod:`runner.cgroups`, :mod:`runner.init` (the reaper).
"""
from __future__ import annotations

from runner.container import RunSpec, Volume, run
from runner.limits import Limits

__all__ = ["Limits", "RunSpec", "Volume", "run"]
