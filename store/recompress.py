"""Layers in the compression an export asks for: `lamina save --format oci
--compression gzip|zstd` and `lamina build --output type=oci,compression=...`.

The store keeps layers zstd (store.layers.DEFAULT_COMPRESSION, measured 3-4x faster
than gzip), but many consumers cannot read zstd layers (umoci 0.4.7, skopeo 1.9
converting to docker-archive, docker < 23). An OCI export therefore asks for a
compression, gzip by default:

- "gzip": each zstd layer is exported as gzip; gzip and uncompressed layers are
  exported as they are stored (every consumer reads them).
- "zstd": every layer is exported as stored.

A layer to convert is streamed once, memory independent of its size:

    stored zstd blob ──sha256──▶ checked against its digest
        └──▶ decompress ──sha256──▶ checked against the diff_id
                 └──▶ gzip (store.compression: fixed parameters) ──▶ BlobWriter ──▶ blobs/

and the gzip blob is recorded as another blob of the same layer (`layer_blobs` holds
several blobs per diff_id), so the next export copies it without recompressing; gc
keeps it and fsck checks it as long as its layer is reachable, like any layer blob.
Builds keep committing the zstd blob (`Store.layer` prefers DEFAULT_COMPRESSION), so
an export never changes a built image. When the store already holds a recorded gzip
blob of the layer (from an earlier export, or pulled/loaded that way), that blob is
used (the lowest digest, if several): exports of one image from stores with
different histories may then differ in their layer blobs, never in diff_ids.

Digests: the image ID (config digest) never changes, since the config names
diff_ids, not blobs. When a layer is converted the exported manifest is a new
document - the stored manifest with those layer descriptors replaced by
{mediaType, digest, size} of the gzip blob (their annotations and urls described
the zstd blob and are dropped), written as canonical JSON - so the exported
manifest digest differs from the stored image's. Same image and same zlib ->
same bytes on any machine.
"""

from __future__ import annotations

import errno
import hashlib
from typing import TYPE_CHECKING, Literal, Mapping, Sequence

from store import compression, oci
from store.archive_tar import CHUNK, ExportImage
from store.blobs import sha256_digest
from store.errors import BlobNotFound, CorruptContent, StoreError
from store.layers import HashingReader, LayerBlob

if TYPE_CHECKING:
    from store.store import Store

ExportCompression = Literal["gzip", "zstd"]
EXPORT_COMPRESSIONS: tuple[str, ...] = ("gzip", "zstd")
DEFAULT_EXPORT_COMPRESSION: ExportCompression = "gzip"

_DOCKER_LAYER_TYPES = {"gzip": oci.DOCKER_LAYER_GZIP, "zstd": "application/vnd.docker.image.rootfs.diff.tar.zstd"}


def check_compression(kind: str) -> str:
    if kind not in EXPORT_COMPRESSIONS:
        raise StoreError(f"unknown export compression {kind!r} (expected {' or '.join(EXPORT_COMPRESSIONS)})")
    return kind


def needs_conversion(media_type: str, target: str) -> bool:
    """Whether a layer of `media_type` must be recompressed for a `target` export
    (only zstd for gzip; an unknown media type is exported as it is)."""
    try:
        kind = compression.kind_for_media_type(media_type)
    except StoreError:
        return False
    return target == "gzip" and kind == "zstd"


def layer_media_type(target: str, manifest_media_type: str) -> str:
    """The descriptor media type of a `target`-compressed layer in a manifest of that type."""
    if manifest_media_type == oci.DOCKER_MANIFEST:
        return _DOCKER_LAYER_TYPES[target]
    return compression.media_type_for(target)


def rewrite_manifest(manifest: bytes, layers: Sequence[LayerBlob | None], what: str = "manifest") -> bytes:
    """`manifest` with the layer descriptors at the positions where `layers` is not None
    replaced by {mediaType, digest, size} of that blob (the media type fitting the
    manifest's type); everything else kept. Canonical JSON. Pure."""
    m = oci.decode(manifest, what)
    descs = m.get("layers")
    if not isinstance(descs, list) or len(descs) != len(layers):
        raise CorruptContent(f"{what}: lists {len(descs) if isinstance(descs, list) else 'no'} layers, "
                             f"expected {len(layers)}")
    mt = oci.manifest_media_type(m)
    out = []
    for desc, new in zip(descs, layers):
        if new is None:
            out.append(desc)
        else:
            kind = compression.kind_for_media_type(new.media_type)
            out.append({"mediaType": layer_media_type(kind, mt), "digest": new.digest, "size": new.size})
    m["layers"] = out
    return oci.encode(m, "manifest")


