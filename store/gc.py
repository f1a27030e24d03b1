"""Garbage collection: remove what no image, no kept cache entry and no live lease
reaches.

Roots: every image row (tagged or not — an untagged image is removed by `rmi`,
not by gc), every cache entry the policy keeps (and its ancestors, since a hit
on a step needs the steps before it), everything a live lease holds and
everything a hold (store.holds: a container, running or stopped) holds.
From images: the manifest and config blobs and the layers (by diff_id); from a
layer: all its blobs and its extracted directory. Everything else goes: blobs,
layer rows, extracted dirs, content-index entries of removed dirs, dead leases,
temp entries of dead processes, lock files.

Cache policy: `cache_max_age` drops entries not used for that long;
`cache_max_bytes` then drops least-recently-used leaf entries until the layers
only the cache holds fit (sizes are uncompressed layer sizes).

gc runs under the exclusive gc lock (no writer is between writing bytes and
recording them), decides from one consistent snapshot, deletes the metadata in
one transaction, then the bytes (a crash there leaves only unreferenced bytes,
taken by the next gc). Directories are renamed into ROOT/tmp under the lock and
removed after it is released.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from lamina.store.attestations import referenced_blobs
from lamina.store.holds import held_items
from lamina.store.layerdirs import walk
from lamina.store.lease import lease_is_live
from lamina.store.locks import clean_stale_temp, remove_tree

if TYPE_CHECKING:
    from lamina.store.root import StoreRoot


@dataclass
class GcReport:
    blobs_removed: int = 0
    bytes_removed: int = 0          # blob bytes + extracted layer dir bytes (apparent)
    layers_removed: int = 0
    dirs_removed: int = 0
    cache_entries_removed: int = 0
    leases_expired: int = 0
    temp_removed: int = 0
    removed_digests: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"removed {self.blobs_removed} blobs, {self.layers_removed} layers "
                f"({self.dirs_removed} extracted dirs), {self.cache_entries_removed} cache entries, "
                f"{self.leases_expired} expired leases; reclaimed {self.bytes_removed} bytes")


def _tree_bytes(path: str) -> int:
    total = 0
    for dirpath, dirnames, filenames in walk(path):
        for n in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, n))
            except OSError:
                continue
            if st.st_nlink == 1:  # a hard-linked file's bytes stay with its other names
                total += st.st_blocks * 512
    return total


def collect(store: "StoreRoot", *, cache_max_age: timedelta | None = None,
            cache_max_bytes: int | None = None) -> GcReport:
    report = GcReport()
    trash: list[str] = []
    db = store.db
    with store.gc_lock.exclusive():
        # 1. leases: drop the dead ones
        live_leases: set[str] = set()
        for row in db.query("SELECT id, pid FROM leases"):
            if lease_is_live(store.root, row["id"], row["pid"]):
                live_leases.add(row["id"])
        dead = [r["id"] for r in db.query("SELECT id FROM leases") if r["id"] not in live_leases]
        if dead:
            with db.write() as c:
                c.executemany("DELETE FROM leases WHERE id=?", [(d,) for d in dead])
            for d in dead:
                try:
                    (store.root / "leases" / f"{d}.lock").unlink()
                except FileNotFoundError:
                    pass
        report.leases_expired = len(dead)

        with db.write() as c:
            # 2. mark
            held: dict[str, set[str]] = {"blob": set(), "layer": set(), "cache": set(), "image": set()}
            for row in c.execute("SELECT kind, value FROM lease_items"):
                held[row["kind"]].add(row["value"])
            for kind, values in held_items(c).items():  # holds: containers (store.holds)
                held.setdefault(kind, set()).update(values)

            cache = {r["key"]: r for r in c.execute("SELECT key, diff_id, parent, last_used FROM cache")}
            image_layers = {r["diff_id"] for r in c.execute("SELECT DISTINCT diff_id FROM image_layers")}
            layer_size = {r["diff_id"]: (r["size"] or 0) for r in c.execute("SELECT diff_id, size FROM layers")}
            keep_cache = _cache_policy(cache, held["cache"], image_layers, layer_size,
                                       cache_max_age, cache_max_bytes)
            drop_cache = [k for k in cache if k not in keep_cache]

            keep_layers = set(image_layers) | held["layer"]
            keep_layers |= {cache[k]["diff_id"] for k in keep_cache if cache[k]["diff_id"]}
            keep_blobs = set(held["blob"])
            for r in c.execute("SELECT manifest_digest, config_digest FROM images"):
                keep_blobs.add(r["manifest_digest"])
                keep_blobs.add(r["config_digest"])
            keep_blobs |= {r["digest"] for r in c.execute("SELECT DISTINCT digest FROM image_layers")}
            keep_blobs |= referenced_blobs(c)  # images' attestations (store.attestations)
            for md in held["image"]:
                keep_blobs.add(md)
            drop_layers: list[str] = []
            drop_dirs: list[str] = []
            for r in c.execute("SELECT diff_id, dir FROM layers"):
                if r["diff_id"] in keep_layers:
                    continue
                drop_layers.append(r["diff_id"])
                if r["dir"]:
                    drop_dirs.append(r["dir"])
            for r in c.execute("SELECT digest, diff_id FROM layer_blobs"):
                if r["diff_id"] in keep_layers:
                    keep_blobs.add(r["digest"])
            # leased images keep their config and layers too
            for md in held["image"]:
                row = c.execute("SELECT config_digest FROM images WHERE manifest_digest=?", (md,)).fetchone()
                if row:
                    keep_blobs.add(row[0])

            # 3. sweep metadata
            c.executemany("DELETE FROM cache WHERE key=?", [(k,) for k in drop_cache])
            c.executemany("DELETE FROM layer_blobs WHERE diff_id=?", [(d,) for d in drop_layers])
            c.executemany("DELETE FROM layers WHERE diff_id=?", [(d,) for d in drop_layers])
            c.executemany("DELETE FROM content WHERE dir=?", [(d,) for d in drop_dirs])
            # remote blobs (store.remoteblobs) of layers that went
            c.execute("DELETE FROM remote_blobs WHERE digest NOT IN (SELECT digest FROM layer_blobs)")
            known_dirs = {r["dir"] for r in c.execute("SELECT dir FROM layers WHERE dir IS NOT NULL")}
        report.cache_entries_removed = len(drop_cache)
        report.layers_removed = len(drop_layers)

        # 4. sweep bytes
        for digest in list(store.blobs.digests()):
            if digest in keep_blobs:
                continue
            try:
                report.bytes_removed += store.blobs.size(digest)
            except Exception:
                pass
            store.blobs.delete(digest)
            report.blobs_removed += 1
            report.removed_digests.append(digest)
        for name in os.listdir(store.layers_root):
            if name in known_dirs:
                continue
            src = store.layers_root / name
            dst = store.temp_path("gc")
            try:
                os.rename(src, dst)
            except FileNotFoundError:
                continue
            trash.append(str(dst))
            report.dirs_removed += 1
        # lock files: nobody takes one without holding the gc lock shared
        for name in os.listdir(store.locks_dir):
            try:
                os.unlink(store.locks_dir / name)
            except FileNotFoundError:
                pass
        report.temp_removed = clean_stale_temp(store.tmp_dir, keep_tag=store.owner.tag)
        # blob temp files: every Store writer holds the gc lock shared while it writes,
        # so none is live now; the age test also spares a writer working outside it
        store.blobs.clean_tmp(older_than=60)

    for t in trash:
        report.bytes_removed += _tree_bytes(t)
        remove_tree(t)
    return report


def _cache_policy(cache: dict, leased: set[str], image_layers: set[str], layer_size: dict[str, int],
                  max_age: timedelta | None, max_bytes: int | None) -> set[str]:
    """The cache keys to keep."""
    now = time.time()
    keep = set(cache)
    if max_age is not None:
        cutoff = now - max_age.total_seconds()
        keep = {k for k in keep if cache[k]["last_used"] > cutoff or k in leased}
    # ancestors of kept entries stay (a hit on a step needs the chain before it)
    keep = _with_ancestors(keep, cache)
    if max_bytes is not None:
        def cache_only_bytes(keys: set[str]) -> int:
            ids = {cache[k]["diff_id"] for k in keys if cache[k]["diff_id"]} - image_layers
            return sum(layer_size.get(d, 0) for d in ids)
        while cache_only_bytes(keep) > max_bytes:
            parents = {cache[k]["parent"] for k in keep}
            leaves = [k for k in keep if k not in parents and k not in leased]
            if not leaves:
                break
            victim = min(leaves, key=lambda k: (cache[k]["last_used"], k))
            keep.discard(victim)  # a leaf: `keep` stays closed under parents
    return keep | (leased & set(cache))


def _with_ancestors(keys: set[str], cache: dict) -> set[str]:
    out = set()
    for k in keys:
        while k is not None and k in cache and k not in out:
            out.add(k)
            k = cache[k]["parent"]
    return out
