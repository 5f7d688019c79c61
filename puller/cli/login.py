"""``puller login`` / ``logout``: Docker's credential file (and helpers)."""
from __future__ import annotations

import sys

import typer

from .common import handle_errors


def register(app: typer.Typer) -> None:
    app.command("login", help="Save credentials for a registry (default: Docker Hub).")(login_cmd)
    app.command("logout", help="Remove saved credentials for a registry.")(logout_cmd)


def _registry(server: str | None) -> str:
    if not server:
        return "docker.io"
    s = server.split("://", 1)[-1].split("/", 1)[0].lower()
    return "docker.io" if s in ("index.docker.io", "registry-1.docker.io", "docker.io") else s


@handle_errors
def login_cmd(server: str = typer.Argument(None, metavar="[SERVER]"),
              username: str = typer.Option(None, "-u", "--username"),
              password: str = typer.Option(None, "-p", "--password"),
              password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the password from stdin."),
              verify: bool = typer.Option(True, "--verify/--no-verify", help="Check the credentials with the registry first.")) -> int:
    from ..errors import UsageError
    from ..transport.credentials import store
    registry = _registry(server)
    if password_stdin:
        password = sys.stdin.read().rstrip("\n")
    if not username:
        if not sys.stdin.isatty():
            raise UsageError("username required (-u) when stdin is not a terminal")
        username = input("Username: ")
    if password is None:
        import getpass
        password = getpass.getpass("Password: ")
    identity = _check(registry, username, password) if verify else None
    store(registry, username, password, identity_token=identity)
    print("Login Succeeded")
    return 0


def _check(registry: str, username: str, password: str) -> str | None:
    """Ask the registry whether these credentials work; return the identity token its
    token server issued for them, if any (stored instead of the password)."""
    from ..registry import Registry, RegistryOptions
    opts = RegistryOptions.build(username=username, password=password)
    with Registry(registry, opts) as reg:
        return reg.primary.login()


@handle_errors
def logout_cmd(server: str = typer.Argument(None, metavar="[SERVER]")) -> int:
    from ..transport.credentials import erase
    registry = _registry(server)
    if erase(registry):
        print(f"Removing login credentials for {registry}")
    else:
        print(f"Not logged in to {registry}")
    return 0
