"""``pull-and-run`` end to end: option parsing, then pull from the test registry and run."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fixtures.rootfs import REPO, SETPRIV
from puller.cli.run import parse_args, parse_bytes
from puller.errors import UsageError


def test_options_stop_at_the_image() -> None:
    ns, image, command = parse_args(["-it", "-e", "A=1", "-eB=2", "--env=C=3", "-w", "/tmp",
                                     "--rm", "-v", "/a:/b:ro", "alpine:3.10", "ls", "-l",
                                     "--color", "-e", "x"])
    assert (ns.interactive, ns.tty, ns.env, ns.workdir, ns.volume) == (
        True, True, ["A=1", "B=2", "C=3"], "/tmp", ["/a:/b:ro"])
    assert image == "alpine:3.10"
    assert command == ["ls", "-l", "--color", "-e", "x"]


def test_docker_spellings() -> None:
    ns, image, command = parse_args(["--net", "none", "-h", "box", "-u", "1000:1000",
                                     "--memory", "256m", "--cpus", "0.5", "--pids-limit", "64",
                                     "--init", "--pull", "never", "--name", "n", "img"])
    assert (ns.network, ns.hostname, ns.user, ns.memory, ns.cpus, ns.pids_limit, ns.init,
            ns.pull, ns.name, image, command) == ("none", "box", "1000:1000", 256 << 20, 0.5,
                                                  64, True, "never", "n", "img", [])
    assert parse_args(["--network=host", "img"])[0].network == "host"


@pytest.mark.parametrize("argv", [[], ["-e"], ["--net", "bridge", "img"], ["--bogus", "img"],
                                  ["--pull", "sometimes", "img"], ["--net", "slirp", "img"],
                                  ["-m", "lots", "img"]])
def test_bad_options_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(UsageError):
        parse_args(argv)


def test_parse_bytes() -> None:
    assert [parse_bytes(s) for s in ("100", "1k", "256m", "1g", "512MiB", "2GB", "1.5g")] == [
        100, 1024, 256 << 20, 1 << 30, 512 << 20, 2 << 30, 3 << 29]


# --- end to end through the test registry -------------------------------------------------

registry_test = pytest.mark.registry
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (root + rootless)")


@pytest.fixture(params=["root", "rootless"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def cache(mode: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="puller-cli-", dir="/tmp"))
    os.chmod(path, 0o755)
    if mode == "rootless":
        os.chown(path, 65534, 65534)
    yield path / "cache"
    shutil.rmtree(path, ignore_errors=True)


def cli_command(mode: str, cache: Path, *args: str) -> tuple[list[str], dict[str, str]]:
    """The pull-and-run command line and environment, as root or as user 65534."""
    cmd = [sys.executable, "-m", "puller.cli.run", "--cache", str(cache), *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULLER_")}
    env["TMPDIR"] = str(cache.parent)
    if mode == "rootless":  # the isolated HOME/XDG dirs are root's: give 65534 its own
        cmd = [*SETPRIV, *cmd]
        for key in [k for k in env if k.startswith("XDG_")] + ["HOME", "DOCKER_CONFIG"]:
            env[key] = str(cache.parent / "home" / key.lower())
    return cmd, env


def pull_and_run(mode: str, cache: Path, *args: str, input: str | None = None
                 ) -> subprocess.CompletedProcess[str]:
    cmd, env = cli_command(mode, cache, *args)
    return subprocess.run(cmd, check=False, cwd=REPO, capture_output=True, text=True,
                          input=input, env=env, timeout=120,
                          stdin=None if input is not None else subprocess.DEVNULL)


@registry_test
@needs_root
def test_image_config_is_followed(registry, mode: str, cache: Path) -> None:  # type: ignore[no-untyped-def]
    image = f"{registry.host}/library/config:1"
    first = pull_and_run(mode, cache, image)
    if mode == "rootless":  # User app (1000) does not exist under a single-id map
        assert first.returncode == 125 and "not mapped" in first.stderr, first.stderr
        first = pull_and_run(mode, cache, "-u", "0", image)
    assert first.stdout == "entrypoint default args\n", first.stderr
    assert pull_and_run(mode, cache, "-u", "0", image, "x", "y").stdout == "entrypoint x y\n"
    script = 'echo "$(id -u) $(pwd) $GREETING|$EMPTY|$HOME|$FOO"'
    user = ["-u", "0"] if mode == "rootless" else []
    out = pull_and_run(mode, cache, *user, "--entrypoint", "/bin/sh", "-e", "FOO=bar", image,
                       "-c", script)
    uid = "0" if mode == "rootless" else "1000"
    home = "/root" if mode == "rootless" else "/home/app"
    assert out.stdout == f"{uid} /home/app hello world||{home}|bar\n", out.stderr


@registry_test
@needs_root
def test_pipes_and_warm_start_without_network(registry, mode: str, cache: Path) -> None:  # type: ignore[no-untyped-def]
    image = f"{registry.host}/library/alpine:3.10"
    assert pull_and_run(mode, cache, "-q", image, "cat", input="hi\n").stdout == "hi\n"
    mark = len(registry.hits())
    out = pull_and_run(mode, cache, image, "sh", "-c", "echo $$; exit 7")
    assert (out.returncode, out.stdout) == (7, "1\n")
    assert registry.hits(since=mark) == []  # a cached image starts with no request at all


@registry_test
@needs_root
def test_errors_are_one_line_with_docker_codes(registry, mode: str, cache: Path) -> None:  # type: ignore[no-untyped-def]
    image = f"{registry.host}/library/alpine:3.10"
    out = pull_and_run(mode, cache, image, "no-such-cmd")
    assert out.returncode == 127 and out.stderr.count("\n") == 1
    bad = pull_and_run(mode, cache, "--bogus", image)
    assert bad.returncode == 125 and bad.stderr.startswith("pull-and-run: error:")
    missing = pull_and_run(mode, cache, f"{registry.host}/library/nope:1")
    assert missing.returncode == 125 and missing.stderr.count("\n") == 1


def test_ps_and_rm_helpers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from puller.cli.run import ps_main, rm_main
    from runner import RunSpec
    from runner.containers import create_container, mark_exited
    cache = tmp_path / "cache"
    spec = RunSpec(rootfs=tmp_path, argv=("sh", "-c", "true"), image="alpine:3.10")
    mark_exited(create_container(cache / "containers", "web", "ab" * 32, spec), 3)
    assert ps_main(str(cache)) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split()[:3] == ["NAME", "CONTAINER", "ID"]
    assert row.split()[:3] == ["web", "abababababab", "alpine:3.10"]
    assert row.endswith("exited (3)")
    assert rm_main(["web", "ghost"], str(cache)) == 1
    out = capsys.readouterr()
    assert out.out == "web\n" and "no such container: ghost" in out.err
    assert ps_main(str(cache), quiet=True) == 0
    assert capsys.readouterr().out == ""


@registry_test
@needs_root
def test_headline_interactive_sh_through_a_terminal(registry, mode: str, cache: Path) -> None:  # type: ignore[no-untyped-def]
    """`pull-and-run alpine:3.10 sh` at a terminal: a tty is chosen because stdin is one."""
    import pty

    from tests.test_runner_tty import Terminal
    image = f"{registry.host}/library/alpine:3.10"
    assert pull_and_run(mode, cache, "-q", image, "true").returncode == 0  # pull first
    cmd, env = cli_command(mode, cache, image, "sh")
    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=slave, stdout=slave, stderr=slave,
                            start_new_session=True)
    os.close(slave)
    term = Terminal(master)
    try:
        term.expect(rb"# ")
        term.send(b"echo $$ $TERM; tty\r")
        term.expect(rb"1 xterm\r\n/dev/pts/0\r\n")
        term.send(b"exit 3\r")
        assert proc.wait(timeout=30) == 3
    finally:
        proc.kill()
        proc.wait()
        os.close(master)
