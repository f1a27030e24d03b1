"""The stat cache: a persistent (SQLite, WAL) map (device, inode) -> (size, mtime_ns,
ctime_ns, sha256) so an unchanged context file is never read twice; read in one query
at the first lookup, written only for entries that changed. Entries recorded too
close to the file's last change ("racy", as in git) are not trusted: the next lookup
re-reads the file once. Content digests are sha256 of the bytes; times never enter a
digest, they only say whether the recorded digest still holds.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import threading
import time
from pathlib import Path

from lamina.builder.errors import BuildError

__all__ = ["StatCache"]

_READ_CHUNK = 1 << 20


def _stat_key(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class StatCache:
    """(device, inode, size, mtime_ns, ctime_ns) -> sha256 of the content.

    Persistent in `<directory>/statcache.db` (SQLite, WAL, busy timeout) when a
    directory is given, else in memory only. Several processes may share one
    directory. A lost or corrupt database only costs re-reading files.

    `files_hashed` / `bytes_hashed` count the files actually read by this object.
    """

    DB_NAME = "statcache.db"

    def __init__(self, directory: str | os.PathLike | None = None, *,
                 racy_window_ns: int = 50_000_000, batch: int = 512) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.racy_window_ns = racy_window_ns
        self.files_hashed = 0
        self.bytes_hashed = 0
        self._batch = batch
        self._lock = threading.Lock()
        self._mem: dict[tuple[int, int], tuple[int, int, int, str, int]] = {}
        self._pending: dict[tuple[int, int], tuple[int, int, int, str, int]] = {}
        self._db: sqlite3.Connection | None = None
        self._loaded = False
        if self.directory is not None:
            self._db = self._open_db()

    # -- persistence -----------------------------------------------------------------

    def _open_db(self) -> sqlite3.Connection:
        assert self.directory is not None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BuildError(f"cannot create stat cache directory {self.directory}: {e.strerror}") from None
        path = self.directory / self.DB_NAME
        for attempt in range(2):
            try:
                db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
                db.execute("PRAGMA busy_timeout=30000")
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute(
                    "CREATE TABLE IF NOT EXISTS files ("
                    " dev INTEGER NOT NULL, ino INTEGER NOT NULL, size INTEGER NOT NULL,"
                    " mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,"
                    " digest TEXT NOT NULL, hashed_at_ns INTEGER NOT NULL,"
                    " PRIMARY KEY (dev, ino))")
                db.execute("SELECT count(*) FROM files WHERE dev = -1").fetchone()
                return db
            except sqlite3.DatabaseError:
                if attempt:
                    raise BuildError(f"stat cache {path} is unusable") from None
                # corrupt: move it aside (atomic rename); a cache is disposable
                for suffix in ("", "-wal", "-shm"):
                    try:
                        os.replace(f"{path}{suffix}", f"{path}{suffix}.corrupt-{os.getpid()}")
                    except FileNotFoundError:
                        pass
        raise AssertionError("unreachable")

    def flush(self) -> None:
        """Write pending entries in one transaction."""
        with self._lock:
            if self._db is None or not self._pending:
                self._pending.clear()
                return
            rows = [(dev, ino, *v) for (dev, ino), v in self._pending.items()]
            self._pending.clear()
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany("INSERT OR REPLACE INTO files VALUES (?,?,?,?,?,?,?)", rows)
                self._db.execute("COMMIT")
            except sqlite3.Error:
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                # losing cache entries is harmless; the files get read again next time

    def close(self) -> None:
        self.flush()
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> "StatCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- lookups ---------------------------------------------------------------------

    def _load(self) -> None:
        """Read every recorded entry in one query (a walk of a 5,000-file context then
        costs one SELECT, not 5,000). Called under the lock, once."""
        self._loaded = True
        if self._db is None:
            return
        try:
            rows = self._db.execute(
                "SELECT dev, ino, size, mtime_ns, ctime_ns, digest, hashed_at_ns FROM files").fetchall()
        except sqlite3.Error:
            return  # an unreadable cache only costs re-reading files
        mem = self._mem
        for dev, ino, *row in rows:
            mem.setdefault((dev, ino), tuple(row))  # entries of this process win

    def lookup(self, st: os.stat_result) -> str | None:
        """The digest recorded for exactly this stat, unless missing or racy."""
        key = (st.st_dev, st.st_ino)
        with self._lock:
            if not self._loaded:
                self._load()
            row = self._pending.get(key) or self._mem.get(key)
        if row is None:
            return None
        size, mtime_ns, ctime_ns, digest, hashed_at = row
        if (size, mtime_ns, ctime_ns) != (st.st_size, st.st_mtime_ns, st.st_ctime_ns):
            return None
        if hashed_at - max(mtime_ns, ctime_ns) <= self.racy_window_ns:
            return None  # the file may have changed again within the same timestamp tick
        return digest

    def store(self, st: os.stat_result, digest: str, hashed_at_ns: int) -> None:
        key = (st.st_dev, st.st_ino)
        row = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, digest, hashed_at_ns)
        with self._lock:
            self._mem[key] = row
            if self._db is not None:
                self._pending[key] = row
            flush = len(self._pending) >= self._batch
        if flush:
            self.flush()

    def digest_fd(self, fd: int, st: os.stat_result | None = None) -> tuple[str, os.stat_result]:
        """sha256 of the regular file open on `fd` (read from its start), from the
        cache when its stat is known. Re-reads when the file changed while read."""
        if st is None:
            st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BuildError(f"not a regular file (mode {st.st_mode:o})")
        cached = self.lookup(st)
        if cached is not None:
            return cached, st
        for _ in range(5):
            h = hashlib.sha256()
            n = 0
            os.lseek(fd, 0, os.SEEK_SET)
            while True:
                chunk = os.read(fd, _READ_CHUNK)
                if not chunk:
                    break
                h.update(chunk)
                n += len(chunk)
            hashed_at = time.time_ns()
            after = os.fstat(fd)
            with self._lock:
                self.files_hashed += 1
                self.bytes_hashed += n
            if _stat_key(after) == _stat_key(st) and n == st.st_size:
                digest = "sha256:" + h.hexdigest()
                self.store(st, digest, hashed_at)
                return digest, st
            st = after  # changed while we read it: read again
        raise BuildError("file keeps changing while it is being read")
