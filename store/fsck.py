"""fsck: check that the store's bytes and metadata agree, and repair what can be.

Problems (the store is damaged; `lamina fsck` exits non-zero, naming each):
  - a blob whose bytes do not hash to its name
  - an image whose manifest or config blob is missing, unparseable, or disagrees
    with the database (config digest, layer list, diff_ids)
  - a layer blob an image or the layer table needs that is missing (a blob recorded as
    remote, not fetched yet - store.remoteblobs - is counted, not missing)
  - a layer recorded as extracted whose directory is missing
  - a tag pointing at no image, a cache entry pointing at no layer
  - SQLite's own integrity check failing
  - ROOT or a directory in it that group or other users may enter
    (store.storemodes; `repair` takes their bits away)
  - unless `quick`: a layer blob that does not decompress to its diff_id, and an
    extracted layer directory whose content is not its layer's (store.layercheck:
    every member compared, and what the tar lacks), named with the first paths
    that differ

The full check reads every layer blob once (its digest, diff_id and directory in one
pass; the other blobs are re-hashed on their own). `quick` only re-hashes blobs and
checks references and that layer dirs exist.

Notes (harmless, what a crash or an interrupted command leaves; gc removes them):
unreferenced blobs, directories in ROOT/layers nobody records, temp entries.

`check` holds the gc lock shared, so it never races a gc's deletions; it writes
nothing. `repair` (`lamina fsck --repair`) tightens loose directory modes, then
takes the gc lock exclusive and removes each damaged or missing layer directory whose layer has a good blob and no
running build holds: the record is cleared, and `Store.layer_dir` re-extracts the
directory from the blob on next use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lamina.store import oci
from lamina.store.attestations import referenced_blobs
from lamina.store.holds import held_items
from lamina.store.errors import BlobNotFound, StoreError
from lamina.store.layercheck import LayerScan, scan_layer_blob
from lamina.store.lease import lease_is_live
from lamina.store.locks import remove_tree
from lamina.store.storemodes import LooseMode, loose_modes, tighten

if TYPE_CHECKING:
    from lamina.store.root import StoreRoot


SHOWN_DIFFERENCES = 5  # paths named per damaged layer dir


@dataclass(frozen=True)
class DamagedLayerDir:
    """An extracted layer directory that is missing or not its layer's content."""

    diff_id: str
    dir: str                # its name in ROOT/layers
    problem: str            # the line in FsckReport.problems
    repairable: bool        # the layer has a blob that checked good (or, quick, exists)


@dataclass
class FsckReport:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    blobs_checked: int = 0
    remote_blobs: int = 0   # layer blobs recorded, not fetched yet (store.remoteblobs)
    images_checked: int = 0
    layers_checked: int = 0
    layer_dirs_verified: int = 0
    quick: bool = False
    damaged_dirs: list[DamagedLayerDir] = field(default_factory=list)
    repaired: list[DamagedLayerDir] = field(default_factory=list)   # by `repair`
    loose_modes: list[LooseMode] = field(default_factory=list)     # store.storemodes
    tightened: list[LooseMode] = field(default_factory=list)       # by `repair`
    not_repaired: list[str] = field(default_factory=list)           # why, per damaged dir left

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def unresolved(self) -> list[str]:
        """The problems `repair` did not fix (all of them before a repair)."""
        fixed = {d.problem for d in self.repaired} | {m.problem for m in self.tightened}
        return [p for p in self.problems if p not in fixed]


