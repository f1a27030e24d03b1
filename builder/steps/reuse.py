"""Reusing the previous result of a COPY whose sources changed in a few files.

When a COPY from the build context misses the cache only because some of its files
changed (same parent step, instruction, flags, env...: every input but the content),
the layer the previous build made for that step holds every unchanged file exactly
as this copy would write it again. Creating an inode is what a copy of many small
files spends its time on (~0.4 ms each on the ext4 of these machines); renaming one
costs a few us. So:

- `previous_copy(store, lease, previous, current, upper_dir, in_use)` (executor,
  before the step runs): finds the previous result by the previous inputs' cache
  key and takes its extracted dir from the store (store.layertake: only when no
  image lists it and no other build holds it; the layer stays in the store as its
  blob and is extracted again if ever needed) -> CopyReuse with the source paths
  whose content digest is the same as then;
- `ReuseClaims.claim(...)` (the copier, in the step's mount namespace): a file whose
  source is unchanged, whose destination is new in this step, reached without a
  symlink through directories the upper dir already has, and whose previous copy
  has exactly the metadata this copy would give it (type, mode, owner, size, mtime,
  no xattrs, one link on each side) is claimed instead of written; a destination
  written twice by one COPY is never claimed;
- `move_claimed(reuse, claimed)` (after the namespace is gone, so the overlay is no
  longer mounted over the upper dir): renames each claimed file from the taken dir
  into the upper dir and restores the times of the directories it moved into;
  `discard(reuse)` removes what is left of the taken dir.

Why move and not hard-link: a link would leave the file with two links, and a later
RUN of the same build sees st_nlink (`ls -l`, `stat`): the image would then depend on
the cache's history. Every decision rests on content digests - the recorded inputs
of the previous build of the step and its cache entry by key - never on times alone.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, replace
from typing import Callable

from lamina.builder.plan.cachekey import CacheInputs

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


@dataclass(frozen=True)
class CopyReuse:
    """The previous result of a COPY step: its layer dir, this step's upper dir, and
    the source paths (context-relative, as in CacheInputs.files) unchanged since."""

    layer_dir: str
    upper_dir: str
    paths: frozenset[str]


def previous_copy(store, lease, previous: CacheInputs | None, current: CacheInputs,
                  upper_dir: str, in_use=frozenset()) -> CopyReuse | None:
    """The reusable previous result of the step whose inputs are now `current`, or
    None. `previous` are the inputs the last build of this step recorded; they must
    differ from `current` in the content only. Their cache entry (looked up by key)
    names the layer they produced; its dir is taken from the store unless this
    build uses that layer (`in_use`: diff_ids) or someone else may."""
    if previous is None or previous.content == current.content:
        return None
    if replace(previous, content="", files=()) != replace(current, content="", files=()):
        return None
    before = dict(previous.files)
    paths = frozenset(p for p, d in current.files if d.startswith("sha256:") and before.get(p) == d)
    if not paths:
        return None
    from lamina.store.errors import StoreError
    from lamina.store.layertake import take_layer_dir

    try:
        entry = store.cache.lookup(str(previous.key()), touch=False)
        if entry is None or entry.diff_id is None or entry.diff_id in in_use:
            return None
        taken = take_layer_dir(store, entry.diff_id, lease)
    except (StoreError, OSError):
        return None
    if taken is None:
        return None
    return CopyReuse(layer_dir=str(taken), upper_dir=str(upper_dir), paths=paths)


def discard(reuse: CopyReuse) -> None:
    """Remove what is left of the taken dir (the files not moved)."""
    from lamina.store.locks import remove_tree

    remove_tree(reuse.layer_dir)


def _walk(root_fd: int, components: list[str]) -> int | None:
    """A descriptor of the directory `components` below `root_fd`, no symlink
    followed; None when missing or not a directory all the way."""
    fd = os.dup(root_fd)
    for comp in components:
        try:
            nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
        except OSError:
            os.close(fd)
            return None
        os.close(fd)
        fd = nfd
    return fd


def _parts(dirname: str) -> list[str]:
    return [c for c in dirname.split("/") if c]


class ReuseClaims:
    """The copier's side (in the step's mount namespace): decides, file by file,
    what is linked from the previous layer after the step instead of written now."""

    def __init__(self, reuse: CopyReuse, root: str | os.PathLike) -> None:
        self.reuse = reuse
        self.claimed: dict[str, None] = {}   # destination paths, in order
        self._fds: dict[tuple[str, str], int | None] = {}
        self._roots = {"root": os.open(root, _DIR_FLAGS & ~os.O_NOFOLLOW),
                       "upper": os.open(reuse.upper_dir, _DIR_FLAGS & ~os.O_NOFOLLOW),
                       "previous": os.open(reuse.layer_dir, _DIR_FLAGS & ~os.O_NOFOLLOW)}

    def close(self) -> None:
        for fd in list(self._fds.values()) + list(self._roots.values()):
            if fd is not None:
                os.close(fd)
        self._fds.clear()
        self._roots.clear()

    def _dir(self, which: str, dirname: str) -> int | None:
        key = (which, dirname)
        if key not in self._fds:
            self._fds[key] = _walk(self._roots[which], _parts(dirname))
        return self._fds[key]

    def claim(self, parent_fd: int, name: str, dest: str, path: str, src: str,
              owner: Callable[[os.stat_result], tuple[int, int]],
              mode: Callable[[os.stat_result], int]) -> bool:
        """Claim the copy of source file `src` (context path `path`) to `dest` (whose
        parent is open on `parent_fd` in the merged root): True when the previous
        layer's file at `dest` is exactly what this copy would write."""
        if dest in self.claimed:  # written twice by this COPY: the later write wins
            del self.claimed[dest]
            return False
        if path not in self.reuse.paths:
            return False
        try:
            os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
            return False  # replaces something of a lower layer: copy it the usual way
        except FileNotFoundError:
            pass
        dirname = dest.rpartition("/")[0]
        # the same directory in the merged view (no symlink on the way), in the upper
        # dir already, and in the previous layer
        if (self._dir("root", dirname) is None or self._dir("upper", dirname) is None):
            return False
        prev_dir = self._dir("previous", dirname)
        if prev_dir is None:
            return False
        try:
            src_st = os.lstat(src)
            fd = os.open(name, _FILE_FLAGS, dir_fd=prev_dir)
        except OSError:
            return False
        try:
            st = os.fstat(fd)
            if not (stat.S_ISREG(src_st.st_mode) and stat.S_ISREG(st.st_mode)
                    and src_st.st_nlink == 1 and st.st_nlink == 1
                    and stat.S_IMODE(st.st_mode) == mode(src_st)
                    and (st.st_uid, st.st_gid) == owner(src_st)
                    and st.st_size == src_st.st_size
                    and st.st_mtime_ns == src_st.st_mtime_ns):
                return False
            if os.listxattr(fd) or os.listxattr(src, follow_symlinks=False):
                return False
        except OSError:
            return False
        finally:
            os.close(fd)
        self.claimed[dest] = None
        return True


