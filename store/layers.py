"""Layers as stored blobs: directory -> (diff_id, compressed blob) in one streaming pass,
and blob -> directory with the diff_id (and blob digest) checked while reading.

    tar bytes ──sha256──▶ diff_id
        └──▶ compressor ──▶ BlobWriter (sha256 ──▶ digest, temp file ──▶ blobs/)

Memory does not depend on the layer's size. DEFAULT_COMPRESSION was chosen by
measurement (bench/layer_bench.py); the numbers are in MEASUREMENT below.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from lamina.store.blobs import BlobStore, check_digest
from lamina.store.compression import (Compression, PrefixedReader, compress_stream, detect,
                               kind_for_media_type, media_type_for, open_decompressed)
from lamina.store.errors import CorruptContent, StoreError
from lamina.store.tarextract import extract_tar
from lamina.store.tarscan import TarScan
from lamina.store.tarwrite import TarMirror, write_tar

DEFAULT_COMPRESSION: Compression = "zstd"

# The compression of the layer blobs a store writes (a step's layer, `import`,
# `commit`, a layer re-stamped for an epoch of a layer written so): `Store(root,
# compression=...)`, else the process's choice (`lamina --store-compression` /
# LAMINA_STORE_COMPRESSION, set by builder.cli.app through `store_compression_in_effect`),
# else DEFAULT_COMPRESSION. It changes blobs, never content: the image ID (config,
# diff_ids) is the same in a zstd and a gzip store; the manifest digest is not. Blobs
# already stored keep their compression (layers are content-addressed and each blob is
# recorded with the media type of its real bytes), so a store written under both
# settings holds both kinds, and an image may list both: a cache hit reuses the stored
# layer's blob - the one of the store's compression when there are both - as BuildKit
# reuses existing blobs unless told to force a compression.
STORE_COMPRESSIONS: tuple[str, ...] = ("zstd", "gzip")
_in_effect: list[str] = []


def check_store_compression(kind: str) -> Compression:
    if kind not in STORE_COMPRESSIONS:
        raise StoreError(f"unknown store compression {kind!r} (expected {' or '.join(STORE_COMPRESSIONS)})")
    return kind  # type: ignore[return-value]


def store_compression(kind: str | None = None) -> Compression:
    """The compression a store writes new layer blobs in: `kind` if given, else the
    one in effect for this process, else DEFAULT_COMPRESSION."""
    if kind is not None:
        return check_store_compression(kind)
    return _in_effect[-1] if _in_effect else DEFAULT_COMPRESSION  # type: ignore[return-value]


@contextmanager
def store_compression_in_effect(kind: str | None) -> Iterator[None]:
    """Stores opened inside the block (without an explicit compression) write new layer
    blobs as `kind` (None: no change). Process-wide (the build's threads see it), undone
    on leaving, so in-process callers (tests) do not leak it."""
    if kind is None:
        yield
        return
    _in_effect.append(check_store_compression(kind))
    try:
        yield
    finally:
        _in_effect.pop()

MEASUREMENT = """\
bench/layer_bench.py --levels, 2 vCPU VM, ext4, one thread, write = tar + compress +
fsync'd blob, extract = decompress + safe extract (noisy: page-cache writeback):

/usr/lib/python3.11 (tar 53.4 MB)     MB   ratio  write s  MB/s  extract s
  none                             53.36   1.00    0.33  160.8    0.56
  gzip-6 (zlib default)            15.23   3.50    1.65   32.3    0.79
  zstd-3 (default)                 14.76   3.62    0.35  150.6    0.76
  gzip-1 / gzip-9                  17.32 / 15.04   0.59 / 12.11
  zstd-1 / zstd-9 / zstd-19        16.31 / 12.86 / 11.14   0.26 / 1.37 / 26.1
busybox + /usr/share/{doc,perl,zoneinfo,i18n,locale} (tar 316.8 MB)
  none                            316.81   1.00    1.72  184.2    3.37
  gzip-6                          126.58   2.50   20.48   15.5   10.13
  zstd-3 (default)                106.35   2.98    6.09   52.1    6.41
  zstd-9                           93.52   3.39   19.34   16.4    9.38

(Since then zstd runs with 2 pinned worker threads, store.compression.ZSTD_WORKERS:
write_tar -> sha256 -> zstd-3 of a 208 MB tree went from 2.07 s to 0.92 s on tmpfs.)

zstd-3 writes 3-5x faster than gzip-6 and is 3-16% smaller, so it is the default for
stored layers. gzip stays available for consumers without zstd support (docker < 23,
old registries); zstd-9 buys ~12% size for 4x the time - a push-time option at most.
"""

CHUNK = 1 << 20


@dataclass(frozen=True)
class LayerBlob:
    diff_id: str  # sha256 of the uncompressed tar
    digest: str  # sha256 of the stored (compressed) blob
    size: int  # bytes of the stored blob
    media_type: str
    uncompressed_size: int


class _HashingWriter:
    """Passes writes to `out` while hashing and counting them."""

    def __init__(self, out) -> None:
        self._out = out
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self._hash.update(data)
        self._out.write(data)
        n = memoryview(data).nbytes
        self.size += n
        return n

    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


class HashingReader:
    """Reads from `raw` while hashing and counting what was read."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._hash = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self._hash.update(data)
        self.size += len(data)
        return data

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        while self.read(CHUNK):
            pass

    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


def write_layer(blobs: BlobStore, src: Path, *, compression: Compression = DEFAULT_COMPRESSION,
                source_date_epoch: int | None = None) -> LayerBlob:
    """Archive `src` (overlay form) as a compressed layer blob; one pass, streamed."""
    media_type = media_type_for(compression)
    with blobs.writer() as bw:
        with compress_stream(compression, bw) as cw:
            tee = _HashingWriter(cw)
            write_tar(src, tee, source_date_epoch=source_date_epoch)
        digest, size = bw.commit()
    return LayerBlob(diff_id=tee.digest(), digest=digest, size=size, media_type=media_type,
                     uncompressed_size=tee.size)


def write_layer_pair(blobs: BlobStore, src: Path, clamp_epoch: int, *,
                     compression: Compression = DEFAULT_COMPRESSION) -> tuple[LayerBlob, LayerBlob | None]:
    """write_layer(src) and, from the same walk, the layer with every mtime clamped to
    `clamp_epoch` (what store.layertimes would make of it later, byte for byte): the
    step's layer and the image's, one read of the tree. The second is None when no
    mtime is newer than the epoch (the layer is its own clamped form)."""
    media_type = media_type_for(compression)
    with blobs.writer() as bw, blobs.writer() as bw2:
        with compress_stream(compression, bw) as cw, compress_stream(compression, bw2) as cw2:
            tee, tee2 = _HashingWriter(cw), _HashingWriter(cw2)
            changed = write_tar(src, tee, clamped=(tee2, int(clamp_epoch)))
        digest, size = bw.commit()
        clamped = None
        if changed:
            digest2, size2 = bw2.commit()
            clamped = LayerBlob(diff_id=tee2.digest(), digest=digest2, size=size2,
                                media_type=media_type, uncompressed_size=tee2.size)
    layer = LayerBlob(diff_id=tee.digest(), digest=digest, size=size, media_type=media_type,
                      uncompressed_size=tee.size)
    return layer, clamped


def extract_as_layer(blobs: BlobStore, tar: BinaryIO, dest: Path, *,
                     compression: Compression = DEFAULT_COMPRESSION,
                     source_date_epoch: int | None = None) -> LayerBlob:
    """Extract the uncompressed tar stream `tar` safely into the existing dir `dest` and
    store the layer of the tree it makes: the blob write_layer(dest) would store, byte
    for byte. One pass when the tar is already in lamina's form (the TarMirror checks
    every member); otherwise (unsorted, duplicate or implied members...) the mirror
    gives up and the tree is archived after the extraction, as write_layer does."""
    media_type = media_type_for(compression)
    with blobs.writer() as bw:
        cw = compress_stream(compression, bw)
        tee = _HashingWriter(cw)
        mirror = TarMirror(tee, source_date_epoch=source_date_epoch)
        try:
            extract_tar(tar, dest, mirror=mirror)
        except BaseException:
            cw.abort()
            raise
        if mirror.active:
            mirror.finish()
            cw.close()
            digest, size = bw.commit()
            return LayerBlob(diff_id=tee.digest(), digest=digest, size=size, media_type=media_type,
                             uncompressed_size=tee.size)
        cw.abort()
    return write_layer(blobs, dest, compression=compression, source_date_epoch=source_date_epoch)


def write_layer_from_tar(blobs: BlobStore, tar: BinaryIO, *,
                         compression: Compression = DEFAULT_COMPRESSION) -> LayerBlob:
    """Store an existing layer tar stream (any of the 3 compressions, detected) as a
    blob compressed with `compression` - e.g. `lamina import`. The tar is not parsed."""
    media_type = media_type_for(compression)
    src = open_decompressed(tar)
    with blobs.writer() as bw:
        with compress_stream(compression, bw) as cw:
            tee = _HashingWriter(cw)
            while True:
                chunk = src.read(CHUNK)
                if not chunk:
                    break
                tee.write(chunk)
        digest, size = bw.commit()
    return LayerBlob(diff_id=tee.digest(), digest=digest, size=size, media_type=media_type,
                     uncompressed_size=tee.size)


def diff_id_of(stream: BinaryIO) -> tuple[str, int]:
    """(diff_id, uncompressed size) of a layer stream in any of the 3 compressions.
    The tar is walked member by member on the way (headers, checksums, sizes, the
    end-of-archive marker): CorruptContent if it is not a valid tar, so a damaged
    layer is refused when it arrives, not when a build first extracts it."""
    r = HashingReader(open_decompressed(stream))
    scan = TarScan()
    while True:
        block = r.read(CHUNK)
        if not block:
            break
        if not scan.ended:
            scan.feed(block)
    scan.finish()
    return r.digest(), r.size


def describe_layer(blobs: BlobStore, digest: str) -> LayerBlob:
    """LayerBlob of a stored blob (diff_id computed by streaming; the blob digest is
    re-checked on the way: CorruptContent if the stored bytes do not match)."""
    with blobs.open(digest) as f:
        raw = HashingReader(f)
        head = raw.read(6)
        kind = detect(head)
        diff_id, usize = diff_id_of(PrefixedReader(head, raw))  # type: ignore[arg-type]
        raw.drain()
    if raw.digest() != digest:
        raise CorruptContent(f"stored blob {digest} does not match its digest "
                             f"(got {raw.digest()})", digest=digest)
    return LayerBlob(diff_id=diff_id, digest=digest, size=raw.size,
                     media_type=media_type_for(kind), uncompressed_size=usize)


def extract_layer(blobs: BlobStore, layer_digest: str, dest: Path, *,
                  expected_diff_id: str | None = None) -> str:
    """Extract stored layer `layer_digest` (gzip, zstd or plain) into `dest`; returns the
    diff_id computed while reading. CorruptContent when the blob does not match its
    digest or the tar does not match `expected_diff_id` (then `dest` holds a partial
    extraction the caller must discard)."""
    check_digest(layer_digest)
    if expected_diff_id is not None:
        check_digest(expected_diff_id)
    with blobs.open(layer_digest) as f:
        raw = HashingReader(f)
        tar = HashingReader(open_decompressed(raw))
        extract_tar(tar, dest)
        tar.drain()  # padding after the end-of-archive marker is part of the diff_id
        raw.drain()
    if raw.digest() != layer_digest:
        raise CorruptContent(f"stored blob {layer_digest} does not match its digest "
                             f"(got {raw.digest()})", digest=layer_digest)
    diff_id = tar.digest()
    if expected_diff_id is not None and diff_id != expected_diff_id:
        raise CorruptContent(f"layer {layer_digest} has diff_id {diff_id}, expected "
                             f"{expected_diff_id}", digest=layer_digest)
    return diff_id


__all__ = ["LayerBlob", "DEFAULT_COMPRESSION", "STORE_COMPRESSIONS", "store_compression",
           "store_compression_in_effect", "write_layer", "write_layer_pair", "write_layer_from_tar", "extract_as_layer",
           "extract_layer", "diff_id_of", "describe_layer", "kind_for_media_type"]
