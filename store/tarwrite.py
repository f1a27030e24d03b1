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
- xattrs: only security.capability, as PAX SCHILY.xattr.security.capability - the one
  xattr docker's and BuildKit's layer tars carry (containerd's archive ChangeWriter,
  moby's pkg/archive). user.*, ACLs, trusted.* (overlay bookkeeping among them) and
  security.selinux stay on the files of a step's snapshot (later steps see them, as in
  BuildKit) but are not image content, so the image is docker's.

In a user namespace (rootless lamina) the overlay form uses user.overlay.* instead of
trusted.overlay.* (store.overlayform): the opaque marker is user.overlay.opaque=y and
user.overlay.* is the bookkeeping left out, so a rootless and a root build of one
tree give the same tar.

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
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO

from lamina.store import overlayform
from lamina.store.errors import StoreError
from lamina.store.tarextract import normalise
from lamina.store.tarformat import (BLKTYPE, CHRTYPE, DIRTYPE, END_OF_ARCHIVE, FIFOTYPE, LNKTYPE,
                             REGTYPE, SYMTYPE, Entry, encode_entry, padding)

WHITEOUT_PREFIX = b".wh."
OPAQUE_MARKER = b".wh..wh..opq"
# decided once per process: trusted.overlay.* as root, user.overlay.* in a user namespace
OVERLAY_OPAQUE_XATTR = overlayform.opaque_xattr()
LAYER_XATTRS = frozenset({b"security.capability"})  # what a layer tar carries
CHUNK = 1 << 20


def is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _proc(dir_fd: int, name: bytes) -> bytes:
    """A path naming `name` in the directory open as `dir_fd`, for the calls that have
    no *at() form (xattrs): the magic link pins the directory, the last component is
    looked up without following."""
    return b"/proc/self/fd/%d/" % dir_fd + name


def layer_xattrs(path: bytes | int) -> dict[bytes, bytes]:
    """The xattrs a layer carries for `path` (an fd, or a path not followed), sorted:
    LAYER_XATTRS only."""
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
        if key not in LAYER_XATTRS:
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
        self.children = children  # (tarname, name | None), sorted, consumed from the end


class _TarWriter:
    def __init__(self, out: BinaryIO, epoch: int | None, root: bytes,
                 clamped: tuple[BinaryIO, int] | None = None) -> None:
        self.out = out
        self.epoch = epoch
        self.root = root
        self.links: dict[tuple[int, int], bytes] = {}
        # a second tar of the same walk, every mtime clamped to an epoch (store.layertimes)
        self.clamped_out, self.clamp_epoch = clamped if clamped is not None else (None, 0)
        self.clamped = 0  # entries whose mtime the second tar lowered

    def mtime(self, st: os.stat_result) -> int:
        t = st.st_mtime_ns // 10**9  # floor, also for negative times
        return min(t, self.epoch) if self.epoch is not None else t

    def emit(self, e: Entry) -> None:
        self.out.write(encode_entry(e))
        if self.clamped_out is not None:
            if e.mtime > self.clamp_epoch:
                e = replace(e, mtime=self.clamp_epoch)
                self.clamped += 1
            self.clamped_out.write(encode_entry(e))

    def data(self, chunk) -> None:
        self.out.write(chunk)
        if self.clamped_out is not None:
            self.clamped_out.write(chunk)

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
                self.data(chunk)
                left -= len(chunk)
            if os.read(fd, 1):
                raise StoreError(f"file grew while it was archived: {os.fsdecode(rel)}",
                                 path=self._where(rel))
        finally:
            os.close(fd)
        self.data(padding(st.st_size))

    def children(self, dir_fd: int, prefix: bytes, opaque: bool) -> list:
        with os.scandir(dir_fd) as it:
            names = [os.fsencode(e.name) for e in it]
        entries: list = []
        for name in names:
            # only the names are kept (a stat result is ~0.7 KiB: 35 MiB for a directory
            # of 50,000 files); the entry is stat'ed again when its turn comes
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
            entries.append((tarname, name))
        if opaque:
            entries.append((OPAQUE_MARKER, None))
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
                tarname, name = top.children.pop()
                rel = top.prefix + tarname
                if name is None:
                    self.emit(Entry(name=rel, type=REGTYPE, mode=0, uid=0, gid=0, mtime=top.mtime))
                    continue
                st = os.lstat(name, dir_fd=cur)
                if is_whiteout(st) != (tarname != name):
                    raise StoreError(f"file replaced while it was archived: {self._where(rel)}",
                                     path=self._where(rel))
                if stat.S_ISDIR(st.st_mode):
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


