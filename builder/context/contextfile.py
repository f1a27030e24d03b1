"""The files lamina reads out of a build context for itself: the Dockerfile and the
`.dockerignore` files.

`read_context_file(path, what)` -> bytes: the regular file `path`, with every symlink
on the way interpreted *inside the directory holding it* (BuildKit's fsutil
FollowPaths, which the Dockerfile frontend uses: the Dockerfile's directory, or the
context for `.dockerignore`, is the root of the walk). A context is hostile input: its
`Dockerfile -> /etc/shadow` names the context's own `etc/shadow`, never the host's
file (whose lines a parse error would otherwise print). Errors are one BuildError
naming the file: missing, a directory, not a regular file, larger than `max_bytes`.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from lamina.builder.errors import BuildError
from lamina.builder.sandbox.rootpath import RootDir, RootPathError

__all__ = ["MAX_CONTEXT_FILE", "read_context_file"]

MAX_CONTEXT_FILE = 16 << 20  # a Dockerfile or .dockerignore larger than this is refused


def read_context_file(path: str | Path, what: str, *, max_bytes: int = MAX_CONTEXT_FILE) -> bytes:
    """The bytes of `path` (symlinks resolved inside its own directory). Raises
    FileNotFoundError when nothing is there (callers choose what a missing file means),
    BuildError for anything else that keeps it from being read."""
    path = Path(path)
    try:
        root = RootDir(path.parent)
    except RootPathError:  # no such directory
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path)) from None
    with root:
        st = root.lstat(path.name, follow_final=True)
        if st is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
        if stat.S_ISDIR(st.st_mode):
            raise BuildError(f"cannot read {what} {path}: not a regular file (a directory)")
        if not stat.S_ISREG(st.st_mode):
            raise BuildError(f"cannot read {what} {path}: not a regular file")
        if st.st_size > max_bytes:
            raise BuildError(f"cannot read {what} {path}: larger than {max_bytes} bytes")
        data = root.read_file(path.name, max_bytes=max_bytes)
    if data is None:  # replaced meanwhile
        raise BuildError(f"cannot read {what} {path}: it changed while it was read")
    return data
