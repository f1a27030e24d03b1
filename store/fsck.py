"""fsck: check that the store's bytes and metadata agree.

Problems (the store is damaged; `lamina fsck` exits non-zero, naming each):
  - a blob whose bytes do not hash to its name
  - an image whose manifest or config blob is missing, unparseable, or disagrees
    with the database (config digest, layer list, diff_ids)
  - a layer blob an image or the layer table needs that is missing
  - a layer recorded as extracted whose directory is missing
  - a tag pointing at no image, a cache entry pointing at no layer
  - SQLite's own integrity check failing
  - with `deep`: a layer blob that does not decompress to its diff_id

Notes (harmless, what a crash or an interrupted command leaves; gc removes them):
unreferenced blobs, directories in ROOT/layers nobody records, temp entries.

fsck holds the gc lock shared, so it never races a gc's deletions; it writes nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from store import oci
from store.errors import BlobNotFound, StoreError

if TYPE_CHECKING:
    from store.store import Store


@dataclass
class FsckReport:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    blobs_checked: int = 0
    images_checked: int = 0
    layers_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def check(store: "Store", *, deep: bool = False) -> FsckReport:
    rep = FsckReport()
    db = store.db
    with store.writing():
        ic = db.query("PRAGMA quick_check")
        if [r[0] for r in ic] != ["ok"]:
            rep.problems.append("database: integrity check failed: " + "; ".join(str(r[0]) for r in ic[:5]))

        with db.read() as c:
            images = c.execute("SELECT * FROM images").fetchall()
            image_layers: dict[str, list] = {}
            for r in c.execute("SELECT * FROM image_layers ORDER BY manifest_digest, idx"):
                image_layers.setdefault(r["manifest_digest"], []).append(r)
            tags = c.execute("SELECT name, manifest_digest FROM tags").fetchall()
            layers = {r["diff_id"]: r for r in c.execute("SELECT * FROM layers")}
            layer_blobs = {r["digest"]: r for r in c.execute("SELECT * FROM layer_blobs")}
            cache = c.execute("SELECT key, diff_id FROM cache").fetchall()

        # blobs: re-hash every one
        stored = set()
        for digest in store.blobs.digests():
            stored.add(digest)
            rep.blobs_checked += 1
            try:
                if not store.blobs.verify(digest):
                    rep.problems.append(f"blob {digest}: content does not match its digest (corrupt)")
            except BlobNotFound:
                stored.discard(digest)

        referenced: set[str] = set()
        image_digests = {r["manifest_digest"] for r in images}
        for img in images:
            md, cd = img["manifest_digest"], img["config_digest"]
            rep.images_checked += 1
            referenced.update((md, cd))
            what = f"image {cd.split(':')[1][:12]} (manifest {md})"
            manifest = _load_json(store, md, stored, f"{what}: manifest blob", rep)
            config = _load_json(store, cd, stored, f"{what}: config blob", rep)
            rows = image_layers.get(md, [])
            referenced.update(r["digest"] for r in rows)
            if manifest is not None:
                try:
                    oci.check_manifest(manifest, f"{what}: manifest")
                except StoreError as e:
                    rep.problems.append(str(e))
                    manifest = None
            if manifest is not None:
                if manifest["config"]["digest"] != cd:
                    rep.problems.append(f"{what}: manifest names config {manifest['config']['digest']}, "
                                        f"the database says {cd}")
                if [l["digest"] for l in manifest["layers"]] != [r["digest"] for r in rows]:
                    rep.problems.append(f"{what}: the manifest's layers differ from the database's")
            if config is not None:
                try:
                    oci.check_config(config, f"{what}: config")
                    if oci.diff_ids(config) != [r["diff_id"] for r in rows]:
                        rep.problems.append(f"{what}: config rootfs.diff_ids differ from the image's layers")
                except StoreError as e:
                    rep.problems.append(str(e))
            for r in rows:
                if r["digest"] not in stored:
                    rep.problems.append(f"{what}: layer blob {r['digest']} is missing")
                if r["diff_id"] not in layers:
                    rep.problems.append(f"{what}: layer {r['diff_id']} is not in the layer table")

        for t in tags:
            if t["manifest_digest"] not in image_digests:
                rep.problems.append(f"tag {_familiar(t['name'])}: points to {t['manifest_digest']}, "
                                    f"which is not an image in the store (dangling tag)")

        for digest, lb in layer_blobs.items():
            referenced.add(digest)
            if digest not in stored:
                rep.problems.append(f"layer {lb['diff_id']}: blob {digest} is missing")
            elif deep:
                _check_diff_id(store, digest, lb["diff_id"], rep)

        known_dirs = set()
        for diff_id, l in layers.items():
            rep.layers_checked += 1
            if l["dir"]:
                known_dirs.add(l["dir"])
                if not (store.layers_root / l["dir"]).is_dir():
                    rep.problems.append(f"layer {diff_id}: extracted directory {store.layers_root / l['dir']} "
                                        f"is missing")

        for r in cache:
            if r["diff_id"] and r["diff_id"] not in layers:
                rep.problems.append(f"cache entry {r['key']}: layer {r['diff_id']} is not in the store")

        unref = stored - referenced
        if unref:
            rep.notes.append(f"{len(unref)} unreferenced blob(s) (`lamina gc` removes them)")
        stray = [n for n in os.listdir(store.layers_root) if n not in known_dirs]
        if stray:
            rep.notes.append(f"{len(stray)} unrecorded layer dir(s) in {store.layers_root} "
                             f"(`lamina gc` removes them)")
        tmp = [n for n in os.listdir(store.tmp_dir) if not n.endswith(".owner")]
        if tmp:
            rep.notes.append(f"{len(tmp)} temp entr{'y' if len(tmp) == 1 else 'ies'} in {store.tmp_dir}")
    return rep


def _familiar(name: str) -> str:
    from store import refs
    try:
        return refs.familiar(name)
    except StoreError:
        return name


def _load_json(store: "Store", digest: str, stored: set[str], what: str, rep: FsckReport):
    if digest not in stored:
        rep.problems.append(f"{what} {digest} is missing")
        return None
    try:
        return oci.decode(store.blobs.read(digest), f"{what} {digest}")
    except StoreError as e:
        rep.problems.append(str(e))
        return None


def _check_diff_id(store: "Store", digest: str, diff_id: str, rep: FsckReport) -> None:
    from store.layers import diff_id_of
    try:
        with store.blobs.open(digest) as f:
            got, _ = diff_id_of(f)
    except StoreError as e:
        rep.problems.append(f"layer {diff_id}: blob {digest} cannot be read: {e}")
        return
    if got != diff_id:
        rep.problems.append(f"layer {diff_id}: blob {digest} decompresses to {got}")
