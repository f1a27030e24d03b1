"""`lamina save` and `lamina load`: images to and from docker-archive / OCI archive
files, with docker's option names (`save -o`, `load -i`, `-q`), and `save
--compression gzip|zstd` for the layers of an OCI archive (gzip by default: see
store.recompress)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from lamina.builder.cli.app import Globals, cli
from lamina.store import StoreError


def _open_store(g: Globals):
    from lamina.store.store import Store

    return Store(g.root)


@cli.command()
@click.argument("refs", nargs=-1, required=True, metavar="REF...")
@click.option("-o", "--output", "output", metavar="FILE", default=None,
              help="Write to FILE (default: standard output, unless it is a terminal).")
@click.option("--format", "fmt", type=click.Choice(["docker", "oci"]), default="docker", show_default=True,
              help="docker: docker-archive (docker load, podman load, skopeo docker-archive:); "
                   "oci: a tar of an OCI image layout (skopeo oci-archive:, podman load).")
@click.option("--compression", type=click.Choice(["gzip", "zstd"]), default=None,
              help="Layer compression of an OCI archive (default gzip, which every tool reads). "
                   "gzip: layers stored zstd are recompressed once (the gzip blob is kept in the "
                   "store for the next save), so the archive's manifest digest differs from the "
                   "stored image's; the image ID stays the same. zstd: the stored image as it is. "
                   "A docker archive always holds uncompressed layers.")
@click.pass_obj
def save(g: Globals, refs: tuple[str, ...], output: str | None, fmt: str, compression: str | None) -> None:
    """Save one or more images to a tar archive."""
    from lamina.store.archive import save as save_archive

    if compression is not None and fmt != "oci":
        raise click.UsageError("--compression applies to --format oci only "
                               "(a docker archive holds uncompressed layers)")
    store = _open_store(g)
    if output is None or output == "-":
        if sys.stdout.isatty():
            raise StoreError("refusing to write an archive to a terminal: use -o FILE or redirect")
        save_archive(store, refs, sys.stdout.buffer, fmt=fmt, compression=compression)
        return
    save_archive(store, refs, Path(output), fmt=fmt, compression=compression)


@cli.command()
@click.option("-i", "--input", "input_", metavar="FILE", default=None,
              help="Read from FILE (docker-archive or OCI archive, optionally gzip/zstd "
                   "compressed; default: standard input).")
@click.option("-q", "--quiet", is_flag=True, help="Do not print the loaded images.")
@click.pass_obj
def load(g: Globals, input_: str | None, quiet: bool) -> None:
    """Load images from a tar archive (from lamina save, docker save, podman save or skopeo)."""
    from lamina.store import refs as refnames
    from lamina.store.archive import load as load_archive, load_stream

    store = _open_store(g)
    if input_ is None or input_ == "-":
        if sys.stdin.isatty():
            raise StoreError("no archive given: use -i FILE or redirect standard input")
        loaded = load_stream(store, sys.stdin.buffer)
    else:
        loaded = load_archive(store, Path(input_))
    if quiet:
        return
    for item in loaded:
        if item.names:
            for name in item.names:
                click.echo(f"Loaded image: {refnames.familiar(name)}")
        else:
            click.echo(f"Loaded image ID: {item.config_digest}")
