"""Which layers and layer blobs the store knows: the `layers` and `layer_blobs`
tables (a layer by diff_id, each of its blobs by digest and compression), and
writing a directory as a recorded layer blob."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from lamina.store.compression import media_type_for
from lamina.store.errors import BlobNotFound, StoreError
from lamina.store.layers import LayerBlob, write_layer as write_layer_blob, write_layer_pair
from lamina.store.root import StoreRoot

if TYPE_CHECKING:
    from lamina.store.lease import Lease

_BLOB_COLUMNS = "digest, diff_id, media_type, size, uncompressed_size"


def insert_layer(c, layer: LayerBlob) -> None:
    """Record a layer and one blob of it in an open write transaction."""
    c.execute("INSERT OR IGNORE INTO layers(diff_id, size) VALUES (?,?)", (layer.diff_id, layer.uncompressed_size))
    c.execute(f"INSERT OR IGNORE INTO layer_blobs({_BLOB_COLUMNS}) VALUES (?,?,?,?,?)",
              (layer.digest, layer.diff_id, layer.media_type, layer.size, layer.uncompressed_size))


def record_layer(root: StoreRoot, layer: LayerBlob) -> None:
    """Make a stored layer blob known (its blob must exist)."""
    with root.writing():
        if not root.blobs.exists(layer.digest):
            raise BlobNotFound(f"layer blob {layer.digest} is not in the store", digest=layer.digest)
        with root.db.write() as c:
            insert_layer(c, layer)


def write_layer(root: StoreRoot, src_dir: Path, *, compression: str | None = None,
                source_date_epoch: int | None = None, lease: "Lease | None" = None,
                clamp_epoch: int | None = None) -> LayerBlob:
    """Archive `src_dir` as a layer blob and record it, safe from a concurrent gc
    (held by `lease` if given). With `clamp_epoch`, the same walk also stores the
    layer store.layertimes.clamped_layer would make for that epoch, and remembers it
    there, so committing the layer for that epoch costs one lookup. `compression`:
    default the store's (root.layer_compression)."""
    compression = compression or root.layer_compression
    with root.writing():
        if clamp_epoch is None:
            layer = write_layer_blob(root.blobs, Path(src_dir), compression=compression,  # type: ignore[arg-type]
                                     source_date_epoch=source_date_epoch)
            clamped = None
        else:
            layer, clamped = write_layer_pair(root.blobs, Path(src_dir), clamp_epoch,
                                              compression=compression)  # type: ignore[arg-type]
        with root.db.write() as c:
            insert_layer(c, layer)
            if clamped is not None:
                insert_layer(c, clamped)
        if lease is not None:
            lease.hold(layers=[layer.diff_id], blobs=[layer.digest])
            if clamped is not None:
                lease.hold(layers=[clamped.diff_id], blobs=[clamped.digest])
    if clamp_epoch is not None:
        remember_clamped(root, layer.diff_id, int(clamp_epoch), (clamped or layer).diff_id)
    return layer


# which recorded layer is a layer with its mtimes clamped to an epoch
# (store.layertimes): ROOT/cache/layer-times/<diff_id hex>-<epoch> holds its diff_id
CLAMP_RECORD_DIR = ("cache", "layer-times")


def clamp_record_path(root: StoreRoot, diff_id: str, epoch: int) -> Path:
    return root.root.joinpath(*CLAMP_RECORD_DIR) / f"{diff_id.removeprefix('sha256:')}-{epoch}"


def remember_clamped(root: StoreRoot, diff_id: str, epoch: int, target: str) -> None:
    """Note that layer `diff_id` clamped to `epoch` is the recorded layer `target`."""
    path = clamp_record_path(root, diff_id, epoch)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(target + "\n")
    os.replace(tmp, path)


def layer_row(root: StoreRoot, diff_id: str):
    """The `layers` row (diff_id, dir) of a known layer; StoreError if unknown."""
    row = root.db.query_one("SELECT diff_id, dir FROM layers WHERE diff_id=?", (diff_id,))
    if row is None:
        raise StoreError(f"layer {diff_id} is not in the store", digest=diff_id)
    return row


def preferred_blob(root: StoreRoot, diff_id: str) -> LayerBlob:
    """The blob the build engine uses for a layer: the one in the store's compression
    when several exist (e.g. a gzip blob an OCI export added), else the smallest."""
    row = root.db.query_one(
        f"SELECT {_BLOB_COLUMNS} FROM layer_blobs WHERE diff_id=? "
        "ORDER BY media_type = ? DESC, size, digest LIMIT 1",
        (diff_id, media_type_for(root.layer_compression)))
    if row is None:
        raise StoreError(f"layer {diff_id} has no stored blob", digest=diff_id)
    return layer_blob(row)


def blobs_of_layer(root: StoreRoot, diff_id: str) -> tuple[LayerBlob, ...]:
    """Every recorded blob of a layer (one per compression it is stored in), by digest."""
    return tuple(layer_blob(r) for r in root.db.query(
        f"SELECT {_BLOB_COLUMNS} FROM layer_blobs WHERE diff_id=? ORDER BY digest", (diff_id,)))


def layer_blob(row) -> LayerBlob:
    return LayerBlob(diff_id=row["diff_id"], digest=row["digest"], size=row["size"],
                     media_type=row["media_type"], uncompressed_size=row["uncompressed_size"] or 0)
