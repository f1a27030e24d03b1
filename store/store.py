"""The `Store` facade: one lamina store root, everything the CLI, the archive code
and the build engine do with images, layers, tags, the build cache and leases.

Layout of ROOT:
    lamina.db            metadata (store.db)
    blobs/sha256/<hex>   content-addressed blobs (store.blobs)
    layers/<short>       extracted layer dirs, overlay lower form (store.layerdirs)
    tmp/                 temp entries, named after their owner process (store.locks)
    locks/, leases/      lock files (store.locks, store.lease)
    gc.lock              writers shared, gc exclusive

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

import errno
import functools
import os
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Mapping, Sequence

from lamina.store import oci, refs
from lamina.store.blobs import BlobStore, sha256_digest
from lamina.store.cache import BuildCache, CacheEntry
from lamina.store.compression import media_type_for
from lamina.store.db import Database
from lamina.store.errors import BlobNotFound, CorruptContent, ImageNotFound, StoreError
from lamina.store.layerdirs import make_layer_dir
from lamina.store.layers import DEFAULT_COMPRESSION, LayerBlob, write_layer
from lamina.store.lease import Lease
from lamina.store.locks import GcLock, Owner, clean_stale_temp
from lamina.store.rootfs import import_rootfs

__all__ = ["Store", "Image", "ImageSummary", "HistoryEntry", "CacheEntry", "LayerBlob"]


@dataclass(frozen=True)
class Image:
    """One stored image. `config_digest` is the image ID docker prints."""

    manifest_digest: str
    config_digest: str
    manifest: Mapping[str, Any]
    config: Mapping[str, Any]
    layers: tuple[LayerBlob, ...]
    tags: tuple[str, ...]  # familiar form: app:latest

    @property
    def id(self) -> str:
        return self.config_digest

    @property
    def short_id(self) -> str:
        return self.config_digest.split(":", 1)[1][:12]

    @property
    def size(self) -> int:
        return sum(l.uncompressed_size for l in self.layers)


@dataclass(frozen=True)
class ImageSummary:
    manifest_digest: str
    config_digest: str
    tags: tuple[str, ...]
    created: str | None
    size: int
    added: float


@dataclass(frozen=True)
class HistoryEntry:
    image_id: str | None  # the image ID on the newest entry, None ("<missing>") below
    created: str | None
    created_by: str
    size: int
    comment: str
    empty_layer: bool


def _disk_errors(fn):
    """Turn ENOSPC / EDQUOT into one clear StoreError."""
    @functools.wraps(fn)
    def wrapper(self: "Store", *a, **kw):
        try:
            return fn(self, *a, **kw)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StoreError(f"disk full: no space left on the filesystem of the store "
                                 f"{self.root}" + (f" (writing {e.filename})" if e.filename else ""),
                                 path=str(e.filename or self.root)) from None
            raise
    return wrapper


def source_date_epoch(value: int | None = None) -> int | None:
    """The SOURCE_DATE_EPOCH in force: `value`, else the environment, else None."""
    if value is not None:
        return int(value)
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env is None or env == "":
        return None
    try:
        v = int(env)
    except ValueError:
        raise StoreError(f"SOURCE_DATE_EPOCH must be an integer number of seconds, got {env!r}") from None
    if v < 0:
        raise StoreError(f"SOURCE_DATE_EPOCH must not be negative, got {env!r}")
    return v


STORE_MODE = 0o700


def make_private_root(root: Path) -> None:
    """Create the store root 0700 from its first mkdir, and tighten an existing one.

    The store holds what RUN steps made, setuid-root files included, and the
    neighbours of secrets: the root's mode is the one gate that keeps every other
    local user out of all of it (as /var/lib/docker's 0710)."""
    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        root.mkdir(mode=STORE_MODE)
    except FileExistsError:
        st = root.stat()
        if st.st_uid == os.geteuid() and st.st_mode & 0o077:
            os.chmod(root, STORE_MODE)


class Store:
    """A lamina store at `root` (created on first use).

    `file_dedup` (off by default) hard-links identical files across extracted layer
    dirs. It is off because the links are visible through an overlay mount: a RUN
    sees st_nlink 2, `COPY --from` and `tar` in a RUN turn two files into a hard-link
    pair, so a build's output would depend on what else happens to be in the store —
    the opposite of reproducible. Turn it on only for a store that is read, not
    built on (e.g. an archive of imported images); blobs are deduplicated always.
    """

    def __init__(self, root: Path, *, file_dedup: bool = False) -> None:
        self.root = Path(root)
        self.file_dedup = file_dedup
        try:
            make_private_root(self.root)
            for sub in ("blobs", "layers", "tmp", "locks", "leases"):
                (self.root / sub).mkdir(mode=0o700, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create the store at {self.root}: {e.strerror or e}",
                             path=str(self.root)) from None
        self.layers_root = self.root / "layers"
        self.tmp_dir = self.root / "tmp"
        self.locks_dir = self.root / "locks"
        self.db = Database(self.root / "lamina.db")
        self.blobs = BlobStore(self.root)
        self.gc_lock = GcLock(self.root / "gc.lock")
        self.cache = BuildCache(self)
        self._owner: Owner | None = None
        clean_stale_temp(self.tmp_dir)

    # -- process plumbing ------------------------------------------------------------

    @property
    def owner(self) -> Owner:
        if self._owner is None or self._owner.pid != os.getpid():
            self._owner = Owner(self.tmp_dir)
        return self._owner

    def temp_path(self, purpose: str) -> Path:
        """A fresh path in ROOT/tmp that is removed if this process dies."""
        return self.owner.temp_path(purpose)

    def close(self) -> None:
        if self._owner is not None:
            self._owner.close()
            self._owner = None
        self.db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def writing(self):
        """Hold the gc lock shared: wrap "write bytes, then record them" in it."""
        return self.gc_lock.shared()

    def lease(self) -> Lease:
        """`with store.lease() as lease:` — what the lease holds survives gc."""
        return Lease(self)

    # -- resolving -----------------------------------------------------------------

    def resolve(self, ref: str) -> Image:
        return self._load_image(self._resolve_digest(ref), ref)

    def _resolve_digest(self, ref: str) -> str:
        """The manifest digest `ref` names."""
        if not isinstance(ref, str) or not ref.strip():
            raise ImageNotFound("no such image: empty reference", ref=str(ref))
        db = self.db
        full = ref if refs.is_digest(ref) else ("sha256:" + ref if refs.is_digest("sha256:" + ref) else None)
        if full is not None:
            row = db.query_one("SELECT manifest_digest FROM images WHERE config_digest=? "
                               "ORDER BY added DESC LIMIT 1", (full,))
            if row is None:
                row = db.query_one("SELECT manifest_digest FROM images WHERE manifest_digest=?", (full,))
            if row is None:
                raise ImageNotFound(f"no such image: {ref}", ref=ref)
            return row["manifest_digest"]
        parse_error: StoreError | None = None
        try:
            r = refs.parse(ref)
        except refs.InvalidReference as e:
            parse_error, r = e, None
        if r is not None:
            if r.digest is not None:
                row = db.query_one("SELECT manifest_digest FROM images WHERE manifest_digest=?", (r.digest,))
            else:
                row = db.query_one("SELECT manifest_digest FROM tags WHERE name=?", (str(r),))
            if row is not None:
                return row["manifest_digest"]
        if refs.looks_like_id(ref):
            prefix = ref if ref.startswith("sha256:") else "sha256:" + ref
            rows = db.query("SELECT DISTINCT config_digest FROM images WHERE config_digest >= ? AND "
                            "config_digest < ?", (prefix, prefix + "g"))
            if len(rows) > 1:
                raise ImageNotFound(f"ambiguous image ID prefix {ref!r}: matches {len(rows)} images", ref=ref)
            if rows:
                row = db.query_one("SELECT manifest_digest FROM images WHERE config_digest=? "
                                   "ORDER BY added DESC LIMIT 1", (rows[0][0],))
                return row["manifest_digest"]
        if parse_error is not None:
            raise parse_error
        raise ImageNotFound(f"no such image: {ref}", ref=ref)

    def _load_image(self, manifest_digest: str, ref: str | None = None) -> Image:
        with self.db.read() as c:
            row = c.execute("SELECT * FROM images WHERE manifest_digest=?", (manifest_digest,)).fetchone()
            if row is None:
                raise ImageNotFound(f"no such image: {ref or manifest_digest}", ref=ref)
            lrows = c.execute(
                "SELECT il.digest, il.diff_id, lb.media_type, lb.size, lb.uncompressed_size "
                "FROM image_layers il LEFT JOIN layer_blobs lb ON lb.digest = il.digest "
                "WHERE il.manifest_digest=? ORDER BY il.idx", (manifest_digest,)).fetchall()
            tags = [t["name"] for t in c.execute(
                "SELECT name FROM tags WHERE manifest_digest=? ORDER BY name", (manifest_digest,))]
        try:
            manifest = oci.decode(self.blobs.read(manifest_digest), f"manifest {manifest_digest}")
            config = oci.decode(self.blobs.read(row["config_digest"]), f"config {row['config_digest']}")
        except BlobNotFound as e:
            if self.db.query_one("SELECT 1 FROM images WHERE manifest_digest=?", (manifest_digest,)) is None:
                raise ImageNotFound(f"no such image: {ref or manifest_digest} (just removed)", ref=ref) from None
            raise StoreError(f"image {ref or manifest_digest} is damaged: {e} (run `lamina fsck`)",
                             digest=e.digest) from None
        layers = tuple(LayerBlob(diff_id=l["diff_id"], digest=l["digest"], size=l["size"] or 0,
                                 media_type=l["media_type"] or "", uncompressed_size=l["uncompressed_size"] or 0)
                       for l in lrows)
        return Image(manifest_digest, row["config_digest"], manifest, config, layers,
                     tuple(refs.familiar(t) for t in tags))

    def images(self) -> list[ImageSummary]:
        with self.db.read() as c:
            rows = c.execute("SELECT * FROM images ORDER BY added DESC, manifest_digest").fetchall()
            tags: dict[str, list[str]] = {}
            for t in c.execute("SELECT name, manifest_digest FROM tags ORDER BY name"):
                tags.setdefault(t["manifest_digest"], []).append(refs.familiar(t["name"]))
        return [ImageSummary(r["manifest_digest"], r["config_digest"], tuple(tags.get(r["manifest_digest"], ())),
                             r["created"], r["size"], r["added"]) for r in rows]

    # -- writing images --------------------------------------------------------------

    def record_layer(self, layer: LayerBlob) -> None:
        """Make a stored layer blob known (its blob must exist)."""
        with self.writing():
            if not self.blobs.exists(layer.digest):
                raise BlobNotFound(f"layer blob {layer.digest} is not in the store", digest=layer.digest)
            with self.db.write() as c:
                _insert_layer(c, layer)

    @_disk_errors
    def write_layer(self, src_dir: Path, *, compression: str = DEFAULT_COMPRESSION,
                    source_date_epoch: int | None = None, lease: Lease | None = None) -> LayerBlob:
        """Archive `src_dir` as a layer blob and record it, safe from a concurrent gc
        (held by `lease` if given)."""
        with self.writing():
            layer = write_layer(self.blobs, Path(src_dir), compression=compression,  # type: ignore[arg-type]
                                source_date_epoch=source_date_epoch)
            with self.db.write() as c:
                _insert_layer(c, layer)
            if lease is not None:
                lease.hold(layers=[layer.diff_id], blobs=[layer.digest])
        return layer

    @_disk_errors
    def commit_image(self, config: Mapping[str, Any], layers: Sequence[LayerBlob],
                     tags: Sequence[str] = (), *, manifest_annotations: Mapping[str, str] | None = None) -> Image:
        """Write the config and manifest blobs (canonical JSON) and record the image,
        its layers and `tags`, in one transaction."""
        parsed_tags = [refs.parse_tag(t) for t in tags]  # fail before writing anything
        cfg = _finish_config(config, layers)
        config_bytes = oci.encode(cfg, "config")
        with self.writing():
            for l in layers:
                if not self.blobs.exists(l.digest):
                    raise BlobNotFound(f"layer blob {l.digest} is not in the store", digest=l.digest)
            config_digest = self.blobs.put(config_bytes)
            manifest = oci.build_manifest(
                oci.Descriptor(oci.OCI_CONFIG, config_digest, len(config_bytes)),
                [oci.Descriptor(l.media_type, l.digest, l.size) for l in layers],
                annotations=manifest_annotations)
            manifest_bytes = oci.encode(manifest, "manifest")
            manifest_digest = self.blobs.put(manifest_bytes)
            self._record_image(manifest_digest, manifest_bytes, manifest, config_digest, config_bytes, cfg,
                               layers, parsed_tags)
        return self._load_image(manifest_digest)

    @_disk_errors
    def add_manifest(self, manifest_bytes: bytes, config_bytes: bytes, layers: Sequence[LayerBlob],
                     tags: Sequence[str] = ()) -> Image:
        """Record an image from existing manifest/config bytes (kept as they are, so
        the digests stay those of the source). The layer blobs must be stored."""
        parsed_tags = [refs.parse_tag(t) for t in tags]
        manifest = oci.decode(manifest_bytes, "manifest")
        oci.check_manifest(manifest)
        config = oci.decode(config_bytes, "image config")
        oci.check_config(config)
        config_digest = sha256_digest(config_bytes)
        if manifest["config"]["digest"] != config_digest or manifest["config"]["size"] != len(config_bytes):
            raise CorruptContent(f"manifest names config {manifest['config']['digest']}, but the config "
                                 f"given is {config_digest} ({len(config_bytes)} bytes)", digest=config_digest)
        descs = manifest["layers"]
        if len(descs) != len(layers) or any(d["digest"] != l.digest for d, l in zip(descs, layers)):
            raise CorruptContent("the layers given do not match the manifest's layer list")
        if oci.diff_ids(config) != [l.diff_id for l in layers]:
            raise CorruptContent("the layers' diff_ids do not match the config's rootfs.diff_ids")
        with self.writing():
            for l in layers:
                if not self.blobs.exists(l.digest):
                    raise BlobNotFound(f"layer blob {l.digest} is not in the store", digest=l.digest)
            self.blobs.put(config_bytes)
            manifest_digest = self.blobs.put(manifest_bytes)
            self._record_image(manifest_digest, manifest_bytes, manifest, config_digest, config_bytes, config,
                               layers, parsed_tags)
        return self._load_image(manifest_digest)

    def _record_image(self, manifest_digest: str, manifest_bytes: bytes, manifest: Mapping[str, Any],
                      config_digest: str, config_bytes: bytes, config: Mapping[str, Any],
                      layers: Sequence[LayerBlob], tags: Sequence[refs.Reference]) -> None:
        now = time.time()
        size = sum(l.uncompressed_size for l in layers)
        with self.db.write() as c:
            for l in layers:
                _insert_layer(c, l)
            c.execute("INSERT OR IGNORE INTO images(manifest_digest, config_digest, media_type, manifest_size, "
                      "config_size, size, created, added) VALUES (?,?,?,?,?,?,?,?)",
                      (manifest_digest, config_digest, oci.manifest_media_type(manifest), len(manifest_bytes),
                       len(config_bytes), size, config.get("created"), now))
            c.execute("DELETE FROM image_layers WHERE manifest_digest=?", (manifest_digest,))
            c.executemany("INSERT INTO image_layers(manifest_digest, idx, digest, diff_id) VALUES (?,?,?,?)",
                          [(manifest_digest, i, l.digest, l.diff_id) for i, l in enumerate(layers)])
            for t in tags:
                _set_tag(c, str(t), manifest_digest, now)

    # -- tags ------------------------------------------------------------------------

    def tag(self, ref: str, target: str) -> Image:
        """Point tag `ref` at the image `target` names (`lamina tag TARGET REF`)."""
        r = refs.parse_tag(ref)
        with self.db.write():
            md = self._resolve_digest(target)
            _set_tag(self.db.conn, str(r), md, time.time())
        return self._load_image(md)

    def untag(self, ref: str) -> str:
        """Remove a tag (the image stays). Returns the manifest digest it pointed at."""
        r = refs.parse_tag(ref)
        with self.db.write() as c:
            row = c.execute("SELECT manifest_digest FROM tags WHERE name=?", (str(r),)).fetchone()
            if row is None:
                raise ImageNotFound(f"no such image: {ref} (not a tag in this store)", ref=ref)
            c.execute("DELETE FROM tags WHERE name=?", (str(r),))
            return row["manifest_digest"]

    def remove_image(self, ref: str, *, force: bool = False) -> list[str]:
        """`rmi` as docker: a tag is removed, and the image goes with its last tag.
        By ID, an image tagged in several repositories needs `force`. Returns lines
        like docker's ("Untagged: app:latest", "Deleted: sha256:...")."""
        out: list[str] = []
        with self.db.write() as c:
            md = self._resolve_digest(ref)
            by_tag = None
            try:
                r = refs.parse(ref)
                if r.digest is None and c.execute("SELECT 1 FROM tags WHERE name=? AND manifest_digest=?",
                                                  (str(r), md)).fetchone():
                    by_tag = str(r)
            except refs.InvalidReference:
                pass
            tags = [t["name"] for t in c.execute("SELECT name FROM tags WHERE manifest_digest=? ORDER BY name",
                                                 (md,))]
            if by_tag is not None:
                c.execute("DELETE FROM tags WHERE name=?", (by_tag,))
                out.append(f"Untagged: {refs.familiar(by_tag)}")
                tags.remove(by_tag)
                if tags:
                    return out
            else:
                repos = {refs.parse(t, default_tag=False).name for t in tags}
                if len(repos) > 1 and not force:
                    cfg = c.execute("SELECT config_digest FROM images WHERE manifest_digest=?", (md,)).fetchone()[0]
                    raise StoreError(f"conflict: unable to delete {cfg.split(':')[1][:12]} (must be forced) - "
                                     f"image is referenced in multiple repositories", ref=ref)
                for t in tags:
                    c.execute("DELETE FROM tags WHERE name=?", (t,))
                    out.append(f"Untagged: {refs.familiar(t)}")
            cfg = c.execute("SELECT config_digest FROM images WHERE manifest_digest=?", (md,)).fetchone()[0]
            c.execute("DELETE FROM images WHERE manifest_digest=?", (md,))
            out.append(f"Deleted: {cfg}")
        return out

    # -- import ----------------------------------------------------------------------

    @_disk_errors
    def import_rootfs(self, tarball: Path, ref: str | None, *, changes: Mapping[str, Any] | None = None,
                      message: str | None = None, compression: str = DEFAULT_COMPRESSION,
                      source_date_epoch: int | None = None) -> Image:
        """`docker import`: a root filesystem tar (plain, gzip, zstd, xz or bzip2)
        becomes a one-layer image tagged `ref` (see store.rootfs)."""
        return import_rootfs(self, Path(tarball), ref, changes=changes, message=message,
                             compression=compression, source_date_epoch=source_date_epoch)

    # -- layer directories -------------------------------------------------------------

    def _layer_row(self, diff_id: str):
        row = self.db.query_one("SELECT diff_id, dir FROM layers WHERE diff_id=?", (diff_id,))
        if row is None:
            raise StoreError(f"layer {diff_id} is not in the store", digest=diff_id)
        return row

    def layer(self, diff_id: str) -> LayerBlob:
        """The blob the build engine uses for a layer: the DEFAULT_COMPRESSION one when
        several exist (e.g. a gzip blob an OCI export added), else the smallest. So an
        export never changes what a build commits, nor a built image's manifest."""
        row = self.db.query_one(
            "SELECT digest, diff_id, media_type, size, uncompressed_size FROM layer_blobs "
            "WHERE diff_id=? ORDER BY media_type = ? DESC, size, digest LIMIT 1",
            (diff_id, media_type_for(DEFAULT_COMPRESSION)))
        if row is None:
            raise StoreError(f"layer {diff_id} has no stored blob", digest=diff_id)
        return _layer_blob(row)

    def layer_blobs(self, diff_id: str) -> tuple[LayerBlob, ...]:
        """Every recorded blob of a layer (one per compression it is stored in), by digest."""
        return tuple(_layer_blob(r) for r in self.db.query(
            "SELECT digest, diff_id, media_type, size, uncompressed_size FROM layer_blobs "
            "WHERE diff_id=? ORDER BY digest", (diff_id,)))

    def layer_dir(self, diff_id: str) -> Path:
        """The extracted directory of a layer (overlay lower form), made on first use."""
        row = self._layer_row(diff_id)
        if row["dir"] and (self.layers_root / row["dir"]).is_dir():
            return self.layers_root / row["dir"]
        return self._make_layer_dir(diff_id, None)

    def adopt_layer_dir(self, diff_id: str, src_dir: Path) -> Path:
        """Make `src_dir` (e.g. a RUN's upper dir, on the store's filesystem) the
        layer's directory by renaming it. The store owns `src_dir` afterwards; if the
        layer already has a directory, `src_dir` is removed."""
        self._layer_row(diff_id)
        return self._make_layer_dir(diff_id, Path(src_dir))

    @_disk_errors
    def _make_layer_dir(self, diff_id: str, src_dir: Path | None) -> Path:
        return make_layer_dir(self, diff_id, src_dir)

    # -- history / inspect -------------------------------------------------------------

    def history(self, ref: str) -> list[HistoryEntry]:
        """The config's history, newest first, with each layer's size (docker history)."""
        img = self.resolve(ref)
        hist = img.config.get("history") or []
        sizes = [l.uncompressed_size for l in img.layers]
        out: list[HistoryEntry] = []
        li = 0
        for h in hist:
            empty = bool(h.get("empty_layer"))
            size = 0
            if not empty and li < len(sizes):
                size = sizes[li]
                li += 1
            out.append(HistoryEntry(None, h.get("created"), h.get("created_by", ""), size,
                                    h.get("comment", ""), empty))
        if not hist:  # images without history: one row per layer
            out = [HistoryEntry(None, img.config.get("created"), "", s, "", False) for s in sizes]
        out.reverse()
        if out:
            top = out[0]
            out[0] = HistoryEntry(img.id, top.created, top.created_by, top.size, top.comment, top.empty_layer)
        return out

    def inspect(self, ref: str) -> dict[str, Any]:
        """What `docker image inspect` prints for one image (one object)."""
        img = self.resolve(ref)
        row = self.db.query_one("SELECT * FROM images WHERE manifest_digest=?", (img.manifest_digest,))
        last_tag = self.db.query_one("SELECT max(tagged) AS t FROM tags WHERE manifest_digest=?",
                                     (img.manifest_digest,))
        cfg = img.config
        out: dict[str, Any] = {
            "Id": img.id,
            "RepoTags": list(img.tags),
            "RepoDigests": [],
            "Parent": "",
            "Comment": _last_comment(cfg),
            "Created": cfg.get("created", ""),
            "Author": cfg.get("author", ""),
            "Config": dict(cfg.get("config") or {}),
            "Architecture": cfg.get("architecture", ""),
        }
        if cfg.get("variant"):
            out["Variant"] = cfg["variant"]
        out.update({
            "Os": cfg.get("os", ""),
            "Size": img.size,
            "RootFS": {"Type": cfg.get("rootfs", {}).get("type", "layers"),
                       "Layers": list(cfg.get("rootfs", {}).get("diff_ids", []))},
            "Metadata": {"LastTagTime": oci.format_time(last_tag["t"]) if last_tag and last_tag["t"]
                         else "0001-01-01T00:00:00Z"},
            "Descriptor": {"mediaType": row["media_type"], "digest": img.manifest_digest,
                           "size": row["manifest_size"]},
        })
        return out

    # -- maintenance -------------------------------------------------------------------

    def gc(self, *, cache_max_age: timedelta | None = None, cache_max_bytes: int | None = None):
        from lamina.store.gc import collect
        return collect(self, cache_max_age=cache_max_age, cache_max_bytes=cache_max_bytes)

    def fsck(self, *, quick: bool = False, repair: bool = False, deep: bool | None = None):
        """Check the store (store.fsck): every blob re-hashed, every reference, every
        layer blob's diff_id and every extracted layer dir against its layer; `quick`:
        blobs and references only. `repair` then removes damaged layer dirs (they are
        re-extracted on next use). `deep` is the old spelling: deep=False means quick."""
        from lamina.store.fsck import check, repair as repair_dirs
        if deep is not None:
            quick = not deep
        rep = check(self, quick=quick)
        if repair and rep.damaged_dirs:
            repair_dirs(self, rep)
        return rep

    def du(self):
        from lamina.store.usage import usage
        return usage(self)


def source_date_epoch_value(value: int | None) -> int | None:
    return source_date_epoch(value)


def _layer_blob(row) -> LayerBlob:
    return LayerBlob(diff_id=row["diff_id"], digest=row["digest"], size=row["size"],
                     media_type=row["media_type"], uncompressed_size=row["uncompressed_size"] or 0)


def _insert_layer(c, layer: LayerBlob) -> None:
    c.execute("INSERT OR IGNORE INTO layers(diff_id, size) VALUES (?,?)", (layer.diff_id, layer.uncompressed_size))
    c.execute("INSERT OR IGNORE INTO layer_blobs(digest, diff_id, media_type, size, uncompressed_size) "
              "VALUES (?,?,?,?,?)", (layer.digest, layer.diff_id, layer.media_type, layer.size,
                                     layer.uncompressed_size))


def _set_tag(c, name: str, manifest_digest: str, now: float) -> None:
    c.execute("INSERT INTO tags(name, manifest_digest, tagged) VALUES (?,?,?) ON CONFLICT(name) DO UPDATE "
              "SET manifest_digest=excluded.manifest_digest, tagged=excluded.tagged", (name, manifest_digest, now))


def _finish_config(config: Mapping[str, Any], layers: Sequence[LayerBlob]) -> dict[str, Any]:
    cfg = dict(config)
    plat = oci.host_platform()
    cfg.setdefault("architecture", plat["architecture"])
    cfg.setdefault("os", plat["os"])
    if "variant" in plat and cfg["architecture"] == plat["architecture"]:
        cfg.setdefault("variant", plat["variant"])
    want = [l.diff_id for l in layers]
    rootfs = dict(cfg.get("rootfs") or {"type": "layers"})
    if "diff_ids" in rootfs and list(rootfs["diff_ids"]) != want:
        raise StoreError("image config rootfs.diff_ids do not match the layers given")
    rootfs["diff_ids"] = want
    cfg["rootfs"] = rootfs
    if isinstance(cfg.get("config"), Mapping):
        cfg["config"] = oci.clean_container_config(cfg["config"])
    oci.check_config(cfg)
    return cfg


def _last_comment(cfg: Mapping[str, Any]) -> str:
    hist = cfg.get("history") or []
    return hist[-1].get("comment", "") if hist else ""
