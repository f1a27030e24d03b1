"""`lamina diff A B`: every difference between two images, explained (builder.imagediff).

A and B are each: an image of the store (`app:1.0`, an image ID), a docker-archive or
OCI archive file, an OCI layout directory (format detected; or say it with
`docker-archive:`, `oci-archive:`, `oci:`), or a registry image (`docker://REF`, or a
reference the store does not have), pulled into a throw-away store removed afterwards.

Exit status as diff(1): 0 identical, 1 different, 2 trouble (usage, an image that
cannot be read).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path

import click

from lamina.builder.cli.app import Globals, cli
from lamina.builder.errors import BuildError
from lamina.store import StoreError

EXIT_DIFFERENT = 1
EXIT_TROUBLE = 2


class _Images:
    """Opens the images of one `lamina diff`: the user's store only when a spec needs
    it, throw-away stores for registry pulls; closes everything at the end."""

    def __init__(self, root) -> None:
        self.root = root
        self.stack = contextlib.ExitStack()
        self._store = None

    def store(self):
        from lamina.store.store import Store

        if self._store is None:
            self._store = self.stack.enter_context(Store(self.root))
        return self._store

    def pulled(self, ref: str):
        from lamina.store.imagesource import from_store
        from lamina.store.registry.pull import pull_image
        from lamina.store.store import Store

        tmp = tempfile.mkdtemp(prefix="lamina-diff-")
        self.stack.callback(shutil.rmtree, tmp, True)
        store = self.stack.enter_context(Store(Path(tmp) / "store"))
        pulled = pull_image(store, ref)
        return from_store(store, pulled.manifest_digest, name=f"docker://{ref}")

    def open(self, spec: str):
        from lamina.store import refs
        from lamina.store.errors import ImageNotFound
        from lamina.store.imagesource import open_image

        if spec.startswith("docker://"):
            src = self.pulled(spec[len("docker://"):])
        else:
            try:
                src = open_image(spec, store=None)
            except StoreError as e:
                if "no store to look it up in" not in e.message:
                    raise
                try:
                    src = open_image(spec, store=self.store())
                except ImageNotFound:
                    if refs.looks_like_id(spec):
                        raise
                    src = self.pulled(spec)  # not here: the registry's
        self.stack.callback(src.close)
        return src

    def close(self) -> None:
        self.stack.close()


@cli.command()
@click.argument("image_a", metavar="A")
@click.argument("image_b", metavar="B")
@click.option("--semantic", is_flag=True,
              help="Ignore what cannot change behaviour: timestamps, compression, tar entry "
                   "order, layer boundaries that only move files.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="text for people, json for machines.")
@click.pass_obj
def diff(g: Globals, image_a: str, image_b: str, semantic: bool, fmt: str) -> None:
    """Compare two images and explain every difference (exit 0 same, 1 different)."""
    from lamina.builder.imagediff import compare, render_json, render_text

    images = _Images(g.root)
    try:
        a = images.open(image_a)
        b = images.open(image_b)
        report = compare(a, b, semantic=semantic)
    except (StoreError, BuildError) as e:
        click.echo(f"lamina: {e}", err=True)
        raise click.exceptions.Exit(EXIT_TROUBLE)
    finally:
        images.close()
    click.echo(render_json(report) if fmt == "json" else render_text(report), nl=False)
    if not report.equal:
        raise click.exceptions.Exit(EXIT_DIFFERENT)
