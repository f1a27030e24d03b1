"""COPY mechanics: executing a copy's actions in an image root with docker's
(BuildKit's) semantics - the walk over the actions, directories, hard-link scopes and
what a destination may replace. Source selection and destination rules are
`builder.context.copysrc` (select_sources, plan_copy); path resolution in the root is
`builder.sandbox.rootpath`; writing one file, symlink, device or heredoc body (content,
owner, mode, xattrs) is `builder.steps.copyentry`.

Public API:
- `copy_into_root(root, actions, *, chown, chmod, preserve_ownership, source_xattrs,
  source_date_epoch, follow_final)` -> CopyStats: execute CopyActions;
  `HeredocSource(name, data)` (builder.steps.copyentry) is a `COPY <<EOF` body.
The entry point that reads the destination in the image first is
`builder.steps.copyinto.copy_selection`.

Semantics (BuildKit's FileOp copy through fsutil's copier, read not copied):
- Hard links among the files of one matched source (same source inode) stay hard
  links in the destination; two sources never share a link, nor two matches of one
  wildcard (one fsutil copy per match in BuildKit).
- A directory source copies its content; an existing destination directory is
  merged into. Nested directories that already exist get the source's owner, mode,
  mtime and xattrs (fsutil's overwriteTargetMetadata); the top-level destination
  directory keeps its own metadata when it exists, and is created 0755 (owner: 0:0
  or the --chown user) when it does not. Missing destination parents likewise. With
  an octal `--chmod=MODE` both are created with MODE instead (BuildKit >= 0.21, whose
  fsutil MkdirAll uses the copy's mode: `COPY --chmod=640 f /new/dir/f` gives a 0640
  /new and /new/dir, BuildKit issue 5943); a symbolic --chmod keeps 0755.
- An existing non-directory at a destination is replaced. A source file onto an
  existing directory is an error ("cannot replace directory X with a file"), and a
  source directory onto an existing non-directory (a file or a symlink) too
  ("cannot copy to non-directory: X"), as in BuildKit (which never replaces a
  directory unless AlwaysReplaceExistingDestPaths, which Dockerfiles do not set).
- The destination path is resolved inside the root (symlinked directories of lower
  layers followed, e.g. `/app -> /srv/app`). For a single non-directory source
  whose destination names a file (not `dir/`), a final symlink is followed too
  (fsutil resolves the whole destination with fs.RootPath): `COPY x /etc/link`
  rewrites the link's target, inside the root. Below a copied directory nothing is
  followed: a symlink there is a non-directory.
- A socket of the build context becomes an empty regular file of its mode, as in
  BuildKit, whose context transfer clears the socket bit (fsutil mkstat) and sends no
  data (the sender's open fails); a socket of a stage or image is skipped (nothing a
  layer can hold: containerd's and docker's layer tars leave sockets out).
- `COPY --link` changes nothing here: the layer is the same diff; only the cache key's
  dependency on the parent differs (builder.plan.cachekey's concern).
- Heredocs: destination rules as for a file source.
- Times: directories created here and heredoc files get `source_date_epoch` when
  given, else now; the layer writer clamps every mtime later anyway.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from typing import Iterable, Sequence

from lamina.builder.context.copysrc import CopyAction, SelectedEntry
from lamina.builder.errors import BuildError
from lamina.builder.sandbox.rootpath import DirSpec, RootDir, RootPathError
from lamina.builder.steps.chmod import ChmodSpec, parse_chmod
from lamina.builder.steps.copyentry import (EntryOwner, HeredocSource, clear_target, copy_xattrs,
                                            open_source_file, write_file, write_heredoc,
                                            write_special, write_symlink)

__all__ = ["CopyStats", "HeredocSource", "copy_into_root"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class CopyStats:
    files: int = 0
    hardlinks: int = 0
    symlinks: int = 0
    dirs: int = 0
    specials: int = 0
    skipped: int = 0
    bytes: int = 0


@dataclass
class _Counters:
    files: int = 0
    hardlinks: int = 0
    symlinks: int = 0
    dirs: int = 0
    specials: int = 0
    skipped: int = 0
    bytes: int = 0

    def frozen(self) -> CopyStats:
        return CopyStats(**self.__dict__)


@dataclass
class _PendingDir:
    base: str
    rel: str
    dest: str
    src_stat: os.stat_result
    src_path: str


class _Copier:
    """Executes the actions of one copy into an open RootDir."""

    def __init__(self, r: RootDir, *, chown: tuple[int, int] | None, chmod: ChmodSpec | None,
                 preserve_ownership: bool, mtime_ns: int | None, verify_digests: bool,
                 reuse=None, source_xattrs: bool = True) -> None:
        self.r = r
        self.source_xattrs = source_xattrs
        self.reuse = reuse  # builder.steps.reuse.ReuseClaims: files linked after the step
        self.entries = EntryOwner(chown, chmod, preserve_ownership)
        self.owner = self.entries.owner  # (uid, gid) of a copied entry, by its source's stat
        self.mode = self.entries.mode
        self.mtime_ns = mtime_ns
        self.verify = verify_digests
        owner = chown or (0, 0)
        # directories the copy creates (destination parents, a missing destination dir):
        # an octal --chmod gives them its mode too, as BuildKit >= 0.21 (fsutil's
        # MkdirAll with the copy's mode; BuildKit issue 5943); else, and for a symbolic
        # --chmod, 0755
        dir_mode = chmod.octal if chmod is not None and chmod.octal is not None else 0o755
        self.created_dir = DirSpec(owner[0], owner[1], dir_mode, mtime_ns, chown is not None)
        self.inodes: dict[tuple[int, int], str] = {}
        self.pending: list[_PendingDir] = []
        self.bases: dict[str, int] = {}
        self._parent: tuple[str, str, int] | None = None
        self.n = _Counters()

    def close(self) -> None:
        self._drop_parent()
        for fd in self.bases.values():
            os.close(fd)
        self.bases.clear()

    # -- directories --------------------------------------------------------------------

    def base_fd(self, base: str) -> int:
        fd = self.bases.get(base)
        if fd is None:
            fd = self.r.open_dir(base, create=self.created_dir)
            self.bases[base] = fd
        return fd

    def _drop_parent(self) -> None:
        if self._parent is not None:
            os.close(self._parent[2])
            self._parent = None

    def nested_parent(self, base: str, reldir: str, dest: str) -> int:
        """Descriptor of `base/reldir`, walked below the (resolved) base without
        following anything; missing directories are created like dest parents."""
        if self._parent is not None and self._parent[:2] == (base, reldir):
            return self._parent[2]
        fd = os.dup(self.base_fd(base))
        try:
            for comp in (reldir.split("/") if reldir else []):
                try:
                    nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    os.mkdir(comp, 0o700, dir_fd=fd)
                    nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                    spec = self.created_dir
                    os.fchown(nfd, spec.uid, spec.gid)
                    os.fchmod(nfd, spec.mode)
                    if spec.mtime_ns is not None:
                        os.utime(nfd, ns=(spec.mtime_ns, spec.mtime_ns))
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise BuildError(f"cannot copy to non-directory: {dest}") from None
                    raise
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        self._drop_parent()
        self._parent = (base, reldir, fd)
        return fd

    def mkdir_dest(self, dest: str) -> None:
        """The top-level destination of a directory source: exists (kept as is) or is
        created 0755 with the copy's owner."""
        try:
            self.base_fd(dest)
        except RootPathError as e:
            raise BuildError(f"cannot copy to non-directory: {dest} ({e.message})") from None

    def nested_dir(self, a: CopyAction, base: str, rel: str) -> None:
        reldir, _, name = rel.rpartition("/")
        parent = self.nested_parent(base, reldir, a.dest)
        try:
            src_st = os.lstat(a.src_abs)
        except OSError as e:
            raise BuildError(f"cannot read source {a.src_abs}: {e.strerror}") from None
        if not stat.S_ISDIR(src_st.st_mode):
            raise BuildError(f"source {a.src_abs} changed during the build (no longer a directory)")
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is None:
            os.mkdir(name, 0o700, dir_fd=parent)
        elif not stat.S_ISDIR(st.st_mode):
            raise BuildError(f"cannot copy to non-directory: {a.dest}")
        self.pending.append(_PendingDir(base, rel, a.dest, src_st, a.src_abs))
        self.n.dirs += 1

    def finish_dirs(self) -> None:
        """Owner, mode, xattrs and times of copied directories, deepest last-created
        first (their content is complete, so the mtime stays)."""
        self._drop_parent()
        for p in reversed(self.pending):
            reldir, _, name = p.rel.rpartition("/")
            parent = self.nested_parent(p.base, reldir, p.dest)
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
            try:
                uid, gid = self.owner(p.src_stat)
                os.fchown(fd, uid, gid)
                os.fchmod(fd, self.mode(p.src_stat))
                if self.source_xattrs:
                    copy_xattrs(p.src_path, fd)
                os.utime(fd, ns=(p.src_stat.st_mtime_ns, p.src_stat.st_mtime_ns))
            finally:
                os.close(fd)
        self._drop_parent()
        self.pending.clear()

    # -- non-directories (builder.steps.copyentry) --------------------------------------

    def place(self, parent: int, name: str, dest: str, e: SelectedEntry, src: str) -> None:
        """Copy the non-directory source `src` (entry `e`) to `name` in `parent`."""
        kind = e.kind
        if kind == "socket":
            if self.entries.preserve:   # a stage's or an image's
                self.n.skipped += 1
                return
            clear_target(parent, name, dest)
            self.empty_file(parent, name, src)
            return
        if kind == "file" and self.reuse is not None and self.reuse.claim(
                parent, name, dest, e.path, src, self.owner, self.mode):
            self.n.files += 1  # unchanged since the previous build: linked from its layer
            return
        clear_target(parent, name, dest)
        if kind == "file":
            self.file(parent, name, dest, e, src)
        elif kind == "symlink":
            write_symlink(parent, name, src, e.link_target, self.entries)
            self.n.symlinks += 1
        elif kind in ("fifo", "chardev", "blockdev"):
            write_special(parent, name, dest, src, self.entries)
            self.n.specials += 1
        else:
            raise BuildError(f"cannot copy {src}: unsupported file type {kind}")

    def empty_file(self, parent: int, name: str, src: str) -> None:
        """A socket of the build context: an empty file with the socket's mode and mtime."""
        try:
            st = os.lstat(src)
        except OSError as err:
            raise BuildError(f"cannot read source {src}: {err.strerror}") from None
        if not stat.S_ISSOCK(st.st_mode):
            raise BuildError(f"source {src} changed during the build (no longer a socket)")
        rfd, wfd = os.pipe()
        os.close(wfd)
        try:
            write_file(rfd, st, parent, name, src, digest=None, owner=self.entries, xattrs=False)
        finally:
            os.close(rfd)
        self.n.files += 1

    def file(self, parent: int, name: str, dest: str, e: SelectedEntry, src: str) -> None:
        """A regular file: a hard link to the copy of an inode seen before in the same
        source argument, else its content."""
        sfd, st = open_source_file(src)
        try:
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in self.inodes and self.link(self.inodes[key], parent, name):
                self.n.hardlinks += 1
                return
            self.n.bytes += write_file(sfd, st, parent, name, src,
                                       digest=e.digest if self.verify else None,
                                       owner=self.entries, xattrs=self.source_xattrs)
            self.n.files += 1
            if st.st_nlink > 1:
                self.inodes[key] = dest
        finally:
            os.close(sfd)

    def link(self, first: str, parent: int, name: str) -> bool:
        """Hard-link `name` to the already copied `first`; False if that is gone."""
        try:
            fparent, fname, _ = self.r.open_parent(first)
        except BuildError:
            return False
        try:
            os.link(fname, name, src_dir_fd=fparent, dst_dir_fd=parent, follow_symlinks=False)
            return True
        except OSError:
            return False
        finally:
            os.close(fparent)

    def heredoc(self, dest: str, doc: HeredocSource, follow_final: bool) -> None:
        parent, name, _ = self.r.open_parent(dest, create=self.created_dir,
                                             follow_final=follow_final)
        try:
            write_heredoc(parent, name, dest, doc, self.entries, self.mtime_ns)
        finally:
            os.close(parent)
        self.n.files += 1
        self.n.bytes += len(doc.data)

    # -- actions ------------------------------------------------------------------------

    def run(self, actions: Iterable[CopyAction], follow_final: frozenset[str]) -> None:
        source = None
        for a in actions:
            if a.source != source:  # a new matched source: a new hard-link scope
                source = a.source
                self.inodes.clear()
            if a.kind == "mkdir":
                self.mkdir_dest(a.dest)
                continue
            e = a.entry
            if e is None:
                raise BuildError(f"copy action for {a.dest} has no source entry")
            if e.rel == "":
                if e.kind == "dir":
                    self.mkdir_dest(a.dest)
                    continue
                parent, name, _ = self.r.open_parent(a.dest, create=self.created_dir,
                                                     follow_final=a.dest in follow_final)
                try:
                    self.place(parent, name, a.dest, e, a.src_abs)
                finally:
                    os.close(parent)
                continue
            base = _base_of(a.dest, e.rel)
            if e.kind == "dir":
                self.nested_dir(a, base, e.rel)
            else:
                reldir, _, name = e.rel.rpartition("/")
                parent = self.nested_parent(base, reldir, a.dest)
                self.place(parent, name, a.dest, e, a.src_abs)


