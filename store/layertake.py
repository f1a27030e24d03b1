"""Taking the extracted directory of a cache-only layer away from the store, so that a
build step can move its unchanged files into a new layer instead of creating them
again (builder.steps.reuse: a COPY that changed in a few files).

A layer's directory is a cache of its blob: `Store.layer_dir` re-extracts it when it
is missing (as after `fsck --repair`). Taking it is only allowed when nothing else
can be reading it, decided in one write transaction under the gc lock (shared) and
the lock of the layer dir's name:

- no image lists the layer (`lamina run`, exports and later builds reach an image's
  layers without a build lease);
- no lease but the taker's holds it (every build holds a layer before it resolves
  its directory, in the same transaction that found it: a build that found it
  earlier is seen here, a build that looks later finds no directory and extracts
  one from the blob);
- its blob is in the store (so the directory can be made again).

The directory is renamed to a temp dir of the store (the caller's from then on) and
the layer row forgets it; the content index forgets its files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from lamina.store.locks import flocked

if TYPE_CHECKING:
    from lamina.store.lease import Lease
    from lamina.store.root import StoreRoot

__all__ = ["take_layer_dir"]


def take_layer_dir(store: "StoreRoot", diff_id: str, lease: "Lease") -> Path | None:
    """The layer's extracted dir, moved to a temp dir of the store that the caller
    removes when done; None when it may be in use elsewhere (see the module doc)."""
    row = store.db.query_one("SELECT dir FROM layers WHERE diff_id=?", (diff_id,))
    if row is None or not row["dir"]:
        return None
    name = row["dir"]
    with store.writing(), flocked(store.locks_dir / f"{name}.lock"), store.db.write() as c:
        now = c.execute("SELECT dir FROM layers WHERE diff_id=?", (diff_id,)).fetchone()
        if now is None or now[0] != name:
            return None
        if c.execute("SELECT 1 FROM image_layers WHERE diff_id=? LIMIT 1", (diff_id,)).fetchone():
            return None
        if c.execute("SELECT 1 FROM lease_items WHERE kind='layer' AND value=? AND lease_id<>? "
                     "LIMIT 1", (diff_id, lease.id)).fetchone():
            return None
        blobs = [r[0] for r in c.execute("SELECT digest FROM layer_blobs WHERE diff_id=?", (diff_id,))]
        if not any(store.blobs.exists(d) for d in blobs):
            return None
        source = store.layers_root / name
        if not source.is_dir() or source.is_symlink():
            return None
        target = store.temp_path("taken")
        os.rename(source, target)
        c.execute("UPDATE layers SET dir=NULL WHERE diff_id=?", (diff_id,))
        c.execute("DELETE FROM content WHERE dir=?", (name,))
    return target
