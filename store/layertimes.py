"""Layers re-stamped for a SOURCE_DATE_EPOCH (BuildKit's rewrite-timestamp).

The build keeps each step's layer with the times its files really have, so a step's
cache key need not name the epoch. The image gets, for each such layer, the same tar
with every mtime clamped to the epoch (min(mtime, epoch)): `clamp_tar` rewrites the
stream member by member (headers re-encoded by store.tarformat, data copied through),
which gives byte for byte what `write_tar(dir, source_date_epoch=epoch)` writes for the
layer's directory, since lamina's tar form depends on nothing but the members.

`clamped_layer(store, layer, epoch)` stores and records that layer (same compression
as the source blob) and remembers it per (source diff_id, epoch) under
ROOT/cache/layer-times/, so committing or exporting the same layers for the same epoch
again costs one lookup. Memory does not grow with the layer's size. A build's steps
of the image's stages make it beforehand, in the walk that writes the step's layer
(store.tarwrite `clamped=`, `remember`): then the commit only looks it up.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, BinaryIO

from lamina.store.blobs import check_digest
from lamina.store.compression import compress_stream, kind_for_media_type, media_type_for, open_decompressed
from lamina.store.errors import StoreError
from lamina.store.layerrecords import clamp_record_path as _record_path, remember_clamped as remember
from lamina.store.layers import LayerBlob, _HashingWriter
from lamina.store.tarformat import END_OF_ARCHIVE, TarReader, encode_entry, padding

if TYPE_CHECKING:
    from lamina.store.lease import Lease
    from lamina.store.store import Store

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}\Z")


def clamp_tar(src: BinaryIO, out: BinaryIO, epoch: int) -> int:
    """Copy the uncompressed tar `src` to `out` with every member's mtime clamped to
    `epoch`; returns how many members were changed. The archive ends as lamina's do
    (two zero blocks, no record padding)."""
    reader = TarReader(src)
    changed = 0
    while True:
        e = reader.next()
        if e is None:
            break
        if e.mtime > epoch:
            e.mtime = epoch
            e.mtime_ns = epoch * 10**9
            changed += 1
        out.write(encode_entry(e))
        n = reader.read_data(out.write)
        out.write(padding(n))
    out.write(END_OF_ARCHIVE)
    return changed


def _recorded(store: "Store", diff_id: str, epoch: int) -> LayerBlob | None:
    try:
        target = _record_path(store, diff_id, epoch).read_text().strip()
    except OSError:
        return None
    if not _DIGEST.match(target):
        return None
    try:
        layer = store.layer(target)
    except StoreError:  # collected since: make it again
        return None
    return layer if store.blobs.exists(layer.digest) else None


def clamped_layer(store: "Store", layer: LayerBlob, epoch: int, *,
                  lease: "Lease | None" = None) -> LayerBlob:
    """The stored, recorded layer that is `layer` with its mtimes clamped to `epoch`
    (held by `lease` if given). Made once per (diff_id, epoch), streamed from the
    stored blob; when nothing is newer than the epoch it is `layer` itself."""
    check_digest(layer.diff_id)
    epoch = int(epoch)
    with store.writing():  # lookup and hold under the gc lock: gc cannot slip between
        found = _recorded(store, layer.diff_id, epoch)
        if found is not None:
            if lease is not None:
                lease.hold(layers=[found.diff_id], blobs=[found.digest])
            return found
        kind = kind_for_media_type(layer.media_type)
        with store.blobs.open(layer.digest) as f, store.blobs.writer() as bw:
            cw = compress_stream(kind, bw)
            tee = _HashingWriter(cw)
            try:
                changed = clamp_tar(open_decompressed(f), tee, epoch)
            except BaseException:
                cw.abort()
                raise
            cw.close()
            if not changed:
                new = layer
            else:
                digest, size = bw.commit()
                new = LayerBlob(diff_id=tee.digest(), digest=digest, size=size,
                                media_type=media_type_for(kind), uncompressed_size=tee.size)
        if new is not layer:
            store.record_layer(new)
        if lease is not None:
            lease.hold(layers=[new.diff_id], blobs=[new.digest])
    remember(store, layer.diff_id, epoch, new.diff_id)
    return new


__all__ = ["clamp_tar", "clamped_layer", "remember"]
