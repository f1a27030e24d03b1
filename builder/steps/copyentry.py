"""One non-directory entry of a COPY written into an open directory of the image root:
a regular file (content hashed while copied), a symlink, a fifo or device node, a
heredoc body, and the xattrs an entry carries. The walk over a copy's actions,
directories, hard-link scopes and destination rules are `builder.steps.copy`.

Semantics (BuildKit's FileOp copy through fsutil's copier, read not copied):
- Regular files: content, permission bits (incl. setuid/setgid/sticky) and mtime
  (ns) from the source; atime is set to the mtime (a layer has no atime). Content is
  hashed while copied and must match the digest the cache key was computed from
  (else "changed during the build").
- Ownership (`EntryOwner`): 0:0, or `--chown` uid:gid (the caller resolves names
  against the image's /etc/passwd and /etc/group - builder.users), or, with
  preserve_ownership (COPY --from a stage: the source tree keeps owners), the
  source's uid:gid. `--chmod` (octal or symbolic, builder.steps.chmod) replaces/
  adjusts the mode of every copied file and directory (not symlinks).
- Symlinks are copied as symlinks (never followed).
- xattrs of sources in an image tree (COPY --from a stage or an image) are copied
  best-effort like BuildKit (which logs and ignores xattr errors), after chown and
  chmod so that security.capability survives; except `trusted.*` (overlayfs state,
  never ours to copy) and `security.selinux` (a host label, meaningless in an image).
  Transferred sources (the build context, a git checkout, a download) carry none into
  the image, as with BuildKit: its context receiver (fsutil's rewriteMetadata) sets
  the xattrs before the chown, which clears security.capability, and its layer tars
  keep no other xattr (containerd's and docker's tar writers record
  security.capability only). Checked against docker 20.10's BuildKit
  (tests/builder/test_differential_buildkit.py, case copy-onto).
- Devices and fifos are recreated; a char device 0/0 is refused (overlayfs reads it
  as a whiteout); sockets are skipped by the caller (nothing a layer can hold).
- Heredocs (`COPY <<EOF /dest`): a file named after the heredoc word, content the
  body, mode 0644 (then --chmod), owner 0:0 or --chown, mtime SOURCE_DATE_EPOCH or
  now.
- An existing non-directory at the destination is replaced; an existing directory is
  an error ("cannot replace directory X with a file"), as in BuildKit.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import time
from dataclasses import dataclass

from lamina.builder.errors import BuildError
from lamina.builder.steps.chmod import ChmodSpec

__all__ = ["EntryOwner", "HEREDOC_MODE", "HeredocSource", "clear_target", "copy_xattrs",
           "open_source_file", "write_file", "write_heredoc", "write_special", "write_symlink"]

HEREDOC_MODE = 0o644
_CHUNK = 1 << 20
_SKIPPED_XATTR_PREFIXES = (b"trusted.", b"security.selinux")


@dataclass(frozen=True)
class HeredocSource:
    """`COPY <<NAME dest`: a file called `name` holding `data`."""

    name: str
    data: bytes


@dataclass(frozen=True)
class EntryOwner:
    """Owner and mode of the copied entries: `chown` (resolved uid, gid) wins, else the
    source's own with `preserve`, else 0:0; `chmod` adjusts every non-symlink."""

    chown: tuple[int, int] | None = None
    chmod: ChmodSpec | None = None
    preserve: bool = False

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


def clear_target(parent: int, name: str, dest: str) -> None:
    """Remove a non-directory at `name` in `parent` (the entry replaces it); an
    existing directory there is an error."""
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise BuildError(f"cannot replace directory {dest} with a file")
    os.unlink(name, dir_fd=parent)


def open_source_file(src: str) -> tuple[int, os.stat_result]:
    """A descriptor of the regular file `src` (not followed) and its stat."""
    try:
        sfd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as err:
        raise BuildError(f"cannot read source {src}: {err.strerror}") from None
    try:
        st = os.fstat(sfd)
        if not stat.S_ISREG(st.st_mode):
            raise BuildError(f"source {src} changed during the build (no longer a file)")
    except BaseException:
        os.close(sfd)
        raise
    return sfd, st


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_file(sfd: int, st: os.stat_result, parent: int, name: str, src: str, *,
               digest: str | None, owner: EntryOwner, xattrs: bool) -> int:
    """Copy the open source file `sfd` (stat `st`) to a new `name` in `parent`; its
    content must hash to `digest` when given. Returns the bytes copied."""
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
            _write_all(dfd, chunk)
            n += len(chunk)
        if digest and "sha256:" + h.hexdigest() != digest:
            raise BuildError(f"source {src} changed during the build (content no longer "
                             f"matches {digest})")
        uid, gid = owner.owner(st)
        os.fchown(dfd, uid, gid)
        os.fchmod(dfd, owner.mode(st))
        if xattrs:
            copy_xattrs(sfd, dfd)
        os.utime(dfd, ns=(st.st_mtime_ns, st.st_mtime_ns))
    finally:
        os.close(dfd)
    return n


def write_symlink(parent: int, name: str, src: str, link_target: str | None,
                  owner: EntryOwner) -> None:
    """Recreate the symlink `src` as `name` in `parent` (its target must still be
    `link_target` when given)."""
    try:
        st = os.lstat(src)
        target = os.readlink(src)
    except OSError as err:
        raise BuildError(f"cannot read source {src}: {err.strerror}") from None
    if link_target is not None and target != link_target:
        raise BuildError(f"source {src} changed during the build (link target)")
    os.symlink(target, name, dir_fd=parent)
    uid, gid = owner.owner(st)
    os.chown(name, uid, gid, dir_fd=parent, follow_symlinks=False)
    os.utime(name, ns=(st.st_mtime_ns, st.st_mtime_ns), dir_fd=parent, follow_symlinks=False)


def write_special(parent: int, name: str, dest: str, src: str, owner: EntryOwner) -> None:
    """Recreate the fifo or device node `src` as `name` in `parent`."""
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
    uid, gid = owner.owner(st)
    os.chown(name, uid, gid, dir_fd=parent, follow_symlinks=False)
    # just created by us in a pinned directory: chmod may follow (it is no symlink)
    os.chmod(name, owner.mode(st), dir_fd=parent)
    os.utime(name, ns=(st.st_mtime_ns, st.st_mtime_ns), dir_fd=parent, follow_symlinks=False)


def write_heredoc(parent: int, name: str, dest: str, doc: HeredocSource, owner: EntryOwner,
                  mtime_ns: int | None) -> None:
    """Write the heredoc body `doc` as the file `name` in `parent` (replacing a
    non-directory there): mode 0644 then --chmod, owner 0:0 or --chown."""
    clear_target(parent, name, dest)
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600, dir_fd=parent)
    try:
        _write_all(fd, doc.data)
        uid, gid = owner.chown or (0, 0)
        os.fchown(fd, uid, gid)
        os.fchmod(fd, owner.chmod.apply(HEREDOC_MODE) if owner.chmod else HEREDOC_MODE)
        t = mtime_ns if mtime_ns is not None else time.time_ns()
        os.utime(fd, ns=(t, t))
    finally:
        os.close(fd)
