"""What every bench script does first."""
from __future__ import annotations

import compileall
import random
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def byte_compile() -> None:
    """An installed package has byte-compiled modules; a checkout under
    PYTHONDONTWRITEBYTECODE=1 would recompile every changed module on every run."""
    for pkg in ("puller", "runner"):
        compileall.compile_dir(str(REPO / pkg), quiet=1)


def python_layer(work: Path) -> bytes:
    """A real layer: the host's Python standard library."""
    out = work / "py.tar"
    if not out.exists():
        src = next(p for p in (Path("/usr/lib/python3.11"), Path(sys.prefix) / "lib") if p.exists())
        subprocess.run(["tar", "-C", "/", "--format=posix", "--exclude=__pycache__", "-cf", str(out),
                        str(src).lstrip("/")], check=True, capture_output=True)
    return out.read_bytes()


def registry_sized_image(work: Path, fmt: str = "docker"):
    """~40 MB as a registry counts it (compressed): a Debian tree and the Python standard
    library as two real layers, plus one of incompressible data (media, artefacts that are
    already compressed)."""
    from fixtures.distro import distro_tar
    from fixtures.images import F, build_image, tar_layer
    noise = tar_layer(F("srv/assets.bin", random.Random(5).randbytes(17 * 1024 * 1024)))
    return build_image([distro_tar(work), python_layer(work), noise], fmt=fmt)
