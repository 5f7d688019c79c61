"""The package surface: lazy, small, and every error a PullerError."""
import subprocess
import sys

import puller
from puller import errors


def test_surface_resolves_lazily():
    code = "import sys, puller; assert 'requests' not in sys.modules and 'puller.pull' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    for name in puller.__all__:
        assert getattr(puller, name) is not None
    assert str(puller.parse("alpine")) == "docker.io/library/alpine:latest"


def test_every_error_is_a_puller_error_with_a_cli_exit_code():
    from puller.cli.output import exit_code_for
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.PullerError)
        assert exit_code_for(cls("x")) in (1, 2, 125)
