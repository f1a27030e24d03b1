"""du: where the store's disk space goes, and what file dedup saves.

- blobs: count and bytes of ROOT/blobs (compressed layers, configs, manifests)
- layer dirs: logical size = the sizes of all regular files of all extracted
  layer dirs, as if nothing were shared; unique size = each inode counted once
  (hard links shared across layers by dedup count once); allocated = disk blocks
  of the unique inodes (all file types); dedup saved = logical - unique
- images, layers, cache entries: counts; the database file's size
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from store.layerdirs import dir_usage

if TYPE_CHECKING:
    from store.store import Store


@dataclass(frozen=True)
class DuReport:
    blob_count: int
    blob_bytes: int
    layer_dirs: int
    logical_bytes: int       # extracted layer files, not deduplicated
    unique_bytes: int        # extracted layer files, each inode once
    stored_bytes: int        # allocated blocks of the extracted layer dirs, each inode once
    dedup_saved_bytes: int   # logical - unique
    images: int
    layers: int
    cache_entries: int
    db_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.blob_bytes + self.stored_bytes + self.db_bytes


def usage(store: "Store") -> DuReport:
    blob_count = blob_bytes = 0
    for d in store.blobs.digests():
        try:
            blob_bytes += os.lstat(store.blobs.path(d)).st_blocks * 512
            blob_count += 1
        except FileNotFoundError:
            pass
    db = store.db
    dirs = [r["dir"] for r in db.query("SELECT dir FROM layers WHERE dir IS NOT NULL ORDER BY dir")]
    seen: set[tuple[int, int]] = set()
    logical = unique = blocks = 0
    for name in dirs:
        path = store.layers_root / name
        if not path.is_dir():
            continue
        lg, un, bl = dir_usage(path, seen)
        logical += lg
        unique += un
        blocks += bl
    db_bytes = 0
    for suffix in ("", "-wal", "-shm"):
        try:
            db_bytes += os.lstat(str(store.root / "lamina.db") + suffix).st_size
        except FileNotFoundError:
            pass
    count = lambda t: db.query_one(f"SELECT count(*) AS n FROM {t}")["n"]  # noqa: E731
    return DuReport(blob_count, blob_bytes, len(dirs), logical, unique, blocks, logical - unique,
                    count("images"), count("layers"), count("cache"), db_bytes)
