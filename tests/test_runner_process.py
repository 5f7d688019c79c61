"""Docker's Entrypoint/Cmd/Env/User rules (pure functions) and the RunSpec value types."""
from __future__ import annotations

from typing import Any

import pytest

from fixtures.rootfs import GROUP, PASSWD
from puller.errors import RunError, UsageError
from runner.container import RunSpec, Volume
from runner.process import (
    DEFAULT_PATH,
    Identity,
    lookup_user,
    merge_env,
    parse_env_file,
    resolve_argv,
)

CONFIG = {"Entrypoint": ["/bin/ep", "-x"], "Cmd": ["default", "args"]}


@pytest.mark.parametrize("config,command,entrypoint,expected", [
    (CONFIG, (), None, ("/bin/ep", "-x", "default", "args")),       # Entrypoint + Cmd
    (CONFIG, ("mine",), None, ("/bin/ep", "-x", "mine")),            # args replace Cmd
    (CONFIG, (), "/bin/other", ("/bin/other",)),                     # --entrypoint drops Cmd
    (CONFIG, ("a",), "/bin/other", ("/bin/other", "a")),
    (CONFIG, ("sh",), "", ("sh",)),                                  # --entrypoint "" clears
    ({"Cmd": ["sh"]}, (), None, ("sh",)),
    ({"Entrypoint": None, "Cmd": ["echo", "hi"]}, ("ls",), None, ("ls",)),
])
def test_resolve_argv(config: dict[str, Any], command: tuple[str, ...], entrypoint: str | None,
                      expected: tuple[str, ...]) -> None:
    assert resolve_argv(config, command, entrypoint) == expected


def test_nothing_to_run_is_125() -> None:
    with pytest.raises(RunError) as err:
        resolve_argv({}, ())
    assert err.value.exit_code == 125


def test_merge_env_order_defaults_and_host_passthrough() -> None:
    env = merge_env(["A=1", "B=2"], ("B=3", "C", "D", "E="), host_env={"C": "host"})
    assert env == ("A=1", "B=3", "C=host", "E=", f"PATH={DEFAULT_PATH}")
    assert merge_env(["PATH=/x"], tty=True) == ("PATH=/x", "TERM=xterm")
    with pytest.raises(RunError):
        merge_env(["=oops"])


def test_parse_env_file() -> None:
    assert parse_env_file("# comment\nA=1\n\n  B=two words\nC\n") == ("A=1", "B=two words", "C")


@pytest.mark.parametrize("user,expected", [
    ("", Identity(0, 0, (0,), "/root")),
    ("root", Identity(0, 0, (0,), "/root")),
    ("alice", Identity(1000, 1000, (1000, 10), "/home/alice")),
    ("1000", Identity(1000, 1000, (1000, 10), "/home/alice")),
    ("alice:wheel", Identity(1000, 10, (10,), "/home/alice")),
    ("alice:0", Identity(1000, 0, (0, 10), "/home/alice")),
    ("4242", Identity(4242, 0, (0,), "/")),
    ("4242:4343", Identity(4242, 4343, (4343,), "/")),
])
def test_lookup_user(user: str, expected: Identity) -> None:
    assert lookup_user(user, PASSWD, GROUP) == expected


@pytest.mark.parametrize("user,message", [("mallory", "unable to find user mallory"),
                                          ("alice:nogrp", "unable to find group nogrp")])
def test_lookup_unknown(user: str, message: str) -> None:
    with pytest.raises(RunError, match=message):
        lookup_user(user, PASSWD, GROUP)


def test_volume_parse() -> None:
    assert Volume.parse("/a:/b") == Volume("/a", "/b", False)
    assert Volume.parse("/a:/b:ro") == Volume("/a", "/b", True)
    for bad in ("/a", "/a:b", "/a:/b:rx", ":/b", "/a:/b/../c"):
        with pytest.raises(UsageError):
            Volume.parse(bad)


def test_runspec_validates(tmp_path: object) -> None:
    from pathlib import Path
    with pytest.raises(UsageError):
        RunSpec(rootfs=Path("/"), argv=())
    with pytest.raises(UsageError, match="use host, none or private"):
        RunSpec(rootfs=Path("/"), argv=("sh",), network="bridge")
    with pytest.raises(UsageError):
        RunSpec(rootfs=Path("/"), argv=("sh",), workdir="relative")
    with pytest.raises(UsageError):
        RunSpec(rootfs=Path("/"), argv=("sh",), name="a/b", containers_dir=Path("/x"))