def move_claimed(reuse: CopyReuse, claimed) -> int:
    """Put every claimed file into the upper dir (the overlay is unmounted): renamed
    from the taken dir, else copied from there. Directory times are put back as the
    copy left them. Returns the number of files moved."""
    upper = os.open(reuse.upper_dir, _DIR_FLAGS & ~os.O_NOFOLLOW)
    previous = os.open(reuse.layer_dir, _DIR_FLAGS & ~os.O_NOFOLLOW)
    dirs: dict[str, tuple[int, int, os.stat_result] | None] = {}
    linked = 0
    try:
        for dest in claimed:
            dirname, _, name = dest.rpartition("/")
            if dirname not in dirs:
                up = _walk(upper, _parts(dirname))
                pv = _walk(previous, _parts(dirname))
                if up is None or pv is None:
                    for fd in (up, pv):
                        if fd is not None:
                            os.close(fd)
                    dirs[dirname] = None
                else:
                    dirs[dirname] = (up, pv, os.fstat(up))
            where = dirs[dirname]
            if where is None:
                raise OSError(errno.ENOENT, "directory of a reused file is gone", dest)
            up, pv, _ = where
            try:
                os.stat(name, dir_fd=up, follow_symlinks=False)
                continue  # written by this copy after all: that write stands
            except FileNotFoundError:
                pass
            try:
                os.rename(name, name, src_dir_fd=pv, dst_dir_fd=up)
                linked += 1
            except OSError:
                _copy_file(pv, up, name)
    finally:
        for where in dirs.values():
            if where is not None:
                up, pv, st = where
                try:
                    os.utime(up, ns=(st.st_atime_ns, st.st_mtime_ns))
                finally:
                    os.close(up)
                    os.close(pv)
        os.close(upper)
        os.close(previous)
    return linked


def _copy_file(src_dir: int, dst_dir: int, name: str) -> None:
    """A new file `name` in `dst_dir` with the content, mode, owner and mtime of the
    one in `src_dir` (when it cannot be renamed there)."""
    sfd = os.open(name, _FILE_FLAGS, dir_fd=src_dir)
    try:
        st = os.fstat(sfd)
        dfd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                      0o600, dir_fd=dst_dir)
        try:
            while True:
                chunk = os.read(sfd, 1 << 20)
                if not chunk:
                    break
                view = memoryview(chunk)
                while view:
                    view = view[os.write(dfd, view):]
            os.fchown(dfd, st.st_uid, st.st_gid)
            os.fchmod(dfd, stat.S_IMODE(st.st_mode))
            os.utime(dfd, ns=(st.st_mtime_ns, st.st_mtime_ns))
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)
