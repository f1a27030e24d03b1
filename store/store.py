"""The `Store` facade: one lamina store root, everything the CLI, the archive code
and the build engine do with images, layers, tags, the build cache and leases.

It sits on top of its parts and only delegates: store.root (directories, database,
blobs, locks - the StoreRoot it extends), store.images (resolve, load, list,
commit), store.tags (tag, untag, rmi), store.layerrecords and store.layerdirs
(layer blobs and extracted dirs), store.imageviews (history, inspect),
store.cache, store.lease, store.rootfs (import), store.gc, store.fsck, store.usage,
store.remoteblobs (layers recorded before their blobs are fetched).
Those modules take a StoreRoot and never import this one.

Write order everywhere: bytes first (blob or dir, renamed into place), metadata
last (one SQLite transaction). A crash at any point leaves at worst unreferenced
bytes, which gc removes and fsck only mentions. Writers hold the gc lock shared
from their first byte to their commit (`Store.writing()`), so gc never deletes
bytes that are about to be referenced.

Rules for callers (the build engine, archive load):
- write blobs and record them inside one `with store.writing():` (or use
  `store.write_layer`, which does); hold what a build uses in `store.lease()`
  (`cache.lookup(key, lease=...)` holds a hit atomically);
- never call Store methods inside `store.db.write()` (gc waits for writers while
  holding the gc lock; a writer waiting for the gc lock inside a transaction
  would deadlock them both);
- layer dirs are ROOT/layers/<12+ hex>: mount overlay from cwd=store.layers_root
  with `lowerdir=<name>:<name>...` (relative names) so that 120+ layers fit in
  the one-page mount data; never write into a layer dir (dedup hard links).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any, Mapping, Sequence

from lamina.store import (fsck as fsck_, gc as gc_, images as images_, imageviews, layerrecords,
                          remoteblobs, tags as tags_)
from lamina.store.cache import BuildCache, CacheEntry
from lamina.store.epoch import source_date_epoch
from lamina.store.errors import CorruptContent
from lamina.store.imageviews import HistoryEntry
from lamina.store.images import Image, ImageSummary
from lamina.store.layerdirs import make_layer_dir
from lamina.store.layers import LayerBlob
from lamina.store.lease import Lease
from lamina.store.root import STORE_MODE, StoreRoot, disk_errors, make_private_root
from lamina.store.rootfs import import_rootfs
from lamina.store.usage import usage

__all__ = ["Store", "Image", "ImageSummary", "HistoryEntry", "CacheEntry", "LayerBlob",
           "source_date_epoch", "make_private_root", "STORE_MODE"]


class Store(StoreRoot):
    """A lamina store at `root` (created on first use).

    `file_dedup` (off by default) hard-links identical files across extracted layer
    dirs. It is off because the links are visible through an overlay mount: a RUN
    sees st_nlink 2, `COPY --from` and `tar` in a RUN turn two files into a hard-link
    pair, so a build's output would depend on what else happens to be in the store —
    the opposite of reproducible. Turn it on only for a store that is read, not
    built on (e.g. an archive of imported images); blobs are deduplicated always.
    """

    def __init__(self, root: Path, *, file_dedup: bool = False, compression: str | None = None) -> None:
        super().__init__(root, file_dedup=file_dedup, compression=compression)
        self.cache = BuildCache(self)
        self.blobs.fetch_missing = self._fetch_remote

    def _fetch_remote(self, digest: str) -> bool:
        """A blob read but not here: fetch it if it is a recorded remote layer blob
        (store.remoteblobs); False if it is not one."""
        source = remoteblobs.source_of(self, digest)
        if source is None:
            return False
        from lamina.store.registry.pull import fetch_remote  # the client only when needed
        fetch_remote(self, digest, source)
        return True

    def __enter__(self) -> "Store":
        return self

    def lease(self) -> Lease:
        """`with store.lease() as lease:` — what the lease holds survives gc."""
        return Lease(self)

    # -- images ----------------------------------------------------------------------

    def resolve(self, ref: str) -> Image:
        return images_.resolve(self, ref)

    def _resolve_digest(self, ref: str) -> str:
        return images_.resolve_digest(self, ref)

    def _load_image(self, manifest_digest: str, ref: str | None = None) -> Image:
        return images_.load_image(self, manifest_digest, ref)

    def images(self) -> list[ImageSummary]:
        return images_.list_images(self)

    @disk_errors
    def commit_image(self, config: Mapping[str, Any], layers: Sequence[LayerBlob],
                     tags: Sequence[str] = (), *, manifest_annotations: Mapping[str, str] | None = None) -> Image:
        """Write the config and manifest blobs (canonical JSON) and record the image,
        its layers and `tags`, in one transaction."""
        return images_.commit_image(self, config, layers, tags, manifest_annotations=manifest_annotations)

    @disk_errors
    def add_manifest(self, manifest_bytes: bytes, config_bytes: bytes, layers: Sequence[LayerBlob],
                     tags: Sequence[str] = ()) -> Image:
        """Record an image from existing manifest/config bytes (kept as they are, so
        the digests stay those of the source). The layer blobs must be stored."""
        return images_.add_manifest(self, manifest_bytes, config_bytes, layers, tags)

    @disk_errors
    def import_rootfs(self, tarball: Path, ref: str | None, *, changes: Mapping[str, Any] | None = None,
                      message: str | None = None, compression: str | None = None,
                      source_date_epoch: int | None = None) -> Image:
        """`docker import`: a root filesystem tar (plain, gzip, zstd, xz or bzip2)
        becomes a one-layer image tagged `ref` (see store.rootfs)."""
        return import_rootfs(self, Path(tarball), ref, changes=changes, message=message,
                             compression=compression, source_date_epoch=source_date_epoch)

    # -- tags ------------------------------------------------------------------------

    def tag(self, ref: str, target: str) -> Image:
        """Point tag `ref` at the image `target` names (`lamina tag TARGET REF`)."""
        return tags_.tag(self, ref, target)

    def untag(self, ref: str) -> str:
        """Remove a tag (the image stays). Returns the manifest digest it pointed at."""
        return tags_.untag(self, ref)

    def remove_image(self, ref: str, *, force: bool = False, users=None) -> list[str]:
        """`rmi` as docker (see store.tags.remove_image; `users`: what uses an image)."""
        return tags_.remove_image(self, ref, force=force, users=users)

    # -- layers ----------------------------------------------------------------------

    def record_layer(self, layer: LayerBlob) -> None:
        """Make a stored layer blob known (its blob must exist)."""
        layerrecords.record_layer(self, layer)

    def record_remote_layers(self, layers: Sequence[LayerBlob], source: str) -> None:
        """Make layers known whose blobs repository `source` (DOMAIN/PATH) has, without
        fetching them: the first read fetches (store.remoteblobs). A blob the store
        already knows as another layer is fetched now and its bytes decide: the claim
        that lied (an earlier one is replaced, this one is refused: CorruptContent)."""
        for layer in remoteblobs.conflicting(self, layers):
            if not self.blobs.exists(layer.digest):
                from lamina.store.registry.pull import fetch_remote
                try:  # verified against the earlier claim; a false one is settled
                    fetch_remote(self, layer.digest, source, layer)
                except CorruptContent:
                    pass
            else:  # stored: what its bytes are, whatever was recorded
                from lamina.store.layers import describe_layer
                remoteblobs.settle(self, describe_layer(self.blobs, layer.digest))
            known = remoteblobs.layer_of(self, layer.digest)
            if known is not None and known.diff_id != layer.diff_id:
                raise CorruptContent(f"layer blob {layer.digest} of {source} holds layer "
                                     f"{known.diff_id}, the image says {layer.diff_id}",
                                     digest=layer.digest)
        remoteblobs.record(self, layers, source)

    def remote_source(self, digest: str) -> str | None:
        """The repository a recorded layer blob is still to be fetched from, if any."""
        return remoteblobs.source_of(self, digest)

    @disk_errors
    def write_layer(self, src_dir: Path, *, compression: str | None = None,
                    source_date_epoch: int | None = None, lease: Lease | None = None,
                    clamp_epoch: int | None = None) -> LayerBlob:
        """Archive `src_dir` as a layer blob and record it, safe from a concurrent gc
        (held by `lease` if given); `clamp_epoch`: also its form with mtimes clamped to
        that epoch, in the same walk (store.layertimes finds it). `compression`: default
        the store's (`layer_compression`)."""
        return layerrecords.write_layer(self, src_dir, compression=compression,
                                        source_date_epoch=source_date_epoch, lease=lease,
                                        clamp_epoch=clamp_epoch)

    def layer(self, diff_id: str) -> LayerBlob:
        """The blob the build engine uses for a layer: the one in the store's compression
        (`layer_compression`) when several exist (e.g. a gzip blob an OCI export added to
        a zstd store), else the smallest. So an export never changes what a build
        commits, nor a built image's manifest."""
        return layerrecords.preferred_blob(self, diff_id)

    def layer_blobs(self, diff_id: str) -> tuple[LayerBlob, ...]:
        """Every recorded blob of a layer (one per compression it is stored in), by digest."""
        return layerrecords.blobs_of_layer(self, diff_id)

    def layer_dir(self, diff_id: str) -> Path:
        """The extracted directory of a layer (overlay lower form), made on first use."""
        row = layerrecords.layer_row(self, diff_id)
        if row["dir"] and (self.layers_root / row["dir"]).is_dir():
            return self.layers_root / row["dir"]
        return self._make_layer_dir(diff_id, None)

    def adopt_layer_dir(self, diff_id: str, src_dir: Path) -> Path:
        """Make `src_dir` (e.g. a RUN's upper dir, on the store's filesystem) the
        layer's directory by renaming it. The store owns `src_dir` afterwards; if the
        layer already has a directory, `src_dir` is removed."""
        layerrecords.layer_row(self, diff_id)
        return self._make_layer_dir(diff_id, Path(src_dir))

    @disk_errors
    def _make_layer_dir(self, diff_id: str, src_dir: Path | None) -> Path:
        return make_layer_dir(self, diff_id, src_dir)

    # -- history / inspect -------------------------------------------------------------

    def history(self, ref: str) -> list[HistoryEntry]:
        """The config's history, newest first, with each layer's size (docker history)."""
        return imageviews.history(self.resolve(ref))

    def inspect(self, ref: str) -> dict[str, Any]:
        """What `docker image inspect` prints for one image (one object)."""
        return imageviews.inspect(self, self.resolve(ref))

    # -- maintenance -------------------------------------------------------------------

    def gc(self, *, cache_max_age: timedelta | None = None, cache_max_bytes: int | None = None):
        return gc_.collect(self, cache_max_age=cache_max_age, cache_max_bytes=cache_max_bytes)

    def fsck(self, *, quick: bool = False, repair: bool = False, deep: bool | None = None):
        """Check the store (store.fsck): every blob re-hashed, every reference, every
        layer blob's diff_id and every extracted layer dir against its layer; `quick`:
        blobs and references only. `repair` then removes damaged layer dirs (they are
        re-extracted on next use). `deep` is the old spelling: deep=False means quick."""
        if deep is not None:
            quick = not deep
        rep = fsck_.check(self, quick=quick)
        if repair and (rep.damaged_dirs or rep.loose_modes):
            fsck_.repair(self, rep)
        return rep

    def du(self):
        return usage(self)


def source_date_epoch_value(value: int | None) -> int | None:
    return source_date_epoch(value)
