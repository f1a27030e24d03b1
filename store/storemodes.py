"""Who may enter the store: the modes of ROOT and of the directories directly in it.

Everything a RUN step made lives under ROOT — setuid-root files in extracted layer
dirs and upper dirs, cache mounts made `mode=0777` — so ROOT is created 0700 and every
directory lamina makes in it too (store.root). `lamina fsck` reports any of them that
group or other users may enter (someone's `chmod -R 755`, a restore from a backup
that lost modes) and `--repair` takes those bits away again. ROOT itself is tightened
whenever lamina opens the store; fsck says when that happened."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

PRIVATE_MODE = 0o700
LOOSE_BITS = 0o077


@dataclass(frozen=True)
class LooseMode:
    """A store directory that users other than the store's owner may enter or list."""

    path: str
    mode: int    # its permission bits as found

    @property
    def problem(self) -> str:
        return (f"store permissions: {self.path} is {self.mode:04o}, not {PRIVATE_MODE:04o}: "
                "other local users could reach what RUN steps left there (setuid files "
                "of layers, cache mounts)")


def loose_modes(root: Path) -> list[LooseMode]:
    """ROOT and the directories directly in it whose mode lets group or others in
    (symlinks are not followed: lamina never makes one there)."""
    found = []
    paths = [root]
    try:
        with os.scandir(root) as it:
            paths += sorted(Path(e.path) for e in it if e.is_dir(follow_symlinks=False))
    except OSError:
        pass
    for p in paths:
        try:
            st = os.lstat(p)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_mode & LOOSE_BITS:
            found.append(LooseMode(str(p), stat.S_IMODE(st.st_mode)))
    return found


def tighten(loose: LooseMode) -> None:
    """Take group and other users' bits away (the owner's stay as they were). The
    directory is opened without following a symlink and changed through that
    descriptor: one replaced by a symlink (or a file) since it was found is an OSError,
    never a chmod of what the link names (os.chmod(follow_symlinks=False) raises
    NotImplementedError on a symlink on Linux)."""
    fd = os.open(loose.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchmod(fd, (loose.mode & ~LOOSE_BITS) | PRIVATE_MODE)
    finally:
        os.close(fd)
