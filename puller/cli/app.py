"""The ``puller`` command group. Each command lives in its own module and registers itself;
core modules are imported inside command bodies so that ``--help`` stays fast."""
from __future__ import annotations

import importlib

import typer

# Modules of puller.cli that define commands (each has ``register(app)``), in help order.
COMMAND_MODULES = ("pull", "images", "inspect", "login", "unpack", "run_cmd", "compare",
                   "archive", "housekeeping")


def build() -> typer.Typer:
    app = typer.Typer(name="puller", no_args_is_help=True, add_completion=False,
                      context_settings={"help_option_names": ["-h", "--help"]},
                      help="Pull, cache, unpack, compare and run container images without a Docker daemon.",
                      pretty_exceptions_enable=False, rich_markup_mode=None)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__package__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__package__}.{name}":
                raise
            continue
        module.register(app)
    return app
