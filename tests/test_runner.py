"""The runner end to end: real namespaces, a real busybox rootfs, as root and rootless.

Every test that makes sense for both runs twice: as root, and as the unprivileged user
65534 through ``setpriv`` (the rootfs and state directories are then owned by 65534).
"""
from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fixtures.rootfs import REPO, Sandbox

pytestmark = [pytest.mark.skipif(not Path("/bin/busybox").exists(),
                                 reason="needs busybox-static (apt-get install busybox-static)"),
              pytest.mark.skipif(os.geteuid() != 0,
                                 reason="needs root (to test both root and rootless runs)")]

MODES = ["root", "rootless"]


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A directory outside pytest's 0700 tmp tree, so user 65534 can reach it."""
    path = Path(tempfile.mkdtemp(prefix="puller-runner-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module", params=MODES)
def box(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    path = Path(tempfile.mkdtemp(prefix="puller-runner-", dir="/tmp"))
    yield Sandbox(path, rootless=request.param == "rootless")
    shutil.rmtree(path, ignore_errors=True)


def sh(box: Sandbox, script: str, **spec: Any) -> subprocess.CompletedProcess[str]:
    return box.run(["sh", "-c", script], **spec)


def test_pid1_hostname_and_root_inside(box: Sandbox) -> None:
    out = sh(box, "echo $$; hostname; id -u; cat /etc/hostname")
    assert out.returncode == 0, out.stderr
    pid, hostname, uid, etc_hostname = out.stdout.split()
    assert pid == "1"
    assert re.fullmatch(r"[0-9a-f]{12}", hostname)
    assert uid == "0"
    assert etc_hostname == hostname


def test_hostname_option_and_hosts_file(box: Sandbox) -> None:
    out = sh(box, "hostname; grep -c box /etc/hosts", hostname="box")
    assert out.stdout.split() == ["box", "1"], out.stderr


def test_host_files_are_out_of_sight(box: Sandbox) -> None:
    out = sh(box, f"test -e {REPO}/pyproject.toml && echo visible; ls /; "
                  "set -- /proc/[0-9]*; echo $#")  # a builtin glob: no other process runs
    assert "visible" not in out.stdout
    entries = out.stdout.split()
    assert sorted(entries[:-1]) == sorted(os.listdir(box.rootfs))
    assert entries[-1] == "1"  # only the shell itself: no host process in this /proc


def test_writes_are_thrown_away_and_base_unchanged(box: Sandbox) -> None:
    before = {p: (p.lstat().st_mode, p.lstat().st_size) for p in box.rootfs.rglob("*")}
    leftovers = sorted(os.listdir(box.state))
    passwd = (box.rootfs / "etc/passwd").read_text()
    out = sh(box, "echo new > /etc/newfile && rm /bin/ls && echo x >> /etc/passwd && "
                  "mkdir /srv && echo done")
    assert out.stdout.strip() == "done", out.stderr
    again = sh(box, "test -e /etc/newfile || test -e /srv || echo clean; test -e /bin/ls && "
                    "echo ls-back")
    assert again.stdout.split() == ["clean", "ls-back"]
    assert {p: (p.lstat().st_mode, p.lstat().st_size) for p in box.rootfs.rglob("*")} == before
    assert (box.rootfs / "etc/passwd").read_text() == passwd
    assert sorted(os.listdir(box.state)) == leftovers  # this run's directory is gone


@pytest.mark.parametrize("script,code", [("exit 7", 7), ("exit 0", 0), ("true", 0)])
def test_exit_status_passes_through(box: Sandbox, script: str, code: int) -> None:
    assert sh(box, script).returncode == code


def test_killed_by_signal_is_128_plus_n(box: Sandbox) -> None:
    assert sh(box, "kill -KILL $$", init=True).returncode == 137


def test_command_not_found_is_127(box: Sandbox) -> None:
    out = box.run(["no-such-command"])
    assert out.returncode == 127
    assert "no-such-command" in out.stderr and "not found" in out.stderr


def test_not_executable_is_126(box: Sandbox) -> None:
    out = box.run(["/etc/passwd"])
    assert out.returncode == 126
    assert "permission denied" in out.stderr


def test_pipes_work_without_a_tty(box: Sandbox) -> None:
    out = box.run(["cat"], input="hi\n")
    assert out.stdout == "hi\n"
    assert box.run(["sh", "-c", "test -t 0 || echo notty"], input="").stdout == "notty\n"


def test_env_defaults_and_overrides(box: Sandbox) -> None:
    out = box.run(["sh", "-c", 'echo "$PATH|$HOME|$FOO|$HOSTNAME"'],
                  env=["PATH=/bin:/usr/bin", "FOO=bar"], hostname="h1")
    assert out.stdout.strip() == "/bin:/usr/bin|/root|bar|h1", out.stderr


def test_workdir_is_created_and_used(box: Sandbox) -> None:
    out = box.run(["pwd"], workdir="/srv/app")
    assert out.stdout.strip() == "/srv/app", out.stderr


def test_workdir_magic_link_is_refused(box: Sandbox) -> None:
    """runc CVE-2024-21626: a WorkingDir through /proc/self/fd or cwd must not escape."""
    for workdir in ("/proc/self/cwd", "/proc/1/root"):
        out = box.run(["pwd"], workdir=workdir)
        assert out.returncode == 125, (workdir, out.stdout)
        assert "working directory" in out.stderr


def test_user_by_name(box: Sandbox) -> None:
    out = box.run(["sh", "-c", "id; echo $HOME"], user="alice")
    if box.rootless:  # single-id map: only root exists inside
        assert out.returncode == 125
        assert "not mapped" in out.stderr
        return
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "uid=1000(alice) gid=1000(alice) groups=10(wheel),1000(alice)", "/home/alice"]


def test_user_uid_gid_and_unknown_user(box: Sandbox) -> None:
    if not box.rootless:
        assert box.run(["id"], user="1234:10").stdout.strip() == \
            "uid=1234 gid=10(wheel) groups=10(wheel)"
    out = box.run(["id"], user="mallory")
    assert out.returncode == 125
    assert "unable to find user mallory" in out.stderr


def test_volumes_rw_and_ro(box: Sandbox) -> None:
    data = box.mkdir("data")
    (data / "in.txt").write_text("from host\n")
    os.chmod(data / "in.txt", 0o644)
    out = sh(box, "cat /data/in.txt; echo out > /data/out.txt; cat /ro/in.txt; "
                  "touch /ro/x 2>/dev/null || echo ro-refused",
             volumes=[f"{data}:/data", f"{data}:/ro:ro"])
    assert out.stdout.splitlines() == ["from host", "from host", "ro-refused"], out.stderr
    assert (data / "out.txt").read_text() == "out\n"
    assert not (data / "x").exists()


def test_unusable_state_dir_is_a_one_line_125(box: Sandbox) -> None:
    out = box.run(["true"], state_dir="/proc/1")
    assert out.returncode == 125
    assert out.stderr.startswith("runner: cannot create the container's directories")
    assert out.stderr.count("\n") == 1


def test_missing_volume_source_is_an_error(box: Sandbox) -> None:
    out = box.run(["true"], volumes=[f"{box.base}/nope:/x"])
    assert out.returncode == 125
    assert "bind source path does not exist" in out.stderr


def test_net_none_has_only_loopback_up(box: Sandbox) -> None:
    out = sh(box, "ls /sys/class/net; cat /sys/class/net/lo/flags", network="none")
    assert out.stdout.split() == ["lo", "0x9"], out.stderr  # IFF_UP | IFF_LOOPBACK


def test_net_host_sees_host_interfaces(box: Sandbox) -> None:
    out = sh(box, "ls /sys/class/net")
    assert sorted(out.stdout.split()) == sorted(os.listdir("/sys/class/net"))


def test_read_only_root(box: Sandbox) -> None:
    out = sh(box, "touch /etc/x 2>/dev/null || echo refused; echo ok > /dev/shm/y && "
                  "cat /dev/shm/y", read_only=True)
    assert out.stdout.split() == ["refused", "ok"], out.stderr


def test_mounts_are_private(box: Sandbox) -> None:
    """`mount --make-rprivate /` first: nothing propagates to or from the host."""
    out = sh(box, "grep -c shared: /proc/self/mountinfo; grep -c master: /proc/self/mountinfo")
    assert out.stdout.split() == ["0", "0"], out.stderr


def test_dev_has_the_usual_nodes(box: Sandbox) -> None:
    out = sh(box, "head -c 4 /dev/zero | wc -c; echo x > /dev/null && echo null-ok; "
                  "ls /dev/pts; readlink /dev/ptmx; test -d /dev/shm && echo shm")
    assert out.stdout.split() == ["4", "null-ok", "ptmx", "pts/ptmx", "shm"], out.stderr


def test_symlinked_dev_does_not_touch_the_host(box: Sandbox, scratch: Path) -> None:
    host_dir = scratch / "hostdev"
    host_dir.mkdir()
    os.chmod(scratch, 0o777)
    os.chmod(host_dir, 0o777)
    for n, target in enumerate((str(host_dir), "../../../../../../../../" + str(host_dir))):
        evil = Sandbox(scratch / f"evil{n}", rootless=box.rootless, symlinked_dev=target)
        out = evil.run(["sh", "-c", "echo x > /dev/null && head -c 1 /dev/zero | wc -c"])
        assert out.stdout.split() == ["1"], out.stderr
        assert os.listdir(host_dir) == []


def test_fds_beyond_stdio_are_closed(box: Sandbox) -> None:
    r, w = os.pipe()
    try:
        out = box.run(["ls", "/proc/self/fd"], pass_fds=(r, w))
    finally:
        os.close(r)
        os.close(w)
    assert sorted(out.stdout.split()) == ["0", "1", "2", "3"], out.stderr  # 3: ls's own dir


def test_no_new_privs_and_docker_default_capabilities(box: Sandbox) -> None:
    out = sh(box, "grep -E '^(NoNewPrivs|CapBnd|CapEff)' /proc/self/status")
    fields = dict(line.split(":\t") for line in out.stdout.splitlines())
    assert fields["NoNewPrivs"] == "1"
    assert fields["CapBnd"] == fields["CapEff"] == "00000000a80425fb"


def _wait_line(proc: subprocess.Popen[str], text: str) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == text, (line, proc.stderr.read() if proc.stderr else "")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP,
                                    signal.SIGQUIT])
