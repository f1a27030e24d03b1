"""The build context: which files a build can see, and their content digests.

Owns:
- (the content digests come from `StatCache`, builder.context.statcache)
- `SourceTree`: a directory that COPY/ADD reads from (the context, later a stage's
  root), seen through optional ignore rules. Walks never follow symlinks: every
  directory is opened with O_NOFOLLOW relative to its parent's descriptor, every
  file is read through O_NOFOLLOW. Symlinks are entries with a link target.
- `BuildContext`: the SourceTree of a build context (ignore rules from
  `.dockerignore`, ownership not significant: docker copies context files as
  root:root).

Content digests are sha256 of the bytes; times never enter a digest.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from lamina.builder.context.dockerignore import IgnoreRules, MatchInfo, load_ignore_rules
from lamina.builder.context.patterns import go_clean
from lamina.builder.context.statcache import StatCache
from lamina.builder.errors import BuildError

__all__ = ["BuildContext", "ContextEntry", "SourceTree", "StatCache", "entry_kind"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK

_KINDS = {
    stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink",
    stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket", stat.S_IFCHR: "chardev",
    stat.S_IFBLK: "blockdev",
}


def entry_kind(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "unknown")


@dataclass(frozen=True)
class ContextEntry:
    """One entry of a source tree. `path` is relative to the tree root, `/`-separated.
    `mode` holds the permission bits (with setuid/setgid/sticky), not the type.
    `digest` ("sha256:<hex>") is set for regular files once hashed."""

    path: str
    kind: str
    mode: int
    uid: int
    gid: int
    size: int
    link_target: str | None = None
    digest: str | None = None
    rdev: int = 0

    @property
    def is_dir(self) -> bool:
        return self.kind == "dir"


def _entry_from_stat(path: str, st: os.stat_result, link_target: str | None = None,
                     digest: str | None = None) -> ContextEntry:
    kind = entry_kind(st.st_mode)
    return ContextEntry(
        path=path, kind=kind, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid,
        size=st.st_size if kind == "file" else 0, link_target=link_target, digest=digest,
        rdev=st.st_rdev if kind in ("chardev", "blockdev") else 0)


# ---------------------------------------------------------------------------------
# stat cache

# ---------------------------------------------------------------------------------
# source trees

class SourceTree:
    """A directory COPY/ADD reads from, filtered by ignore rules.

    Visibility follows BuildKit's context transfer: a non-directory is visible when
    the rules do not exclude it; a directory is visible when not excluded, or when
    something below it is re-included by an exception (it then holds only that).
    """

    #: does the owner (uid/gid) of source files reach the image? (not for a context)
    preserves_ownership = True
    #: how a missing source is described in errors
    not_found_hint = "file not found"

    def __init__(self, root: str | os.PathLike, rules: IgnoreRules | None = None,
                 stat_cache: StatCache | None = None) -> None:
        self.root = Path(root)
        self.rules = rules if rules is not None else IgnoreRules()
        self.stat_cache = stat_cache if stat_cache is not None else StatCache()
        try:
            st = os.stat(self.root)
        except OSError as e:
            raise BuildError(f"cannot use {self.root} as a source directory: {e.strerror}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise BuildError(f"{self.root} is not a directory")
        self._dir_visible_cache: dict[str, bool] = {}

    # -- descriptors -----------------------------------------------------------------

    def _open_dir(self, rel: str) -> int:
        """An O_NOFOLLOW descriptor for directory `rel`, opened component by component
        (a symlink anywhere on the way is an error, never followed)."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        if rel in ("", "."):
            return fd
        try:
            for comp in rel.split("/"):
                nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd

    @staticmethod
    def _split(rel: str) -> tuple[str, str]:
        parent, _, name = rel.rpartition("/")
        return parent, name

    # -- visibility ------------------------------------------------------------------

    def _dir_has_visible_content(self, rel: str, info: MatchInfo) -> bool:
        if not self.rules.may_include_under(rel, info):
            return False
        try:
            fd = self._open_dir(rel)
        except OSError:
            return False
        try:
            for e in self._iter_visible(fd, rel, info, hash_files=False):
                return True
        finally:
            os.close(fd)
        return False

    def visible(self, rel: str, is_dir: bool, info: MatchInfo | None = None) -> bool:
        """Is `rel` part of the tree as COPY sees it (see the class docstring)?"""
        if not self.rules or rel == "":
            return True
        excluded, info = self.rules.match(rel, info)
        if not excluded:
            return True
        if not is_dir:
            return False
        if rel not in self._dir_visible_cache:
            self._dir_visible_cache[rel] = self._dir_has_visible_content(rel, info)
        return self._dir_visible_cache[rel]

    # -- single entries --------------------------------------------------------------

    def lstat(self, rel: str) -> os.stat_result | None:
        """lstat of `rel` inside the tree without following any symlink; None when
        missing (or when a parent is not a directory)."""
        rel = self.normalize(rel)
        if rel == "":
            return os.stat(self.root)
        parent, name = self._split(rel)
        try:
            fd = self._open_dir(parent)
        except OSError:
            return None
        try:
            return os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError:
            return None
        finally:
            os.close(fd)

    def entry(self, rel: str, *, hash_file: bool = True) -> ContextEntry | None:
        """The visible entry at `rel` (not following a final symlink), or None."""
        rel = self.normalize(rel)
        if rel == "":
            st = os.stat(self.root)
            return _entry_from_stat("", st)
        parent, name = self._split(rel)
        try:
            fd = self._open_dir(parent)
        except OSError:
            return None
        try:
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                return None
            if not self.visible(rel, stat.S_ISDIR(st.st_mode)):
                return None
            return self._make_entry(fd, name, rel, st, hash_file)
        finally:
            os.close(fd)

    def readlink(self, rel: str) -> str:
        parent, name = self._split(self.normalize(rel))
        fd = self._open_dir(parent)
        try:
            return os.readlink(name, dir_fd=fd)
        finally:
            os.close(fd)

    def _make_entry(self, dir_fd: int, name: str, rel: str, st: os.stat_result,
                    hash_file: bool) -> ContextEntry:
        target = None
        digest = None
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(name, dir_fd=dir_fd)
        elif stat.S_ISREG(st.st_mode) and hash_file:
            digest, st = self._hash_at(dir_fd, name, rel, st)
        return _entry_from_stat(rel, st, target, digest)

    def _hash_at(self, dir_fd: int, name: str, rel: str, st: os.stat_result) -> tuple[str, os.stat_result]:
        cached = self.stat_cache.lookup(st)
        if cached is not None:
            return cached, st
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise BuildError(f"{rel}: became a symlink while being read") from None
            raise BuildError(f"cannot read {rel}: {e.strerror}") from None
        try:
            try:
                return self.stat_cache.digest_fd(fd)
            except BuildError as e:
                raise BuildError(f"cannot hash {rel}: {e.message}") from None
        finally:
            os.close(fd)

    def digest(self, rel: str) -> str:
        """Content digest of the regular file at `rel` (no symlink followed)."""
        e = self.entry(rel)
        if e is None or e.digest is None:
            raise BuildError(f"{rel}: not a regular file in {self.root}")
        return e.digest

    # -- walking ---------------------------------------------------------------------

    def _iter_visible(self, dir_fd: int, rel: str, info: MatchInfo | None,
                      hash_files: bool, descend: Callable[[str], bool] | None = None,
                      depth: int = 1 << 30) -> Iterator[ContextEntry]:
        """Visible entries below the directory open on `dir_fd` (path `rel`), depth
        first, names sorted bytewise. A directory comes before its content; an
        excluded directory comes only when something inside it is re-included.
        `descend(path)` False skips a directory (and its content) entirely;
        `depth` 1 lists direct children only (directories then need visible content
        when excluded, which is checked)."""
        rules = self.rules
        with os.scandir(dir_fd) as it:
            names = sorted((e.name for e in it), key=os.fsencode)
        for name in names:
            child = f"{rel}/{name}" if rel else name
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed while we walk
            is_dir = stat.S_ISDIR(st.st_mode)
            if rules:
                excluded, cinfo = rules.match(child, info)
            else:
                excluded, cinfo = False, info
            if not is_dir:
                if not excluded:
                    yield self._make_entry(dir_fd, name, child, st, hash_files)
                continue
            if excluded and not rules.may_include_under(child, cinfo):
                continue
            if descend is not None and not descend(child):
                continue
            if depth <= 1 and not excluded:
                yield _entry_from_stat(child, st)
                continue
            try:
                cfd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            except OSError as e:
                if e.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
                    continue  # replaced while we walk
                raise BuildError(f"cannot open directory {child}: {e.strerror}") from None
            try:
                if not excluded:
                    yield _entry_from_stat(child, st)
                    yield from self._iter_visible(cfd, child, cinfo, hash_files, descend, depth - 1)
                else:
                    inner = self._iter_visible(cfd, child, cinfo, hash_files and depth > 1,
                                               descend, max(depth - 1, 1))
                    first = next(inner, None)
                    if first is not None:
                        yield _entry_from_stat(child, st)
                        if depth > 1:
                            yield first
                            yield from inner
                    inner.close()
            finally:
                os.close(cfd)

    def walk(self, rel: str = "", *, hash_files: bool = True,
             descend: Callable[[str], bool] | None = None,
             depth: int = 1 << 30) -> Iterator[ContextEntry]:
        """Visible entries strictly below directory `rel` (no symlink followed), at
        most `depth` levels down; `descend(path)` False skips a directory."""
        rel = self.normalize(rel)
        info = None
        if self.rules:
            info = self.rules.root_info() if rel == "" else self.rules.match(rel)[1]
        try:
            fd = self._open_dir(rel)
        except OSError as e:
            raise BuildError(f"cannot open directory {rel or '.'} in {self.root}: {e.strerror}") from None
        try:
            yield from self._iter_visible(fd, rel, info, hash_files, descend, depth)
        except RecursionError:
            raise BuildError(f"directory tree under {self.root} is too deep to walk") from None
        finally:
            os.close(fd)

    def children(self, rel: str) -> list[ContextEntry]:
        """Visible direct children of directory `rel`, without digests."""
        return list(self.walk(rel, hash_files=False, depth=1))

    def entries(self, *, hash_files: bool = True) -> tuple[ContextEntry, ...]:
        """Every visible entry of the tree, sorted by path components."""
        try:
            return tuple(self.walk("", hash_files=hash_files))
        finally:
            self.stat_cache.flush()

    @staticmethod
    def normalize(rel: str) -> str:
        """A tree-relative path: cleaned, clamped inside the root, no leading `/`."""
        p = go_clean("/" + rel)
        return p.lstrip("/")


class BuildContext(SourceTree):
    """The build context directory, filtered by `.dockerignore` rules."""

    preserves_ownership = False
    not_found_hint = "file not found in build context or excluded by .dockerignore"

    def __init__(self, root: str | os.PathLike, rules: IgnoreRules, stat_cache: StatCache) -> None:
        super().__init__(root, rules, stat_cache)

    @classmethod
    def open(cls, context_dir: str | os.PathLike, dockerfile_path: str | os.PathLike | None,
             statcache_dir: str | os.PathLike | None) -> "BuildContext":
        """The context of a build: rules from `load_ignore_rules`, a stat cache
        persisted in `statcache_dir` (the engine passes ROOT/cache/statcache)."""
        rules = load_ignore_rules(context_dir, dockerfile_path)
        return cls(context_dir, rules, StatCache(statcache_dir))
