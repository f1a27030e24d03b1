"""Image archives: `save` images of a Store to a docker-archive or an OCI archive,
and `load` either kind (from lamina, docker, podman, skopeo, buildkit) into it.

The formats themselves live in store.docker_archive and store.oci_archive, the tar
container in store.archive_tar; this module joins them to the Store:

- save: resolve references, collect the stored manifest/config bytes and layers,
  write the archive into a temp file next to the destination and rename it into
  place (a failed save leaves no partial file). Same images -> same archive bytes.
  A docker-archive holds uncompressed layer.tar members. An OCI archive holds the
  layers in the `compression` asked (store.recompress): "gzip" by default, which
  exports each zstd layer of the store as a gzip blob (made once, then kept in the
  store as another blob of that layer) - readable by umoci, skopeo's docker-archive
  conversion and docker < 23; "zstd" exports the stored blobs as they are. The image
  ID (config digest) is the same either way; the manifest digest of a gzip export
  differs from the stored image's when a layer was recompressed (its manifest
  names other blobs). The save holds a lease on its images, so a concurrent gc
  never removes what it is copying.
- load: detect the format by content (an OCI layout wins when an archive has both,
  as docker >= 25 writes, because it keeps the manifests); read each layer member
  once, streaming it into the blob store while hashing the blob and, through a
  decompressor, the diff_id, both checked against the manifest and the config;
  memory use does not depend on layer size. Configs and manifests keep their exact
  bytes, so image IDs and manifest digests are those of the source; a docker-archive
  has no manifest, so an OCI manifest is synthesised (canonical JSON: the same
  archive always gives the same manifest digest) over the layer members kept as
  they are (uncompressed tars, media type ...layer.v1.tar, digest = diff_id). The
  provenance/SBOM an OCI archive's index carries for an image (BuildKit's attestation
  manifest) is recorded with it (store.attestations). Any failure raises one
  StoreError and removes the blobs this load added: the store is as it was.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal, Sequence

from lamina.store import attestations, compression, oci, recompress, refs
from lamina.store.archive_tar import CHUNK, ArchivedImage, ArchivedLayer, ArchiveReader, ExportImage
from lamina.store.blobs import BlobStore
from lamina.store.docker_archive import MANIFEST_JSON, read_docker_archive, write_docker_archive
from lamina.store.errors import CorruptContent, StoreError
from lamina.store.oci_archive import INDEX_JSON, OCI_LAYOUT, read_oci_archive, write_oci_archive

if TYPE_CHECKING:
    from lamina.store.images import Image

Format = Literal["docker", "oci"]
FORMATS: tuple[str, ...] = ("docker", "oci")


@dataclass(frozen=True)
class Loaded:
    """One image a load added: its store record and the names it was tagged with."""

    image: "Image"
    names: tuple[str, ...]

    @property
    def config_digest(self) -> str:
        return self.image.config_digest

    @property
    def manifest_digest(self) -> str:
        return self.image.manifest_digest


# -- save --------------------------------------------------------------------------

def _names_for(ref: str) -> tuple[str, ...]:
    """The name a save records for `ref`: its canonical tag form; none for an image
    ID, a digest or a name@digest reference (as docker does)."""
    if refs.looks_like_id(ref) or "@" in ref:
        return ()
    try:
        return (str(refs.parse_tag(ref)),)
    except StoreError:
        return ()


def export_images(store, references: Sequence[str]) -> list[ExportImage]:
    """Resolve `references` to ExportImages: one per distinct manifest, in the order
    first named, with the names of all references that resolved to it."""
    if not references:
        raise StoreError("nothing to save: give at least one image reference")
    order: list[str] = []
    found: dict[str, tuple[object, list[str]]] = {}
    for ref in references:
        image = store.resolve(ref)
        key = image.manifest_digest
        if key not in found:
            found[key] = (image, [])
            order.append(key)
        for n in _names_for(ref):
            if n not in found[key][1]:
                found[key][1].append(n)
    out: list[ExportImage] = []
    for key in order:
        image, names = found[key]
        out.append(ExportImage(
            manifest_digest=image.manifest_digest, manifest=store.blobs.read(image.manifest_digest),
            config_digest=image.config_digest, config=store.blobs.read(image.config_digest),
            layers=tuple(image.layers), names=tuple(names)))
    return out


def write_archive(out: BinaryIO, images: Sequence[ExportImage], blobs: BlobStore, fmt: Format) -> None:
    if fmt == "docker":
        # one manifest.json entry per image ID: images sharing a config merge names
        by_config: dict[str, ExportImage] = {}
        for img in images:
            prev = by_config.get(img.config_digest)
            if prev is None:
                by_config[img.config_digest] = img
            else:
                by_config[img.config_digest] = ExportImage(
                    prev.manifest_digest, prev.manifest, prev.config_digest, prev.config, prev.layers,
                    prev.names + tuple(n for n in img.names if n not in prev.names))
        write_docker_archive(out, list(by_config.values()), blobs)
    elif fmt == "oci":
        write_oci_archive(out, images, blobs)
    else:
        raise StoreError(f"unknown archive format {fmt!r} (expected docker or oci)")


def save(store, references: Sequence[str], dest: str | os.PathLike | BinaryIO, *,
         fmt: Format = "docker", compression: str | None = None) -> list[ExportImage]:
    """Write the images `references` name to `dest` (a path, or a binary stream such as
    stdout). A path is written through a temp file renamed into place. `compression`
    (OCI only: "gzip", the default, or "zstd") is the layers' compression in the
    archive; the ExportImages returned are those written (for an OCI gzip export, with
    the recompressed layers and the manifest naming them)."""
    if fmt not in FORMATS:
        raise StoreError(f"unknown archive format {fmt!r} (expected docker or oci)")
    if compression is not None:
        recompress.check_compression(compression)
        if fmt != "oci":
            raise StoreError("a docker-archive holds uncompressed layer tars: a compression "
                             "applies to the oci format only")
    images = export_images(store, references)
    with store.lease() as lease:
        lease.hold(images=[i.manifest_digest for i in images],
                   layers=sorted({l.diff_id for i in images for l in i.layers}))
        if fmt == "oci":
            stored = [i.manifest_digest for i in images]
            images = recompress.export_all(store, images, compression or recompress.DEFAULT_EXPORT_COMPRESSION)
            images = attestations.for_export(store, stored, images)  # an index with them (as buildx)
        _write(images, store.blobs, fmt, dest)
    return images


def _write(images: list[ExportImage], blobs: BlobStore, fmt: Format,
           dest: str | os.PathLike | BinaryIO) -> None:
    if not isinstance(dest, (str, os.PathLike)):
        write_archive(dest, images, blobs, fmt)
        dest.flush()
        return
    path = Path(dest)
    if path.is_dir():
        raise StoreError(f"{path} is a directory: give a file name to save to", path=str(path))
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise StoreError(f"cannot save to {path}: directory {parent} does not exist", path=str(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write_archive(f, images, blobs, fmt)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


# -- load --------------------------------------------------------------------------

def detect_format(reader: ArchiveReader) -> Format:
    """'oci' when the archive holds an OCI layout (oci-layout + index.json), else
    'docker' when it has manifest.json; StoreError for anything else."""
    if reader.has(OCI_LAYOUT) and reader.has(INDEX_JSON):
        return "oci"
    if reader.has(MANIFEST_JSON):
        return "docker"
    if reader.has("repositories"):
        raise StoreError(f"{reader.path}: a pre-1.10 docker archive (no manifest.json) is not "
                         "supported", path=reader.path)
    raise StoreError(f"{reader.path}: not an image archive (no manifest.json, no oci-layout "
                     "and index.json)", path=reader.path)


def read_images(reader: ArchiveReader) -> tuple[Format, list[ArchivedImage]]:
    fmt = detect_format(reader)
    return fmt, (read_oci_archive(reader) if fmt == "oci" else read_docker_archive(reader))


class _Tee:
    """A reader that passes everything read from `src` on to `sink` (a BlobWriter,
    which hashes it) or, without a sink, hashes it itself; it remembers the first
    bytes for format sniffing."""

    def __init__(self, src, sink) -> None:
        self._src = src
        self._sink = sink
        self.hash = hashlib.sha256() if sink is None else None
        self.size = 0
        self.head = b""

    def read(self, n: int = -1) -> bytes:
        data = self._src.read(n)
        if data:
            if len(self.head) < 8:
                self.head += data[:8 - len(self.head)]
            self.size += len(data)
            if self._sink is not None:
                self._sink.write(data)
            else:
                self.hash.update(data)
        return data

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        while self.read(CHUNK):
            pass

    @property
    def digest(self) -> str:
        if self._sink is not None:
            return self._sink.digest_so_far()
        return "sha256:" + self.hash.hexdigest()


def ingest_layer(blobs: BlobStore, reader: ArchiveReader, layer: ArchivedLayer, added: list[str]):
    """Stream one layer member into the blob store, checking the blob digest (when the
    manifest gives one), the compression its media type promises and the diff_id.
    Returns a store.layers.LayerBlob; appends the digest to `added` if it is new."""
    from lamina.store.layers import LayerBlob, diff_id_of

    where = f"{reader.path}: layer {layer.member} (diff_id {layer.diff_id})"
    known = layer.digest is not None and blobs.exists(layer.digest)
    writer = None if known else blobs.writer()
    try:
        with reader.open(layer.member) as src:
            tee = _Tee(src, writer)
            # hashed and walked as a tar (CorruptContent if it is not a valid one)
            diff_id, usize = diff_id_of(tee)
            tee.drain()
        kind = compression.detect(tee.head)
        if layer.media_type is not None:
            declared = compression.kind_for_media_type(layer.media_type)
            if declared != kind:
                raise CorruptContent(f"{where}: media type {layer.media_type} promises "
                                     f"{declared} but the blob is {kind}", path=reader.path)
            media_type = layer.media_type
        else:
            media_type = compression.media_type_for(kind)
        if layer.digest is not None and tee.digest != layer.digest:
            raise CorruptContent(f"{where}: content does not match its digest {layer.digest}",
                                 path=reader.path, digest=layer.digest)
        if diff_id != layer.diff_id:
            raise CorruptContent(f"{where}: uncompressed content hashes to {diff_id}, but the image "
                                 f"config says diff_id {layer.diff_id}", path=reader.path,
                                 digest=layer.diff_id)
        if writer is not None:
            existed = blobs.exists(tee.digest)
            digest, _ = writer.commit(tee.digest)
            writer = None
            if not existed:
                added.append(digest)
    except CorruptContent as e:
        if e.path is None:  # from the decompressor: say which member
            raise CorruptContent(f"{where}: {e.message}", path=reader.path) from None
        raise
    except StoreError as e:
        raise StoreError(f"{where}: {e.message}", path=reader.path) from None
    finally:
        if writer is not None:  # not committed: drop the temp file
            writer.abort()
    return LayerBlob(diff_id=diff_id, digest=tee.digest, size=tee.size, media_type=media_type,
                     uncompressed_size=usize)


def synthesise_manifest(config: bytes, config_digest: str, layers: Sequence) -> bytes:
    """The OCI manifest of a docker-archive image: canonical, so the same archive
    always gives the same manifest digest."""
    m = oci.build_manifest(oci.Descriptor(oci.OCI_CONFIG, config_digest, len(config)),
                           [oci.Descriptor(l.media_type, l.digest, l.size) for l in layers])
    return oci.encode(m, "manifest")


def _put(blobs: BlobStore, data: bytes, added: list[str]) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    if not blobs.exists(digest):
        blobs.put(data)
        added.append(digest)
    return digest


def load(store, source: str | os.PathLike) -> list[Loaded]:
    """Load every image of the archive at `source` into `store` (see module docstring).
    Holds the store's gc lock shared from the first blob written to the last image
    recorded, so a concurrent gc never removes what this load is about to reference."""
    blobs: BlobStore = store.blobs
    added: list[str] = []
    registered = False
    with ArchiveReader(source, tmp_dir=blobs.tmp_dir) as reader, store.writing():
        try:
            _fmt, images = read_images(reader)
            staged = []
            seen: dict[tuple, object] = {}  # a member shared by several images is read once
            for img in images:
                layers = []
                for l in img.layers:
                    # keyed by the member a name resolves to: a hostile manifest can
                    # name one big layer 400 000 times through as many links
                    where = reader.resolve(l.member).offset_data
                    key = (where, l.diff_id, l.digest, l.media_type)
                    if key not in seen:
                        seen[key] = ingest_layer(blobs, reader, l, added)
                    layers.append(seen[key])
                layers = tuple(layers)
                manifest = img.manifest
                if manifest is None:
                    manifest = synthesise_manifest(img.config, img.config_digest, layers)
                _put(blobs, img.config, added)
                _put(blobs, manifest, added)
                staged.append((manifest, img, layers))
            out: list[Loaded] = []
            for manifest, img, layers in staged:
                image = store.add_manifest(manifest, img.config, layers, img.names)
                registered = True  # from here on, added blobs are referenced: keep them
                out.append(Loaded(image=image, names=img.names))
            if _fmt == "oci":  # provenance / SBOM an index carries (BuildKit's layout)
                found = attestations.archive_predicates(reader)
                for loaded in out:
                    if found.get(loaded.image.manifest_digest):
                        attestations.attach(store, loaded.image.manifest_digest, found[loaded.image.manifest_digest])
            return out
        except BaseException:
            if not registered:
                for digest in added:
                    blobs.delete(digest)
            raise


def load_stream(store, stream: BinaryIO) -> list[Loaded]:
    """`load` from a non-seekable stream (stdin): spooled to a temp file of the store
    (owned by this process, so removed by the next lamina if this one is killed)."""
    tmp = store.temp_path("load")
    try:
        with open(tmp, "xb") as f:
            while True:
                chunk = stream.read(CHUNK)
                if not chunk:
                    break
                f.write(chunk)
            empty = f.tell() == 0
        if empty:
            raise StoreError("no archive on standard input (use -i FILE)")
        return load(store, tmp)
    finally:
        tmp.unlink(missing_ok=True)
