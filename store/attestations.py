"""Attestations of stored images (provenance, SBOM), kept and exported the way
BuildKit stores them, so that docker/buildx tooling and registries read them.

What the store records: for an image (its manifest digest), one *predicate* per
predicate type (`https://slsa.dev/provenance/v1`, `https://spdx.dev/Document`), each
a blob of canonical JSON, in the table `attestations` (created here on first use;
rows go with their image: ON DELETE CASCADE; gc keeps the blobs through
`referenced_blobs`). The image itself is unchanged: tags still point at the image
manifest, the image ID (config digest) and the manifest digest do not depend on
attestations.

What an export or a push writes (`attestation_set`, pure and deterministic): an OCI
image index holding

  1. the image manifest, with the image's platform;
  2. an attestation manifest: an OCI image manifest, its descriptor with platform
     unknown/unknown and the annotations `vnd.docker.reference.type:
     attestation-manifest` and `vnd.docker.reference.digest: <image manifest
     digest>`; its config is the small unknown/unknown image config BuildKit writes
     (rootfs.diff_ids = the statements' digests); its layers are the in-toto
     statements (media type application/vnd.in-toto+json, annotation
     `in-toto.io/predicate-type`).

Each statement's subject is the digest of the image manifest *as exported*: an OCI
export or push that recompresses layers (gzip) has another manifest digest, so the
statements, the attestation manifest and the index are made for it at export time.
Nothing in them depends on time: the same image and predicates always give the same
index digest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

from lamina.store import oci
from lamina.store.blobs import sha256_digest
from lamina.store.errors import CorruptContent, StoreError

IN_TOTO_MEDIA_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
SLSA_PROVENANCE_V1 = "https://slsa.dev/provenance/v1"
SPDX_DOCUMENT = "https://spdx.dev/Document"

REFERENCE_TYPE = "vnd.docker.reference.type"
REFERENCE_DIGEST = "vnd.docker.reference.digest"
ATTESTATION_MANIFEST = "attestation-manifest"
PREDICATE_TYPE_ANNOTATION = "in-toto.io/predicate-type"
UNKNOWN_PLATFORM = {"architecture": "unknown", "os": "unknown"}

_TABLE = """
CREATE TABLE IF NOT EXISTS attestations (
    manifest_digest TEXT NOT NULL REFERENCES images(manifest_digest) ON DELETE CASCADE,
    predicate_type  TEXT NOT NULL,
    digest          TEXT NOT NULL,         -- blob: the predicate, canonical JSON
    PRIMARY KEY (manifest_digest, predicate_type)
)
"""


def canonical_json(obj: Any) -> bytes:
    """Compact JSON with sorted keys (UTF-8): the same document, the same bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


# -- the record ------------------------------------------------------------------------

def _has_table(conn) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='attestations'"
                        ).fetchone() is not None


def referenced_blobs(conn) -> set[str]:
    """Every predicate blob an image's attestations name (for gc's mark phase, inside
    its transaction); empty when no attestation was ever recorded."""
    if not _has_table(conn):
        return set()
    return {r[0] for r in conn.execute("SELECT DISTINCT digest FROM attestations")}


def attach(root, manifest_digest: str, predicates: Mapping[str, Mapping[str, Any]]) -> None:
    """Record `predicates` (predicate type -> predicate) as attestations of the stored
    image `manifest_digest`: each replaces the one of its type the image had (the
    newest build's provenance), others stay (an SBOM describes the image's content,
    whichever build made it). Blobs first, then one transaction."""
    blobs = {ptype: canonical_json(p) for ptype, p in sorted(predicates.items())}
    with root.writing():
        digests = {ptype: root.blobs.put(data) for ptype, data in blobs.items()}
        with root.db.write() as c:
            c.execute(_TABLE)
            if c.execute("SELECT 1 FROM images WHERE manifest_digest=?", (manifest_digest,)).fetchone() is None:
                raise StoreError(f"no such image: {manifest_digest} (removed while attaching its "
                                 "attestations)", digest=manifest_digest)
            c.executemany("INSERT INTO attestations(manifest_digest, predicate_type, digest) VALUES (?,?,?) "
                          "ON CONFLICT(manifest_digest, predicate_type) DO UPDATE SET digest=excluded.digest",
                          [(manifest_digest, t, d) for t, d in digests.items()])


