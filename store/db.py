"""The store's metadata: one SQLite database (standard library), ROOT/lamina.db.

Tables: images (manifest digest -> config digest, sizes), image_layers (the
ordered layers of each manifest), tags (canonical reference -> manifest digest),
layers (diff_id -> extracted directory name), layer_blobs (compressed blob digest
-> diff_id, media type, sizes), cache (build cache key -> result), leases and
lease_items (what running builds hold), content (the file-dedup index),
repo_digests, remote_blobs (store.remoteblobs), blob_locations (store.bloblocations).

The database runs in WAL mode (readers never block the writer, and never see a
half-done update), with a busy timeout so that several lamina processes can share
it, and `synchronous=FULL` so a committed update survives a crash. Every update is
one `BEGIN IMMEDIATE` transaction (`Database.write()`): taking the write lock at the
start means two writers never deadlock on a lock upgrade. A connection belongs to
the process that opened it: after a fork the child opens its own.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from lamina.store.errors import StoreError

SCHEMA_VERSION = 4  # 2: repo_digests, 3: remote_blobs, 4: blob_locations
BUSY_TIMEOUT_S = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS images (
    manifest_digest TEXT PRIMARY KEY,
    config_digest   TEXT NOT NULL,
    media_type      TEXT NOT NULL,
    manifest_size   INTEGER NOT NULL,
    config_size     INTEGER NOT NULL,
    size            INTEGER NOT NULL,      -- sum of the layers' uncompressed sizes
    created         TEXT,                  -- the config's `created`
    added           REAL NOT NULL          -- when this store got it (unix time)
);
CREATE INDEX IF NOT EXISTS images_by_config ON images(config_digest);
CREATE TABLE IF NOT EXISTS image_layers (
    manifest_digest TEXT NOT NULL REFERENCES images(manifest_digest) ON DELETE CASCADE,
    idx             INTEGER NOT NULL,
    digest          TEXT NOT NULL,         -- blob digest, as in the manifest
    diff_id         TEXT NOT NULL,
    PRIMARY KEY (manifest_digest, idx)
);
CREATE INDEX IF NOT EXISTS image_layers_by_diff ON image_layers(diff_id);
CREATE TABLE IF NOT EXISTS tags (
    name            TEXT PRIMARY KEY,      -- canonical reference: docker.io/library/app:latest
    manifest_digest TEXT NOT NULL REFERENCES images(manifest_digest),
    tagged          REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS tags_by_image ON tags(manifest_digest);
CREATE TABLE IF NOT EXISTS layers (
    diff_id         TEXT PRIMARY KEY,
    size            INTEGER,               -- uncompressed tar size
    dir             TEXT UNIQUE            -- name under ROOT/layers once extracted, else NULL
);
CREATE TABLE IF NOT EXISTS layer_blobs (
    digest            TEXT PRIMARY KEY,
    diff_id           TEXT NOT NULL,
    media_type        TEXT NOT NULL,
    size              INTEGER NOT NULL,
    uncompressed_size INTEGER
);
CREATE INDEX IF NOT EXISTS layer_blobs_by_diff ON layer_blobs(diff_id);
CREATE TABLE IF NOT EXISTS cache (
    key           TEXT PRIMARY KEY,
    diff_id       TEXT,                    -- NULL: the step changes only the config
    config_change TEXT NOT NULL,           -- JSON
    parent        TEXT,                    -- the previous step's key
    created       REAL NOT NULL,
    last_used     REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS cache_by_parent ON cache(parent);
CREATE TABLE IF NOT EXISTS leases (
    id      TEXT PRIMARY KEY,
    pid     INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS lease_items (
    lease_id TEXT NOT NULL REFERENCES leases(id) ON DELETE CASCADE,
    kind     TEXT NOT NULL,                -- blob | layer | cache | image
    value    TEXT NOT NULL,
    PRIMARY KEY (lease_id, kind, value)
);
CREATE TABLE IF NOT EXISTS content (
    key     TEXT PRIMARY KEY,              -- sha256 of (content digest, mode, uid, gid, mtime, xattrs)
    dir     TEXT NOT NULL,                 -- layer dir name holding the canonical copy
    relpath TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS content_by_dir ON content(dir);
CREATE TABLE IF NOT EXISTS repo_digests (
    repository      TEXT NOT NULL,         -- canonical name: registry.example.com/team/app
    digest          TEXT NOT NULL,         -- the manifest digest the registry serves
    manifest_digest TEXT NOT NULL REFERENCES images(manifest_digest) ON DELETE CASCADE,
    PRIMARY KEY (repository, digest)
);
CREATE INDEX IF NOT EXISTS repo_digests_by_image ON repo_digests(manifest_digest);
CREATE TABLE IF NOT EXISTS remote_blobs (
    digest          TEXT PRIMARY KEY,      -- a layer blob recorded, not fetched yet
    source          TEXT NOT NULL          -- the repository that has it: DOMAIN/PATH
);
CREATE TABLE IF NOT EXISTS blob_locations (
    registry        TEXT NOT NULL,         -- host[:port] as in a reference: localhost:5000
    digest          TEXT NOT NULL,         -- a blob a pull or push saw there
    repository      TEXT NOT NULL,         -- its repository on that registry: team/app
    seen            REAL NOT NULL,         -- when last seen (unix time)
    PRIMARY KEY (registry, digest, repository)
);
CREATE INDEX IF NOT EXISTS blob_locations_by_seen ON blob_locations(seen);
"""

LEASE_KINDS = ("blob", "layer", "cache", "image")


