"""Layer blobs the store has recorded but not fetched yet, and where they are.

A layer can be known by its descriptor (digest, size, media type) and diff_id before
its bytes are here: the layers of a base image a build pulled for FROM (its config is
all a build needs until a step reads the base's files), and the layers of remote cache
hits a build committed into its image. Such a layer blob is *remote*: its `layer_blobs`
row is written as for any layer, and a `remote_blobs` row names the repository that
has it (``DOMAIN/PATH``, e.g. ``localhost:5000/team/cache``).

Reading it fetches it (``Store``'s BlobStore hook -> store.registry.pull.fetch_remote):
verified against its digest, size and recorded diff_id and walked as a tar while it
arrives, as any pulled layer; the row goes once the blob is stored. So a build whose
steps all hit the remote cache and which only pushes downloads nothing: the push
mounts each remote blob from its repository when it is on the same registry (and
fetches it otherwise). What cannot be fetched when it is read is a clear StoreError
naming the layer and the repository.

gc keeps a remote row while a layer row holds its digest; fsck counts a remote blob
as present (not fetched is not missing).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from lamina.store.layerrecords import insert_layer
from lamina.store.layers import LayerBlob

if TYPE_CHECKING:
    from lamina.store.root import StoreRoot


def record(root: "StoreRoot", layers: Sequence[LayerBlob], source: str) -> None:
    """Record `layers` (descriptors and diff_ids) as available from repository
    `source`; a blob already stored stays a plain stored blob."""
    with root.writing():
        with root.db.write() as c:
            for layer in layers:
                insert_layer(c, layer)
                if not root.blobs.exists(layer.digest):
                    c.execute("INSERT OR IGNORE INTO remote_blobs(digest, source) VALUES (?,?)",
                              (layer.digest, source))


def conflicting(root: "StoreRoot", layers: Sequence[LayerBlob]) -> list[LayerBlob]:
    """Those of `layers` whose blob digest the store already knows as another layer
    (another image's claim, or the blob's verified content): the bytes must decide
    (store.Store.record_remote_layers), never the first claim."""
    out = []
    for layer in layers:
        known = layer_of(root, layer.digest)
        if known is not None and known.diff_id != layer.diff_id:
            out.append(layer)
    return out


def settle(root: "StoreRoot", layer: LayerBlob) -> None:
    """Blob `layer.digest` is stored and its bytes were verified to be `layer` (digest,
    tar walk, diff_id): a recorded claim that said it is another layer is replaced,
    and the blob is no longer remote."""
    with root.db.write() as c:
        row = c.execute("SELECT diff_id FROM layer_blobs WHERE digest=?", (layer.digest,)).fetchone()
        if row is None or row[0] == layer.diff_id:
            return
        c.execute("INSERT OR IGNORE INTO layers(diff_id, size) VALUES (?,?)",
                  (layer.diff_id, layer.uncompressed_size))
        c.execute("UPDATE layer_blobs SET diff_id=?, media_type=?, size=?, uncompressed_size=? "
                  "WHERE digest=?", (layer.diff_id, layer.media_type, layer.size,
                                      layer.uncompressed_size, layer.digest))
        c.execute("DELETE FROM remote_blobs WHERE digest=?", (layer.digest,))


def source_of(root: "StoreRoot", digest: str) -> str | None:
    """The repository a recorded, not yet fetched blob comes from (None: not remote)."""
    row = root.db.query_one("SELECT source FROM remote_blobs WHERE digest=?", (digest,))
    return row["source"] if row is not None else None


def is_remote(root: "StoreRoot", digest: str) -> bool:
    return source_of(root, digest) is not None


def fetched(root: "StoreRoot", digest: str) -> None:
    """The blob is stored now: it is a plain stored blob from here on."""
    with root.db.write() as c:
        c.execute("DELETE FROM remote_blobs WHERE digest=?", (digest,))


def remote_digests(root: "StoreRoot") -> set[str]:
    return {r["digest"] for r in root.db.query("SELECT digest FROM remote_blobs")}


def layer_of(root: "StoreRoot", digest: str) -> LayerBlob | None:
    """The layer a recorded blob belongs to (its descriptor and diff_id)."""
    row = root.db.query_one("SELECT digest, diff_id, media_type, size, uncompressed_size "
                            "FROM layer_blobs WHERE digest=?", (digest,))
    if row is None:
        return None
    return LayerBlob(diff_id=row["diff_id"], digest=row["digest"], size=row["size"],
                     media_type=row["media_type"], uncompressed_size=row["uncompressed_size"] or 0)
