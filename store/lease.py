"""Leases: what a running build holds so that gc never removes it.

A lease is a row in `leases` (id, holder pid) plus rows in `lease_items` (blobs,
layers by diff_id, cache keys, images by manifest digest), and a lock file
ROOT/leases/<id>.lock that the holder keeps flocked for the lease's lifetime.
gc treats a lease as live while the lock is held; a holder killed with SIGKILL
loses the lock at once, so its lease expires on the next gc, with no timeout.

Items are added under the shared gc lock (see store.locks), so an item added
before gc starts is seen by it, and one added after it ends was never at risk.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from lamina.store.db import LEASE_KINDS
from lamina.store.errors import StoreError
from lamina.store.locks import is_locked, pid_alive, try_lock

if TYPE_CHECKING:
    from lamina.store.root import StoreRoot


class Lease:
    """A live hold on store content; use through `Store.lease()`."""

    def __init__(self, store: "StoreRoot") -> None:
        self._store = store
        self.id = secrets.token_hex(8)
        self.pid = os.getpid()
        self.lock_path = lease_lock_path(store.root, self.id)
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = try_lock(self.lock_path)
        if fd is None:  # pragma: no cover - a random 64-bit id collided with a live lease
            raise StoreError(f"lease {self.id} is already held")
        self._fd: int | None = fd
        with store.db.write() as c:
            c.execute("INSERT INTO leases(id, pid, created) VALUES (?,?,?)", (self.id, self.pid, time.time()))

    def hold(self, *, blobs: Iterable[str] = (), layers: Iterable[str] = (),
             cache_keys: Iterable[str] = (), images: Iterable[str] = ()) -> None:
        """Add items (blob digests, layer diff_ids, cache keys, manifest digests)."""
        items = [(k, v) for k, vs in (("blob", blobs), ("layer", layers), ("cache", cache_keys),
                                      ("image", images)) for v in vs]
        if not items:
            return
        if self._fd is None:
            raise StoreError(f"lease {self.id} is already released")
        with self._store.writing(), self._store.db.write() as c:
            c.executemany("INSERT OR IGNORE INTO lease_items(lease_id, kind, value) VALUES (?,?,?)",
                          [(self.id, k, v) for k, v in items])

    def items(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {k: set() for k in LEASE_KINDS}
        for row in self._store.db.query("SELECT kind, value FROM lease_items WHERE lease_id=?", (self.id,)):
            out[row["kind"]].add(row["value"])
        return out

    def release(self) -> None:
        if self._fd is None or os.getpid() != self.pid:
            return
        try:
            with self._store.db.write() as c:
                c.execute("DELETE FROM leases WHERE id=?", (self.id,))
        finally:
            try:
                self.lock_path.unlink()
            except FileNotFoundError:
                pass
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lease_lock_path(root: Path, lease_id: str) -> Path:
    return Path(root) / "leases" / f"{lease_id}.lock"


def lease_is_live(root: Path, lease_id: str, pid: int) -> bool:
    """Live while its holder process exists and holds the lock file."""
    if not pid_alive(pid):
        return False
    return is_locked(lease_lock_path(root, lease_id))
