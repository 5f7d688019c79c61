"""``python -m runner SPEC_JSON``: run a container from a JSON RunSpec (tests, debugging).

The JSON object holds RunSpec's fields; ``volumes`` as ``"SRC:DST[:ro]"`` strings and
``limits`` as ``{"memory": bytes, "cpus": float, "pids": int}``. Exits with the
container's status, or prints a RunError's one-line message and exits with its code.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from puller.errors import PullerError, RunError
from runner import Limits, RunSpec, Volume, run


def spec_from_json(text: str) -> RunSpec:
    """Build a RunSpec from its JSON form."""
    data = json.loads(text)
    data["rootfs"] = Path(data["rootfs"])
    data["argv"] = tuple(data["argv"])
    for key in ("env",):
        if key in data:
            data[key] = tuple(data[key])
    for key in ("containers_dir", "state_dir", "sidecar"):
        if data.get(key):
            data[key] = Path(data[key])
    data["volumes"] = tuple(Volume.parse(v) for v in data.get("volumes", ()))
    data["limits"] = Limits(**data.get("limits", {}))
    return RunSpec(**data)


def main(argv: list[str]) -> int:
    try:
        return run(spec_from_json(argv[0]))
    except RunError as e:
        print(f"runner: {e}", file=sys.stderr)
        return e.exit_code
    except PullerError as e:
        print(f"runner: {e}", file=sys.stderr)
        return 125


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
