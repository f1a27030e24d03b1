"""Container commands with docker's names, flags and output: `ps [-a] [-q]
[--no-trunc] [--format]`, `logs [-f] [--tail N] [-t]`, `stop [-t N]`, `kill [-s SIG]`,
`rm [-f]`, `exec [-it] [-e] [-u] [-w] CONTAINER CMD...`, `commit CONTAINER [REF]`.
`run` itself is builder.cli.run; the work is in builder.containers."""

from __future__ import annotations

import sys
import time
import unicodedata
from datetime import datetime, timezone

import click

from lamina.builder.cli.app import Globals, cli
from lamina.builder.cli.gotemplate import Record

PS_HEADERS = {"ID": "CONTAINER ID", "Image": "IMAGE", "Command": "COMMAND", "CreatedAt": "CREATED AT",
              "RunningFor": "CREATED", "Ports": "PORTS", "State": "STATE", "Status": "STATUS",
              "Size": "SIZE", "Names": "NAMES", "Labels": "LABELS", "Mounts": "MOUNTS",
              "Networks": "NETWORKS", "LocalVolumes": "LOCAL VOLUMES"}
PS_DEFAULT = ("table {{.ID}}\t{{.Image}}\t{{.Command}}\t{{.RunningFor}}\t{{.Status}}\t"
              "{{.Ports}}\t{{.Names}}")


def _store(g: Globals):
    from lamina.builder.containers.state import ContainerStore
    return ContainerStore(g.root)


def ellipsis(s: str, n: int) -> str:
    return s if len(s) <= n else s[:n - 1] + "…"


_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t",
               "\v": "\\v", "\\": "\\\\", '"': '\\"'}


def go_quote(s: str) -> str:
    """Go's strconv.Quote, as docker ps shows COMMAND: printable runes (unicode.IsPrint:
    letters, marks, numbers, punctuation, symbols, the ASCII space) as they are, every
    other one escaped - C1 controls too (U+009B is an 8-bit CSI), so an image's command
    never drives the terminal of `lamina ps`."""
    out = []
    for ch in s:
        code = ord(ch)
        if ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif ch == " " or unicodedata.category(ch)[0] in "LMNPS":
            out.append(ch)
        elif code < 0x20 or code == 0x7f:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return '"' + "".join(out) + '"'


def status_text(c, now: float) -> str:
    """docker's container Status column."""
    from lamina.builder.cli.units import human_duration
    from datetime import timedelta

    if c.status == "running":
        return "Up " + human_duration(timedelta(seconds=now - (c.started or now)))
    if c.status == "exited":
        return (f"Exited ({c.exit_code if c.exit_code is not None else 255}) "
                + human_duration(timedelta(seconds=now - (c.finished or now))) + " ago")
    return "Created"


def ps_row(c, now: float, no_trunc: bool) -> Record:
    from lamina.builder.cli.units import human_duration
    from datetime import timedelta

    command = " ".join(c.argv)
    created = datetime.fromtimestamp(c.created, timezone.utc)
    return Record(
        ID=c.id if no_trunc else c.short_id,
        Image=c.image,
        Command=go_quote(command if no_trunc else ellipsis(command, 20)),
        CreatedAt=created.strftime("%Y-%m-%d %H:%M:%S +0000 UTC"),
        RunningFor=human_duration(timedelta(seconds=now - c.created)) + " ago",
        Ports="", State=c.status, Status=status_text(c, now), Size="0B", Names=c.name,
        Labels="", Mounts=",".join(t for _, t, _ in c.volumes),
        Networks="host" if c.network == "host" else c.network, LocalVolumes="0")


@cli.command("ps")
@click.option("-a", "--all", "all_", is_flag=True, help="Show all containers (default: running).")
@click.option("-q", "--quiet", is_flag=True, help="Only show container IDs.")
@click.option("--no-trunc", is_flag=True, help="Do not truncate IDs and commands.")
@click.option("-n", "--last", default=-1, type=int, help="Show the n last created containers.")
@click.option("-l", "--latest", is_flag=True, help="Show the latest created container.")
@click.option("--format", "fmt", default=None, metavar="FORMAT",
              help="'table' (default), 'table TEMPLATE', 'json' or a Go TEMPLATE.")
@click.pass_obj
def ps_cmd(g: Globals, all_: bool, quiet: bool, no_trunc: bool, last: int, latest: bool,
           fmt: str | None) -> None:
    """List containers (running ones; -a: all), newest first."""
    from lamina.builder.cli.images import _check_format, _render

    _check_format(fmt)
    containers = _store(g).listing()
    if latest:
        last = 1
    if last >= 0:
        containers = containers[:last]
    elif not all_:
        containers = [c for c in containers if c.status == "running"]
    now = time.time()
    rows = [ps_row(c, now, no_trunc) for c in containers]
    if fmt is None and quiet:
        fmt = "{{.ID}}"
    _render(fmt, rows, PS_HEADERS, PS_DEFAULT)


