"""``puller save | load | export | import`` as a user runs them, and the air-gap round trip:
pull on one cache, save, carry, load into an empty cache with no registry reachable, use."""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from fixtures import cli
from fixtures.catalog import catalog
from puller.store import Store


def ok(*args: str, input: bytes | None = None) -> bytes | str:
    res = cli.run(*args, input=input)
    assert res.returncode == 0, (args, res.stderr)
    return res.stdout


def test_air_gapped_round_trip(registry_factory, tmp_path):
    """The README's recipe, step by step, with the registry gone before the load."""
    reg = registry_factory(images={"library/alpine:3.10": catalog()["library/alpine:3.10"],
                                   "library/config:1": catalog()["library/config:1"]})
    alpine, config = f"{reg.host}/library/alpine:3.10", f"{reg.host}/library/config:1"
    online, airgapped = tmp_path / "online", tmp_path / "airgapped"
    ok("pull", "--cache", str(online), "-q", alpine)
    carried = tmp_path / "images.tar"
    # save pulls what is not cached yet (config:1 was never pulled)
    ok("save", "--cache", str(online), "-q", alpine, config, "-o", str(carried))
    reg.stop()  # from here on, no registry is reachable

    out = ok("load", "--offline", "--cache", str(airgapped), "-i", str(carried))
    assert out.splitlines() == [f"Loaded image: {alpine}", f"Loaded image: {config}"]
    summary = ok("inspect", "--offline", "--cache", str(airgapped), alpine)
    assert "amd64" in summary
    cfg = json.loads(ok("inspect", "--offline", "--config", "--cache", str(airgapped), config))
    assert cfg["config"]["Entrypoint"] == ["/bin/echo", "entrypoint"]
    # pull without --offline falls back to the loaded image when the registry is unreachable
    res = cli.run("pull", "--cache", str(airgapped), "--retries", "0", alpine)
    assert res.returncode == 0, res.stderr
    assert "unreachable" in res.stderr
    assert ok("pull", "--cache", str(airgapped), "--offline", "-q", alpine).strip()
    run = cli.run("run", "--pull", "never", "--cache", str(airgapped), alpine, "/bin/true")
    assert run.returncode == 0, run.stderr
    echo = cli.run("run", "--pull", "never", "--cache", str(airgapped), config)
    assert echo.returncode == 0, echo.stderr
    assert echo.stdout.strip() == "entrypoint default args"


def test_save_to_stdout_and_load_from_stdin(registry, tmp_path):
    ref = f"{registry.host}/library/alpine:3.11"
    data = ok("save", "--cache", str(tmp_path / "a"), "-q", "--format", "oci", ref, "-o", "-",
              input=b"")
    assert isinstance(data, bytes)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert "index.json" in tar.getnames()
    out = ok("load", "--cache", str(tmp_path / "b"), "--json", input=data)
    assert json.loads(out) == {"loaded": [ref]}
    assert Store(tmp_path / "b").get_ref(ref) is not None


def test_save_offline_refuses_what_is_not_cached(registry, tmp_path):
    res = cli.run("save", "--cache", str(tmp_path / "a"), "--offline",
                  f"{registry.host}/library/alpine:3.10", "-o", str(tmp_path / "x.tar"))
    assert res.returncode == 1
    assert res.stderr.startswith("puller: error: ") and res.stderr.count("\n") == 1
    assert not (tmp_path / "x.tar").exists()


def test_load_of_a_corrupt_archive_is_one_line_and_exit_1(tmp_path):
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"\x1f\x8b" + b"garbage" * 50)
    res = cli.run("load", "--cache", str(tmp_path / "c"), "-i", str(bad))
    assert res.returncode == 1
    assert res.stderr.startswith("puller: error: ") and res.stderr.count("\n") == 1


def test_bad_format_is_a_usage_error(tmp_path):
    res = cli.run("save", "--format", "zip", "x", "-o", str(tmp_path / "x"))
    assert res.returncode == 2


def test_export_then_import_then_export(registry, tmp_path):
    ref = f"{registry.host}/library/busybox:multi"
    cache = str(tmp_path / "c")
    rootfs = tmp_path / "rootfs.tar"
    ok("export", "--cache", cache, "-q", ref, "-o", str(rootfs))
    out = ok("import", "--cache", cache, str(rootfs), "mybase:1")
    assert out.startswith("mybase:1 sha256:")
    again = tmp_path / "again.tar"
    ok("export", "--cache", cache, "--offline", "mybase:1", "-o", str(again))

    def listing(p: Path) -> list[tuple[str, int, str]]:
        with tarfile.open(p) as tar:
            return sorted((m.name, m.size, m.linkname) for m in tar)

    assert listing(again) == listing(rootfs)
    assert any(name == "l2hard" for name, _, _ in listing(rootfs))


