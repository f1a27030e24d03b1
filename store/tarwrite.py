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
_SKIPPED_XATTR_PREFIXES = (b"trusted.overlay.",)
_SKIPPED_XATTRS = (b"security.selinux",)
CHUNK = 1 << 20


def is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _xattrs(path: bytes) -> dict[bytes, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise
    out = {}
    for name in names:
        key = os.fsencode(name)
        if key.startswith(_SKIPPED_XATTR_PREFIXES) or key in _SKIPPED_XATTRS:
            continue
        try:
            out[key] = os.getxattr(path, name, follow_symlinks=False)
        except OSError as e:
            if e.errno == errno.ENODATA:
                continue  # removed meanwhile
            raise
    return dict(sorted(out.items()))


def _is_opaque(path: bytes) -> bool:
    try:
        return os.getxattr(path, OVERLAY_OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


class _TarWriter:
    def __init__(self, out: BinaryIO, epoch: int | None) -> None:
        self.out = out
        self.epoch = epoch
        self.links: dict[tuple[int, int], bytes] = {}

    def mtime(self, st: os.stat_result) -> int:
        t = st.st_mtime_ns // 10**9  # floor, also for negative times
        return min(t, self.epoch) if self.epoch is not None else t

    def emit(self, e: Entry) -> None:
        self.out.write(encode_entry(e))

    def write_file_data(self, path: bytes, rel: bytes, size: int) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            left = size
            while left:
                chunk = os.read(fd, min(CHUNK, left))
                if not chunk:
                    raise StoreError(f"file shrank while it was archived: {os.fsdecode(rel)}",
                                     path=os.fsdecode(path))
                self.out.write(chunk)
                left -= len(chunk)
            if os.read(fd, 1):
                raise StoreError(f"file grew while it was archived: {os.fsdecode(rel)}",
                                 path=os.fsdecode(path))
        finally:
            os.close(fd)
        self.out.write(padding(size))

    def entry(self, rel: bytes, path: bytes, st: os.stat_result) -> None:
        mode = st.st_mode
        base = dict(mode=stat.S_IMODE(mode), uid=st.st_uid, gid=st.st_gid, mtime=self.mtime(st))
        if is_whiteout(st):
            self.emit(Entry(name=rel, type=REGTYPE, **base))
            return
        if stat.S_ISDIR(mode):
            self.emit(Entry(name=rel + b"/", type=DIRTYPE, xattrs=_xattrs(path), **base))
            self.walk(path, rel + b"/", _is_opaque(path), base["mtime"])
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
        xattrs = _xattrs(path)
        if stat.S_ISREG(mode):
            self.emit(Entry(name=rel, type=REGTYPE, size=st.st_size, xattrs=xattrs, **base))
            self.write_file_data(path, rel, st.st_size)
        elif stat.S_ISLNK(mode):
            self.emit(Entry(name=rel, type=SYMTYPE, linkname=os.readlink(path), xattrs=xattrs, **base))
        elif stat.S_ISFIFO(mode):
            self.emit(Entry(name=rel, type=FIFOTYPE, xattrs=xattrs, **base))
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            self.emit(Entry(name=rel, type=CHRTYPE if stat.S_ISCHR(mode) else BLKTYPE,
                            devmajor=os.major(st.st_rdev), devminor=os.minor(st.st_rdev),
                            xattrs=xattrs, **base))
        else:
            raise StoreError(f"cannot archive {os.fsdecode(rel)!r}: unknown file type {mode:o}",
                             path=os.fsdecode(path))

    def walk(self, dirpath: bytes, prefix: bytes, opaque: bool, mtime: int) -> None:
        """Emit the children of `dirpath` (and its opaque marker) in sorted tar-name order."""
        with os.scandir(dirpath) as it:
            names = [e.name for e in it]
        entries: list[tuple[bytes, bytes | None, os.stat_result | None]] = []
        for name in names:
            path = dirpath + b"/" + name
            st = os.lstat(path)
            if is_whiteout(st):
                tarname = WHITEOUT_PREFIX + name
            elif name.startswith(WHITEOUT_PREFIX):
                raise StoreError(
                    f"cannot archive {os.fsdecode(prefix + name)!r}: names starting with "
                    f"'.wh.' are reserved for whiteouts in OCI layers", path=os.fsdecode(path))
            else:
                tarname = name
            entries.append((tarname, path, st))
        if opaque:
            entries.append((OPAQUE_MARKER, None, None))
        entries.sort(key=lambda t: t[0])
        for tarname, path, st in entries:
            if path is None:
                self.emit(Entry(name=prefix + OPAQUE_MARKER, type=REGTYPE, mode=0, uid=0, gid=0,
                                mtime=mtime))
            else:
                self.entry(prefix + tarname, path, st)


def write_tar(src: Path, out: BinaryIO, *, source_date_epoch: int | None = None) -> None:
    """Write the tree under `src` (overlay upper/lower form) to `out` as an uncompressed
    OCI layer tar. Streams: memory does not grow with file sizes."""
    root = os.fsencode(os.fspath(src))
    st = os.lstat(root)
    if not stat.S_ISDIR(st.st_mode):
        raise StoreError(f"layer source is not a directory: {os.fsdecode(root)}", path=os.fsdecode(root))
    w = _TarWriter(out, source_date_epoch)
    w.walk(root, b"", _is_opaque(root), w.mtime(st))
    out.write(END_OF_ARCHIVE)
