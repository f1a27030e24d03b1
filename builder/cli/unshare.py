"""`lamina unshare [--check] [CMD [ARG...]]`: a command inside rootless lamina's user
namespace (as ``buildah unshare``), and what this machine offers a rootless lamina.

A rootless store holds files of the image's users, which on the host belong to the
user's subordinate IDs: the user can inspect or remove them only from inside, e.g.
``lamina unshare rm -rf ~/.local/share/lamina``. The group callback
(builder.cli.app) has already re-executed lamina in the namespace when this runs;
as root, the command simply runs. ``LAMINA_ROOT`` names the store for the command.
"""

from __future__ import annotations

import os

import click

from lamina.builder.cli.app import Globals, cli
from lamina.builder.sandbox import userns


@cli.command("unshare", context_settings={"ignore_unknown_options": True,
                                          "allow_interspersed_args": False})
@click.option("--check", is_flag=True, help="Say what this machine offers a rootless lamina.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def unshare_cmd(g: Globals, check: bool, command: tuple[str, ...]) -> None:
    """Run COMMAND (default: $SHELL) as root of lamina's user namespace."""
    if check:
        for line in userns.report():
            click.echo(line)
        return
    argv = list(command) or [os.environ.get("SHELL") or "/bin/sh"]
    env = dict(os.environ, LAMINA_ROOT=str(g.root))
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as e:
        raise click.ClickException(f"cannot run {argv[0]!r}: {e.strerror}") from None