@pytest.mark.skipif(not shutil.which("skopeo"), reason="needs skopeo")
def test_skopeo_s_docker_archive_loads_and_runs(registry, tmp_path):
    ref = f"{registry.host}/library/config:1"
    theirs = tmp_path / "theirs.tar"
    subprocess.run(["skopeo", "--insecure-policy", "copy", "--src-tls-verify=false",
                    f"docker://{ref}", f"docker-archive:{theirs}:{ref}"], check=True,
                   capture_output=True)
    cache = str(tmp_path / "c")
    assert ok("load", "--cache", cache, "-q", "-i", str(theirs)) == ""
    run = cli.run("run", "--pull", "never", "--cache", cache, ref, "/bin/echo", "from skopeo")
    assert run.returncode == 0, run.stderr
    assert run.stdout == "entrypoint /bin/echo from skopeo\n"


def test_help_of_each_command():
    for command, flag in (("save", "--format"), ("load", "--input"), ("export", "--output"),
                          ("import", "REF")):
        res = cli.run(command, "--help")
        assert res.returncode == 0, res.stderr
        assert flag in res.stdout


def small_oci_archive(tmp_path: Path, *, unnamed_too: bool = False) -> tuple[str, Path]:
    """A small image as an OCI archive file (with ``unnamed_too``, listed a second time
    without a name); returns its ref and the file."""
    from fixtures.images import F, build_image, tar_layer, write_oci_layout
    ref = "example.com/small/img:1"
    img = build_image([tar_layer(F("etc/a", b"a" * 3000)), tar_layer(F("etc/b", b"b"))], fmt="oci")
    layout = write_oci_layout(tmp_path / "layout", {ref: img})
    if unnamed_too:
        index = json.loads((layout / "index.json").read_bytes())
        index["manifests"].append({k: v for k, v in index["manifests"][0].items()
                                   if k != "annotations"})
        (layout / "index.json").write_text(json.dumps(index))
    archive = tmp_path / "small.oci.tar"
    with tarfile.open(archive, "w") as tar:
        for p in sorted(layout.rglob("*")):
            tar.add(p, arcname=str(p.relative_to(layout)), recursive=False)
    return ref, archive


def test_save_and_load_of_a_cached_image_import_only_what_they_use(tmp_path):
    """Both are start-up bound on a small image: a cached image needs no HTTP stack, and
    neither needs logging (until something warns), typing, tempfile or zstandard; save
    writes its tar headers without tarfile."""
    ref, archive = small_oci_archive(tmp_path)
    cache, out = tmp_path / "cache", tmp_path / "out.tar"
    ok("load", "--cache", str(cache), "-q", "-i", str(archive))
    code = ("import sys; from puller.cli.archive import main; rc = main(sys.argv[1], sys.argv[2:]); "
            "print(rc, *sorted(sys.modules))")
    never = {"requests", "urllib3", "typer", "puller.registry", "puller.transport", "puller.pull",
             "logging", "typing", "tempfile", "zstandard", "puller.layer.reader"}
    for args in (["save", "--cache", str(cache), "-q", "--format", "oci", ref, "-o", str(out)],
                 ["load", "--cache", str(tmp_path / "other"), "-q", "-i", str(out)]):
        res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                             check=True)
        rc, *modules = res.stdout.split()
        assert rc == "0", res.stderr
        assert not never & set(modules), args[0]
        if args[0] == "save":
            assert "tarfile" not in modules


def test_load_warns_through_logging_when_it_has_something_to_say(tmp_path):
    """Logging is set up only once the core warns: --verbose shows the warning, a script's
    stderr (not a terminal) stays empty."""
    ref, archive = small_oci_archive(tmp_path, unnamed_too=True)
    res = cli.run("load", "--verbose", "--cache", str(tmp_path / "a"), "-i", str(archive))
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [f"Loaded image: {ref}"]
    assert res.stderr.startswith("puller: WARNING: skipping unnamed image sha256:")
    res = cli.run("load", "--cache", str(tmp_path / "b"), "-i", str(archive))
    assert res.returncode == 0 and res.stderr == ""
