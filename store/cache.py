"""The build-cache index: step cache key -> CacheEntry (layer diff_id or None, the
config change, the parent key), with created / last-used times for gc's policy.

The build engine looks a key up, reuses the layer on a hit (touching the entry so
that gc keeps what is used, at most once a minute), and puts an entry after running
a step. Entries live
in the `cache` table of store.db; their layers must be recorded first.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from lamina.store.db import CacheEntry
from lamina.store.errors import StoreError

if TYPE_CHECKING:
    from lamina.store.lease import Lease
    from lamina.store.root import StoreRoot

__all__ = ["BuildCache", "CacheEntry"]

#: a hit refreshes an entry's last-used time only when it is older than this: gc's
#: age and size policies work in hours and days, and a rebuild then writes nothing
TOUCH_GRANULARITY_S = 60.0


class BuildCache:
    def __init__(self, store: "StoreRoot") -> None:
        self._store = store

    def lookup(self, key: str, *, lease: "Lease | None" = None, touch: bool = True) -> CacheEntry | None:
        """The entry for `key`, or None. With a lease, the entry (and its layer) is held
        by the lease before this returns, so a concurrent gc cannot take it; `touch`
        refreshes its last-used time."""
        db = self._store.db
        if lease is None:
            entry = db.cache_lookup(key)
            if entry is not None and touch:
                self.touch(key)
            return entry
        # one transaction, not fsynced: a lease's items and a last-used time are moot
        # after a crash (a no-op rebuild then costs no disk flush per step)
        with self._store.writing(), db.write(durable=False) as c:
            entry = db.cache_lookup(key)
            if entry is None:
                return None
            lease.hold(cache_keys=[key], layers=[entry.diff_id] if entry.diff_id else [])
            if touch and entry.last_used < time.time() - TOUCH_GRANULARITY_S:
                self.touch(key)
            return entry

    def put(self, key: str, entry: CacheEntry) -> None:
        """Record (or replace) the result of a step. Its layer must be in the store."""
        with self._store.writing(), self._store.db.write() as c:
            if entry.diff_id is not None and c.execute(
                    "SELECT 1 FROM layers WHERE diff_id=?", (entry.diff_id,)).fetchone() is None:
                raise StoreError(f"cache entry {key}: layer {entry.diff_id} is not in the store "
                                 "(record the layer first)", digest=entry.diff_id)
            self._store.db.cache_put(c, key, entry, time.time())

    def touch(self, key: str) -> None:
        with self._store.db.write(durable=False) as c:
            c.execute("UPDATE cache SET last_used=? WHERE key=?", (time.time(), key))

    def delete(self, key: str) -> bool:
        with self._store.db.write() as c:
            return c.execute("DELETE FROM cache WHERE key=?", (key,)).rowcount > 0

    def count(self) -> int:
        return self._store.db.query_one("SELECT count(*) AS n FROM cache")["n"]