def write_tar(src: Path, out: BinaryIO, *, source_date_epoch: int | None = None,
              clamped: tuple[BinaryIO, int] | None = None) -> int:
    """Write the tree under `src` (overlay upper/lower form) to `out` as an uncompressed
    OCI layer tar. Streams: memory does not grow with file sizes. The walk uses dir fds
    (no PATH_MAX, no recursion, two fds at any depth) and never follows a symlink.

    `clamped` = (out2, epoch): in the same walk, also write to out2 the tar that
    `source_date_epoch=epoch` would give (every mtime clamped; the same bytes as
    store.layertimes.clamp_tar of the first); returns how many mtimes that lowered."""
    root = os.fsencode(os.fspath(src))
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (NotADirectoryError, FileNotFoundError):
        raise StoreError(f"layer source is not a directory: {os.fsdecode(root)}",
                         path=os.fsdecode(root)) from None
    writer = _TarWriter(out, source_date_epoch, root, clamped)
    try:
        writer.run(root_fd)
    finally:
        os.close(root_fd)
    out.write(END_OF_ARCHIVE)
    if clamped is not None:
        clamped[0].write(END_OF_ARCHIVE)
    return writer.clamped


def _filtered_xattrs(xattrs: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """The xattrs of a tar entry that its extracted file carries into a layer tar."""
    return dict(sorted((k, v) for k, v in xattrs.items() if k in LAYER_XATTRS))


class TarMirror:
    """While a tar is extracted (store.tarextract), writes to `out` the tar that
    write_tar would write of the extracted tree - without walking and re-reading it.

    This holds only for an input already in lamina's form: members in write_tar's order
    (strictly increasing component tuples: no duplicates), every parent directory an
    earlier member, no whiteout of an existing or later name, no opaque marker at the
    root. Each entry is written from the tar header before its file exists, and then
    checked against the file as extracted (stat and xattrs, read as write_tar reads
    them; directories after their final mode and mtime are set). At the first member
    that breaks a rule or a check, the mirror stops (`active` False): the caller
    discards what it wrote and runs write_tar on the tree. So the result is always
    byte-identical to write_tar of the tree; the mirror only saves the second pass."""

    def __init__(self, out: BinaryIO, *, source_date_epoch: int | None = None) -> None:
        self.out = out
        self.epoch = source_date_epoch
        self.active = True
        self.reason = ""
        self._last: tuple[bytes, ...] | None = None
        self._root_seen = False
        self._dirs: dict[tuple[bytes, ...], tuple] = {}  # comps -> expected (mode, uid, gid, mtime, xattrs)
        # non-dir comps -> (first name, mode, uid, gid, mtime) of its inode, for hard links
        self._links: dict[tuple[bytes, ...], tuple[bytes, int, int, int, int]] = {}
        self._whiteouts: set[tuple[bytes, ...]] = set()  # names whited out
        self._expect: tuple | None = None  # the non-directory member just written, to check

    def stop(self, reason: str) -> bool:
        self.active = False
        self.reason = reason
        self._dirs.clear()
        self._links.clear()
        self._whiteouts.clear()
        return False

    def _mtime(self, mtime_ns: int) -> int:
        t = mtime_ns // 10**9
        return min(t, self.epoch) if self.epoch is not None else t

    def member(self, comps: tuple[bytes, ...], e: Entry) -> bool:
        """Write the entry of member `e` (path `comps`, normalised). True when the member
        is a regular file whose data must follow through data()/end_data()."""
        self._expect = None
        if not self.active:
            return False
        if not comps:  # the root: not an entry of write_tar's tar
            if self._root_seen or self._last is not None:
                return self.stop("root directory member not first")
            self._root_seen = True
            return False
        if self._last is not None and comps <= self._last:
            return self.stop("members not in sorted order")
        self._last = comps
        parent = comps[:-1]
        if parent and parent not in self._dirs:
            return self.stop("parent directory is not a member")
        if comps in self._whiteouts:
            return self.stop("whited-out name reused")
        last = comps[-1]
        rel = b"/".join(comps)
        if last == OPAQUE_MARKER:
            if not parent:
                return self.stop("opaque root")
            self.out.write(encode_entry(Entry(name=rel, type=REGTYPE, mode=0, uid=0, gid=0,
                                              mtime=self._dirs[parent][3])))
            return False
        mode = e.mode & 0o7777
        mtime = self._mtime(e.mtime_ns)
        if last.startswith(WHITEOUT_PREFIX):
            target = parent + (last[len(WHITEOUT_PREFIX):],)
            if target in self._links or target in self._dirs or target in self._whiteouts:
                return self.stop("whiteout of an earlier member")
            self._whiteouts.add(target)
            self.out.write(encode_entry(Entry(name=rel, type=REGTYPE, mode=mode, uid=e.uid,
                                              gid=e.gid, mtime=mtime)))
            self._expect = ("whiteout", mode, e.uid, e.gid, mtime, 0, 0, {})
            return False
        xattrs = _filtered_xattrs(e.xattrs)
        if e.type == DIRTYPE:
            self._dirs[comps] = (mode, e.uid, e.gid, mtime, xattrs)
            self.out.write(encode_entry(Entry(name=rel + b"/", type=DIRTYPE, xattrs=xattrs, mode=mode,
                                              uid=e.uid, gid=e.gid, mtime=mtime)))
            return False
        if e.type == LNKTYPE:
            first = self._links.get(normalise(e.linkname, e.name))
            if first is None:
                return self.stop("hard link to an unknown member")
            self._links[comps] = first
            name, mode, uid, gid, mtime = first
            self.out.write(encode_entry(Entry(name=rel, type=LNKTYPE, linkname=name, mode=mode,
                                              uid=uid, gid=gid, mtime=mtime)))
            return False
        if e.type == SYMTYPE:
            mode = 0o777  # what lstat says of any symlink on Linux
        base = dict(mode=mode, uid=e.uid, gid=e.gid, mtime=mtime)
        self._links[comps] = (rel, mode, e.uid, e.gid, mtime)
        kind = e.type
        dev = (e.devmajor, e.devminor) if kind in (CHRTYPE, BLKTYPE) else (0, 0)
        size = e.size if kind == REGTYPE else 0
        self._expect = (kind, mode, e.uid, e.gid, mtime, size, dev, xattrs)
        self.out.write(encode_entry(Entry(name=rel, type=kind, size=size,
                                          linkname=e.linkname if kind == SYMTYPE else b"",
                                          devmajor=dev[0], devminor=dev[1], xattrs=xattrs, **base)))
        return kind == REGTYPE

    def data(self, chunk) -> None:
        if self.active:
            self.out.write(chunk)

    def end_data(self, size: int) -> None:
        if self.active:
            self.out.write(padding(size))

    @property
    def checking(self) -> bool:
        """True when the member just extracted is to be passed to check()."""
        return self._expect is not None and self.active

    def check(self, st: os.stat_result, where: bytes | int) -> None:
        """Compare the non-directory just extracted (lstat `st`; `where` an fd or a path
        not followed, for its xattrs) with what member() wrote for it."""
        if not self.checking:
            return
        xattrs = layer_xattrs(where)
        assert self._expect is not None
        kind, mode, uid, gid, mtime, size, dev, want_x = self._expect
        self._expect = None
        m = st.st_mode
        type_ok = {"whiteout": is_whiteout(st), REGTYPE: stat.S_ISREG(m) and st.st_size == size,
                   SYMTYPE: stat.S_ISLNK(m), FIFOTYPE: stat.S_ISFIFO(m),
                   CHRTYPE: stat.S_ISCHR(m) and not is_whiteout(st), BLKTYPE: stat.S_ISBLK(m)}.get(kind, False)
        if kind in (CHRTYPE, BLKTYPE):
            type_ok = type_ok and (os.major(st.st_rdev), os.minor(st.st_rdev)) == dev
        if not (type_ok and stat.S_IMODE(m) == mode and st.st_uid == uid and st.st_gid == gid
                and self._mtime(st.st_mtime_ns) == mtime and xattrs == want_x):
            self.stop("extracted file differs from its tar header")

    def check_dir(self, comps: tuple[bytes, ...], fd: int) -> None:
        """Compare directory `fd`, after its final mode and mtime, with its entry."""
        if not self.active or not comps:
            return
        want = self._dirs.get(comps)
        st = os.fstat(fd)
        got = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, self._mtime(st.st_mtime_ns),
               layer_xattrs(fd))
        if want != got:
            self.stop("extracted directory differs from its tar header")

    def finish(self) -> None:
        if self.active:
            self.out.write(END_OF_ARCHIVE)