def recorded_blob(store: "Store", diff_id: str, target: str) -> LayerBlob | None:
    """A recorded `target`-compressed blob of the layer whose bytes are in the store."""
    for blob in store.layer_blobs(diff_id):
        try:
            kind = compression.kind_for_media_type(blob.media_type)
        except StoreError:
            continue
        if kind == target and store.blobs.exists(blob.digest):
            return blob
    return None


def recompress_layer(store: "Store", layer: LayerBlob, target: str) -> LayerBlob:
    """Make and record the `target`-compressed blob of a stored layer (see the module
    docstring). The source blob is checked against its digest and the decompressed
    bytes against the diff_id while streaming; on any failure nothing is recorded and
    the temp file is removed."""
    what = f"layer {layer.diff_id} (blob {layer.digest})"
    try:
        with store.writing():
            with store.blobs.open(layer.digest) as f, store.blobs.writer() as bw:
                raw = HashingReader(f)
                plain = compression.open_decompressed(raw)
                h = hashlib.sha256()
                size = 0
                with compression.compress_stream(target, bw) as cw:
                    while True:
                        chunk = plain.read(CHUNK)
                        if not chunk:
                            break
                        h.update(chunk)
                        size += len(chunk)
                        cw.write(chunk)
                raw.drain()
                if raw.digest() != layer.digest:
                    raise CorruptContent(f"{what}: stored bytes do not match the digest (run lamina fsck)",
                                         digest=layer.digest)
                if "sha256:" + h.hexdigest() != layer.diff_id:
                    raise CorruptContent(f"{what}: decompresses to sha256:{h.hexdigest()}, not its diff_id "
                                         "(run lamina fsck)", digest=layer.digest)
                digest, blob_size = bw.commit()
            new = LayerBlob(diff_id=layer.diff_id, digest=digest, size=blob_size,
                            media_type=compression.media_type_for(target), uncompressed_size=size)
            store.record_layer(new)
    except BlobNotFound:
        raise StoreError(f"{what}: the blob is missing from the store (run lamina fsck)",
                         digest=layer.digest) from None
    except CorruptContent as e:
        if e.digest is None:  # from the decompressor
            raise CorruptContent(f"{what}: {e.message} (run lamina fsck)", digest=layer.digest) from None
        raise
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StoreError(f"disk full: no space left on the filesystem of the store {store.root} "
                             f"(recompressing {what} to {target})", path=str(store.root)) from None
        raise
    return new


def export_as(store: "Store", image: ExportImage, target: str,
              made: dict[str, LayerBlob] | None = None) -> ExportImage:
    """`image` as an export with `target` compression asks for it: the same ExportImage
    when no layer needs converting, else one with the converted layers and the
    rewritten manifest. `made` (diff_id -> blob) shares conversions across images."""
    check_compression(target)
    made = {} if made is None else made
    manifest = oci.decode(image.manifest, f"manifest {image.manifest_digest}")
    descs = manifest.get("layers") or []
    if len(descs) != len(image.layers):
        raise CorruptContent(f"manifest {image.manifest_digest} lists {len(descs)} layers, the store "
                             f"records {len(image.layers)} (run lamina fsck)", digest=image.manifest_digest)
    replaced: list[LayerBlob | None] = []
    for desc, layer in zip(descs, image.layers):
        if not needs_conversion(_media_type(desc, layer), target):
            replaced.append(None)
            continue
        blob = made.get(layer.diff_id)
        if blob is None:
            blob = recorded_blob(store, layer.diff_id, target) or recompress_layer(store, layer, target)
            made[layer.diff_id] = blob
        replaced.append(blob)
    if all(r is None for r in replaced):
        return image
    new_manifest = rewrite_manifest(image.manifest, replaced, f"manifest {image.manifest_digest}")
    layers = tuple(r if r is not None else l for r, l in zip(replaced, image.layers))
    return ExportImage(manifest_digest=sha256_digest(new_manifest), manifest=new_manifest,
                       config_digest=image.config_digest, config=image.config, layers=layers,
                       names=image.names)


def _media_type(desc: Mapping, layer: LayerBlob) -> str:
    mt = desc.get("mediaType") if isinstance(desc, Mapping) else None
    return mt if isinstance(mt, str) and mt else layer.media_type


__all__ = ["EXPORT_COMPRESSIONS", "DEFAULT_EXPORT_COMPRESSION", "check_compression", "needs_conversion",
           "rewrite_manifest", "recorded_blob", "recompress_layer", "export_as"]