def _base_of(dest: str, rel: str) -> str:
    """The landing directory of a source, given an entry's dest and its rel."""
    if not dest.endswith("/" + rel):
        raise BuildError(f"copy action {dest} does not end with its relative path {rel}")
    return dest[: -len(rel) - 1] or "/"


def _epoch_ns(source_date_epoch: int | None) -> int | None:
    return None if source_date_epoch is None else int(source_date_epoch) * 1_000_000_000


def copy_into_root(root: str | os.PathLike, actions: Sequence[CopyAction], *,
                   chown: tuple[int, int] | None = None,
                   chmod: "str | int | ChmodSpec | None" = None,
                   preserve_ownership: bool = False,
                   source_xattrs: bool = True,
                   source_date_epoch: int | None = None,
                   follow_final: Iterable[str] = (),
                   heredocs: Sequence[tuple[str, HeredocSource, bool]] = (),
                   verify_digests: bool = True, reuse=None) -> CopyStats:
    """Execute `actions` (from plan_copy) inside `root`. `chown` = (uid, gid) already
    resolved; `chmod` octal/symbolic; `preserve_ownership` keeps source owners when no
    chown (stage sources); `source_xattrs` copies the sources' xattrs (False for the
    build context and other transferred sources); `follow_final` = destinations whose final symlink is
    followed; `heredocs` = (dest, HeredocSource, follow_final) files to write;
    `reuse` (builder.steps.reuse.ReuseClaims) takes the files to link afterwards.
    BuildError on any failure (the root is then partially written: the step fails)."""
    spec = parse_chmod(chmod)
    with RootDir(root) as r:
        c = _Copier(r, chown=chown, chmod=spec, preserve_ownership=preserve_ownership,
                    mtime_ns=_epoch_ns(source_date_epoch), verify_digests=verify_digests,
                    reuse=reuse, source_xattrs=source_xattrs)
        try:
            c.run(actions, frozenset(follow_final))
            for dest, doc, follow in heredocs:
                c.heredoc(dest, doc, follow)
            c.finish_dirs()
        except OSError as e:
            raise BuildError(f"copy failed: {e.strerror or e}"
                             + (f": {e.filename}" if e.filename else "")) from None
        finally:
            c.close()
        return c.n.frozen()
