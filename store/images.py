"""Images in the store: the `images`, `image_layers` and `tags` tables and the
manifest/config blobs they name. Resolving a reference (tag, digest, ID or ID
prefix) to an image, loading it, listing images, and committing one (config and
manifest written as canonical JSON, then recorded in one transaction)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from lamina.store import oci, refs, remoteblobs, repodigests
from lamina.store.blobs import sha256_digest
from lamina.store.errors import BlobNotFound, CorruptContent, ImageNotFound, StoreError
from lamina.store.layerrecords import insert_layer
from lamina.store.layers import LayerBlob
from lamina.store.root import StoreRoot


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
        # a layer not fetched yet (store.remoteblobs) counts its compressed size
        return sum(l.uncompressed_size or l.size for l in self.layers)


@dataclass(frozen=True)
class ImageSummary:
    manifest_digest: str
    config_digest: str
    tags: tuple[str, ...]
    created: str | None
    size: int
    added: float


# -- resolving and loading ---------------------------------------------------------------

def resolve_digest(root: StoreRoot, ref: str) -> str:
    """The manifest digest `ref` names (tag, digest reference, image ID or ID prefix)."""
    if not isinstance(ref, str) or not ref.strip():
        raise ImageNotFound("no such image: empty reference", ref=str(ref))
    db = root.db
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
            if row is None:  # an index's digest: the image its repository pulled or pushed under it
                found = repodigests.image_for(root, r.name, r.digest)
                if found is not None:
                    return found
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


def load_image(root: StoreRoot, manifest_digest: str, ref: str | None = None) -> Image:
    with root.db.read() as c:
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
        manifest = oci.decode(root.blobs.read(manifest_digest), f"manifest {manifest_digest}")
        config = oci.decode(root.blobs.read(row["config_digest"]), f"config {row['config_digest']}")
    except BlobNotFound as e:
        if root.db.query_one("SELECT 1 FROM images WHERE manifest_digest=?", (manifest_digest,)) is None:
            raise ImageNotFound(f"no such image: {ref or manifest_digest} (just removed)", ref=ref) from None
        raise StoreError(f"image {ref or manifest_digest} is damaged: {e} (run `lamina fsck`)",
                         digest=e.digest) from None
    layers = tuple(LayerBlob(diff_id=l["diff_id"], digest=l["digest"], size=l["size"] or 0,
                             media_type=l["media_type"] or "", uncompressed_size=l["uncompressed_size"] or 0)
                   for l in lrows)
    return Image(manifest_digest, row["config_digest"], manifest, config, layers,
                 tuple(refs.familiar(t) for t in tags))


def resolve(root: StoreRoot, ref: str) -> Image:
    return load_image(root, resolve_digest(root, ref), ref)


def list_images(root: StoreRoot) -> list[ImageSummary]:
    with root.db.read() as c:
        rows = c.execute("SELECT * FROM images ORDER BY added DESC, manifest_digest").fetchall()
        tags: dict[str, list[str]] = {}
        for t in c.execute("SELECT name, manifest_digest FROM tags ORDER BY name"):
            tags.setdefault(t["manifest_digest"], []).append(refs.familiar(t["name"]))
    return [ImageSummary(r["manifest_digest"], r["config_digest"], tuple(tags.get(r["manifest_digest"], ())),
                         r["created"], r["size"], r["added"]) for r in rows]


# -- committing ----------------------------------------------------------------------------

def commit_image(root: StoreRoot, config: Mapping[str, Any], layers: Sequence[LayerBlob],
                 tags: Sequence[str] = (), *, manifest_annotations: Mapping[str, str] | None = None) -> Image:
    """Write the config and manifest blobs (canonical JSON) and record the image,
    its layers and `tags`, in one transaction."""
    parsed_tags = [refs.parse_tag(t) for t in tags]  # fail before writing anything
    cfg = finish_config(config, layers)
    config_bytes = oci.encode(cfg, "config")
    with root.writing():
        _require_blobs(root, layers)
        config_digest = root.blobs.put(config_bytes)
        manifest = oci.build_manifest(
            oci.Descriptor(oci.OCI_CONFIG, config_digest, len(config_bytes)),
            [oci.Descriptor(l.media_type, l.digest, l.size) for l in layers],
            annotations=manifest_annotations)
        manifest_bytes = oci.encode(manifest, "manifest")
        manifest_digest = root.blobs.put(manifest_bytes)
        record_image(root, manifest_digest, manifest_bytes, manifest, config_digest, config_bytes, cfg,
                     layers, parsed_tags)
    return load_image(root, manifest_digest)


def add_manifest(root: StoreRoot, manifest_bytes: bytes, config_bytes: bytes, layers: Sequence[LayerBlob],
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
    with root.writing():
        _require_blobs(root, layers)
        root.blobs.put(config_bytes)
        manifest_digest = root.blobs.put(manifest_bytes)
        record_image(root, manifest_digest, manifest_bytes, manifest, config_digest, config_bytes, config,
                     layers, parsed_tags)
    return load_image(root, manifest_digest)


def _require_blobs(root: StoreRoot, layers: Sequence[LayerBlob]) -> None:
    for l in layers:  # stored, or recorded with the repository it is fetched from
        if not root.blobs.exists(l.digest) and not remoteblobs.is_remote(root, l.digest):
            raise BlobNotFound(f"layer blob {l.digest} is not in the store", digest=l.digest)


def record_image(root: StoreRoot, manifest_digest: str, manifest_bytes: bytes, manifest: Mapping[str, Any],
                 config_digest: str, config_bytes: bytes, config: Mapping[str, Any],
                 layers: Sequence[LayerBlob], tags: Sequence[refs.Reference]) -> None:
    if _recorded(root, manifest_digest, layers, tags):
        return  # a rebuild that changed nothing writes nothing
    now = time.time()
    # a layer not fetched yet (store.remoteblobs) counts its compressed size until it is
    size = sum(l.uncompressed_size or l.size for l in layers)
    with root.db.write() as c:
        for l in layers:
            insert_layer(c, l)
        c.execute("INSERT OR IGNORE INTO images(manifest_digest, config_digest, media_type, manifest_size, "
                  "config_size, size, created, added) VALUES (?,?,?,?,?,?,?,?)",
                  (manifest_digest, config_digest, oci.manifest_media_type(manifest), len(manifest_bytes),
                   len(config_bytes), size, config.get("created"), now))
        c.execute("DELETE FROM image_layers WHERE manifest_digest=?", (manifest_digest,))
        c.executemany("INSERT INTO image_layers(manifest_digest, idx, digest, diff_id) VALUES (?,?,?,?)",
                      [(manifest_digest, i, l.digest, l.diff_id) for i, l in enumerate(layers)])
        for t in tags:
            set_tag(c, str(t), manifest_digest, now)


def _recorded(root: StoreRoot, manifest_digest: str, layers: Sequence[LayerBlob],
              tags: Sequence[refs.Reference]) -> bool:
    """Is the image recorded with exactly these layers, and does every tag already
    name it? (read in one snapshot)"""
    with root.db.read() as c:
        if c.execute("SELECT 1 FROM images WHERE manifest_digest=?", (manifest_digest,)).fetchone() is None:
            return False
        rows = c.execute("SELECT l.digest, l.diff_id, b.digest IS NOT NULL AND r.diff_id IS NOT NULL "
                         "FROM image_layers l LEFT JOIN layer_blobs b ON b.digest=l.digest "
                         "LEFT JOIN layers r ON r.diff_id=l.diff_id "
                         "WHERE l.manifest_digest=? ORDER BY l.idx", (manifest_digest,)).fetchall()
        if [(r[0], r[1], bool(r[2])) for r in rows] != [(l.digest, l.diff_id, True) for l in layers]:
            return False
        for t in tags:
            row = c.execute("SELECT manifest_digest FROM tags WHERE name=?", (str(t),)).fetchone()
            if row is None or row[0] != manifest_digest:
                return False
    return True


def set_tag(c, name: str, manifest_digest: str, now: float) -> None:
    """Point tag `name` (normalised form) at an image, in an open write transaction."""
    c.execute("INSERT INTO tags(name, manifest_digest, tagged) VALUES (?,?,?) ON CONFLICT(name) DO UPDATE "
              "SET manifest_digest=excluded.manifest_digest, tagged=excluded.tagged", (name, manifest_digest, now))


def finish_config(config: Mapping[str, Any], layers: Sequence[LayerBlob]) -> dict[str, Any]:
    """The config as stored: platform defaults, rootfs.diff_ids of `layers`, a clean
    container config; checked."""
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
