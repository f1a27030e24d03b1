"""COPY mechanics: writing selected source entries into an image root with docker's
(BuildKit's) semantics. Source selection and destination rules are
`builder.copysrc` (select_sources, plan_copy); path resolution in the root is
`builder.rootpath`. This module owns what happens to each entry.

Public API:
- `copy_into_root(root, actions, *, chown, chmod, preserve_ownership, source_xattrs,
  source_date_epoch, follow_final)` -> CopyStats: execute CopyActions;
  `HeredocSource(name, data)` is a `COPY <<EOF` body.
The entry point that reads the destination in the image first is
`builder.steps.copyinto.copy_selection`.

Semantics (BuildKit's FileOp copy through fsutil's copier, read not copied):
- Regular files: content, permission bits (incl. setuid/setgid/sticky) and mtime
  (ns) from the source; atime is set to the mtime (a layer has no atime). Content is
  hashed while copied and must match the digest the cache key was computed from
  (else "changed during the build").
- Ownership: 0:0, or `--chown` uid:gid (the caller resolves names against the
  image's /etc/passwd and /etc/group - builder.users), or, with preserve_ownership
  (COPY --from a stage: the source tree keeps owners), the source's uid:gid.
- `--chmod` (octal or symbolic, builder.steps.chmod) replaces/adjusts the mode of
  every copied file and directory (not symlinks).
- Symlinks are copied as symlinks (never followed); hard links among the files of
  one source argument (same source inode) stay hard links in the destination; two
  source arguments never share a link (one fsutil copy per source in BuildKit).
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
- xattrs of sources in an image tree (COPY --from a stage or an image) are copied
  best-effort like BuildKit (which logs and ignores xattr errors), after chown and
  chmod so that security.capability survives; except `trusted.*` (overlayfs state,
  never ours to copy) and `security.selinux` (a host label, meaningless in an image).
  Transferred sources (the build context, a git checkout, a download: source_xattrs
  False) carry none into the image, as with BuildKit: its context receiver (fsutil's
  rewriteMetadata) sets the xattrs before the chown, which clears
  security.capability, and its layer tars keep no other xattr (containerd's and
  docker's tar writers record security.capability only). Checked against docker
  20.10's BuildKit (tests/builder/test_differential_buildkit.py, case copy-onto).
- Devices and fifos are recreated; a char device 0/0 is refused (overlayfs reads it
  as a whiteout); sockets are skipped (nothing a layer can hold).
- `COPY --link` changes nothing here: the layer is the same diff; only the cache key's
  dependency on the parent differs (builder.cachekey's concern).
- Heredocs (`COPY <<EOF /dest`): a file named after the heredoc word, content the
  body, mode 0644 (then --chmod), owner 0:0 or --chown, mtime SOURCE_DATE_EPOCH or
  now; destination rules as for a file source.
- Times: directories created here and heredoc files get `source_date_epoch` when
  given, else now; the layer writer clamps every mtime later anyway.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import time
from dataclasses import dataclass
from typing import Iterable, Sequence

from lamina.builder.context.copysrc import CopyAction, SelectedEntry
from lamina.builder.errors import BuildError
from lamina.builder.sandbox.rootpath import DirSpec, RootDir, RootPathError
from lamina.builder.steps.chmod import ChmodSpec, parse_chmod

__all__ = ["CopyStats", "HeredocSource", "HEREDOC_MODE", "copy_into_root", "copy_xattrs"]

HEREDOC_MODE = 0o644
_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_SKIPPED_XATTR_PREFIXES = (b"trusted.", b"security.selinux")


@dataclass(frozen=True)
class HeredocSource:
    """`COPY <<NAME dest`: a file called `name` holding `data`."""

    name: str
    data: bytes


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


def _err(dest: str, what: str) -> BuildError:
    return BuildError(f"copy to {dest} failed: {what}")


def copy_xattrs(src: str | int, dst_fd: int) -> None:
    """Copy the xattrs of `src` (a path, not followed, or a descriptor) to `dst_fd`,
    best-effort, skipping trusted.* and security.selinux."""
    try:
        names = os.listxattr(src, follow_symlinks=False) if isinstance(src, str) else os.listxattr(src)
    except OSError:
        return
    for name in names:
        key = name.encode()
        if key.startswith(_SKIPPED_XATTR_PREFIXES):
            continue
        try:
            value = os.getxattr(src, name, follow_symlinks=False) if isinstance(src, str) \
                else os.getxattr(src, name)
            os.setxattr(dst_fd, name, value)
        except OSError as e:
            if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.ENODATA,
                           errno.E2BIG, errno.ERANGE, errno.EACCES):
                continue  # BuildKit logs and ignores xattr errors
            raise


class _Copier:
    """Executes the actions of one copy into an open RootDir."""

    def __init__(self, r: RootDir, *, chown: tuple[int, int] | None, chmod: ChmodSpec | None,
                 preserve_ownership: bool, mtime_ns: int | None, verify_digests: bool,
                 reuse=None, source_xattrs: bool = True) -> None:
        self.r = r
        self.source_xattrs = source_xattrs
        self.reuse = reuse  # builder.steps.reuse.ReuseClaims: files linked after the step
        self.chown = chown
        self.chmod = chmod
        self.preserve = preserve_ownership
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

    # -- ownership & mode --------------------------------------------------------------

    def owner(self, st: os.stat_result) -> tuple[int, int]:
        if self.chown is not None:
            return self.chown
        if self.preserve:
            return st.st_uid, st.st_gid
        return 0, 0

    def mode(self, st: os.stat_result) -> int:
        m = stat.S_IMODE(st.st_mode)
        if self.chmod is not None:
            return self.chmod.apply(m, stat.S_ISDIR(st.st_mode))
        return m

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

    # -- non-directories ---------------------------------------------------------------

    def clear_target(self, parent: int, name: str, dest: str) -> None:
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            raise BuildError(f"cannot replace directory {dest} with a file")
        os.unlink(name, dir_fd=parent)

    def place(self, parent: int, name: str, dest: str, e: SelectedEntry, src: str) -> None:
        """Copy the non-directory source `src` (entry `e`) to `name` in `parent`."""
        kind = e.kind
        if kind == "socket":
            self.n.skipped += 1
            return
        if kind == "file" and self.reuse is not None and self.reuse.claim(
                parent, name, dest, e.path, src, self.owner, self.mode):
            self.n.files += 1  # unchanged since the previous build: linked from its layer
            return
        self.clear_target(parent, name, dest)
        if kind == "file":
            self.file(parent, name, dest, e, src)
        elif kind == "symlink":
            self.symlink(parent, name, dest, e, src)
        elif kind in ("fifo", "chardev", "blockdev"):
            self.special(parent, name, dest, src)
        else:
            raise BuildError(f"cannot copy {src}: unsupported file type {kind}")

    def file(self, parent: int, name: str, dest: str, e: SelectedEntry, src: str) -> None:
        try:
            sfd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as err:
            raise BuildError(f"cannot read source {src}: {err.strerror}") from None
        try:
            st = os.fstat(sfd)
            if not stat.S_ISREG(st.st_mode):
                raise BuildError(f"source {src} changed during the build (no longer a file)")
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in self.inodes and self.link(self.inodes[key], parent, name):
                self.n.hardlinks += 1
                return
            dfd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                          0o600, dir_fd=parent)
            try:
                h = hashlib.sha256()
                n = 0
                while True:
                    chunk = os.read(sfd, _CHUNK)
                    if not chunk:
                        break
                    h.update(chunk)
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(dfd, view):]
                    n += len(chunk)
                if self.verify and e.digest and "sha256:" + h.hexdigest() != e.digest:
                    raise BuildError(f"source {src} changed during the build (content no longer "
                                     f"matches {e.digest})")
                uid, gid = self.owner(st)
                os.fchown(dfd, uid, gid)
                os.fchmod(dfd, self.mode(st))
                if self.source_xattrs:
                    copy_xattrs(sfd, dfd)
                os.utime(dfd, ns=(st.st_mtime_ns, st.st_mtime_ns))
            finally:
                os.close(dfd)
            self.n.files += 1
            self.n.bytes += n
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

    def symlink(self, parent: int, name: str, dest: str, e: SelectedEntry, src: str) -> None:
        try:
            st = os.lstat(src)
            target = os.readlink(src)
        except OSError as err:
            raise BuildError(f"cannot read source {src}: {err.strerror}") from None
        if e.link_target is not None and target != e.link_target:
            raise BuildError(f"source {src} changed during the build (link target)")
        os.symlink(target, name, dir_fd=parent)
        uid, gid = self.owner(st)
        os.chown(name, uid, gid, dir_fd=parent, follow_symlinks=False)
        os.utime(name, ns=(st.st_mtime_ns, st.st_mtime_ns), dir_fd=parent, follow_symlinks=False)
        self.n.symlinks += 1

    def special(self, parent: int, name: str, dest: str, src: str) -> None:
        try:
            st = os.lstat(src)
        except OSError as err:
            raise BuildError(f"cannot read source {src}: {err.strerror}") from None
        if stat.S_ISFIFO(st.st_mode):
            os.mkfifo(name, 0o600, dir_fd=parent)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                raise BuildError(f"cannot copy {src} to {dest}: a char device 0/0 would read "
                                 "as a whiteout in the layer")
            os.mknod(name, stat.S_IFMT(st.st_mode) | 0o600, st.st_rdev, dir_fd=parent)
        else:
            raise BuildError(f"source {src} changed during the build")
        uid, gid = self.owner(st)
        os.chown(name, uid, gid, dir_fd=parent, follow_symlinks=False)
        # just created by us in a pinned directory: chmod may follow (it is no symlink)
        os.chmod(name, self.mode(st), dir_fd=parent)
        os.utime(name, ns=(st.st_mtime_ns, st.st_mtime_ns), dir_fd=parent, follow_symlinks=False)
        self.n.specials += 1

    def heredoc(self, dest: str, doc: HeredocSource, follow_final: bool) -> None:
        parent, name, _ = self.r.open_parent(dest, create=self.created_dir,
                                             follow_final=follow_final)
        try:
            self.clear_target(parent, name, dest)
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=parent)
            try:
                view = memoryview(doc.data)
                while view:
                    view = view[os.write(fd, view):]
                uid, gid = self.chown or (0, 0)
                os.fchown(fd, uid, gid)
                mode = self.chmod.apply(HEREDOC_MODE) if self.chmod else HEREDOC_MODE
                os.fchmod(fd, mode)
                t = self.mtime_ns if self.mtime_ns is not None else time.time_ns()
                os.utime(fd, ns=(t, t))
            finally:
                os.close(fd)
        finally:
            os.close(parent)
        self.n.files += 1
        self.n.bytes += len(doc.data)

    # -- actions ------------------------------------------------------------------------

    def run(self, actions: Iterable[CopyAction], follow_final: frozenset[str]) -> None:
        source = None
        for a in actions:
            if a.source != source:  # a new source argument: a new hard-link scope
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
