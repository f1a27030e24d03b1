"""`lamina build`: options as docker/buildx name them; parses the Dockerfile
(reporting syntax errors) and hands the build to the executor."""

from __future__ import annotations

from pathlib import Path

import click

from builder.cli.app import Globals, cli
from builder.errors import BuildError


@cli.command()
@click.option("-t", "--tag", "tags", multiple=True, metavar="REF", help="Name and optionally tag (name:tag).")
@click.option("-f", "--file", "dockerfile", metavar="FILE", default=None,
              help="Dockerfile path (default: CONTEXT/Dockerfile).")
@click.option("--build-arg", "build_args", multiple=True, metavar="K=V", help="Set a build-time variable.")
@click.option("--target", metavar="STAGE", default=None, help="Build up to this stage.")
@click.option("--no-cache", is_flag=True, help="Do not use the build cache.")
@click.option("--network", type=click.Choice(["none", "host", "default"]), default="none",
              help="Network for RUN steps (default none).")
@click.option("--progress", type=click.Choice(["auto", "tty", "plain", "json"]), default="auto")
@click.option("--secret", "secrets", multiple=True, metavar="id=ID,src=PATH")
@click.option("--iidfile", metavar="FILE", default=None, help="Write the image ID (config digest) here.")
@click.option("--output", "-o", "outputs", multiple=True, metavar="type=...,dest=PATH")
@click.option("--cache-from", "cache_from", multiple=True, metavar="REF")
@click.option("--cache-to", "cache_to", multiple=True, metavar="REF")
@click.argument("context", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.pass_obj
def build(g: Globals, tags, dockerfile, build_args, target, no_cache, network, progress, secrets,
          iidfile, outputs, cache_from, cache_to, context: Path) -> None:
    """Build an image from a Dockerfile and a context directory."""
    from grammar import parse

    path = Path(dockerfile) if dockerfile else context / "Dockerfile"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BuildError(f"cannot read Dockerfile: {path}: no such file")
    except UnicodeDecodeError:
        raise BuildError(f"cannot read Dockerfile: {path}: not UTF-8 text")
    dockerfile_ast = parse(text, path=str(path))
    raise BuildError(
        f"parsed {path} ({len(dockerfile_ast.instructions)} instructions); "
        "the build engine is not implemented yet"
    )
