"""`lamina run [-d] [--rm] [--name N] [-it] ... IMAGE [CMD...]`: create a container
from IMAGE and start it under its monitor (builder.containers), docker's way:
detached (`-d`: print its ID and leave it running) or attached (follow its output,
forward signals, drive its TTY with `-t`, exit with its exit status)."""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import time

import click

from lamina.builder.cli.app import Globals, cli
from lamina.builder.cli.build import parse_ulimit_flags


@cli.command(context_settings={"allow_interspersed_args": False, "help_option_names": ["--help"]})
@click.option("-d", "--detach", is_flag=True, help="Run in the background and print the container ID.")
@click.option("--rm", is_flag=True, help="Remove the container when it exits.")
@click.option("--name", default="", metavar="NAME", help="Name the container.")
@click.option("-i", "--interactive", is_flag=True, help="Keep stdin connected.")
@click.option("-t", "--tty", is_flag=True, help="Allocate a pseudo-terminal.")
@click.option("-e", "--env", "env", multiple=True, metavar="K=V", help="Set an environment variable.")
@click.option("--env-file", "env_files", multiple=True, metavar="FILE",
              help="Read environment variables from a file.")
@click.option("-w", "--workdir", default=None, metavar="DIR", help="Working directory.")
@click.option("-u", "--user", default=None, metavar="USER[:GROUP]", help="Run as this user.")
@click.option("-v", "--volume", "volumes", multiple=True, metavar="HOST:CTR[:ro]",
              help="Bind-mount a host path.")
@click.option("--network", "--net", type=click.Choice(["default", "bridge", "none", "host"]),
              default="default", help="default (own namespace, outbound through slirp4netns), "
                                      "none (only lo) or host.")
@click.option("-h", "--hostname", default=None, metavar="NAME",
              help="Container hostname (default: its short ID; with --network host the host's).")
@click.option("--entrypoint", default=None, metavar="CMD", help="Replace the image's Entrypoint.")
@click.option("--ulimit", "ulimits", multiple=True, metavar="TYPE=SOFT[:HARD]",
              callback=parse_ulimit_flags,
              help="Resource limit (rlimit) of the command, as docker's: nofile=1024:2048; "
                   "-1 is unlimited (default: what lamina has).")
@click.argument("ref")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def run(g: Globals, detach, rm, name, interactive, tty, env, env_files, workdir, user, volumes,
        network, hostname, entrypoint, ref: str, command, ulimits=()) -> None:
    """Run a command in a new container from image REF."""
    from lamina.builder.containers.attach import Attached, terminal_size
    from lamina.builder.containers.create import RunOptions, check_monitor, create, spawn_monitor
    from lamina.builder.containers.state import ContainerStore
    from lamina.builder.errors import BuildError
    from lamina.store.errors import StoreError
    from lamina.store.store import Store

    if tty and interactive and not os.isatty(0):
        from lamina.builder.containers.state import ContainerError
        raise ContainerError("the input device is not a TTY (drop -t, or run lamina on a terminal)")
    opts = RunOptions(image=ref, args=tuple(command), name=name, detach=detach, auto_remove=rm,
                      interactive=interactive, tty=tty, env=tuple(env), env_files=tuple(env_files),
                      workdir=workdir, user=user, volumes=tuple(volumes), network=network,
                      hostname=hostname, entrypoint=entrypoint,
                      tty_size=terminal_size() if tty else None, ulimits=ulimits)
    try:
        with Store(g.root) as store:
            record = create(store, opts)
    except (BuildError, StoreError) as e:
        # docker run: 125 when the container cannot be made (no such image or user,
        # no command) - the command's own statuses stay 1 and 2
        from lamina.builder.steplog import controls_shown
        click.echo(f"lamina: {controls_shown(str(e))}", err=True)
        raise click.exceptions.Exit(125) from None
    cs = ContainerStore(g.root)
    d = cs.path(record.id)
    if detach:
        spawned = time.monotonic()
        monitor = spawn_monitor(g.root, record.id)
        while True:  # until the monitor started the container (or could not)
            check_monitor(cs, record.id, monitor, spawned)
            current = cs.reconcile(cs.read(record.id) or record)
            if current.status != "created":
                break
            time.sleep(0.02)
        if current.status == "exited" and current.error:
            click.echo(f"lamina: {current.error}", err=True)
            raise click.exceptions.Exit(current.exit_code or 125)
        click.echo(record.id)
        return
    lock = os.open(d / "attach.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(lock, fcntl.LOCK_SH)  # --rm: the monitor waits for us to read the status
    try:
        ours = stdin_pipe = None
        if tty:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            monitor = spawn_monitor(g.root, record.id, attach_fd=theirs.fileno())
            theirs.close()
        elif interactive:
            # a pipe, never lamina's own stdin (the user's terminal): builder.containers.attach
            stdin_r, stdin_pipe = os.pipe2(os.O_CLOEXEC)
            monitor = spawn_monitor(g.root, record.id, stdin_fd=stdin_r)
            os.close(stdin_r)
        else:
            monitor = spawn_monitor(g.root, record.id)
        sys.stdout.flush()
        code = Attached(cs, record.id, ours, monitor, interactive, stdin_pipe=stdin_pipe).run()
    finally:
        os.close(lock)
    if code != 0:
        raise click.exceptions.Exit(code)
