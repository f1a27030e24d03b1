"""du: where the store's disk space goes, and what sharing and file dedup save.

Content addressing stores a layer once however many images use it; `Store(file_dedup=
True)` also hard-links identical files across extracted layer dirs (off by default,
see Store). So `lamina du` reports, for the layers of the images:

- logical: what the images would take stored separately - for each image, the sum
  of its (distinct) layers, as compressed blob bytes and as extracted bytes;
- stored: the same layers each counted once (what the store holds for them);
- saved by sharing = logical - stored;

and for all extracted layer dirs the bytes file dedup saved (layer dir bytes, each
dir counted on its own, minus the bytes with every inode counted once), then the
disk use: blobs (allocated blocks: layers, configs, manifests, export copies,
leftovers), layer dirs (allocated blocks, every inode once), the database.

Extracted bytes are the sizes of regular files, each inode counted once per layer
dir (hard links inside a layer are part of the layer). A layer not extracted counts
0 there, in logical and stored alike. The walk keeps only inodes with more than one
link in memory.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lamina.store.root import StoreRoot


@dataclass(frozen=True)
class DuReport:
    images: int
    layers: int                 # rows of the layer table
    shared_layers: int          # layers used by two or more images
    cache_entries: int
    # the images' layers: each image counted apart (logical) / each layer once
    logical_blob_bytes: int     # compressed: sum over images of their layers' blob sizes
    image_blob_bytes: int       # compressed: the distinct layer blobs the images use
    logical_bytes: int          # extracted: sum over images of their layers' dir bytes
    image_layer_bytes: int      # extracted: the distinct layers the images use
    unextracted_layers: int     # layers of images without a directory (count 0 above)
    # all extracted layer dirs
    layer_dirs: int
    layer_dir_bytes: int        # each dir on its own (inode once per dir)
    unique_bytes: int           # every inode once across all dirs
    dedup_saved_bytes: int      # layer_dir_bytes - unique_bytes: file dedup's hard links
    # disk use
    blob_count: int
    blob_bytes: int             # allocated blocks of all blobs
    stored_bytes: int           # allocated blocks of the layer dirs, every inode once
    db_bytes: int

    @property
    def sharing_saved_blob_bytes(self) -> int:
        return self.logical_blob_bytes - self.image_blob_bytes

    @property
    def sharing_saved_bytes(self) -> int:
        return self.logical_bytes - self.image_layer_bytes

    @property
    def total_bytes(self) -> int:
        return self.blob_bytes + self.stored_bytes + self.db_bytes

    def as_dict(self) -> dict[str, int]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for k in ("sharing_saved_blob_bytes", "sharing_saved_bytes", "total_bytes"):
            out[k] = getattr(self, k)
        return out


@dataclass
class _Inodes:
    """Multi-link inodes seen (single-link ones cannot be seen twice)."""

    seen: set[tuple[int, int]]

    def first(self, st: os.stat_result) -> bool:
        if st.st_nlink < 2 or stat.S_ISDIR(st.st_mode):
            return True
        key = (st.st_dev, st.st_ino)
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def _dir_bytes(path: Path, everywhere: _Inodes) -> tuple[int, int, int]:
    """(regular-file bytes, each inode once in this dir; regular-file bytes of inodes
    not in `everywhere`; allocated bytes of those inodes) of the tree at `path`."""
    here = _Inodes(set())
    own = unique = blocks = 0
    try:
        blocks += os.lstat(path).st_blocks * 512
    except OSError:
        return 0, 0, 0
    stack = [os.fspath(path)]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except OSError:
            continue
        with it:
            for entry in it:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
                regular = stat.S_ISREG(st.st_mode)
                if regular and here.first(st):
                    own += st.st_size
                if everywhere.first(st):
                    blocks += st.st_blocks * 512
                    if regular:
                        unique += st.st_size
    return own, unique, blocks


def usage(store: "StoreRoot") -> DuReport:
    db = store.db
    with db.read() as c:
        dirs = {r["diff_id"]: r["dir"] for r in c.execute("SELECT diff_id, dir FROM layers WHERE dir IS NOT NULL")}
        rows = c.execute("SELECT il.manifest_digest, il.diff_id, il.digest, lb.size FROM image_layers il "
                         "LEFT JOIN layer_blobs lb ON lb.digest = il.digest").fetchall()
        images = c.execute("SELECT count(*) FROM images").fetchone()[0]
        layers = c.execute("SELECT count(*) FROM layers").fetchone()[0]
        cache_entries = c.execute("SELECT count(*) FROM cache").fetchone()[0]

    everywhere = _Inodes(set())
    dir_bytes: dict[str, int] = {}
    layer_dir_bytes = unique = blocks = 0
    for diff_id, name in sorted(dirs.items(), key=lambda kv: kv[1]):
        path = store.layers_root / name
        if not path.is_dir():
            continue
        own, un, bl = _dir_bytes(path, everywhere)
        dir_bytes[diff_id] = own
        layer_dir_bytes += own
        unique += un
        blocks += bl

    per_image: dict[str, dict[str, tuple[str, int]]] = {}  # manifest -> diff_id -> (blob digest, size)
    for r in rows:
        per_image.setdefault(r["manifest_digest"], {}).setdefault(r["diff_id"], (r["digest"], r["size"] or 0))
    users: dict[str, int] = {}
    logical_blob = logical = 0
    image_blobs: dict[str, int] = {}
    for layers_of in per_image.values():
        for diff_id, (digest, size) in layers_of.items():
            users[diff_id] = users.get(diff_id, 0) + 1
            logical_blob += size
            logical += dir_bytes.get(diff_id, 0)
            image_blobs[digest] = size
    image_layer_bytes = sum(dir_bytes.get(d, 0) for d in users)
    unextracted = sum(1 for d in users if d not in dir_bytes)

    blob_count = blob_bytes = 0
    for d in store.blobs.digests():
        try:
            blob_bytes += os.lstat(store.blobs.path(d)).st_blocks * 512
            blob_count += 1
        except FileNotFoundError:
            pass
    db_bytes = 0
    for suffix in ("", "-wal", "-shm"):
        try:
            db_bytes += os.lstat(str(store.root / "lamina.db") + suffix).st_size
        except FileNotFoundError:
            pass
    return DuReport(
        images=images, layers=layers, shared_layers=sum(1 for n in users.values() if n > 1),
        cache_entries=cache_entries,
        logical_blob_bytes=logical_blob, image_blob_bytes=sum(image_blobs.values()),
        logical_bytes=logical, image_layer_bytes=image_layer_bytes, unextracted_layers=unextracted,
        layer_dirs=len(dir_bytes), layer_dir_bytes=layer_dir_bytes, unique_bytes=unique,
        dedup_saved_bytes=layer_dir_bytes - unique,
        blob_count=blob_count, blob_bytes=blob_bytes, stored_bytes=blocks, db_bytes=db_bytes)
