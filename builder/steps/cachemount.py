"""`RUN --mount=type=cache,from=STAGE|IMAGE,source=PATH`: a cache dir whose first
content is a path of another stage or image.

BuildKit keys such a cache by its id *and* the source snapshot (a new mutable ref
made on top of the `from` ref the first time; the mount shows its `source` path),
so the same id seeded from two different stages gives two caches, and a cache
seeded once keeps what the RUNs wrote into it while its source stays the same.
lamina does the same: the dir is named by hash(id, the source's layer dirs — named
by their diff_ids —, the source path), and made the first time by copying the
source path out of the merged, read-only view of those layers (owners, modes,
links kept, as COPY --from copies), into a temp dir renamed into place (two builds
seeding at once: one wins, the other's copy is dropped).

Public API: `cache_dir_for(cache_mounts_dir, mount, (layer_dirs, what), fail) -> Path`;
`check_cache_subdir(cache_dir, source, fail)`: the `source=` subdir of a cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable

from lamina.builder.context.context import SourceTree
from lamina.builder.context.copysrc import select_sources
from lamina.builder.errors import BuildError
from lamina.builder.sandbox.mountedroot import run_in_namespace
from lamina.builder.sandbox.overlay import mount_overlay_readonly
from lamina.builder.sandbox.rootpath import RootDir, RootPathError
from lamina.builder.steps.copyinto import copy_selection


def _seed_into(dest: Path, lowers: tuple[Path, ...], source: str, scratch: Path,
               what: str) -> None:
    """Copy `source` of the merged layers into the (empty, existing) dir `dest`, which
    then takes the source dir's owner and mode (the mount shows that dir)."""

    def inside() -> None:
        view = scratch / "view"
        view.mkdir()
        mount_overlay_readonly(lowers, view, scratch)
        tree = SourceTree(view)
        try:
            selection = select_sources(tree, [source], allow_empty_wildcard=False)
        except BuildError:
            raise BuildError(f"cache mount source {source!r} does not exist in {what}") from None
        if len(selection.sources) != 1 or selection.sources[0].kind != "dir":
            raise BuildError(f"cache mount source {source!r} of {what} is not a directory")
        copy_selection(dest, selection, "/")
        st = os.stat(selection.sources[0].abs_path)
        os.chown(dest, st.st_uid, st.st_gid)
        os.chmod(dest, st.st_mode & 0o7777)

    run_in_namespace(inside)


def cache_dir_for(cache_mounts_dir: Path, m, seed: tuple[tuple[Path, ...], str],
                  fail: Callable[[str], BuildError]) -> Path:
    lowers, what = seed
    source = m.source or "/"
    ident = json.dumps(["seeded", m.id or m.target, [os.fspath(p) for p in lowers], source])
    path = cache_mounts_dir / hashlib.sha256(ident.encode()).hexdigest()[:24]
    if path.exists():
        return path
    cache_mounts_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    staging = cache_mounts_dir / f".seed-{path.name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o700)
    try:
        data = staging / "data"
        data.mkdir(mode=0o755)
        scratch = staging / "scratch"
        scratch.mkdir(mode=0o700)
        try:
            _seed_into(data, tuple(lowers), source, scratch, what)
        except BuildError as e:
            raise fail(f"RUN --mount=type=cache,from={m.from_}: {e.message}") from None
        if m.uid is not None or m.gid is not None:
            os.chown(data, m.uid or 0, m.gid or 0)
        if m.mode is not None:
            os.chmod(data, m.mode)
        try:
            os.rename(data, path)
        except OSError:
            if not path.is_dir():  # not another build's seeding that won the race
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def check_cache_subdir(cache_dir: Path, source: str, fail: Callable[[str], BuildError]) -> None:
    """`source=` of a cache mount without `from=`: that subdirectory of the cache is
    mounted (BuildKit's llb.SourcePath), resolved inside the cache dir, so a symlink
    the cache holds never leads out of it (BuildKit's testCacheMountSourceEscape: an
    error). Checked here for a clear error; the sandbox resolves it again in the
    step's own mount namespace and mounts the dir it opened (rootmounts.CacheMount
    `subdir`), so a concurrent RUN swapping a component cannot redirect the mount."""
    try:
        with RootDir(cache_dir) as r:
            os.close(r.open_dir(source))
    except RootPathError as e:
        raise fail(f"RUN --mount=type=cache,source={source}: {e.message} in the cache") from None
