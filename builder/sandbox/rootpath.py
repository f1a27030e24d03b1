"""Paths inside an image root, resolved the way a process whose `/` is that root sees
them, and directories created there. Everything COPY and ADD write goes through here.

Owns:
- `RootDir(root)`: a handle on an image root (the merged overlay mount of a build
  step, or any directory standing for one). Paths are image paths (`/srv/app/x`;
  relative ones are taken from `/`). Resolution walks component by component from a
  descriptor of the root: every directory is opened with O_NOFOLLOW|O_DIRECTORY
  relative to its parent's descriptor, so no host path is ever resolved by the kernel
  and nothing is reached through a symlink that we did not interpret ourselves.
  A symlink met on the way is read and its target walked *inside the root*: an
  absolute target restarts at the root, `..` at the root stays at the root (as
  chroot/openat2(RESOLVE_IN_ROOT) do), and more than MAX_SYMLINKS links in one
  resolution is an error ("too many levels of symbolic links"). Components after
  the first missing one are kept lexically (`..` among them cancels the previous
  one), as containerd's `fs.RootPath` (which BuildKit uses) does.
- `RootDir.open_dir(path, create=DirSpec)`: a descriptor of a directory, creating the
  missing ones; `RootDir.open_parent(path)`: the directory holding the final component
  plus its name (the final component is followed only when asked).
- `RootDir.read_file(path)`: a regular file of the image, read through the same walk
  (for /etc/passwd and /etc/group when resolving --chown).
- module functions for one-off use: `resolve_in_root`, `lstat_in_root`,
  `is_dir_in_root`, `mkdir_p_in_root`, `read_file_in_root`.

Directories created for a destination (docker's "missing parents are created"):
mode 0755 (set explicitly, whatever the umask), owner 0:0 - or, with `--chown`, the
chown user: BuildKit's fsutil `MkdirAll(dest, 0755, chown, time)` chowns every
directory it creates (and only those; existing directories keep owner and mode).
Their mtime is the given time (SOURCE_DATE_EPOCH when known) or now.

The root is our own mount and nobody else writes into it during a step, so the walk is
about correctness (container semantics, never leaving the root) more than about races;
still, every step is relative to an open descriptor, so a symlink swapped in
concurrently can at worst make a step fail, never write outside the root.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from lamina.builder.errors import BuildError

__all__ = ["DirSpec", "MAX_SYMLINKS", "RootDir", "RootPathError", "clean_image_path",
           "is_dir_in_root", "lstat_in_root", "mkdir_p_in_root", "read_file_in_root",
           "resolve_in_root"]

#: symlinks followed in one resolution (containerd's fs.RootPath, used by BuildKit: 255)
MAX_SYMLINKS = 255

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class RootPathError(BuildError):
    """A path inside an image root cannot be resolved or created (a symlink loop, a
    file where a directory is needed, ...)."""


@dataclass(frozen=True)
class DirSpec:
    """How to create a missing directory: owner, permission bits, mtime (ns; None = now).
    `chown`: the owner was asked for (COPY --chown, WORKDIR under USER); without it a
    directory made inside a setgid directory keeps that directory's group, as mkdir
    gives it. Either way it keeps the inherited setgid bit (BuildKit's bare mkdir)."""

    uid: int = 0
    gid: int = 0
    mode: int = 0o755
    mtime_ns: int | None = None
    chown: bool = False


def clean_image_path(path: str) -> str:
    """`path` as a clean absolute image path (lexically, like Go's path.Clean("/"+p))."""
    p = posixpath.normpath("/" + path)
    return "/" + p.lstrip("/")  # normpath keeps a leading "//"


def _join(parent: str, name: str) -> str:
    return parent.rstrip("/") + "/" + name


class _Walk:
    """A stack of open directory descriptors from the root down, with their names."""

    def __init__(self, root_fd: int) -> None:
        self.fds = [os.dup(root_fd)]
        self.names: list[str] = []
        #: a `..` went back over a missing component: the kernel would fail (ENOENT)
        #: where the lexical result continues; stat/open treat the path as missing
        self.broken = False

    @property
    def fd(self) -> int:
        return self.fds[-1]

    def path(self) -> str:
        return "/" + "/".join(self.names)

    def push(self, name: str) -> None:
        fd = os.open(name, _DIR_FLAGS, dir_fd=self.fd)
        self.fds.append(fd)
        self.names.append(name)

    def pop(self) -> None:
        if len(self.fds) > 1:
            os.close(self.fds.pop())
            self.names.pop()

    def reset(self) -> None:
        while len(self.fds) > 1:
            self.pop()

    def take(self) -> int:
        """Hand the top descriptor to the caller and close the rest."""
        fd = self.fds.pop()
        self.close()
        return fd

    def close(self) -> None:
        while self.fds:
            os.close(self.fds.pop())


class RootDir:
    """An image root opened once; resolve, stat and create paths inside it.
    Use as a context manager (or call close())."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        try:
            self.fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise RootPathError(f"cannot open image root {self.root}: {e.strerror}") from None

    @classmethod
    def from_fd(cls, fd: int, root: str | os.PathLike) -> "RootDir":
        """A RootDir on an already open directory (dup'ed): e.g. an archive's extraction
        root inside an image. `root` is its host path, for messages and host_path."""
        self = cls.__new__(cls)
        self.root = Path(root)
        self.fd = os.dup(fd)
        return self

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "RootDir":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the walk -----------------------------------------------------------------------

    def _walk(self, path: str, *, follow_final: bool, create: DirSpec | None,
              create_final: bool, create_in_links: bool = True) -> tuple[_Walk, list[str]]:
        """Walk `path`. Returns the walk (positioned on the deepest directory reached)
        and the unresolved rest: [] when the path is that directory; [name] when the
        final component is `name` in it (missing, a non-directory, or not followed);
        longer when a component is missing (without `create`): the first one is
        missing, the others follow lexically. Without `create_in_links`, a missing
        component named by a symlink's target is an error even with `create` (only
        components of `path` itself are created)."""
        shown = clean_image_path(path)
        w = _Walk(self.fd)
        try:
            todo = deque(c for c in shown.split("/") if c)
            virtual: list[str] = []  # components below a missing one (lexical)
            hops = 0
            linked = 0  # how many of todo's first components come from symlink targets
            while todo:
                comp = todo.popleft()
                from_link = linked > 0
                linked -= from_link
                if comp == ".":
                    continue
                if comp == "..":
                    if virtual:
                        virtual.pop()
                        w.broken = True
                    else:
                        w.pop()
                    continue
                if virtual:
                    virtual.append(comp)
                    continue
                last = not any(c not in ("", ".") for c in todo)
                if last and not follow_final:
                    return w, [comp]
                try:
                    st = os.stat(comp, dir_fd=w.fd, follow_symlinks=False)
                except FileNotFoundError:
                    st = None
                except NotADirectoryError:
                    raise RootPathError(f"{shown}: {w.path()} is not a directory") from None
                if st is None:
                    if create is not None and (not last or create_final):
                        if from_link and not create_in_links:
                            raise RootPathError(
                                f"{shown}: {_join(w.path(), comp)} does not exist (named by a "
                                "symlink on the way)")
                        self._mkdir(w, comp, create, shown)
                        w.push(comp)
                        continue
                    if last:
                        return w, [comp]
                    virtual.append(comp)
                    continue
                if stat.S_ISLNK(st.st_mode) and (not last or follow_final):
                    hops += 1
                    if hops > MAX_SYMLINKS:
                        raise RootPathError(
                            f"{shown}: too many levels of symbolic links (more than {MAX_SYMLINKS})")
                    target = os.readlink(comp, dir_fd=w.fd)
                    if not target:
                        raise RootPathError(f"{shown}: {_join(w.path(), comp)} is an empty symlink")
                    if target.startswith("/"):
                        w.reset()
                    named = [c for c in target.split("/") if c]
                    todo.extendleft(reversed(named))
                    linked += len(named)
                    continue
                if stat.S_ISDIR(st.st_mode):
                    try:
                        w.push(comp)
                    except OSError as e:  # replaced while we walk
                        raise RootPathError(f"{shown}: cannot open {_join(w.path(), comp)}: "
                                            f"{e.strerror}") from None
                    continue
                if last:
                    return w, [comp]
                raise RootPathError(f"{shown}: {_join(w.path(), comp)} is not a directory")
            return w, virtual
        except BaseException:
            w.close()
            raise

    @staticmethod
    def _mkdir(w: _Walk, name: str, spec: DirSpec, shown: str) -> None:
        try:
            os.mkdir(name, 0o700, dir_fd=w.fd)
        except FileExistsError:
            return  # appeared meanwhile; the caller opens it (O_NOFOLLOW) or fails
        except OSError as e:
            raise RootPathError(f"{shown}: cannot create {_join(w.path(), name)}: "
                                f"{e.strerror}") from None
        fd = os.open(name, _DIR_FLAGS, dir_fd=w.fd)
        try:
            parent = os.fstat(w.fd)
            inherits = parent.st_mode & stat.S_ISGID  # the kernel gave it group and bit
            gid = spec.gid if spec.chown or not inherits else parent.st_gid
            os.fchown(fd, spec.uid, gid)
            os.fchmod(fd, (spec.mode & 0o7777) | inherits)
            if spec.mtime_ns is not None:
                os.utime(fd, ns=(spec.mtime_ns, spec.mtime_ns))
        finally:
            os.close(fd)

    # -- public operations ----------------------------------------------------------------

    def resolve(self, path: str, *, follow_final: bool = True) -> str:
        """The image path `path` leads to (symlinks interpreted inside the root); parts
        that do not exist are kept lexically."""
        w, rest = self._walk(path, follow_final=follow_final, create=None, create_final=False)
        try:
            parts = w.names + rest
        finally:
            w.close()
        return "/" + "/".join(parts)

    def host_path(self, path: str, *, follow_final: bool = True) -> Path:
        """The host path of `resolve(path)` (for reading or reporting; write through
        descriptors from open_dir/open_parent, not through this path)."""
        resolved = self.resolve(path, follow_final=follow_final)
        return self.root / resolved.lstrip("/") if resolved != "/" else self.root

    def lstat(self, path: str, *, follow_final: bool = False) -> os.stat_result | None:
        """Status of what `path` names (the final symlink itself unless follow_final);
        None when it does not exist."""
        try:
            w, rest = self._walk(path, follow_final=follow_final, create=None, create_final=False)
        except RootPathError:
            return None
        try:
            if w.broken or len(rest) > 1:
                return None
            if not rest:
                return os.fstat(w.fd)
            try:
                return os.stat(rest[0], dir_fd=w.fd, follow_symlinks=False)
            except OSError:
                return None
        finally:
            w.close()

    def is_dir(self, path: str) -> bool:
        """Does `path` (symlinks followed inside the root) name a directory?"""
        st = self.lstat(path, follow_final=True)
        return st is not None and stat.S_ISDIR(st.st_mode)

    def open_dir(self, path: str, *, create: DirSpec | None = None) -> int:
        """A descriptor (caller closes) of directory `path`, every symlink followed
        inside the root; missing directories are created as `create` says (without
        it a missing or non-directory path is an error)."""
        shown = clean_image_path(path)
        w, rest = self._walk(path, follow_final=True, create=create, create_final=True)
        if w.broken and not rest:
            rest = [""]
        if rest:
            where = _join(w.path(), rest[0])
            exists = len(rest) == 1 and self._exists(w.fd, rest[0])
            w.close()
            if exists:
                raise RootPathError(f"{shown}: {where} is not a directory")
            raise RootPathError(f"{shown}: {where} does not exist")
        return w.take()

    def open_parent(self, path: str, *, create: DirSpec | None = None,
                    follow_final: bool = False,
                    create_in_links: bool = True) -> tuple[int, str, str]:
        """(descriptor of the directory holding the final component, the final name,
        the image path of that directory). Parents are followed and created as in
        open_dir; the final component is followed only with follow_final (a final
        symlink then leads to its target's parent and name). `/` has no parent: an
        error. create_in_links=False: see _walk (an archive's implied directories)."""
        shown = clean_image_path(path)
        w, rest = self._walk(path, follow_final=follow_final, create=create, create_final=False,
                             create_in_links=create_in_links)
        if w.broken:
            w.close()
            raise RootPathError(f"{shown}: a symlink on the way goes through a missing directory")
        if len(rest) == 1:
            parent = w.path()
            return w.take(), rest[0], parent
        if not rest:
            # the path resolved to a directory: hand out its parent and its name
            if not w.names:
                w.close()
                raise RootPathError(f"{shown}: the root directory has no parent")
            name = w.names[-1]
            w.pop()
            parent = w.path()
            return w.take(), name, parent
        where = _join(w.path(), rest[0])
        w.close()
        raise RootPathError(f"{shown}: {where} does not exist")

    def read_file(self, path: str, *, max_bytes: int = 16 << 20) -> bytes | None:
        """The content of regular file `path` (symlinks followed inside the root), or
        None when it is missing, not a regular file, or larger than max_bytes. For
        reading the image's own files, e.g. /etc/passwd for --chown."""
        try:
            fd, name, _ = self.open_parent(path, follow_final=True)
        except RootPathError:
            return None
        try:
            ffd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                          dir_fd=fd)
        except OSError:
            return None
        finally:
            os.close(fd)
        try:
            st = os.fstat(ffd)
            if not stat.S_ISREG(st.st_mode) or st.st_size > max_bytes:
                return None
            chunks = []
            total = 0
            while chunk := os.read(ffd, 1 << 20):
                total += len(chunk)
                if total > max_bytes:
                    return None
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(ffd)

    @staticmethod
    def _exists(dir_fd: int, name: str) -> bool:
        try:
            os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            return True
        except OSError:
            return False


# -- one-off helpers ------------------------------------------------------------------------

def resolve_in_root(root: str | os.PathLike, path: str, *, follow_final: bool = True) -> Path:
    """The host path that image path `path` leads to inside `root` (never outside it)."""
    with RootDir(root) as r:
        return r.host_path(path, follow_final=follow_final)


def read_file_in_root(root: str | os.PathLike, path: str) -> bytes | None:
    """RootDir.read_file for one file: a `rootfs_lookup` for builder.users.resolve_user
    (`functools.partial(read_file_in_root, root)`)."""
    with RootDir(root) as r:
        return r.read_file(path)


def lstat_in_root(root: str | os.PathLike, path: str, *,
                  follow_final: bool = False) -> os.stat_result | None:
    with RootDir(root) as r:
        return r.lstat(path, follow_final=follow_final)


def is_dir_in_root(root: str | os.PathLike, path: str) -> bool:
    with RootDir(root) as r:
        return r.is_dir(path)


def mkdir_p_in_root(root: str | os.PathLike, path: str, uid: int = 0, gid: int = 0,
                    mode: int = 0o755, *, mtime_ns: int | None = None,
                    chown: bool = True) -> Path:
    """Make sure directory `path` exists inside `root` (symlinks followed inside the
    root), creating missing ones owned uid:gid with `mode` (see DirSpec for `chown`).
    Returns its host path."""
    with RootDir(root) as r:
        fd = r.open_dir(path, create=DirSpec(uid, gid, mode, mtime_ns, chown))
        os.close(fd)
        return r.host_path(path)
