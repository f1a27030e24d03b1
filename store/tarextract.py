"""OCI layer tar -> directory in overlay lower form, extracted safely.

Owns the one place where bytes from outside (an imported or pulled layer) become files:
- every member path is normalised (`./` and empty components dropped) and rejected with
  UnsafeArchive when absolute, containing `..` or NUL;
- parents are walked component by component from a dir fd of `dest` with
  O_NOFOLLOW|O_DIRECTORY (openat semantics): a path through a symlink is rejected
  (UnsafeArchive), a missing parent is created (0755), so nothing is ever written outside
  `dest` or through a symlink, and no path length limit applies (no PATH_MAX walk);
- the final component is never followed: files are created O_CREAT|O_EXCL|O_NOFOLLOW
  after removing whatever was there (a later member replaces an earlier one, as tar does;
  a directory is only kept when the new member is a directory too);
- hard links must name an earlier non-directory member, resolved the same way;
- `.wh.<name>` -> char device 0/0 `<name>` (whatever was there removed first);
  `.wh..wh..opq` -> trusted.overlay.opaque=y on its directory; other `.wh..wh.*`
  (AUFS bookkeeping) are skipped; a plain char device 0/0 member is rejected (it would
  read as a whiteout in overlay form);
- device nodes only with allow_devices (else UnsafeArchive); xattrs trusted.overlay.*
  from the tar are dropped (they would steer overlayfs); in a user namespace (rootless,
  store.overlayform) the opaque marker is user.overlay.opaque=y and user.overlay.* from
  the tar is dropped too;
- owner (when root), mode (setuid/setgid cleared on request), xattrs and mtime are set on every member, in the order that
  keeps them (chown before chmod and before security.capability); directory mode and
  mtime are applied last, children first.

On failure `dest` is left partially written: the caller owns and removes it.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

from lamina.store import overlayform
from lamina.store.errors import CorruptContent, StoreError, UnsafeArchive
from lamina.store.tarformat import (BLKTYPE, CHRTYPE, DIRTYPE, FIFOTYPE, LNKTYPE, REGTYPE, SYMTYPE,
                             Entry, TarReader)

WHITEOUT_PREFIX = b".wh."
OPAQUE_MARKER = b".wh..wh..opq"
RESERVED_PREFIX = b".wh..wh."
OVERLAY_OPAQUE_XATTR = overlayform.opaque_xattr()  # user.overlay.opaque in a user namespace
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

Components = tuple[bytes, ...]


def _show(name: bytes) -> str:
    return os.fsdecode(name)


def remove_tree(parent: int, name: bytes | str) -> None:
    """`rm -rf name` inside the directory open as `parent`: iterative (any depth), via
    dir fds, never following a symlink; holds two fds, going up by ".." and checking
    the inode. (shutil.rmtree recurses and fails past ~1000 levels.)"""
    cur = os.open(name, _DIR_FLAGS, dir_fd=parent)
    stack: list[tuple[tuple[int, int], str | bytes, list[str]]] = []
    ident = (lambda s: (s.st_dev, s.st_ino))
    try:
        stack.append((ident(os.fstat(parent)), name, []))
        pending_scan = True
        while stack:
            if pending_scan:
                subdirs = []
                with os.scandir(cur) as it:
                    for entry in it:
                        if entry.is_dir(follow_symlinks=False):
                            subdirs.append(entry.name)
                        else:
                            os.unlink(entry.name, dir_fd=cur)
                stack[-1][2].extend(subdirs)
                pending_scan = False
            parent_ident, myname, subdirs = stack[-1]
            if subdirs:
                child = subdirs.pop()
                here = ident(os.fstat(cur))
                nfd = os.open(child, _DIR_FLAGS, dir_fd=cur)
                os.close(cur)
                cur = nfd
                stack.append((here, child, []))
                pending_scan = True
                continue
            stack.pop()
            up = os.open("..", _DIR_FLAGS, dir_fd=cur)
            os.close(cur)
            cur = up
            if ident(os.fstat(cur)) != parent_ident:
                raise StoreError("directory moved while it was removed")
            os.rmdir(myname, dir_fd=cur)
    finally:
        os.close(cur)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def normalise(name: bytes, member: bytes) -> Components:
    """The components of a member path inside the root; UnsafeArchive if it leaves it."""
    if b"\0" in name:
        raise UnsafeArchive(f"tar member {_show(member)!r} has a NUL byte in its path",
                            path=_show(member))
    if name.startswith(b"/"):
        raise UnsafeArchive(f"tar member {_show(member)!r} has an absolute path",
                            path=_show(member))
    comps = tuple(c for c in name.split(b"/") if c not in (b"", b"."))
    if b".." in comps:
        raise UnsafeArchive(f"tar member {_show(member)!r} has a '..' path component",
                            path=_show(member))
    return comps


class _Extractor:
    def __init__(self, dest: Path, allow_devices: bool, mirror=None,
                 same_owner: bool | None = None, drop_setid: bool = False) -> None:
        self.mirror = mirror  # a store.tarwrite.TarMirror, told about every member
        self.root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.dest = str(dest)
        self.allow_devices = allow_devices
        self.same_owner = os.geteuid() == 0 if same_owner is None else same_owner
        self.mode_bits = 0o1777 if drop_setid else 0o7777
        self.dirs: dict[Components, Entry] = {}  # deferred dir mode/mtime, first-seen order
        self.seen: set[Components] = set()  # non-directory members, for hard links
        self._cache: tuple[Components, int] | None = None

    def close(self) -> None:
        self._drop_cache()
        os.close(self.root_fd)

    # -- walking --------------------------------------------------------------------

    def _drop_cache(self) -> None:
        if self._cache is not None:
            os.close(self._cache[1])
            self._cache = None

    def open_dir(self, comps: Components, member: bytes, *, create: bool) -> int:
        """An fd (caller closes) of directory `comps` under the root, walked without
        following any symlink; missing dirs are created when `create`."""
        start = 0
        fd = self.root_fd
        if self._cache is not None:
            ccomps, cfd = self._cache
            if comps[:len(ccomps)] == ccomps:  # continue from the last dir walked
                start, fd = len(ccomps), cfd
            elif comps and comps == ccomps[:-1]:  # its parent (finish() goes up the tree)
                up = os.open("..", _DIR_FLAGS, dir_fd=cfd)
                self._drop_cache()
                self._cache = (comps, up)
                return os.dup(up)
        fd = os.dup(fd)
        try:
            for i in range(start, len(comps)):
                comp = comps[i]
                try:
                    nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise CorruptContent(
                            f"tar member {_show(member)!r}: {_show(b'/'.join(comps[:i + 1]))!r} "
                            f"does not exist", path=_show(member)) from None
                    os.mkdir(comp, 0o755, dir_fd=fd)
                    nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                except OSError as e:
                    if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    where = _show(b"/".join(comps[:i + 1]))
                    if stat.S_ISLNK(os.lstat(comp, dir_fd=fd).st_mode):
                        raise UnsafeArchive(f"tar member {_show(member)!r} goes through the "
                                            f"symlink {where!r}", path=_show(member)) from None
                    raise CorruptContent(f"tar member {_show(member)!r}: {where!r} is not a "
                                         f"directory", path=_show(member)) from None
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        if start != len(comps):
            self._drop_cache()
            self._cache = (comps, os.dup(fd))
        return fd

    def remove(self, parent: int, name: bytes) -> os.stat_result | None:
        """Remove whatever is at `name` (a directory recursively, without following
        symlinks). Returns the stat of what was there."""
        try:
            st = os.lstat(name, dir_fd=parent)
        except FileNotFoundError:
            return None
        if stat.S_ISDIR(st.st_mode):
            self._drop_cache()
            remove_tree(parent, name)
        else:
            os.unlink(name, dir_fd=parent)
        return st

    # -- metadata -------------------------------------------------------------------

    def chown(self, e: Entry, *, fd: int | None = None, parent: int = -1, name: bytes = b"") -> None:
        if not self.same_owner:
            return
        try:
            if fd is not None:
                os.fchown(fd, e.uid, e.gid)
            else:
                os.chown(name, e.uid, e.gid, dir_fd=parent, follow_symlinks=False)
        except OSError as err:
            if err.errno != errno.EINVAL or not overlayform.unprivileged():
                raise
            # rootless: the owner is outside the IDs the user namespace maps
            raise StoreError(f"cannot give {_show(e.name)!r} owner {e.uid}:{e.gid}: that ID is "
                             "not mapped in lamina's user namespace (add or widen the user's "
                             "ranges in /etc/subuid and /etc/subgid)", path=_show(e.name)) from None

    def set_xattrs(self, e: Entry, *, fd: int | None = None, parent: int = -1,
                   name: bytes = b"") -> None:
        for key, value in e.xattrs.items():
            if key.startswith((b"trusted.overlay.", os.fsencode(overlayform.prefix()))):
                continue
            try:
                if fd is not None:
                    os.setxattr(fd, key, value)
                else:
                    # no setxattrat(): name the entry through the pinned parent dir fd
                    path = b"/proc/self/fd/%d/" % parent + name
                    os.setxattr(path, key, value, follow_symlinks=False)
            except OSError as err:
                special = fd is None
                if special and key.startswith(b"user.") and err.errno in (errno.EPERM, errno.ENOTSUP):
                    continue  # the kernel allows user.* only on files and dirs
                raise StoreError(f"cannot set xattr {_show(key)} on {_show(e.name)!r}: "
                                 f"{err.strerror}", path=_show(e.name)) from None

    @staticmethod
    def set_mtime(e: Entry, *, fd: int | None = None, parent: int = -1, name: bytes = b"") -> None:
        ns = (e.mtime_ns, e.mtime_ns)
        if fd is not None:
            os.utime(fd, ns=ns)
        else:
            os.utime(name, ns=ns, dir_fd=parent, follow_symlinks=False)

    # -- members --------------------------------------------------------------------

    def member(self, e: Entry, reader: TarReader) -> None:
        comps = normalise(e.name, e.name)
        if any(c.startswith(RESERVED_PREFIX) and c != OPAQUE_MARKER for c in comps):
            return  # AUFS bookkeeping (.wh..wh.plnk, .wh..wh.aufs): not content
        tee = self.mirror.member(comps, e) if self.mirror is not None else False
        if not comps:
            if e.type != DIRTYPE:
                raise CorruptContent(f"tar member {_show(e.name)!r} names the root but is not "
                                     f"a directory", path=_show(e.name))
            self.chown(e, fd=self.root_fd)
            self.set_xattrs(e, fd=self.root_fd)
            self.dirs[comps] = e
            return
        last = comps[-1]
        if OPAQUE_MARKER in comps[:-1]:
            raise CorruptContent(f"tar member {_show(e.name)!r} is inside an opaque marker",
                                 path=_show(e.name))
        parent = self.open_dir(comps[:-1], e.name, create=True)
        try:
            if last == OPAQUE_MARKER:
                os.setxattr(parent, OVERLAY_OPAQUE_XATTR, b"y")
            elif last.startswith(WHITEOUT_PREFIX):
                self.whiteout(e, parent, last[len(WHITEOUT_PREFIX):])
            elif e.type == DIRTYPE:
                self.directory(e, comps, parent, last)
            else:
                self.non_directory(e, comps, parent, last, reader, tee)
        finally:
            os.close(parent)

    def whiteout(self, e: Entry, parent: int, name: bytes) -> None:
        if not name:
            raise CorruptContent(f"tar member {_show(e.name)!r} is a whiteout without a name",
                                 path=_show(e.name))
        if name in (b".", b".."):  # would remove the directory itself or its parent
            raise UnsafeArchive(f"tar member {_show(e.name)!r} whites out {_show(name)!r}",
                                path=_show(e.name))
        self.remove(parent, name)
        os.mknod(name, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=parent)
        self.chown(e, parent=parent, name=name)
        os.chmod(name, e.mode & self.mode_bits, dir_fd=parent)
        self.set_mtime(e, parent=parent, name=name)
        self._check(parent, name)

    def _check(self, parent: int, name: bytes) -> None:
        """Let the mirror compare the non-directory just made with the entry it wrote."""
        if self.mirror is not None and self.mirror.checking:
            self.mirror.check(os.lstat(name, dir_fd=parent), b"/proc/self/fd/%d/" % parent + name)

    def directory(self, e: Entry, comps: Components, parent: int, last: bytes) -> None:
        try:
            st = os.lstat(last, dir_fd=parent)
        except FileNotFoundError:
            st = None
        if st is None or not stat.S_ISDIR(st.st_mode):
            if st is not None:
                os.unlink(last, dir_fd=parent)
            os.mkdir(last, 0o700, dir_fd=parent)
        fd = os.open(last, _DIR_FLAGS, dir_fd=parent)
        try:
            self.chown(e, fd=fd)
            self.set_xattrs(e, fd=fd)
        finally:
            os.close(fd)
        self.seen.discard(comps)
        self.dirs[comps] = e

    def non_directory(self, e: Entry, comps: Components, parent: int, last: bytes,
                      reader: TarReader, tee: bool = False) -> None:
        if e.type in (CHRTYPE, BLKTYPE):
            if not self.allow_devices:
                raise UnsafeArchive(f"tar member {_show(e.name)!r} is a device node, which is "
                                    f"not allowed here", path=_show(e.name))
            if e.type == CHRTYPE and e.devmajor == 0 and e.devminor == 0:
                raise UnsafeArchive(f"tar member {_show(e.name)!r} is a char device 0/0, which "
                                    f"overlayfs would read as a whiteout", path=_show(e.name))
        elif e.type not in (REGTYPE, SYMTYPE, LNKTYPE, FIFOTYPE):
            raise CorruptContent(f"tar member {_show(e.name)!r} has an unsupported type "
                                 f"{e.type!r}", path=_show(e.name))
        if e.type == LNKTYPE:
            target = normalise(e.linkname, e.name)
            if target not in self.seen:
                raise UnsafeArchive(f"tar member {_show(e.name)!r} is a hard link to "
                                    f"{_show(e.linkname)!r}, which is not an earlier file of "
                                    f"this archive", path=_show(e.name))
        removed = self.remove(parent, last)
        if removed is not None and stat.S_ISDIR(removed.st_mode):
            self.dirs.pop(comps, None)
            prefix_len = len(comps)
            self.seen = {p for p in self.seen if p[:prefix_len] != comps}
            for d in [d for d in self.dirs if d[:prefix_len] == comps]:
                del self.dirs[d]
        if e.type == REGTYPE:
            fd = os.open(last, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=parent)
            try:
                # data straight to the fd: the reader hands over pieces of up to 1 MiB
                if tee:
                    mirror = self.mirror

                    def sink(data: bytes) -> None:
                        _write_all(fd, data)
                        mirror.data(data)
                    n = reader.read_data(sink)
                else:
                    n = reader.read_data(lambda data: _write_all(fd, data))
                if n != e.size:
                    raise CorruptContent(f"tar member {_show(e.name)!r} is truncated",
                                         path=_show(e.name))
                if tee:
                    self.mirror.end_data(n)
                self.chown(e, fd=fd)
                os.fchmod(fd, e.mode & self.mode_bits)
                self.set_xattrs(e, fd=fd)
                self.set_mtime(e, fd=fd)
                if self.mirror is not None and self.mirror.checking:
                    self.mirror.check(os.fstat(fd), fd)
            finally:
                os.close(fd)
        elif e.type == LNKTYPE:
            target = normalise(e.linkname, e.name)
            tparent = self.open_dir(target[:-1], e.name, create=False)
            try:
                os.link(target[-1], last, src_dir_fd=tparent, dst_dir_fd=parent,
                        follow_symlinks=False)
            finally:
                os.close(tparent)
        elif e.type == SYMTYPE:
            if b"\0" in e.linkname:
                raise UnsafeArchive(f"tar member {_show(e.name)!r} has a NUL byte in its "
                                    f"link target", path=_show(e.name))
            os.symlink(e.linkname, last, dir_fd=parent)
            self.chown(e, parent=parent, name=last)
            self.set_xattrs(e, parent=parent, name=last)
            self.set_mtime(e, parent=parent, name=last)
            self._check(parent, last)
        else:  # fifo, char, block
            if e.type == FIFOTYPE:
                os.mkfifo(last, 0o600, dir_fd=parent)
            else:
                kind = stat.S_IFCHR if e.type == CHRTYPE else stat.S_IFBLK
                os.mknod(last, kind | 0o600, os.makedev(e.devmajor, e.devminor), dir_fd=parent)
            self.chown(e, parent=parent, name=last)
            # just created by us in a pinned dir; chmod cannot take AT_SYMLINK_NOFOLLOW here
            os.chmod(last, e.mode & self.mode_bits, dir_fd=parent)
            self.set_xattrs(e, parent=parent, name=last)
            self.set_mtime(e, parent=parent, name=last)
            self._check(parent, last)
        self.seen.add(comps)

    def finish(self) -> None:
        """Directory modes and mtimes, deepest first (their children are done)."""
        self._drop_cache()
        for comps in reversed(list(self.dirs)):
            e = self.dirs[comps]
            try:
                fd = self.open_dir(comps, e.name, create=False)
            except (CorruptContent, UnsafeArchive):
                if self.mirror is not None:
                    self.mirror.stop("directory replaced by a later member")
                continue  # replaced by a later member
            try:
                os.fchmod(fd, e.mode & self.mode_bits)
                self.set_mtime(e, fd=fd)
                if self.mirror is not None:
                    self.mirror.check_dir(comps, fd)
            finally:
                os.close(fd)
            self._drop_cache()


def extract_tar(stream: BinaryIO, dest: Path, *, allow_devices: bool = True, mirror=None,
                same_owner: bool | None = None, drop_setid: bool = False) -> None:
    """Extract the uncompressed OCI layer tar `stream` into the existing directory
    `dest`, converting OCI whiteouts to overlay form. Reads up to the end-of-archive
    marker (not beyond). UnsafeArchive / CorruptContent name the offending member.
    `mirror` (a store.tarwrite.TarMirror) is shown every member and its data, and
    checks each extracted file against the entry it wrote (one pass for import).
    `same_owner`: give files the members' owners (default: when running as root).
    `drop_setid`: clear setuid/setgid bits (files that end up the extracting user's own,
    where a setuid bit would lend that user's identity to whoever runs them)."""
    reader = TarReader(stream)
    ex = _Extractor(dest, allow_devices, mirror, same_owner, drop_setid)
    try:
        while True:
            e = reader.next()
            if e is None:
                break
            try:
                ex.member(e, reader)
            except StoreError:
                raise
            except (ValueError, OverflowError) as err:  # a NUL in an xattr name, a huge mtime/uid
                raise CorruptContent(f"tar member {_show(e.name)!r} is malformed: {err}",
                                     path=_show(e.name)) from None
            except OSError as err:
                raise StoreError(f"cannot extract tar member {_show(e.name)!r} into "
                                 f"{ex.dest}: {err.strerror or err}", path=_show(e.name)) from None
        ex.finish()
    finally:
        ex.close()
