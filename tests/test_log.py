"""The core's warnings: shown on a terminal or with --verbose, else dropped before logging
is even imported (the warm pull path cannot afford the import)."""
from __future__ import annotations

import subprocess
import sys

WARN = ("import sys; from puller._log import configure, get_logger; configure(verbose={v}); "
        "log = get_logger('puller.x'); log.warning('careful %s', 1); log.info('detail'); "
        "print('logging' in sys.modules)")


def _run(verbose: bool) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WARN.format(v=verbose)], capture_output=True, text=True,
                          check=True)


def test_quiet_when_stderr_is_not_a_terminal_and_logging_is_never_imported():
    p = _run(False)
    assert p.stderr == "" and p.stdout.strip() == "False"


def test_verbose_shows_warnings_and_info_in_one_format():
    p = _run(True)
    assert p.stderr.splitlines() == ["puller: WARNING: careful 1", "puller: INFO: detail"]


def test_configure_applies_when_logging_was_imported_first():
    code = "import logging; " + WARN.format(v=True)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert p.stderr.splitlines() == ["puller: WARNING: careful 1", "puller: INFO: detail"]
