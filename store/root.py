"""`StoreRoot`: the parts of one store directory that every store module works
through — the directories, the database, the blob store, the gc lock and this
process's temp entries — and nothing above them.

The modules that keep images, tags, the build cache, leases, layer dirs, gc, fsck
and du take a StoreRoot; the `Store` facade (store.store) is a StoreRoot that adds
their operations on top. So every module depends only on what is below it.

Layout of ROOT:
    lamina.db            metadata (store.db)
    blobs/sha256/<hex>   content-addressed blobs (store.blobs)
    layers/<short>       extracted layer dirs, overlay lower form (store.layerdirs)
    tmp/                 temp entries, named after their owner process (store.locks)
    locks/, leases/      lock files (store.locks, store.lease)
    gc.lock              writers shared, gc exclusive
"""

from __future__ import annotations

import array
import errno
import fcntl
import functools
import os
import stat
from pathlib import Path

from lamina.store import overlayform
from lamina.store.blobs import BlobStore
from lamina.store.db import Database
from lamina.store.errors import StoreError
from lamina.store.layers import store_compression
from lamina.store.locks import GcLock, Owner, clean_stale_temp

STORE_MODE = 0o700
# made 0700 with the store, before any module makes them with its own mode: what
# layers, step upper dirs, cache mounts, containers and build records live in
PRIVATE_DIRS = ("blobs", "layers", "tmp", "locks", "leases", "cache", "buildinfo", "containers")


def make_private_root(root: Path) -> int | None:
    """Create the store root 0700 from its first mkdir, and tighten an existing one;
    returns the mode it had when it was tightened (None otherwise).

    The store holds what RUN steps made, setuid-root files included, and the
    neighbours of secrets: the root's mode is the one gate that keeps every other
    local user out of all of it (as /var/lib/docker's 0710)."""
    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        root.mkdir(mode=STORE_MODE)
    except FileExistsError:
        link = os.lstat(root)
        if stat.S_ISLNK(link.st_mode) and link.st_uid not in (0, os.geteuid()):
            # another user's link (say /tmp/store -> /etc) would make lamina build its
            # store in, and tighten to 0700, a directory of their choosing
            raise StoreError(f"the store {root} is a symlink of uid {link.st_uid}: refused "
                             "(use the directory it names, if you trust it)", path=str(root))
        st = root.stat()
        if st.st_uid != os.geteuid():
            if (root / overlayform.MARKER).exists():
                overlayform.check_store(root)  # a store of the other form (rootless): say so
            # its owner can rename and replace every entry (layers/, tmp/...) with links
            # of their choosing: lamina's writes and deletes would follow them, and the
            # 0700 gate that keeps setuid files of layers away from other users is theirs
            raise StoreError(f"the store {root} belongs to uid {st.st_uid}, not to this "
                             f"process (uid {os.geteuid()}): its owner could redirect what "
                             "lamina writes there; chown it or use another --root",
                             path=str(root)) from None
        if st.st_mode & 0o077:
            os.chmod(root, STORE_MODE)
            return stat.S_IMODE(st.st_mode)
    return None


_FS_IOC_GETFLAGS = 0x80086601
_FS_IOC_SETFLAGS = 0x40086602
_FS_TOPDIR_FL = 0x00020000


def mark_top_directory(path: Path) -> None:
    """Mark `path` a top of directory hierarchies for ext4's Orlov allocator (`chattr
    +T`): each directory made in it (a step's upper dir, an extraction dir) is placed in
    a block group with free inodes and blocks, not beside its parent. On a filesystem
    whose groups near the store are full, creating a file there searched the groups
    for a free inode every time: 5,000 files took 1.7-2.6 s in ROOT/tmp on the project's
    machines, 0.08 s in a dir made this way. Nothing on other filesystems (no such
    flag) or where the flag cannot be set."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        flags = array.array("i", [0])
        fcntl.ioctl(fd, _FS_IOC_GETFLAGS, flags, True)
        if not flags[0] & _FS_TOPDIR_FL:
            flags[0] |= _FS_TOPDIR_FL
            fcntl.ioctl(fd, _FS_IOC_SETFLAGS, flags, True)
    except OSError:
        pass  # no inode flags here (tmpfs, overlay, ...): nothing to tune
    finally:
        os.close(fd)


class StoreRoot:
    """The directories, database, blobs and locks of the store at `root` (created on
    first use). `file_dedup`: see store.store.Store. `compression`: of the layer blobs
    this store writes (store.layers.store_compression: default the process's setting,
    else zstd)."""

    def __init__(self, root: Path, *, file_dedup: bool = False, compression: str | None = None) -> None:
        self.root = Path(root)
        self.file_dedup = file_dedup
        self.layer_compression = store_compression(compression)
        try:
            self.root_tightened_from = make_private_root(self.root)
            for sub in PRIVATE_DIRS:
                (self.root / sub).mkdir(mode=0o700, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create the store at {self.root}: {e.strerror or e}",
                             path=str(self.root)) from None
        mark_top_directory(self.root / "tmp")  # where every step's upper dir is made
        overlayform.check_store(self.root)  # root's and rootless stores are not mixed
        self.layers_root = self.root / "layers"
        self.tmp_dir = self.root / "tmp"
        self.locks_dir = self.root / "locks"
        self.db = Database(self.root / "lamina.db")
        self.blobs = BlobStore(self.root)
        self.gc_lock = GcLock(self.root / "gc.lock")
        self._owner: Owner | None = None
        clean_stale_temp(self.tmp_dir)

    @property
    def owner(self) -> Owner:
        if self._owner is None or self._owner.pid != os.getpid():
            self._owner = Owner(self.tmp_dir)
        return self._owner

    def temp_path(self, purpose: str) -> Path:
        """A fresh path in ROOT/tmp that is removed if this process dies."""
        return self.owner.temp_path(purpose)

    def writing(self):
        """Hold the gc lock shared: wrap "write bytes, then record them" in it."""
        return self.gc_lock.shared()

    def close(self) -> None:
        if self._owner is not None:
            self._owner.close()
            self._owner = None
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def disk_errors(fn):
    """Turn ENOSPC / EDQUOT raised by a method of a StoreRoot into one clear StoreError."""
    @functools.wraps(fn)
    def wrapper(self: StoreRoot, *a, **kw):
        try:
            return fn(self, *a, **kw)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StoreError(f"disk full: no space left on the filesystem of the store "
                                 f"{self.root}" + (f" (writing {e.filename})" if e.filename else ""),
                                 path=str(e.filename or self.root)) from None
            raise
    return wrapper