def check(store: "StoreRoot", *, quick: bool = False) -> FsckReport:
    rep = FsckReport(quick=quick)
    db = store.db
    was = getattr(store, "root_tightened_from", None)
    if was is not None:
        rep.notes.append(f"the store {store.root} was {was:04o}: lamina tightened it to 0700 "
                         "when it opened the store")
    rep.loose_modes = loose_modes(store.root)
    rep.problems += [m.problem for m in rep.loose_modes]
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
            # recorded, not fetched yet (store.remoteblobs): not missing
            remote = {r["digest"] for r in c.execute("SELECT digest FROM remote_blobs")}
            attested = referenced_blobs(c)  # images' attestation predicates (store.attestations)
            attested |= held_items(c)["blob"]  # what holds keep (store.holds: containers)

        # blobs: re-hash every one (layer blobs below, unless quick, with their diff_ids)
        stored = set()
        for digest in store.blobs.digests():
            stored.add(digest)
            rep.blobs_checked += 1
            if not quick and digest in layer_blobs:
                continue
            try:
                if not store.blobs.verify(digest):
                    rep.problems.append(f"blob {digest}: content does not match its digest (corrupt)")
            except BlobNotFound:
                stored.discard(digest)

        referenced: set[str] = set(attested)
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
                if r["digest"] not in stored and r["digest"] not in remote:
                    rep.problems.append(f"{what}: layer blob {r['digest']} is missing")
                if r["diff_id"] not in layers:
                    rep.problems.append(f"{what}: layer {r['diff_id']} is not in the layer table")

        for t in tags:
            if t["manifest_digest"] not in image_digests:
                rep.problems.append(f"tag {_familiar(t['name'])}: points to {t['manifest_digest']}, "
                                    f"which is not an image in the store (dangling tag)")

        blobs_of: dict[str, list] = {}
        for digest, lb in layer_blobs.items():
            referenced.add(digest)
            if digest in remote and digest not in stored:
                rep.remote_blobs += 1
            elif digest not in stored:
                rep.problems.append(f"layer {lb['diff_id']}: blob {digest} is missing")
            else:
                blobs_of.setdefault(lb["diff_id"], []).append(lb)

        known_dirs = set()
        for diff_id, l in layers.items():
            rep.layers_checked += 1
            blobs = sorted(blobs_of.get(diff_id, []), key=lambda b: (b["size"] or 0, b["digest"]))
            path = store.layers_root / l["dir"] if l["dir"] else None
            if l["dir"]:
                known_dirs.add(l["dir"])
                if not path.is_dir():  # type: ignore[union-attr]
                    problem = f"layer {diff_id}: extracted directory {path} is missing"
                    rep.problems.append(problem)
                    rep.damaged_dirs.append(DamagedLayerDir(diff_id, l["dir"], problem, bool(blobs)))
                    path = None
            if not quick:
                _check_layer(store, diff_id, l["dir"], path, blobs, rep)
        if not quick:  # blobs of a layer the layer table lacks (a problem reported above)
            for diff_id in set(blobs_of) - set(layers):
                _check_layer(store, diff_id, None, None, blobs_of[diff_id], rep)

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
    from lamina.store import refs
    try:
        return refs.familiar(name)
    except StoreError:
        return name


def _load_json(store: "StoreRoot", digest: str, stored: set[str], what: str, rep: FsckReport):
    if digest not in stored:
        rep.problems.append(f"{what} {digest} is missing")
        return None
    try:
        return oci.decode(store.blobs.read(digest), f"{what} {digest}")
    except StoreError as e:
        rep.problems.append(str(e))
        return None


def _scan_ok(store: "StoreRoot", digest: str, diff_id: str, scan: LayerScan | None, rep: FsckReport) -> bool:
    """Report what reading a layer blob found; True when the blob is good."""
    if scan is None:
        return False
    if scan.digest != digest:
        rep.problems.append(f"blob {digest}: content does not match its digest (corrupt)")
        return False
    if scan.diff_id is None:
        rep.problems.append(f"layer {diff_id}: blob {digest} cannot be read: {scan.error}")
        return False
    if scan.diff_id != diff_id:
        rep.problems.append(f"layer {diff_id}: blob {digest} decompresses to {scan.diff_id}")
        return False
    return True


