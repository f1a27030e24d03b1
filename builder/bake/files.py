"""Which files `lamina bake` reads and in which order, and reading them into one
`Definition`.

Without `-f`, the current directory's files in buildx's lookup order, every one
that exists: compose.yaml, compose.yml, docker-compose.yml, docker-compose.yaml,
docker-bake.json, docker-bake.hcl, docker-bake.override.json,
docker-bake.override.hcl. Compose files are read first (merged together), then the
bake files (merged in order, later attributes winning), as buildx does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from lamina.builder.bake.bakefile import load_bakefiles
from lamina.builder.bake.compose import is_compose_name, load_compose
from lamina.builder.bake.targets import Definition
from lamina.builder.errors import BuildError

DEFAULT_FILES = ("compose.yaml", "compose.yml", "docker-compose.yml", "docker-compose.yaml",
                 "docker-bake.json", "docker-bake.hcl", "docker-bake.override.json",
                 "docker-bake.override.hcl")


def default_files(directory: Path) -> list[Path]:
    found = [directory / name for name in DEFAULT_FILES if (directory / name).is_file()]
    if not found:
        raise BuildError(f"no bake file in {directory}: looked for {', '.join(DEFAULT_FILES)} "
                         "(name one with -f)")
    return found


def load_definition(files: list[Path], environ: Mapping[str, str] | None = None) -> Definition:
    for path in files:
        if not path.is_file():
            raise BuildError(f"cannot read the bake file {path}: no such file")
    definition = Definition()
    compose = [p for p in files if is_compose_name(p)]
    bake = [p for p in files if not is_compose_name(p)]
    try:
        if compose:
            load_compose(compose, definition, environ)
        if bake:
            load_bakefiles(bake, definition, environ)
    except RecursionError:  # `[[[[...]]]]` or `${A:-${A:-...}}` thousands deep
        raise BuildError(f"{', '.join(map(str, files))}: the bake definition is nested too "
                         "deeply to read") from None
    return definition
