"""Verifying an extracted layer directory against its layer, entry by entry.

ROOT/layers/<name> holds a layer in overlay lower form: extracted from the layer's
blob (store.tarextract), or a build's upper dir adopted by rename (the layer's tar
was written from it by store.tarwrite). Either way it must hold exactly what
extracting the tar gives. `scan_layer_blob` reads a stored layer blob once - hashing
the blob bytes (its digest) and the tar (its diff_id) - and, given a directory,
compares every tar member with it:

- path and type; whiteouts: `.wh.<name>` <-> char device 0/0 `<name>`; opaque dirs:
  `<dir>/.wh..wh..opq` <-> trusted.overlay.opaque=y on `<dir>` (as root: other users
  cannot see trusted.* xattrs);
- mode (not of symlinks, which have none), uid/gid (when running as root: extraction
  sets owners only then), size and sha256 of regular files, symlink targets, rdev of
  devices, xattrs without trusted.overlay.* and security.selinux (neither is archived;
  user.* only on files and dirs, the only inodes the kernel allows them on);
- hard links: the same inode as their target (or, where file dedup re-linked them,
  an identical file);
then walks the directory for what the tar lacks: extra files and whiteouts, opaque
markers. Not compared: mtimes (an adopted upper dir keeps the real times while the
tar clamped them to SOURCE_DATE_EPOCH), atime/ctime, link counts (file dedup), and
sockets (never archived).

Tar rules are those of extraction: a later member of the same path replaces an
earlier one (the last one's verdict counts), parents the tar does not list are made
(they must exist, nothing more), AUFS `.wh..wh.*` bookkeeping is skipped.

Memory: a set of the member paths and the differences found; file data is streamed
and hashed in chunks; the walks use dir fds (no PATH_MAX), opened component by
component without following symlinks.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from lamina.store import overlayform
from lamina.store.blobs import BlobStore
from lamina.store.compression import open_decompressed
from lamina.store.errors import StoreError
from lamina.store.layers import HashingReader
from lamina.store.tarextract import normalise
from lamina.store.tarwrite import LAYER_XATTRS, layer_xattrs
from lamina.store.tarformat import (BLKTYPE, CHRTYPE, DIRTYPE, FIFOTYPE, LNKTYPE, REGTYPE, SYMTYPE,
                             Entry, TarReader)

WHITEOUT_PREFIX = b".wh."
OPAQUE_MARKER = b".wh..wh..opq"
RESERVED_PREFIX = b".wh..wh."
OVERLAY_OPAQUE_XATTR = os.fsencode(overlayform.opaque_xattr())  # user.overlay.opaque rootless
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
CHUNK = 1 << 20

Components = tuple[bytes, ...]


@dataclass(frozen=True)
class Difference:
    """One path where the directory is not what the layer says."""

    path: str  # "/etc/motd": the path inside the layer
    what: str

    def __str__(self) -> str:
        return f"{self.path}: {self.what}"


@dataclass(frozen=True)
class LayerScan:
    """What reading one layer blob found."""

    digest: str                 # sha256 of the blob's bytes as read
    diff_id: str | None         # sha256 of its tar; None when it could not be decompressed
    error: str | None           # why the blob could not be read, or the dir not compared
    differences: tuple[Difference, ...] | None  # None: no directory compared
    members: int = 0            # tar members compared


def scan_layer_blob(blobs: BlobStore, digest: str, layer_dir: Path | None = None) -> LayerScan:
    """Read stored layer blob `digest` once: its digest, its diff_id and (with
    `layer_dir`) the differences between the directory and the tar."""
    with blobs.open(digest) as f:
        raw = HashingReader(f)
        diff_id = error = None
        differences: tuple[Difference, ...] | None = None
        members = 0
        try:
            tar = HashingReader(open_decompressed(raw))  # type: ignore[arg-type]
            if layer_dir is not None:
                try:
                    found, members = compare_tar(tar, layer_dir)
                    differences = tuple(found)
                except StoreError as e:
                    error = f"its tar cannot be read: {e}"
            tar.drain()
            diff_id = tar.digest()
        except StoreError as e:  # corrupt compressed data
            error = f"it cannot be decompressed: {e}"
        raw.drain()
    return LayerScan(raw.digest(), diff_id, error, differences, members)


def compare_tar(stream: BinaryIO, layer_dir: Path) -> tuple[list[Difference], int]:
    """(differences, members compared) between the uncompressed layer tar `stream`
    (read up to its end-of-archive marker) and `layer_dir`."""
    reader = TarReader(stream)
    cmp = _Comparer(layer_dir)
    members = 0
    try:
        while True:
            e = reader.next()
            if e is None:
                break
            members += 1
            cmp.member(e, reader)
        cmp.walk_extras()
    finally:
        cmp.close()
    return cmp.differences(), members


def _show(rel: bytes) -> str:
    return "/" + os.fsdecode(rel)


def _join(comps: Components) -> bytes:
    return b"/".join(comps)


def _octal(mode: int) -> str:
    return f"{mode:04o}"


def _kind(st: os.stat_result) -> str:
    m = st.st_mode
    if stat.S_ISCHR(m) and st.st_rdev == 0:
        return "a whiteout"
    for test, name in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISLNK, "a symlink"), (stat.S_ISCHR, "a char device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a fifo"),
                       (stat.S_ISSOCK, "a socket")):
        if test(m):
            return name
    return "of an unknown type"


_EXPECTED_KIND = {REGTYPE: (stat.S_ISREG, "a regular file"), DIRTYPE: (stat.S_ISDIR, "a directory"),
                  SYMTYPE: (stat.S_ISLNK, "a symlink"), CHRTYPE: (stat.S_ISCHR, "a char device"),
                  BLKTYPE: (stat.S_ISBLK, "a block device"), FIFOTYPE: (stat.S_ISFIFO, "a fifo")}


def _wanted_xattrs(e: Entry) -> dict[bytes, bytes]:
    out = {}
    for k, v in e.xattrs.items():
        if k in LAYER_XATTRS:  # what a layer dir shows of a tar's xattrs (store.tarwrite)
            out[k] = v
    return out


def _xattr_issue(want: dict[bytes, bytes], got: dict[bytes, bytes]) -> str | None:
    if want == got:
        return None
    parts = []
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    changed = sorted(k for k in set(want) & set(got) if want[k] != got[k])
    if missing:
        parts.append("missing " + ", ".join(os.fsdecode(k) for k in missing))
    if extra:
        parts.append("extra " + ", ".join(os.fsdecode(k) for k in extra))
    if changed:
        parts.append("different " + ", ".join(os.fsdecode(k) for k in changed))
    return "xattrs differ (" + "; ".join(parts) + ")"


def _sha256_fd(fd: int) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    while True:
        chunk = os.read(fd, CHUNK)
        if not chunk:
            return h.hexdigest(), n
        h.update(chunk)
        n += len(chunk)


class _Comparer:
    def __init__(self, layer_dir: Path) -> None:
        self.root_fd = os.open(layer_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.as_root = os.geteuid() == 0
        self.seen: dict[bytes, bool] = {b"": True}  # member paths (as on disk) -> is a directory
        self.opaque: set[bytes] = set()             # dirs the tar marks opaque
        self.found: dict[bytes, list[str]] = {}     # path -> what differs, in tar order
        self._cc: Components | None = None          # the dir fd cache (one dir)
        self._cfd = -1

    def close(self) -> None:
        self._drop()
        os.close(self.root_fd)

    def differences(self) -> list[Difference]:
        return [Difference(_show(rel), "; ".join(what)) for rel, what in self.found.items()]

    # -- walking ---------------------------------------------------------------------

    def _drop(self) -> None:
        if self._cc is not None:
            os.close(self._cfd)
            self._cc, self._cfd = None, -1

    def dir_fd(self, comps: Components) -> int | None:
        """A borrowed fd (valid until the next call) of directory `comps`, opened
        without following symlinks; None when it is missing or not a directory."""
        cc = self._cc
        if cc is not None and comps[:len(cc)] == cc:
            if len(cc) == len(comps):
                return self._cfd
            fd, start, owned = self._cfd, len(cc), True
            self._cc, self._cfd = None, -1
        else:
            self._drop()
            if not comps:
                return self.root_fd
            fd, start, owned = self.root_fd, 0, False
        for comp in comps[start:]:
            try:
                nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                if owned:
                    os.close(fd)
                if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    return None
                raise
            if owned:
                os.close(fd)
            fd, owned = nfd, True
        self._cc, self._cfd = comps, fd
        return fd

    def lstat(self, comps: Components) -> tuple[int, os.stat_result] | None:
        """(parent fd, stat) of `comps`, or None when it does not exist."""
        pfd = self.dir_fd(comps[:-1])
        if pfd is None:
            return None
        try:
            return pfd, os.lstat(comps[-1], dir_fd=pfd)
        except (FileNotFoundError, NotADirectoryError):
            return None

    # -- verdicts --------------------------------------------------------------------

    def _verdict(self, rel: bytes, issues: list[str]) -> None:
        """The verdict on `rel` of its last member (an earlier one is replaced)."""
        self.found.pop(rel, None)
        if issues:
            self.found[rel] = issues

    def _add(self, rel: bytes, issue: str) -> None:
        self.found.setdefault(rel, []).append(issue)

    def _replaced(self, rel: bytes, is_dir: bool) -> None:
        """A member at `rel`: when it replaces a directory of an earlier member by a
        non-directory, extraction removed that directory's content too."""
        if self.seen.get(rel) and not is_dir:
            prefix = rel + b"/"
            for k in [k for k in self.found if k.startswith(prefix)]:
                del self.found[k]
            self.opaque = {d for d in self.opaque if d != rel and not d.startswith(prefix)}
        self.seen[rel] = is_dir

    # -- members ---------------------------------------------------------------------

    def member(self, e: Entry, reader: TarReader) -> None:
        try:
            comps = normalise(e.name, e.name)
        except StoreError as err:
            self._add(os.fsencode(os.fsdecode(e.name).lstrip("/")), f"the layer's member is unusable: {err}")
            return
        if any(c.startswith(RESERVED_PREFIX) and c != OPAQUE_MARKER for c in comps):
            return
        if OPAQUE_MARKER in comps[:-1] or (not comps and e.type != DIRTYPE):
            self._add(_join(comps), "the layer's member is unusable (inside an opaque marker, or a "
                                    "root that is not a directory)")
            return
        for i in range(len(comps) - 1, 0, -1):  # implied parents exist as directories
            parent = _join(comps[:i])
            if parent in self.seen:
                break
            self.seen[parent] = True
        last = comps[-1] if comps else b""
        if last == OPAQUE_MARKER:
            self.opaque.add(_join(comps[:-1]))
            return
        if last.startswith(WHITEOUT_PREFIX):
            comps = comps[:-1] + (last[len(WHITEOUT_PREFIX):],)
            rel = _join(comps)
            self._replaced(rel, False)
            self._verdict(rel, self._check_whiteout(e, comps))
            return
        rel = _join(comps)
        self._replaced(rel, e.type == DIRTYPE)
        try:
            issues = self._check(e, comps, reader)
        except OSError as err:
            issues = [f"cannot be read: {err.strerror or err}"]
        self._verdict(rel, issues)

    def _owner_mode(self, e: Entry, st: os.stat_result, *, mode: bool = True) -> list[str]:
        issues = []
        if mode and stat.S_IMODE(st.st_mode) != e.mode & 0o7777:
            issues.append(f"mode {_octal(stat.S_IMODE(st.st_mode))}, the layer has {_octal(e.mode & 0o7777)}")
        if self.as_root and (st.st_uid, st.st_gid) != (e.uid, e.gid):
            issues.append(f"owner {st.st_uid}:{st.st_gid}, the layer has {e.uid}:{e.gid}")
        return issues

    def _check_whiteout(self, e: Entry, comps: Components) -> list[str]:
        if not comps[-1]:
            return ["the layer's member is a whiteout without a name"]
        found = self.lstat(comps)
        if found is None:
            return ["whiteout missing (the layer has one)"]
        _, st = found
        if not (stat.S_ISCHR(st.st_mode) and st.st_rdev == 0):
            return [f"is {_kind(st)}, the layer has a whiteout"]
        return self._owner_mode(e, st)

    def _check(self, e: Entry, comps: Components, reader: TarReader) -> list[str]:
        if e.type == LNKTYPE:
            return self._check_hardlink(e, comps)
        kind = _EXPECTED_KIND.get(e.type)
        if kind is None:
            return [f"the layer's member has an unsupported type {e.type!r}"]
        if not comps:  # the root directory itself
            st = os.fstat(self.root_fd)
            return self._owner_mode(e, st) + self._xattrs(e, self.root_fd)
        found = self.lstat(comps)
        if found is None:
            return [f"missing (the layer has {kind[1]})"]
        pfd, st = found
        if not kind[0](st.st_mode) or (e.type == CHRTYPE and st.st_rdev == 0):
            return [f"is {_kind(st)}, the layer has {kind[1]}"]
        name = comps[-1]
        issues = self._owner_mode(e, st, mode=e.type != SYMTYPE)
        if e.type == REGTYPE:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
            try:
                if st.st_size != e.size:
                    issues.append(f"size {st.st_size}, the layer has {e.size}")
                else:
                    want = hashlib.sha256()
                    reader.read_data(want.update)
                    got, _ = _sha256_fd(fd)
                    if got != want.hexdigest():
                        issues.append(f"content sha256:{got[:12]}..., the layer has "
                                      f"sha256:{want.hexdigest()[:12]}...")
                issues += self._xattrs(e, fd)
            finally:
                os.close(fd)
        elif e.type == DIRTYPE:
            fd = os.open(name, _DIR_FLAGS, dir_fd=pfd)
            try:
                issues += self._xattrs(e, fd)
            finally:
                os.close(fd)
        else:
            if e.type == SYMTYPE:
                target = os.readlink(name, dir_fd=pfd)
                if target != e.linkname:
                    issues.append(f"symlink to {os.fsdecode(target)!r}, the layer has "
                                  f"{os.fsdecode(e.linkname)!r}")
            elif e.type in (CHRTYPE, BLKTYPE):
                want_dev = (e.devmajor, e.devminor)
                got_dev = (os.major(st.st_rdev), os.minor(st.st_rdev))
                if got_dev != want_dev:
                    issues.append(f"device {got_dev[0]}:{got_dev[1]}, the layer has {want_dev[0]}:{want_dev[1]}")
            issues += self._xattrs(e, b"/proc/self/fd/%d/" % pfd + name)
        return issues

    def _xattrs(self, e: Entry, target: int | bytes) -> list[str]:
        issue = _xattr_issue(_wanted_xattrs(e), layer_xattrs(target))
        return [issue] if issue else []

    def _check_hardlink(self, e: Entry, comps: Components) -> list[str]:
        try:
            tcomps = normalise(e.linkname, e.name)
        except StoreError as err:
            return [f"the layer's member is unusable: {err}"]
        want = f"a hard link to {_show(_join(tcomps))}"
        found = self.lstat(comps)
        if found is None:
            return [f"missing (the layer has {want})"]
        pfd, st = found
        if stat.S_ISDIR(st.st_mode):
            return [f"is a directory, the layer has {want}"]
        tfound = self.lstat(tcomps)
        if tfound is None:
            return [f"the layer has {want}, which is missing"]
        tpfd, tst = tfound
        if (st.st_dev, st.st_ino) == (tst.st_dev, tst.st_ino):
            return []
        # file dedup may have re-linked one name only (too many links): same file?
        same = (stat.S_IFMT(st.st_mode) == stat.S_IFMT(tst.st_mode) and st.st_mode == tst.st_mode
                and (st.st_uid, st.st_gid, st.st_size, st.st_rdev) ==
                (tst.st_uid, tst.st_gid, tst.st_size, tst.st_rdev))
        if same and stat.S_ISREG(st.st_mode):
            same = self._file_sha(tcomps) == self._file_sha(comps)
        elif same and stat.S_ISLNK(st.st_mode):
            same = self._readlink(tcomps) == self._readlink(comps)
        return [] if same else [f"is not {want}"]

    def _file_sha(self, comps: Components) -> str | None:
        pfd = self.dir_fd(comps[:-1])
        if pfd is None:
            return None
        fd = os.open(comps[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
        try:
            return _sha256_fd(fd)[0]
        finally:
            os.close(fd)

    def _readlink(self, comps: Components) -> bytes | None:
        pfd = self.dir_fd(comps[:-1])
        return None if pfd is None else os.readlink(comps[-1], dir_fd=pfd)

    # -- what the tar lacks ----------------------------------------------------------

    def walk_extras(self) -> None:
        """Walk the directory: entries no member made, and opaque markers."""
        checked_opaque: set[bytes] = set()
        stack: list[Components] = [()]
        while stack:
            comps = stack.pop()
            rel = _join(comps)
            fd = self.dir_fd(comps)
            if fd is None:
                continue
            try:
                is_opaque = os.getxattr(fd, OVERLAY_OPAQUE_XATTR) == b"y"
            except OSError:
                is_opaque = False
            # trusted.* xattrs are invisible to other users: only root can compare them
            if self.as_root and is_opaque != (rel in self.opaque):
                self._add(rel, "opaque (trusted.overlay.opaque=y), the layer has no .wh..wh..opq" if is_opaque
                          else "not opaque (no trusted.overlay.opaque=y), the layer has .wh..wh..opq")
            checked_opaque.add(rel)
            children: list[tuple[bytes, os.stat_result]] = []
            with os.scandir(fd) as it:
                for entry in it:
                    children.append((os.fsencode(entry.name), entry.stat(follow_symlinks=False)))
            subdirs = []
            for name, st in sorted(children, key=lambda c: c[0]):
                if stat.S_ISSOCK(st.st_mode):
                    continue  # never archived
                crel = rel + b"/" + name if rel else name
                if crel not in self.seen:
                    self._add(crel, f"not in the layer (the directory has {_kind(st)})")
                elif stat.S_ISDIR(st.st_mode):
                    subdirs.append(comps + (name,))
            stack.extend(reversed(subdirs))
        for rel in sorted(self.opaque - checked_opaque) if self.as_root else ():
            self._add(rel, "missing (the layer has an opaque directory)")