def predicates(root, manifest_digest: str) -> dict[str, dict[str, Any]]:
    """The predicates recorded for an image (predicate type -> predicate); {} if none."""
    with root.db.read() as c:
        if not _has_table(c):
            return {}
        rows = c.execute("SELECT predicate_type, digest FROM attestations WHERE manifest_digest=? "
                         "ORDER BY predicate_type", (manifest_digest,)).fetchall()
    out: dict[str, dict[str, Any]] = {}
    for ptype, digest in rows:
        out[ptype] = oci.decode(root.blobs.read(digest), f"attestation {ptype} of {manifest_digest}")
    return out


# -- the documents (pure) -------------------------------------------------------------

def statement(predicate_type: str, predicate: Mapping[str, Any], subject_digest: str,
              subject_name: str = "_") -> dict[str, Any]:
    """An in-toto statement about the image manifest `subject_digest` (BuildKit names
    the subject `_` for the image it is attached to)."""
    algo, _, hexdigest = subject_digest.partition(":")
    return {"_type": STATEMENT_TYPE,
            "subject": [{"name": subject_name, "digest": {algo: hexdigest}}],
            "predicateType": predicate_type,
            "predicate": dict(predicate)}


@dataclass(frozen=True)
class AttestationSet:
    """The index that carries an image and its attestation manifest, and every blob
    it adds (digest -> bytes: statements, the attestation config and manifest, the
    index itself)."""

    index: bytes
    index_digest: str
    manifest: bytes                 # the attestation manifest
    manifest_digest: str
    statements: Mapping[str, bytes]  # digest -> statement bytes, in manifest order
    config: bytes
    config_digest: str
    blobs: Mapping[str, bytes] = field(default_factory=dict)


def image_platform(config: Mapping[str, Any]) -> dict[str, str]:
    p = {"architecture": config.get("architecture", "unknown"), "os": config.get("os", "unknown")}
    if config.get("variant"):
        p["variant"] = config["variant"]
    return p


def attestation_set(image_manifest: bytes, image_config: Mapping[str, Any],
                    preds: Mapping[str, Mapping[str, Any]]) -> AttestationSet:
    """Index + attestation manifest for the image manifest `image_manifest` (as it is
    exported) with the predicates `preds`."""
    target = sha256_digest(image_manifest)
    statements: dict[str, bytes] = {}
    layers = []
    for ptype in sorted(preds):
        data = canonical_json(statement(ptype, preds[ptype], target))
        d = sha256_digest(data)
        statements[d] = data
        layers.append(oci.Descriptor(IN_TOTO_MEDIA_TYPE, d, len(data), {PREDICATE_TYPE_ANNOTATION: ptype}))
    config = oci.encode({"architecture": "unknown", "os": "unknown", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [l.digest for l in layers]}}, "config")
    config_digest = sha256_digest(config)
    manifest = oci.encode(oci.build_manifest(oci.Descriptor(oci.OCI_CONFIG, config_digest, len(config)),
                                             layers), "manifest")
    manifest_digest = sha256_digest(manifest)
    media_type = oci.manifest_media_type(oci.decode(image_manifest, "manifest"))
    index = oci.encode(oci.build_index([
        oci.Descriptor(media_type, target, len(image_manifest), platform=image_platform(image_config)),
        oci.Descriptor(oci.OCI_MANIFEST, manifest_digest, len(manifest),
                       {REFERENCE_DIGEST: target, REFERENCE_TYPE: ATTESTATION_MANIFEST},
                       platform=UNKNOWN_PLATFORM),
    ]), "index")
    index_digest = sha256_digest(index)
    blobs = dict(statements)
    blobs[config_digest] = config
    blobs[manifest_digest] = manifest
    blobs[index_digest] = index
    return AttestationSet(index, index_digest, manifest, manifest_digest, statements, config, config_digest,
                          blobs)


