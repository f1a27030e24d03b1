"""The build's SOURCE_DATE_EPOCH: where it comes from and what `git` means.

Precedence (first given wins): `lamina build --timestamp V`, `--build-arg
SOURCE_DATE_EPOCH=V`, the environment's SOURCE_DATE_EPOCH (buildx propagates it to
the build arg the same way). V is a whole number of seconds >= 0, or `git` (also
BuildKit's spelling `context`): the committer time of the context's git HEAD, so a
CI job can pin every timestamp to the commit it builds. None when nothing is given
(the executor then uses 0).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Mapping

from lamina.builder.errors import BuildError

GIT_VALUES = ("git", "context")
ARG = "SOURCE_DATE_EPOCH"


def parse_epoch(value: str, *, source: str, context_dir: Path) -> int:
    """One SOURCE_DATE_EPOCH value as `source` (e.g. "--timestamp") gave it."""
    text = value.strip()
    if text.lower() in GIT_VALUES:
        return git_commit_time(context_dir)
    try:
        epoch = int(text, 10)
    except ValueError:
        raise BuildError(f"{source}: SOURCE_DATE_EPOCH must be a whole number of seconds "
                         f"or 'git', got {value!r}") from None
    if epoch < 0:
        raise BuildError(f"{source}: SOURCE_DATE_EPOCH must not be negative, got {value!r}")
    return epoch


def git_commit_time(context_dir: Path) -> int:
    """The committer time (seconds) of HEAD of the git work tree holding `context_dir`."""
    from lamina.builder.context.worktree import git_output  # the context's config runs nothing

    if shutil.which("git") is None:
        raise BuildError("SOURCE_DATE_EPOCH=git needs the git command, which is not installed")
    out = git_output(context_dir, "log", "-1", "--format=%ct", "HEAD", timeout=60)
    if out is None or not out.isdigit():
        raise BuildError(f"SOURCE_DATE_EPOCH=git: the context {context_dir} is not in a git "
                         f"work tree with a commit")
    return int(out)


def resolve_source_date(timestamp: str | None, build_args: Mapping[str, str],
                        environ: Mapping[str, str], context_dir: Path) -> int | None:
    """The build's epoch from --timestamp, the build arg or the environment; None if
    none of them is set (empty counts as unset)."""
    for value, source in ((timestamp, "--timestamp"),
                          (build_args.get(ARG), f"--build-arg {ARG}"),
                          (environ.get(ARG), f"${ARG}")):
        if value is not None and value.strip() != "":
            return parse_epoch(value, source=source, context_dir=Path(context_dir))
    return None


__all__ = ["ARG", "GIT_VALUES", "git_commit_time", "parse_epoch", "resolve_source_date"]
