"""The `lamina` click group and its global options (`--root`, `--store-compression`,
`--registry-mirror`).

Command modules (build, images, archive, maintenance) register themselves on
`cli`; `builder.cli.main` wraps it so that every lamina error becomes one clear
message and a non-zero exit, never a traceback.

Rootless: started by an ordinary user from the command line, the group's callback
re-executes lamina inside its user namespace before any command runs
(builder.sandbox.userns). Called in-process with explicit arguments (tests), it does
not.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import click


STORE_COMPRESSION_ENV = "LAMINA_STORE_COMPRESSION"
REGISTRY_MIRRORS_ENV = "LAMINA_REGISTRY_MIRRORS"  # read by store.registry.pull.mirrors_for


def default_root() -> Path:
    """The store: $LAMINA_ROOT, else /var/lib/lamina for root, else $XDG_DATA_HOME/lamina."""
    env = os.environ.get("LAMINA_ROOT")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/lamina")
    xdg = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(xdg) / "lamina"


@contextmanager
def _store_compression(kind: str):
    """While the command runs: every store it opens writes new layer blobs as `kind`,
    and so do the lamina processes it starts (bake's builds): they get the environment
    variable. Both are undone afterwards (in-process callers: tests)."""
    from lamina.store.layers import store_compression_in_effect

    old = os.environ.get(STORE_COMPRESSION_ENV)
    os.environ[STORE_COMPRESSION_ENV] = kind
    try:
        with store_compression_in_effect(kind):
            yield
    finally:
        if old is None:
            os.environ.pop(STORE_COMPRESSION_ENV, None)
        else:
            os.environ[STORE_COMPRESSION_ENV] = old


def _mirror(ctx, param, values) -> tuple[str, ...]:
    """`--registry-mirror HOST[:PORT]` (a scheme and a trailing / are dropped)."""
    out = []
    for value in values:
        host = value.strip().split("://", 1)[-1].rstrip("/")
        if not host or "," in host or any(c.isspace() for c in host):
            raise click.BadParameter(f"{value!r} is not HOST[:PORT]", ctx, param)
        if "@" in host.split("/", 1)[0]:  # never echo it: it would hold a password
            raise click.BadParameter("a mirror may not carry credentials (user:password@): "
                                     "log in to it with `lamina login HOST[:PORT]`", ctx, param)
        out.append(host)
    return tuple(out)


@contextmanager
def _registry_mirrors(mirrors: tuple[str, ...]):
    """While the command runs, the mirrors of the command line replace those of
    $LAMINA_REGISTRY_MIRRORS (the command line wins, as --root over $LAMINA_ROOT), for
    this process and the lamina processes it starts (bake's builds)."""
    old = os.environ.get(REGISTRY_MIRRORS_ENV)
    os.environ[REGISTRY_MIRRORS_ENV] = ",".join(mirrors)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(REGISTRY_MIRRORS_ENV, None)
        else:
            os.environ[REGISTRY_MIRRORS_ENV] = old


@dataclass(frozen=True)
class Globals:
    """What the global options decided, handed to every command via the click context."""

    root: Path


class LaminaGroup(click.Group):
    """The click group; remembers whether it runs the process's own command line."""

    own_command_line = False

    def main(self, args=None, *a, **kw):
        # args None: the real command line (sys.argv), which rootless lamina re-executes
        self.own_command_line = args is None
        return super().main(args, *a, **kw)


@click.group(cls=LaminaGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Store directory (default: $LAMINA_ROOT, /var/lib/lamina for root, "
                   "else $XDG_DATA_HOME/lamina).")
@click.option("--store-compression", "store_compression", type=click.Choice(["zstd", "gzip"]), default=None,
              envvar=STORE_COMPRESSION_ENV, show_envvar=True,
              help="Compression of the layer blobs this command stores (default zstd). The image "
                   "ID is the same either way; the manifest digest is not. Blobs already stored "
                   "keep theirs.")
@click.option("--registry-mirror", "registry_mirrors", multiple=True, metavar="HOST[:PORT]",
              callback=_mirror,
              help="A pull-through mirror of Docker Hub, tried before docker.io for docker.io "
                   "images (repeatable, tried in order). Replaces $LAMINA_REGISTRY_MIRRORS "
                   "(HOST[:PORT],...) when given.")
@click.version_option(package_name="lamina", prog_name="lamina")
@click.pass_context
def cli(ctx: click.Context, root: Path | None, store_compression: str | None,
        registry_mirrors: tuple[str, ...] = ()) -> None:
    """lamina: build OCI images from Dockerfiles, without a daemon."""
    from lamina.store import overlayform

    if os.geteuid() != 0 or overlayform.unprivileged():  # rootless: userns decides the rest
        _rootless(ctx, root)
    ctx.obj = Globals(root=root if root is not None else default_root())
    if store_compression is not None:
        ctx.with_resource(_store_compression(store_compression))
    if registry_mirrors:
        ctx.with_resource(_registry_mirrors(registry_mirrors))


def _rootless(ctx: click.Context, root: Path | None) -> None:
    """An ordinary user re-executes in lamina's user namespace; root of a namespace
    lamina did not make adopts it (builder.sandbox.userns). Root on the host skips
    this and its imports."""
    from lamina.builder.sandbox import userns

    own = getattr(ctx.command, "own_command_line", False)
    if own and not ctx.resilient_parsing and userns.needs_reexec():
        from lamina.builder.containers.userns import namespace_to_join

        store_root = root if root is not None else default_root()
        # a container command joins the namespace its containers run in
        userns.reexec(store_root, join=namespace_to_join(store_root, ctx.invoked_subcommand,
                                                         userns.own_command_line()))
    userns.adopt_namespace()  # root of a user namespace lamina did not make (a container)