@cli.command("logs")
@click.option("-f", "--follow", is_flag=True, help="Follow the output until the container exits.")
@click.option("-n", "--tail", default="all", metavar="N", help="Only the last N lines (default all).")
@click.option("-t", "--timestamps", is_flag=True, help="Show timestamps.")
@click.argument("container")
@click.pass_obj
def logs_cmd(g: Globals, follow: bool, tail: str, timestamps: bool, container: str) -> None:
    """Print a container's output (stdout to stdout, stderr to stderr)."""
    from lamina.builder.containers.logs import read_from, tail as tail_of
    from lamina.builder.containers.state import LOG_FILE

    if tail != "all" and not tail.lstrip("-").isdigit():
        raise click.BadParameter(f"invalid tail {tail!r}: a number or 'all'", param_hint="'--tail'")
    cs = _store(g)
    c = cs.find(container)
    path = cs.path(c.id) / LOG_FILE
    records, offset = read_from(path, 0)
    records = tail_of(records, None if tail == "all" else int(tail))

    def show(rs) -> None:
        for r in rs:
            out = sys.stderr.buffer if r.stream == "stderr" else sys.stdout.buffer
            if timestamps:
                out.write(r.time.encode() + b" ")
            out.write(r.data)
            out.flush()

    show(records)
    while follow:
        current = cs.reconcile(cs.read(c.id) or c)
        records, offset = read_from(path, offset)
        show(records)
        if current.status == "exited" or not cs.path(c.id).is_dir():
            show(read_from(path, offset)[0])
            break
        time.sleep(0.05)


@cli.command("stop")
@click.option("-t", "--time", "--timeout", "timeout", default=None, type=int,
              help="Seconds to wait before killing (default 10).")
@click.option("-s", "--signal", "sig", default=None, help="Signal to send (default: STOPSIGNAL).")
@click.argument("containers", nargs=-1, required=True)
@click.pass_obj
def stop_cmd(g: Globals, timeout: int | None, sig: str | None, containers) -> None:
    """Stop running containers: their STOPSIGNAL, then SIGKILL after the timeout."""
    from dataclasses import replace

    from lamina.builder.containers.control import stop

    cs = _store(g)
    for ref in containers:
        c = cs.find(ref)
        if sig:
            c = replace(c, stop_signal=sig)
        stop(cs, c, timeout)
        click.echo(ref)


@cli.command("kill")
@click.option("-s", "--signal", "sig", default="SIGKILL", help="Signal to send (default SIGKILL).")
@click.argument("containers", nargs=-1, required=True)
@click.pass_obj
def kill_cmd(g: Globals, sig: str, containers) -> None:
    """Send a signal to containers' main process."""
    from lamina.builder.containers.control import kill

    cs = _store(g)
    for ref in containers:
        kill(cs, cs.find(ref), sig)
        click.echo(ref)


@cli.command("rm")
@click.option("-f", "--force", is_flag=True, help="Kill and remove a running container.")
@click.option("-v", "--volumes", is_flag=True, help="Accepted for docker compatibility.")
@click.argument("containers", nargs=-1, required=True)
@click.pass_obj
def rm_cmd(g: Globals, force: bool, volumes: bool, containers) -> None:
    """Remove containers (their upper dir, log and record)."""
    from lamina.builder.containers.control import remove
    from lamina.builder.containers.imagehold import sweep
    from lamina.builder.containers.state import ContainerError
    from lamina.store.store import Store

    cs = _store(g)
    failed = None
    for ref in containers:
        try:
            remove(cs, cs.find(ref), force=force)
            click.echo(ref)
        except ContainerError as e:
            click.echo(f"lamina: {e}", err=True)
            failed = e
    with Store(g.root) as store:
        sweep(store, cs)  # holds a crash left behind, containers made before holds
    if failed is not None:
        raise click.exceptions.Exit(1)


@cli.command("exec", context_settings={"allow_interspersed_args": False})
@click.option("-i", "--interactive", is_flag=True, help="Keep stdin connected.")
@click.option("-t", "--tty", is_flag=True, help="Allocate a pseudo-terminal.")
@click.option("-e", "--env", "env", multiple=True, metavar="K=V")
@click.option("-u", "--user", default=None, metavar="USER[:GROUP]")
@click.option("-w", "--workdir", default=None, metavar="DIR")
@click.option("-d", "--detach", is_flag=True, help="Not supported (refused).")
@click.argument("container")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_obj
def exec_cmd(g: Globals, interactive, tty, env, user, workdir, detach, container, command) -> None:
    """Run a command in a running container."""
    from lamina.builder.containers.control import exec_in
    from lamina.builder.containers.state import ContainerError

    if detach:
        raise ContainerError("exec -d is not supported by lamina")
    cs = _store(g)
    c = cs.find(container)
    layer_dirs = ()
    if user is not None:
        from lamina.store.store import Store

        from lamina.builder.containers.imagehold import container_image

        with Store(g.root) as store:
            image = container_image(store, c)
            layer_dirs = (cs.path(c.id) / "upper",) + tuple(
                store.layer_dir(l.diff_id) for l in reversed(image.layers))
    code = exec_in(c, command, tty=tty, interactive=interactive, env=env, user=user,
                   workdir=workdir, layer_dirs=layer_dirs)
    if code != 0:
        raise click.exceptions.Exit(code)


@cli.command("commit")
@click.option("-m", "--message", default="", help="Commit message (history comment).")
@click.option("-a", "--author", default="", help="Author.")
@click.argument("container")
@click.argument("ref", required=False)
@click.pass_obj
def commit_cmd(g: Globals, message: str, author: str, container: str, ref: str | None) -> None:
    """Make an image of a container's changes; prints its ID."""
    from lamina.builder.containers.commit import commit
    from lamina.store.store import Store

    cs = _store(g)
    c = cs.find(container)
    with Store(g.root) as store:
        image = commit(store, c, cs.path(c.id) / "upper", ref, message=message, author=author)
    click.echo(image.config_digest)