# -- reading them back from an index (archives, registries) ---------------------------

def attestation_descriptors(index: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """(target image digest, attestation manifest descriptor) pairs of an index."""
    out = []
    for d in index.get("manifests") or []:
        ann = d.get("annotations") or {}
        if ann.get(REFERENCE_TYPE) == ATTESTATION_MANIFEST and isinstance(ann.get(REFERENCE_DIGEST), str):
            out.append((ann[REFERENCE_DIGEST], d))
    return out


def read_statements(att_manifest: bytes, read_blob) -> dict[str, dict[str, Any]]:
    """The in-toto statements of an attestation manifest, by predicate type;
    `read_blob(digest) -> bytes` fetches a layer (checked here against its digest)."""
    m = oci.decode(att_manifest, "attestation manifest")
    out: dict[str, dict[str, Any]] = {}
    for l in m.get("layers") or []:
        if l.get("mediaType") != IN_TOTO_MEDIA_TYPE:
            continue  # unknown media types are ignored, as the format says
        data = read_blob(l["digest"])
        if sha256_digest(data) != l["digest"]:
            raise CorruptContent(f"attestation {l['digest']} does not match its digest", digest=l["digest"])
        st = oci.decode(data, f"attestation {l['digest']}")
        ptype = st.get("predicateType") or (l.get("annotations") or {}).get(PREDICATE_TYPE_ANNOTATION)
        if isinstance(ptype, str):
            out[ptype] = st
    return out


def archive_predicates(reader) -> dict[str, dict[str, dict[str, Any]]]:
    """Attestations in an OCI archive (a store.archive_tar.ArchiveReader): image
    manifest digest -> predicates, from every index index.json names that holds an
    attestation manifest for an image. Unreadable attestations are left out."""
    from lamina.store.oci_archive import INDEX_JSON, blob_member

    out: dict[str, dict[str, dict[str, Any]]] = {}
    if not reader.has(INDEX_JSON):
        return out
    top = oci.decode(reader.read(INDEX_JSON), INDEX_JSON)
    seen: set[str] = set()  # an index listed 100 000 times is read once
    for d in top.get("manifests") or []:
        if d.get("mediaType") not in oci.INDEX_TYPES or d.get("digest") in seen \
                or not reader.has(blob_member(d.get("digest", ""))):
            continue
        seen.add(d["digest"])
        try:
            index = oci.decode(reader.read(blob_member(d["digest"])), f"index {d['digest']}")
            for target, att in attestation_descriptors(index):
                stmts = read_statements(reader.read(blob_member(att["digest"])),
                                        lambda dg: reader.read(blob_member(dg)))
                out[target] = {t: st.get("predicate") or {} for t, st in stmts.items()}
        except (StoreError, KeyError, TypeError):
            continue
    return out


# -- export (archives, push) -----------------------------------------------------------

def for_export(root, stored_digests: Sequence[str], images: Sequence[Any]) -> list[Any]:
    """`images` (store.archive_tar.ExportImage, as they will be written, e.g. after
    recompression) with `attestation` set for those whose stored image
    (`stored_digests`, same order) has attestations."""
    out = []
    for stored, img in zip(stored_digests, images):
        preds = predicates(root, stored)
        if not preds:
            out.append(img)
            continue
        config = oci.decode(img.config, "image config")
        out.append(replace(img, attestation=attestation_set(img.manifest, config, preds)))
    return out


def put_blobs(root, att: AttestationSet) -> None:
    """Write the blobs of an attestation set into the store (for a push, which uploads
    from the store; they are derived data: gc may take them, an export makes them again)."""
    with root.writing():
        for data in att.blobs.values():
            root.blobs.put(data)


__all__ = ["AttestationSet", "IN_TOTO_MEDIA_TYPE", "SLSA_PROVENANCE_V1", "SPDX_DOCUMENT",
           "archive_predicates", "attach", "attestation_descriptors", "attestation_set", "canonical_json", "for_export",
           "predicates", "put_blobs", "read_statements", "referenced_blobs", "statement"]
