"""OCI archive: a tar of an OCI image layout (image-spec v1.1 `image-layout.md`), both ways.

Written layout, readable by `skopeo ... oci-archive:FILE[:REF]`, `podman load`,
`umoci` (once extracted to a directory) and containerd:

    blobs/  blobs/sha256/  blobs/sha256/<hex>   manifests, configs, layers (store blobs)
    index.json                                  one descriptor per (image, name)
    oci-layout                                  {"imageLayoutVersion":"1.0.0"}

Each index descriptor names its image twice: `org.opencontainers.image.ref.name`
holds the canonical reference (`docker.io/library/app:1.0`; the spec's ref grammar
allows it, skopeo and podman resolve it, umoci takes it as `--image DIR:<ref>`),
and `io.containerd.image.name` the same for containerd / docker >= 25.

The images given are written as they are: which layer blobs (the stored zstd ones,
or the gzip ones an export made) and which manifest is store.recompress's choice.

Reading resolves nested indexes (multi-platform images) to the host's platform and
takes names from io.containerd.image.name, else from ref.name when that is a full
reference (a bare tag like `latest`, as buildkit writes, names nothing by itself).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, BinaryIO, Mapping, Sequence

from lamina.store import oci, refs
from lamina.store.archive_tar import (CHUNK, ArchivedImage, ArchivedLayer, ArchiveReader, ExportImage,
                               TarWriter, sort_key)
from lamina.store.blobs import BlobStore, check_digest
from lamina.store.errors import CorruptContent, StoreError

OCI_LAYOUT = "oci-layout"
INDEX_JSON = "index.json"
LAYOUT_DOC = b'{"imageLayoutVersion":"1.0.0"}'
CONTAINERD_NAME = "io.containerd.image.name"


def blob_member(digest: str) -> str:
    return "blobs/sha256/" + check_digest(digest)


def _checked_chunks(blobs: BlobStore, digest: str, size: int):
    h = hashlib.sha256()
    with blobs.open(digest) as f:
        while True:
            chunk = f.read(CHUNK)
            if not chunk:
                break
            h.update(chunk)
            yield chunk
    if "sha256:" + h.hexdigest() != digest:
        raise CorruptContent(f"stored blob {digest} does not match its digest (run lamina fsck)",
                             digest=digest)


def index_document(images: Sequence[ExportImage]) -> bytes:
    """index.json: one descriptor per name of each image (one without annotations for
    an image saved without a name), in the order given."""
    descs: list[oci.Descriptor] = []
    for img in images:
        media_type = oci.manifest_media_type(json.loads(img.manifest))
        digest, size = img.manifest_digest, len(img.manifest)
        if img.attestation is not None:  # the index holding the image and its attestations
            media_type, digest, size = oci.OCI_INDEX, img.attestation.index_digest, len(img.attestation.index)
        for name in img.names or (None,):
            ann = {} if name is None else {oci.ANNOTATION_REF_NAME: name, CONTAINERD_NAME: name}
            descs.append(oci.Descriptor(media_type, digest, size, ann))
    return oci.encode(oci.build_index(descs), "index")


def write_oci_archive(out: BinaryIO, images: Sequence[ExportImage], blobs: BlobStore) -> None:
    """Write `images` as a tar of an OCI layout; every blob once, checked as it is copied."""
    files: dict[str, Any] = {OCI_LAYOUT: LAYOUT_DOC, INDEX_JSON: index_document(images)}
    for img in images:
        files[blob_member(img.manifest_digest)] = img.manifest
        files[blob_member(img.config_digest)] = img.config
        for layer in img.layers:
            files[blob_member(layer.digest)] = layer
        if img.attestation is not None:
            for digest, data in img.attestation.blobs.items():
                files[blob_member(digest)] = data
    tar = TarWriter(out)
    for name in sorted(list(files) + ["blobs/", "blobs/sha256/"], key=sort_key):
        if name.endswith("/"):
            tar.add_dir(name)
            continue
        content = files[name]
        if isinstance(content, bytes):
            tar.add_bytes(name, content)
        else:
            size = blobs.size(content.digest)
            tar.add_stream(name, size, _checked_chunks(blobs, content.digest, size))
    tar.close()


# -- reading -----------------------------------------------------------------------

def _read_blob(reader: ArchiveReader, desc: oci.Descriptor, what: str) -> bytes:
    data = reader.read(blob_member(desc.digest))
    if len(data) != desc.size:
        raise CorruptContent(f"{reader.path}: {what} {desc.digest} is {len(data)} bytes, its "
                             f"descriptor says {desc.size}", path=reader.path, digest=desc.digest)
    if "sha256:" + hashlib.sha256(data).hexdigest() != desc.digest:
        raise CorruptContent(f"{reader.path}: {what} {desc.digest} does not match its digest",
                             path=reader.path, digest=desc.digest)
    return data


def names_of(annotations: Mapping[str, str]) -> tuple[str, ...]:
    """Canonical references an index descriptor's annotations give its image."""
    for key in (CONTAINERD_NAME, oci.ANNOTATION_REF_NAME):
        value = annotations.get(key)
        if not isinstance(value, str) or not value:
            continue
        if key == oci.ANNOTATION_REF_NAME and ":" not in value and "/" not in value:
            continue  # a bare tag ("latest"): no repository to put it in
        try:
            return (str(refs.parse_tag(value)),)
        except StoreError:
            continue
    return ()


