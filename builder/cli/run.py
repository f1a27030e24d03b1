"""`lamina run [--rm] REF [CMD...]`: run an image's command once in the sandbox."""

from __future__ import annotations

import sys

import click

from lamina.builder.cli.app import Globals, cli


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--rm", is_flag=True, help="Accepted for docker compatibility: every run is removed.")
@click.option("--network", type=click.Choice(["none", "host"]), default="none",
              help="Network namespace (default none).")
@click.option("-e", "--env", "env", multiple=True, metavar="K=V", help="Set an environment variable.")
@click.option("-u", "--user", default=None, metavar="USER[:GROUP]", help="Run as this user.")
@click.option("-w", "--workdir", default=None, metavar="DIR", help="Working directory.")
@click.argument("ref")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def run(g: Globals, rm: bool, network: str, env, user, workdir, ref: str, command) -> None:
    """Run REF's command (Entrypoint + Cmd, or Entrypoint + COMMAND) and discard its writes."""
    from lamina.builder.runimage import run_image
    from lamina.store.store import Store

    def out(data: bytes) -> None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()

    with Store(g.root) as store:
        code = run_image(store, ref, list(command), network=network, env=env, user=user,
                         workdir=workdir, on_output=out)
    if code != 0:
        raise click.exceptions.Exit(code)