def test_init_forwards_signals(box: Sandbox, signum: signal.Signals) -> None:
    if signal.getsignal(signum) == signal.SIG_IGN:
        pytest.skip(f"{signum.name} is ignored by this test's caller, so it stays ignored")
    marker = f"100.{signum}"  # sleep itself, no shell (ash ignores SIGQUIT while it runs)
    proc = subprocess.Popen(box.command(["sleep", marker], init=True), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    try:
        _wait_for_process(f"sleep\0{marker}\0")
        proc.send_signal(signum)
        assert proc.wait(timeout=30) == 128 + signum  # 143 for SIGTERM
    finally:
        proc.kill()
        proc.wait()


def _wait_for_process(cmdline: str) -> None:
    for _ in range(2000):
        if any(_cmdline(pid) == cmdline for pid in filter(str.isdigit, os.listdir("/proc"))):
            return
        select.select([], [], [], 0.01)
    raise AssertionError(f"{cmdline!r} never started")


def test_without_init_pid1_ignores_unhandled_sigterm_but_trap_works(box: Sandbox) -> None:
    script = "trap 'echo got-term; exit 5' TERM; echo ready; while :; do sleep 0.05; done"
    proc = subprocess.Popen(box.command(["sh", "-c", script]), cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    try:
        _wait_line(proc, "ready")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 5
        assert proc.stdout is not None and proc.stdout.read().strip() == "got-term"
    finally:
        proc.kill()
        proc.wait()


def test_init_reaps_orphaned_zombies(box: Sandbox) -> None:
    # The middle shell exits at once, so its child is re-parented to PID 1; once that child
    # has exited, only PID 1 can reap it. Poll (bounded) until /proc/PID is gone.
    script = ("(sh -c 'echo $$ > /tmp/orphan' &); "
              "while [ ! -s /tmp/orphan ]; do sleep 0.01; done; pid=$(cat /tmp/orphan); "
              "i=0; while [ -e /proc/$pid ] && [ $i -lt 500 ]; do sleep 0.01; i=$((i+1)); done;"
              " if [ -e /proc/$pid ]; then echo zombie; else echo reaped; fi")
    assert sh(box, script, init=True).stdout.strip() == "reaped"


def test_runner_death_kills_the_container(box: Sandbox) -> None:
    """PR_SET_PDEATHSIG: a runner killed by SIGKILL takes the container with it, and the
    keeper still removes the container's directories."""
    marker = "31337.25"
    leftovers = sorted(os.listdir(box.state))
    proc = subprocess.Popen(box.command(["sh", "-c", f"echo ready; sleep {marker}"]), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    _wait_line(proc, "ready")
    assert sorted(os.listdir(box.state)) != leftovers
    proc.kill()
    proc.wait()
    for _ in range(500):
        alive = [p for p in os.listdir("/proc") if p.isdigit() and _cmdline(p) ==
                 f"sleep\0{marker}\0"]
        if not alive and sorted(os.listdir(box.state)) == leftovers:
            break
        select.select([], [], [], 0.01)
    assert not alive
    assert sorted(os.listdir(box.state)) == leftovers


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""


def test_named_container_keeps_its_layer(box: Sandbox) -> None:
    from runner.containers import list_containers, remove_container
    leftovers = sorted(os.listdir(box.state))  # a runner killed by SIGKILL cannot clean up
    out = sh(box, "echo kept > /root/note", name="keeper",
             containers_dir=str(box.containers), image="busybox:test")
    assert out.returncode == 0, out.stderr
    assert (box.containers / "keeper/upper/root/note").read_text() == "kept\n"
    again = sh(box, "true", name="keeper", containers_dir=str(box.containers))
    assert again.returncode == 125 and "already in use" in again.stderr
    assert sorted(os.listdir(box.state)) == leftovers
    rows = list_containers(box.containers)
    assert [(r.name, r.image, r.status) for r in rows] == [("keeper", "busybox:test",
                                                             "exited (0)")]
    remove_container(box.containers, "keeper")
    assert list_containers(box.containers) == []


def test_no_overlayfs_falls_back_to_a_private_copy(box: Sandbox, scratch: Path) -> None:
    """An upper directory on overlayfs is refused by the kernel: the runner copies instead,
    says so once, and the base still does not change."""
    for name in ("l", "u", "w", "m"):
        (scratch / name).mkdir()
    subprocess.run(["mount", "-t", "overlay", "puller-test", "-o",
                    f"lowerdir={scratch}/l,upperdir={scratch}/u,workdir={scratch}/w",
                    str(scratch / "m")], check=True)
    try:
        state = scratch / "m" / "state"
        state.mkdir()
        os.chmod(scratch, 0o755)
        os.chmod(scratch / "m", 0o755)
        if box.rootless:
            os.chown(state, 65534, 65534)
        out = sh(box, "echo changed > /etc/passwd; cat /etc/passwd", state_dir=str(state))
        assert out.stdout == "changed\n", out.stderr
        assert out.stderr.count("overlayfs unavailable") == 1
        assert "private copy" in out.stderr
        assert (box.rootfs / "etc/passwd").read_text() != "changed\n"
        assert os.listdir(state) == []
    finally:
        subprocess.run(["umount", str(scratch / "m")], check=True)


def test_kernel_interfaces_are_masked_or_read_only(box: Sandbox) -> None:
    """Docker's masked/read-only paths: as root the container's uid is the host's 0, so a
    writable /proc/sys would reach the host kernel. (Written here: domainname, which is
    per-UTS-namespace, so even a failing test cannot change the host.)"""
    out = sh(box, "echo x > /proc/sys/kernel/domainname 2>/dev/null || echo sys-ro; "
                  "wc -c < /proc/keys; grep -c . /proc/self/mounts >/dev/null && "
                  "grep ' /proc/sys ' /proc/self/mounts | cut -d' ' -f4 | cut -d, -f1")
    assert out.stdout.split() == ["sys-ro", "0", "ro"], out.stderr


def test_closed_stdin_does_not_confuse_the_runner(box: Sandbox) -> None:
    script = "readlink /proc/self/fd/0; exit 4"
    cmd = " ".join(f"'{part}'" for part in box.command(["sh", "-c", script]))
    done = subprocess.run(["sh", "-c", f"exec {cmd} <&-"], cwd=REPO, capture_output=True,
                          text=True, check=False)
    assert (done.returncode, done.stdout) == (4, "/dev/null\n"), done.stderr


def _slirp_processes() -> int:
    return sum(1 for pid in filter(str.isdigit, os.listdir("/proc"))
               if _cmdline(pid).startswith("/usr/bin/slirp4netns\0")
               or _cmdline(pid).startswith("slirp4netns\0"))


@pytest.mark.skipif(shutil.which("slirp4netns") is None,
                    reason="--net private needs slirp4netns (apt-get install slirp4netns)")
def test_net_private_via_slirp4netns(box: Sandbox) -> None:
    import socket
    if box.rootless and not os.stat("/dev/net/tun").st_mode & 0o006:
        out = box.run(["true"], network="private")
        assert out.returncode == 125 and "/dev/net/tun" in out.stderr
        pytest.skip("/dev/net/tun is not usable by user 65534 on this machine")
    before = _slirp_processes()
    with socket.socket() as server:  # the host's loopback must stay out of reach
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.setblocking(False)
        port = server.getsockname()[1]
        out = sh(box, "ip -o -4 addr show tap0 | grep -o '10.0.2.100/24'; "
                      "ip route | grep -o 'default via 10.0.2.2'; cat /etc/resolv.conf; "
                      f"ls /sys/class/net; nc -w 3 10.0.2.2 {port} </dev/null && echo reached",
                 network="private")
        with pytest.raises(BlockingIOError):
            server.accept()
    assert out.stdout.splitlines() == ["10.0.2.100/24", "default via 10.0.2.2",
                                       "nameserver 10.0.2.3", "lo", "tap0"], out.stderr
    assert _slirp_processes() == before  # stopped with the container


def test_signals_ignored_by_the_caller_stay_ignored(box: Sandbox) -> None:
    """`nohup pull-and-run ...`: SIGHUP ignored by the caller is not forwarded, and the
    command inherits the ignore; everything else starts with default dispositions."""
    forwarded = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGWINCH)
    ours = {s for s in forwarded if signal.getsignal(s) == signal.SIG_IGN}  # e.g. a harness's

    def mask(signals: set[signal.Signals]) -> str:
        return f"{sum(1 << (s - 1) for s in signals):016x}"

    probe = ["grep", "SigIgn", "/proc/self/status"]  # no shell: ash ignores some itself
    plain = box.run(probe)
    assert plain.stdout.split()[1] == mask(ours), plain.stderr  # SIGPIPE is not ignored
    cmd = " ".join(f"'{part}'" for part in box.command(probe))
    done = subprocess.run(["sh", "-c", f"trap '' HUP; exec {cmd}"], cwd=REPO, text=True,
                          capture_output=True, check=False)
    assert done.stdout.split()[1] == mask(ours | {signal.SIGHUP}), done.stderr
