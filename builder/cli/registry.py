"""`lamina pull`, `push`, `login` and `logout`: the registry commands, with docker's
option names. Progress goes to stderr (one line per blob when it completes, and
the digest at the end, as `docker push` prints it); credentials are read from a
prompt or `--password-stdin`, never echoed or printed."""

from __future__ import annotations

import sys

import click

from lamina.builder.cli.app import Globals, cli


def _open_store(g: Globals):
    from lamina.store.store import Store

    return Store(g.root)


class TransferProgress:
    """Per-blob progress of a pull or push on stderr. On a terminal, one live line per
    blob as docker draws them (bytes and rate, the block redrawn in place at most 5
    times a second and when a blob completes; parallel transfers each keep their own
    line); otherwise one plain line when each blob is done. Called from the transfer
    threads."""

    def __init__(self, verb: str, quiet: bool = False) -> None:
        import threading

        self.verb = verb
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.lock = threading.Lock()
        self.started: dict[str, float] = {}
        self.lines: dict[str, str] = {}  # what -> its line, in order of first report
        self.drawn = 0                   # lines of the block on screen
        self.shown = 0.0

    def __call__(self, what: str, done: int, total: int) -> None:
        import time

        if self.quiet:
            return
        with self.lock:
            now = time.monotonic()
            start = self.started.setdefault(what, now)
            finished = bool(total) and done >= total
            if finished:
                line = f"{what}: {self.verb} {total / 1e6:.1f} MB"
            else:
                rate = done / max(now - start, 1e-3) / 1e6
                line = f"{what}: {done / 1e6:.1f}/{total / 1e6:.1f} MB ({rate:.1f} MB/s)"
            if not self.tty:
                if finished and self.lines.get(what) != line:
                    click.echo(line, err=True)
                self.lines[what] = line
                return
            self.lines[what] = line
            if finished or now - self.shown >= 0.2:
                self.shown = now
                self._draw()

    def _draw(self) -> None:
        """The block again, over the one drawn before: up to its first line, each line
        cleared and written."""
        up = f"\x1b[{self.drawn}F" if self.drawn else ""
        click.echo(up + "".join(f"\x1b[2K{line}\n" for line in self.lines.values()),
                   err=True, nl=False)
        self.drawn = len(self.lines)


def _session_for(reference: str):
    from lamina.store import refs
    from lamina.store.registry.session import RegistrySession

    return RegistrySession(refs.parse(reference).domain)


@cli.command()
@click.argument("reference", metavar="NAME[:TAG|@DIGEST]")
@click.option("--platform", default=None, metavar="OS/ARCH[/VARIANT]",
              help="Pull this platform of a multi-platform image (default: the host's).")
@click.option("-q", "--quiet", is_flag=True, help="Print only the image reference.")
@click.pass_obj
def pull(g: Globals, reference: str, platform: str | None, quiet: bool) -> None:
    """Pull an image from a registry into the store."""
    from lamina.store.registry.pull import parse_platform, pull_image

    want = parse_platform(platform) if platform else None
    with _open_store(g) as store:
        pulled = pull_image(store, reference, platform=want,
                            progress=TransferProgress("downloaded", quiet))
    if quiet:
        click.echo(pulled.reference)
        return
    click.echo(f"Digest: {pulled.repo_digest}", err=True)  # what the reference names (docker's)
    click.echo(f"Status: pulled {pulled.reference} ({pulled.downloaded} bytes downloaded)", err=True)
    click.echo(pulled.reference)


@cli.command()
@click.argument("source", metavar="NAME[:TAG]")
@click.argument("destination", required=False, metavar="[DEST]")
@click.option("--compression", type=click.Choice(["gzip", "zstd"]), default="gzip", show_default=True,
              help="Layer compression in the registry (gzip: every client reads it; the image ID "
                   "stays the same either way).")
@click.option("-q", "--quiet", is_flag=True, help="Print only the pushed digest.")
@click.pass_obj
def push(g: Globals, source: str, destination: str | None, compression: str, quiet: bool) -> None:
    """Push an image of the store to a registry (to DEST when given)."""
    from lamina.store.registry.push import push_image

    with _open_store(g) as store:
        pushed = push_image(store, source, destination, compression=compression,
                            progress=TransferProgress("pushed", quiet))
    if quiet:
        click.echo(pushed.digest)  # what the tag names: the RepoDigest
        return
    index = f", an index of image manifest {pushed.manifest_digest} and its attestations" \
        if pushed.index_digest else ""
    click.echo(f"{pushed.reference}: digest: {pushed.digest} "
               f"(uploaded {pushed.uploaded} bytes, {pushed.skipped} blobs already there{index})")


@cli.command()
@click.argument("registry")
@click.option("-u", "--username", default=None)
@click.option("-p", "--password", default=None, help="Prefer --password-stdin: a password on the "
              "command line is visible to other users in the process list.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.pass_obj
def login(g: Globals, registry: str, username: str | None, password: str | None,
          password_stdin: bool) -> None:
    """Log in to a registry (credentials checked, then stored 0600)."""
    from lamina.store.registry.auth import Credentials, store_credentials
    from lamina.store.registry.session import RegistrySession

    host = _registry_host(registry)
    if password is not None:
        click.echo("WARNING! Using --password via the CLI is insecure. Use --password-stdin.", err=True)
    if password_stdin:
        if password is not None:
            raise click.UsageError("--password and --password-stdin are mutually exclusive")
        password = sys.stdin.read().rstrip("\r\n")
    if username is None:
        username = click.prompt("Username")
    if password is None:
        password = click.prompt("Password", hide_input=True)
    creds = Credentials(username, password)
    with RegistrySession(host, credentials=creds) as session:
        with session.request("GET", "/v2/", scope="registry:catalog:*", ok=(200,)):
            pass
    path = store_credentials(host, creds)
    click.echo(f"Login Succeeded (credentials stored in {path})")


@cli.command()
@click.argument("registry")
@click.pass_obj
def logout(g: Globals, registry: str) -> None:
    """Remove the stored credentials of a registry."""
    from lamina.store.registry.auth import remove_credentials

    host = _registry_host(registry)
    if remove_credentials(host):
        click.echo(f"Removing login credentials for {host}")
    else:
        click.echo(f"Not logged in to {host}")


def _registry_host(text: str) -> str:
    """`https://host:5000/` or `host:5000` -> host:5000 (docker.io for Docker Hub)."""
    host = text.split("://", 1)[-1].split("/", 1)[0].strip()
    if not host:
        raise click.UsageError(f"not a registry: {text!r}")
    return "docker.io" if host in ("index.docker.io", "registry-1.docker.io") else host