@dataclass(frozen=True)
class CacheEntry:
    """The result of one build step: the layer it added (None for a metadata-only
    step), the config change it made (JSON-able dict), and its parent step key."""

    diff_id: str | None
    config_change: Mapping[str, Any]
    parent: str | None = None
    created: float = 0.0
    last_used: float = 0.0


class Database:
    """A per-process connection to ROOT/lamina.db with the schema in place."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._init_schema()

    # -- connection ----------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                   check_same_thread=True)
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError(f"cannot put {self.path} in WAL mode (got {mode})", path=str(self.path))
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.DatabaseError as e:
            raise _store_error(e, self.path) from None
        conn.row_factory = sqlite3.Row
        return conn

    @property
    def conn(self) -> sqlite3.Connection:
        pid = os.getpid()
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != pid:
            conn = self._open()
            self._local.conn = conn
            self._local.pid = pid
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            conn.close()
        self._local.conn = None

    def _init_schema(self) -> None:
        try:  # the common case: schema in place, no write lock needed
            row = self.conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        except sqlite3.OperationalError:
            row = None  # no meta table yet
        except sqlite3.DatabaseError as e:
            raise _store_error(e, self.path) from None
        if row is not None and int(row[0]) == SCHEMA_VERSION:
            return
        with self.write() as c:
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    c.execute(stmt)
            row = c.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                c.execute("INSERT INTO meta(key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) < SCHEMA_VERSION:
                # older stores gain the new tables (every statement is IF NOT EXISTS)
                c.execute("UPDATE meta SET value=? WHERE key='schema'", (str(SCHEMA_VERSION),))
            elif int(row[0]) > SCHEMA_VERSION:
                raise StoreError(f"{self.path}: store schema {row[0]} is newer than this lamina "
                                 f"understands ({SCHEMA_VERSION}); upgrade lamina", path=str(self.path))

    # -- transactions ----------------------------------------------------------------

    @contextmanager
    def write(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT, ROLLBACK on error).

        `durable=False` commits without waiting for the disk (synchronous=NORMAL: the
        WAL is not fsynced at commit; a power loss may drop the transaction, never
        corrupt the database) - for records a crash makes moot anyway: a lease's
        items, a cache entry's last-used time."""
        conn = self.conn
        if conn.in_transaction:  # nested: join the outer transaction
            yield conn
            return
        if durable:
            with self._transaction(conn) as c:
                yield c
            return
        conn.execute("PRAGMA synchronous = NORMAL")
        try:
            with self._transaction(conn) as c:
                yield c
        finally:
            conn.execute("PRAGMA synchronous = FULL")

    @contextmanager
    def _transaction(self, conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        try:
            _retry_busy(lambda: conn.execute("BEGIN IMMEDIATE"))
        except sqlite3.DatabaseError as e:
            raise _store_error(e, self.path) from None
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        try:
            _retry_busy(lambda: conn.execute("COMMIT"))
        except sqlite3.DatabaseError as e:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise _store_error(e, self.path) from None

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A consistent read snapshot (BEGIN ... COMMIT) over several queries."""
        conn = self.conn
        if conn.in_transaction:
            yield conn
            return
        try:
            conn.execute("BEGIN")
        except sqlite3.DatabaseError as e:
            raise _store_error(e, self.path) from None
        try:
            yield conn
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")

    def query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        try:
            return self.conn.execute(sql, args).fetchall()
        except sqlite3.DatabaseError as e:
            raise _store_error(e, self.path) from None

    def query_one(self, sql: str, args: tuple = ()) -> sqlite3.Row | None:
        rows = self.query(sql, args)
        return rows[0] if rows else None

    # -- cache entries -----------------------------------------------------------------

    def cache_lookup(self, key: str) -> CacheEntry | None:
        row = self.query_one("SELECT * FROM cache WHERE key=?", (key,))
        return _cache_entry(row) if row else None

    def cache_put(self, c: sqlite3.Connection, key: str, entry: CacheEntry, now: float) -> None:
        c.execute("INSERT INTO cache(key, diff_id, config_change, parent, created, last_used) "
                  "VALUES (?,?,?,?,?,?) ON CONFLICT(key) DO UPDATE SET diff_id=excluded.diff_id, "
                  "config_change=excluded.config_change, parent=excluded.parent, last_used=excluded.last_used",
                  (key, entry.diff_id, json.dumps(dict(entry.config_change), sort_keys=True,
                                                   separators=(",", ":")),
                   entry.parent, now, now))


def _cache_entry(row: sqlite3.Row) -> CacheEntry:
    return CacheEntry(row["diff_id"], json.loads(row["config_change"]), row["parent"],
                      row["created"], row["last_used"])


def _retry_busy(fn, attempts: int = 5):
    """SQLite's busy handler already waits BUSY_TIMEOUT_S; retry a few more times
    (with a short sleep) before giving up, for very long gc or import transactions."""
    for i in range(attempts):
        try:
            return fn()
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) and "busy" not in str(e) or i == attempts - 1:
                raise
            time.sleep(0.05 * (i + 1))


def _store_error(e: sqlite3.DatabaseError, path: Path) -> StoreError:
    msg = str(e)
    if "disk" in msg and "full" in msg:
        return StoreError(f"disk full while writing the store database {path}", path=str(path))
    if "locked" in msg or "busy" in msg:
        return StoreError(f"the store database {path} stayed locked by another lamina process "
                          f"for more than {int(BUSY_TIMEOUT_S)}s", path=str(path))
    if isinstance(e, sqlite3.DatabaseError) and ("malformed" in msg or "not a database" in msg):
        return StoreError(f"the store database {path} is corrupt ({msg})", path=str(path))
    return StoreError(f"store database {path}: {msg}", path=str(path))
