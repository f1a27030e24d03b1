"""Layers in the compression an export asks for: `lamina save --format oci
--compression gzip|zstd` and `lamina build --output type=oci,compression=...`.

The store keeps layers zstd by default (store.layers.DEFAULT_COMPRESSION, measured 3-4x faster
than gzip), but many consumers cannot read zstd layers (umoci 0.4.7, skopeo 1.9
converting to docker-archive, docker < 23). An OCI export therefore asks for a
compression, gzip by default:

- "gzip": each zstd layer is exported as gzip; gzip and uncompressed layers are
  exported as they are stored (every consumer reads them).
- "zstd": every layer is exported as stored (a layer stored gzip - `lamina
  --store-compression gzip`, a pull, a load - stays gzip: nothing is recompressed).

A layer to convert is streamed once, memory independent of its size:

    stored zstd blob ──sha256──▶ checked against its digest
        └──▶ decompress ──sha256──▶ checked against the diff_id
                 └──▶ gzip (store.compression: fixed parameters) ──▶ BlobWriter ──▶ blobs/

(several layers at once, one thread each, up to the CPU count), and the gzip blob is
recorded as another blob of the same layer (`layer_blobs` holds
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
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Literal, Mapping, Sequence

from lamina.store import compression, oci
from lamina.store.archive_tar import CHUNK, ExportImage
from lamina.store.blobs import sha256_digest
from lamina.store.errors import BlobNotFound, CorruptContent, StoreError
from lamina.store.layers import HashingReader, LayerBlob

if TYPE_CHECKING:
    from lamina.store.store import Store

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


class _Stopped(Exception):
    """A conversion abandoned because another one failed (or the save was interrupted)."""


def _make_blob(store: "Store", layer: LayerBlob, target: str, stop: threading.Event | None = None) -> LayerBlob:
    """Write the `target`-compressed blob of a stored layer (not recorded). The source
    blob is checked against its digest and the decompressed bytes against the diff_id
    while streaming; on failure the temp file is removed. Callers hold store.writing()."""
    what = f"layer {layer.diff_id} (blob {layer.digest})"
    try:
        with store.blobs.open(layer.digest) as f, store.blobs.writer() as bw:
            raw = HashingReader(f)
            plain = compression.open_decompressed(raw)
            h = hashlib.sha256()
            size = 0
            with compression.compress_stream(target, bw) as cw:
                while True:
                    if stop is not None and stop.is_set():
                        raise _Stopped()
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
    return LayerBlob(diff_id=layer.diff_id, digest=digest, size=blob_size,
                     media_type=compression.media_type_for(target), uncompressed_size=size)


def recompress_layers(store: "Store", layers: Sequence[LayerBlob], target: str,
                      workers: int | None = None) -> dict[str, LayerBlob]:
    """Make and record the `target`-compressed blob of each layer (diff_id -> blob),
    several layers at once in threads (zlib, zstd and hashlib release the GIL; each
    stream's bytes do not depend on the others, so the result is the same). On a
    failure the others stop, the blobs already made are still recorded, and the first
    error is raised."""
    if not layers:
        return {}
    workers = max(1, min(len(layers), workers or os.cpu_count() or 1))
    stop = threading.Event()
    made: dict[str, LayerBlob] = {}
    error: BaseException | None = None
    with store.writing():  # from the first byte written to the last blob recorded
        try:
            if workers == 1:
                for layer in layers:
                    made[layer.diff_id] = _make_blob(store, layer, target)
            else:
                with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="recompress") as pool:
                    futures = [pool.submit(_make_blob, store, l, target, stop) for l in layers]
                    try:
                        for fut in futures:
                            try:
                                blob = fut.result()
                            except _Stopped:
                                continue
                            except BaseException as e:
                                stop.set()
                                error = error or e
                                continue
                            made[blob.diff_id] = blob
                    except BaseException:  # interrupted while waiting: let the workers stop
                        stop.set()
                        raise
        except BaseException as e:
            error = error or e
        for blob in made.values():
            store.record_layer(blob)
    if error is not None:
        raise error
    return made


def recompress_layer(store: "Store", layer: LayerBlob, target: str) -> LayerBlob:
    """Make and record the `target`-compressed blob of one stored layer."""
    return recompress_layers(store, [layer], target, workers=1)[layer.diff_id]


def export_all(store: "Store", images: Sequence[ExportImage], target: str) -> list[ExportImage]:
    """`images` as an export with `target` compression asks for them: an image with no
    layer to convert is returned as it is, others with the converted layers and the
    rewritten manifest. Each layer is converted at most once (recorded blobs are
    reused; layers shared by several images are made once)."""
    check_compression(target)
    plans: list[list[LayerBlob | None]] = []
    todo: dict[str, LayerBlob] = {}
    blobs: dict[str, LayerBlob] = {}
    for image in images:
        manifest = oci.decode(image.manifest, f"manifest {image.manifest_digest}")
        descs = manifest.get("layers") or []
        if len(descs) != len(image.layers):
            raise CorruptContent(f"manifest {image.manifest_digest} lists {len(descs)} layers, the store "
                                 f"records {len(image.layers)} (run lamina fsck)", digest=image.manifest_digest)
        plan: list[LayerBlob | None] = []
        for desc, layer in zip(descs, image.layers):
            if not needs_conversion(_media_type(desc, layer), target):
                plan.append(None)
                continue
            if layer.diff_id not in blobs and layer.diff_id not in todo:
                found = recorded_blob(store, layer.diff_id, target)
                if found is not None:
                    blobs[layer.diff_id] = found
                else:
                    todo[layer.diff_id] = layer
            plan.append(layer)
        plans.append(plan)
    blobs.update(recompress_layers(store, list(todo.values()), target))
    out: list[ExportImage] = []
    for image, plan in zip(images, plans):
        if all(p is None for p in plan):
            out.append(image)
            continue
        replaced = [None if p is None else blobs[p.diff_id] for p in plan]
        manifest = rewrite_manifest(image.manifest, replaced, f"manifest {image.manifest_digest}")
        out.append(ExportImage(
            manifest_digest=sha256_digest(manifest), manifest=manifest,
            config_digest=image.config_digest, config=image.config,
            layers=tuple(r if r is not None else l for r, l in zip(replaced, image.layers)),
            names=image.names))
    return out


def _media_type(desc: Mapping, layer: LayerBlob) -> str:
    mt = desc.get("mediaType") if isinstance(desc, Mapping) else None
    return mt if isinstance(mt, str) and mt else layer.media_type


__all__ = ["EXPORT_COMPRESSIONS", "DEFAULT_EXPORT_COMPRESSION", "check_compression", "needs_conversion",
           "rewrite_manifest", "recorded_blob", "recompress_layers", "recompress_layer", "export_all"]