def _scan(store: "StoreRoot", digest: str, diff_id: str, path, rep: FsckReport) -> LayerScan | None:
    try:
        return scan_layer_blob(store.blobs, digest, path)
    except BlobNotFound:
        rep.problems.append(f"layer {diff_id}: blob {digest} is missing")
    except OSError as e:
        rep.problems.append(f"layer {diff_id}: blob {digest} cannot be read: {e.strerror or e}")
    return None


def _check_layer(store: "StoreRoot", diff_id: str, dir_name: str | None, path, blobs: list,
                 rep: FsckReport) -> None:
    """Each blob of the layer: digest and diff_id; its directory (if any) against the
    first good blob, smallest first (the one Store.layer_dir extracts)."""
    verified = False
    good_blob = False
    for b in blobs:
        with_dir = path if path is not None and not verified else None
        scan = _scan(store, b["digest"], diff_id, with_dir, rep)
        ok = _scan_ok(store, b["digest"], diff_id, scan, rep)
        good_blob = good_blob or ok
        if not ok or with_dir is None or scan is None:
            continue
        verified = True
        rep.layer_dirs_verified += 1
        if scan.differences is None:  # the tar reads as its diff_id, yet not as a layer
            problem = f"layer {diff_id}: extracted directory {path} cannot be verified: {scan.error}"
            rep.problems.append(problem)
            continue
        if scan.differences:
            n = len(scan.differences)
            shown = "; ".join(str(d) for d in scan.differences[:SHOWN_DIFFERENCES])
            more = f"; and {n - SHOWN_DIFFERENCES} more" if n > SHOWN_DIFFERENCES else ""
            problem = (f"layer {diff_id}: extracted directory {path} differs from the layer "
                       f"({n} path{'s' if n != 1 else ''}): {shown}{more}")
            rep.problems.append(problem)
            rep.damaged_dirs.append(DamagedLayerDir(diff_id, dir_name or "", problem, True))
    if path is not None and not verified and not good_blob:
        rep.notes.append(f"layer {diff_id}: extracted directory {path} not verified: the layer has no "
                         f"good blob")
    # a missing dir is repairable only when a blob checked good
    for i, d in enumerate(rep.damaged_dirs):
        if d.diff_id == diff_id and d.repairable and not good_blob:
            rep.damaged_dirs[i] = DamagedLayerDir(d.diff_id, d.dir, d.problem, False)


def repair(store: "StoreRoot", rep: FsckReport) -> FsckReport:
    """Tighten the loose directory modes `rep` found and remove the damaged or missing
    layer directories (see the module docstring); fills rep.tightened, rep.repaired and
    rep.not_repaired."""
    for m in rep.loose_modes:
        try:
            tighten(m)
        except OSError as e:
            rep.not_repaired.append(f"{m.path}: mode not changed: {e.strerror or e}")
        else:
            rep.tightened.append(m)
    trash: list = []
    db = store.db
    with store.gc_lock.exclusive():
        held: set[str] = set()
        live = [r["id"] for r in db.query("SELECT id, pid FROM leases")
                if lease_is_live(store.root, r["id"], r["pid"])]
        for lease_id in live:
            held |= {r["value"] for r in db.query(
                "SELECT value FROM lease_items WHERE lease_id=? AND kind='layer'", (lease_id,))}
        for d in rep.damaged_dirs:
            where = store.layers_root / d.dir
            if not d.repairable:
                rep.not_repaired.append(f"layer {d.diff_id}: {where} not removed: the layer has no good "
                                        f"blob to re-extract it from")
                continue
            if d.diff_id in held:
                rep.not_repaired.append(f"layer {d.diff_id}: {where} not removed: a running build uses it")
                continue
            with db.write() as c:
                c.execute("UPDATE layers SET dir=NULL WHERE diff_id=? AND dir=?", (d.diff_id, d.dir))
                c.execute("DELETE FROM content WHERE dir=?", (d.dir,))
            if os.path.lexists(where):
                dst = store.temp_path("fsck-repair")
                os.rename(where, dst)
                trash.append(dst)
            rep.repaired.append(d)
    for t in trash:
        remove_tree(t)
    return rep
