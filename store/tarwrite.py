"""Directory in overlay form -> deterministic OCI layer tar (uncompressed), streamed.

Owns the mapping from an overlay upper/lower dir to tar entries:
- regular files, dirs, symlinks, fifos, char/block devices; sockets are skipped (tar
  cannot hold them, as GNU tar);
- a non-directory inode seen again (st_nlink > 1) becomes a hard link entry to the first
  path it was seen at, in archive order;
- overlay whiteout (char device 0/0) -> empty regular file `.wh.<name>` with the
  whiteout's mode/uid/gid/mtime; never hard-linked (overlayfs shares one whiteout inode);
- dir with trusted.overlay.opaque=y -> the dir entry plus `<dir>/.wh..wh..opq`
  (mode 0, uid/gid 0, mtime of the dir);
- xattrs as PAX SCHILY.xattr.* except trusted.overlay.* (overlay bookkeeping) and
  security.selinux (a host label, not image content).

Determinism: entries are ordered depth-first, the names of each directory sorted by
their bytes as they appear in the tar (so `.wh.x` sorts as `.wh.x`), parents before
children - the order of GNU `tar --sort=name`. Names carry no `./` prefix; directories
end in `/`; the root directory itself is not an entry. mtimes are whole seconds,
clamped to SOURCE_DATE_EPOCH when given. uname/gname are empty. The header format is in
store.tarformat. The same tree gives the same bytes on any machine, whatever its inode
numbers or creation order.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

from store.errors import StoreError
from store.tarformat import (BLKTYPE, CHRTYPE, DIRTYPE, END_OF_ARCHIVE, FIFOTYPE, LNKTYPE,
                             REGTYPE, SYMTYPE, Entry, encode_entry, padding)

WHITEOUT_PREFIX = b".wh."
OPAQUE_MARKER = b".wh..wh..opq"
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"
SKIPPED_XATTR_PREFIXES = (b"trusted.overlay.",)
SKIPPED_XATTRS = (b"security.selinux",)
CHUNK = 1 << 20


def is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _proc(dir_fd: int, name: bytes) -> bytes:
    """A path naming `name` in the directory open as `dir_fd`, for the calls that have
    no *at() form (xattrs): the magic link pins the directory, the last component is
    looked up without following."""
    return b"/proc/self/fd/%d/" % dir_fd + name


def layer_xattrs(path: bytes | int) -> dict[bytes, bytes]:
    """The xattrs a layer carries for `path` (an fd, or a path not followed), sorted;
    overlay bookkeeping and host SELinux labels left out."""
    follow = isinstance(path, int)  # an fd: nothing to follow
    try:
        names = os.listxattr(path, follow_symlinks=follow)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise
    out = {}
    for name in names:
        key = os.fsencode(name)
        if key.startswith(SKIPPED_XATTR_PREFIXES) or key in SKIPPED_XATTRS:
            continue
        try:
            out[key] = os.getxattr(path, name, follow_symlinks=follow)
        except OSError as e:
            if e.errno == errno.ENODATA:
                continue  # removed meanwhile
            raise
    return dict(sorted(out.items()))


def _is_opaque(dir_fd: int) -> bool:
    try:
        return os.getxattr(dir_fd, OVERLAY_OPAQUE_XATTR) == b"y"
    except OSError:
        return False


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class _Dir:
    """One directory on the walk: its identity, tar prefix, mtime and the children still
    to emit. Only the current directory is open: going back up reopens ".." and checks
    it is the same inode, so the walk needs two fds at any depth."""

    def __init__(self, st: os.stat_result, prefix: bytes, mtime: int, children: list) -> None:
        self.ident = (st.st_dev, st.st_ino)
        self.prefix = prefix
        self.mtime = mtime
        self.children = children  # (tarname, name, stat | None), sorted, consumed from the end


class _TarWriter:
    def __init__(self, out: BinaryIO, epoch: int | None, root: bytes) -> None:
        self.out = out
        self.epoch = epoch
        self.root = root
        self.links: dict[tuple[int, int], bytes] = {}

    def mtime(self, st: os.stat_result) -> int:
        t = st.st_mtime_ns // 10**9  # floor, also for negative times
        return min(t, self.epoch) if self.epoch is not None else t

    def emit(self, e: Entry) -> None:
        self.out.write(encode_entry(e))

    def _where(self, rel: bytes) -> str:
        return os.fsdecode(self.root + b"/" + rel)

    def regular(self, dir_fd: int, name: bytes, rel: bytes, st: os.stat_result, base: dict) -> None:
        """Header and data of a regular file, read through one fd (the xattrs too)."""
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            now = os.fstat(fd)
            if (now.st_ino, now.st_dev) != (st.st_ino, st.st_dev):
                raise StoreError(f"file replaced while it was archived: {os.fsdecode(rel)}",
                                 path=self._where(rel))
            self.emit(Entry(name=rel, type=REGTYPE, size=st.st_size, xattrs=layer_xattrs(fd), **base))
            left = st.st_size
            while left:
                chunk = os.read(fd, min(CHUNK, left))
                if not chunk:
                    raise StoreError(f"file shrank while it was archived: {os.fsdecode(rel)}",
                                     path=self._where(rel))
                self.out.write(chunk)
                left -= len(chunk)
            if os.read(fd, 1):
                raise StoreError(f"file grew while it was archived: {os.fsdecode(rel)}",
                                 path=self._where(rel))
        finally:
            os.close(fd)
        self.out.write(padding(st.st_size))

    def children(self, dir_fd: int, prefix: bytes, opaque: bool) -> list:
        with os.scandir(dir_fd) as it:
            names = [os.fsencode(e.name) for e in it]
        entries: list = []
        for name in names:
            st = os.lstat(name, dir_fd=dir_fd)
            if is_whiteout(st):
                tarname = WHITEOUT_PREFIX + name
            elif name.startswith(WHITEOUT_PREFIX):
                raise StoreError(
                    f"cannot archive {os.fsdecode(prefix + name)!r}: names starting with "
                    f"'.wh.' are reserved for whiteouts in OCI layers",
                    path=self._where(prefix + name))
            else:
                tarname = name
            entries.append((tarname, name, st))
        if opaque:
            entries.append((OPAQUE_MARKER, None, None))
        entries.sort(key=lambda t: t[0], reverse=True)  # popped from the end
        return entries

    def run(self, root_fd: int) -> None:
        root_st = os.fstat(root_fd)
        cur = os.dup(root_fd)
        try:
            stack = [_Dir(root_st, b"", self.mtime(root_st),
                          self.children(cur, b"", _is_opaque(cur)))]
            while stack:
                top = stack[-1]
                if not top.children:
                    stack.pop()
                    if stack:
                        up = os.open("..", _DIR_FLAGS, dir_fd=cur)
                        os.close(cur)
                        cur = up
                        st = os.fstat(cur)
                        if (st.st_dev, st.st_ino) != stack[-1].ident:
                            raise StoreError(f"directory moved while it was archived: "
                                             f"{self._where(top.prefix)}", path=self._where(top.prefix))
                    continue
                tarname, name, st = top.children.pop()
                rel = top.prefix + tarname
                if name is None:
                    self.emit(Entry(name=rel, type=REGTYPE, mode=0, uid=0, gid=0, mtime=top.mtime))
                elif stat.S_ISDIR(st.st_mode):
                    fd = os.open(name, _DIR_FLAGS, dir_fd=cur)
                    os.close(cur)
                    cur = fd
                    now = os.fstat(cur)
                    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                        raise StoreError(f"directory replaced while it was archived: "
                                         f"{self._where(rel)}", path=self._where(rel))
                    mtime = self.mtime(st)
                    self.emit(Entry(name=rel + b"/", type=DIRTYPE, xattrs=layer_xattrs(cur),
                                    mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid,
                                    mtime=mtime))
                    stack.append(_Dir(st, rel + b"/", mtime,
                                      self.children(cur, rel + b"/", _is_opaque(cur))))
                else:
                    self.entry(cur, name, rel, st)
        finally:
            os.close(cur)

    def entry(self, dir_fd: int, name: bytes, rel: bytes, st: os.stat_result) -> None:
        mode = st.st_mode
        base = dict(mode=stat.S_IMODE(mode), uid=st.st_uid, gid=st.st_gid, mtime=self.mtime(st))
        if is_whiteout(st):
            self.emit(Entry(name=rel, type=REGTYPE, **base))
            return
        if stat.S_ISSOCK(mode):
            return
        if st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            first = self.links.get(key)
            if first is not None:
                self.emit(Entry(name=rel, type=LNKTYPE, linkname=first, **base))
                return
            self.links[key] = rel
        if stat.S_ISREG(mode):
            self.regular(dir_fd, name, rel, st, base)
            return
        xattrs = layer_xattrs(_proc(dir_fd, name))
        if stat.S_ISLNK(mode):
            target = os.readlink(name, dir_fd=dir_fd)
            self.emit(Entry(name=rel, type=SYMTYPE, linkname=target, xattrs=xattrs, **base))
        elif stat.S_ISFIFO(mode):
            self.emit(Entry(name=rel, type=FIFOTYPE, xattrs=xattrs, **base))
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            self.emit(Entry(name=rel, type=CHRTYPE if stat.S_ISCHR(mode) else BLKTYPE,
                            devmajor=os.major(st.st_rdev), devminor=os.minor(st.st_rdev),
                            xattrs=xattrs, **base))
        else:
            raise StoreError(f"cannot archive {os.fsdecode(rel)!r}: unknown file type {mode:o}",
                             path=self._where(rel))


def write_tar(src: Path, out: BinaryIO, *, source_date_epoch: int | None = None) -> None:
    """Write the tree under `src` (overlay upper/lower form) to `out` as an uncompressed
    OCI layer tar. Streams: memory does not grow with file sizes. The walk uses dir fds
    (no PATH_MAX, no recursion, two fds at any depth) and never follows a symlink."""
    root = os.fsencode(os.fspath(src))
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (NotADirectoryError, FileNotFoundError):
        raise StoreError(f"layer source is not a directory: {os.fsdecode(root)}",
                         path=os.fsdecode(root)) from None
    try:
        _TarWriter(out, source_date_epoch, root).run(root_fd)
    finally:
        os.close(root_fd)
    out.write(END_OF_ARCHIVE)