def _platform_matches(p: Mapping[str, Any] | None, host: Mapping[str, str]) -> bool:
    if not p:
        return False
    if p.get("os") != host["os"] or p.get("architecture") != host["architecture"]:
        return False
    return p.get("variant") in (None, "", host.get("variant"))


def _pick_manifest(reader: ArchiveReader, desc: oci.Descriptor, depth: int = 0) -> oci.Descriptor:
    """`desc` itself if it is an image manifest; for an index, the manifest for this
    host's platform (or its only image manifest)."""
    if desc.media_type in oci.MANIFEST_TYPES:
        return desc
    if desc.media_type not in oci.INDEX_TYPES:
        raise CorruptContent(f"{reader.path}: {INDEX_JSON} lists {desc.digest} of unsupported media "
                             f"type {desc.media_type!r}", path=reader.path)
    if depth > 4:
        raise CorruptContent(f"{reader.path}: image indexes nested too deep", path=reader.path)
    idx = oci.decode(_read_blob(reader, desc, "image index"), f"{reader.path}: index {desc.digest}")
    oci.check_index(idx, f"{reader.path}: index {desc.digest}")
    children = [oci.Descriptor.from_json(d) for d in idx["manifests"]]
    host = oci.host_platform()
    images = [c for c in children if c.media_type in oci.MANIFEST_TYPES | oci.INDEX_TYPES]
    chosen = [c for c in images if _platform_matches(c.platform, host)]
    if not chosen and len(images) == 1:
        chosen = images
    if not chosen:
        raise StoreError(f"{reader.path}: image index {desc.digest} has no image for "
                         f"{host['os']}/{host['architecture']}", path=reader.path)
    return _pick_manifest(reader, chosen[0], depth + 1)


def read_oci_archive(reader: ArchiveReader) -> list[ArchivedImage]:
    """The images an OCI archive's index.json lists (same manifest listed under several
    names: one image with all of them), manifests and configs read and checked; layer
    members are located and their sizes checked, not read."""
    layout = oci.decode(reader.read(OCI_LAYOUT), f"{reader.path}: {OCI_LAYOUT}")
    version = layout.get("imageLayoutVersion")
    if not isinstance(version, str) or not version.startswith("1."):
        raise CorruptContent(f"{reader.path}: unsupported OCI layout version {version!r}", path=reader.path)
    index = oci.decode(reader.read(INDEX_JSON), f"{reader.path}: {INDEX_JSON}")
    oci.check_index(index, f"{reader.path}: {INDEX_JSON}")
    if not index["manifests"]:
        raise CorruptContent(f"{reader.path}: {INDEX_JSON} lists no images", path=reader.path)
    found: dict[str, ArchivedImage] = {}
    picked: dict[str, oci.Descriptor] = {}  # each nested index read once, however often listed
    for i, d in enumerate(index["manifests"]):
        top = oci.Descriptor.from_json(d, f"{reader.path}: {INDEX_JSON}: manifest {i}")
        key = f"{top.media_type} {top.digest} {top.size}"
        if key not in picked:
            picked[key] = _pick_manifest(reader, top)
        desc = picked[key]
        names = names_of(top.annotations)
        if desc.digest in found:
            prev = found[desc.digest]
            merged = prev.names + tuple(n for n in names if n not in prev.names)
            found[desc.digest] = ArchivedImage(prev.config, prev.config_digest, prev.layers, merged,
                                               prev.manifest, prev.manifest_digest)
            continue
        found[desc.digest] = _read_image(reader, desc, names)
    return list(found.values())


def _read_image(reader: ArchiveReader, desc: oci.Descriptor, names: tuple[str, ...]) -> ArchivedImage:
    what = f"{reader.path}: manifest {desc.digest}"
    manifest = _read_blob(reader, desc, "manifest")
    m = oci.decode(manifest, what)
    oci.check_manifest(m, what)
    config_desc = oci.Descriptor.from_json(m["config"], f"{what}: config")
    config = _read_blob(reader, config_desc, "image config")
    cfg = oci.decode(config, f"{reader.path}: config {config_desc.digest}")
    oci.check_config(cfg, f"{reader.path}: config {config_desc.digest}")
    diffs = oci.diff_ids(cfg)
    if len(diffs) != len(m["layers"]):
        raise CorruptContent(f"{what}: lists {len(m['layers'])} layers but its config has "
                             f"{len(diffs)} diff_ids", path=reader.path)
    layers: list[ArchivedLayer] = []
    for j, (ld, diff) in enumerate(zip(m["layers"], diffs)):
        l = oci.Descriptor.from_json(ld, f"{what}: layer {j}")
        member = blob_member(l.digest)
        if not reader.has(member):
            raise CorruptContent(f"{reader.path}: layer {l.digest} is not in the archive"
                                 + (" (a foreign layer: fetch it from its URLs first)" if ld.get("urls") else ""),
                                 path=reader.path, digest=l.digest)
        if reader.size(member) != l.size:
            raise CorruptContent(f"{reader.path}: layer {l.digest} is {reader.size(member)} bytes, the "
                                 f"manifest says {l.size}", path=reader.path, digest=l.digest)
        layers.append(ArchivedLayer(member=member, diff_id=diff, digest=l.digest,
                                    media_type=l.media_type, size=l.size))
    return ArchivedImage(config=config, config_digest=config_desc.digest, layers=tuple(layers),
                         names=names, manifest=manifest, manifest_digest=desc.digest)
