"""COPY of a selection into an image root: the destination read against the root as
it is now (docker's rules: relative to WORKDIR, `dir/`, `.` or an existing directory
in the merged view means a directory), then the copy itself by
`builder.steps.copy.copy_into_root`.

Public API:
- `dest_info(root_dir, dest, workdir)` -> DestInfo(path, is_dir)
- `copy_selection(root, selection, dest, workdir, *, heredocs, chown, chmod, ...)`
  -> CopyStats
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

from lamina.builder.context.copysrc import CopySelection, plan_copy
from lamina.builder.context.patterns import go_clean
from lamina.builder.errors import BuildError
from lamina.builder.sandbox.rootpath import RootDir
from lamina.builder.steps.chmod import ChmodSpec, parse_chmod
from lamina.builder.steps.copy import CopyStats, HeredocSource, copy_into_root

__all__ = ["DestInfo", "copy_selection", "dest_info"]


@dataclass(frozen=True)
class DestInfo:
    """A COPY destination: the clean absolute image path and whether it is a
    directory destination (`dir/`, `.`, `/`, or an existing directory in the image)."""

    path: str
    is_dir: bool


def dest_info(r: RootDir, dest: str, workdir: str = "/") -> DestInfo:
    """docker's destination reading (the same rules as copysrc.plan_copy, which the
    file copy itself uses): relative to WORKDIR, a trailing `/` or `.` means a
    directory, and so does an existing directory in the merged view."""
    if dest.startswith("/"):
        joined = dest
    else:
        wd = workdir if workdir.startswith("/") else "/" + workdir
        joined = wd.rstrip("/") + "/" + dest
    path = go_clean(joined)
    dir_hint = dest in ("", ".") or dest.endswith("/") or dest.endswith("/.")
    return DestInfo(path, dir_hint or path == "/" or r.is_dir(path))


def copy_selection(root: str | os.PathLike, selection: CopySelection, dest: str,
                   workdir: str = "/", *, heredocs: Sequence[HeredocSource] = (),
                   chown: tuple[int, int] | None = None,
                   chmod: "str | int | ChmodSpec | None" = None,
                   source_date_epoch: int | None = None,
                   instruction: str = "COPY", verify_digests: bool = True,
                   reuse=None) -> CopyStats:
    """COPY `selection` (and heredoc bodies) to `dest` inside `root`, with docker's
    destination rules evaluated against the root as it is now (the merged view)."""
    spec = parse_chmod(chmod)
    with RootDir(root) as r:
        info = dest_info(r, dest, workdir)
        # several sources onto a non-directory dest: in turn, as BuildKit (plan_copy)
        actions = plan_copy(selection, dest, workdir, r.is_dir, instruction=instruction)
    follow = frozenset() if info.is_dir else frozenset({info.path})
    # heredoc files come after the sources (BuildKit's order): into dest when it is
    # (or a source made it) a directory, else each onto dest, the last one kept
    into_dir = info.is_dir or any(s.kind == "dir" for s in selection.sources)
    docs = [(go_clean(info.path + "/" + d.name) if into_dir else info.path, d, not into_dir)
            for d in heredocs]
    for _, d, _ in docs:
        if not d.name or "/" in d.name or d.name in (".", ".."):
            raise BuildError(f"invalid heredoc file name {d.name!r}")
    return copy_into_root(root, actions, chown=chown, chmod=spec,
                          preserve_ownership=selection.preserves_ownership,
                          # an image tree's xattrs go along; the context's never do
                          source_xattrs=selection.preserves_ownership,
                          source_date_epoch=source_date_epoch, follow_final=follow,
                          heredocs=docs, verify_digests=verify_digests, reuse=reuse)
