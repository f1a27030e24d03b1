"""Reading one image where it lies, without loading it into a store: an image of a
Store (by reference or ID), a docker-archive or OCI archive file (plain or
compressed), or an OCI image layout directory.

`open_image(spec, store=...)` gives an `ImageSource`: the exact manifest bytes (None
for a docker-archive, which has none), the config bytes, the layers (diff_id, blob
digest, media type, size), and `open_layer(i)`, a readable stream of layer i's
uncompressed tar (gzip, zstd or plain detected by content). Nothing is read whole:
layers are streamed from the blob store, the archive member or the layout's blob
file. Close the source (or use it as a context manager) to release the archive.

Specs: `PATH` (an existing file or directory: the format is detected by content),
`docker-archive:PATH`, `oci-archive:PATH`, `oci:DIR` (a layout dir), or a store
reference (`app:1.0`, `sha256:...`, a short ID). An archive holding several images
is refused unless `PATH:NAME`-style selection is not needed: the first image is
taken only when it is the only one.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable

from lamina.store import oci
from lamina.store.archive import detect_format
from lamina.store.archive_tar import ArchiveReader, ArchivedImage
from lamina.store.decompress import open_decompressed
from lamina.store.docker_archive import read_docker_archive
from lamina.store.errors import CorruptContent, StoreError
from lamina.store.oci_archive import read_oci_archive

if TYPE_CHECKING:
    from lamina.store.store import Store

MAX_DOCUMENT = 16 << 20
TRANSPORTS = ("docker-archive:", "oci-archive:", "oci:", "lamina:")


@dataclass(frozen=True)
class SourceLayer:
    """One layer of an image being read: its diff_id (from the config), and its blob
    as the manifest names it (digest/media_type/size None for a docker-archive)."""

    diff_id: str
    digest: str | None
    media_type: str | None
    size: int | None


@dataclass(frozen=True)
class ImageDocuments:
    """What an image is, apart from its layer bytes. `kind` is one of "store",
    "docker-archive", "oci-archive", "oci-layout"; `name` is the spec as given."""

    name: str
    kind: str
    manifest: bytes | None
    manifest_digest: str | None
    config: bytes
    config_digest: str
    layers: tuple[SourceLayer, ...]

    def manifest_json(self) -> dict | None:
        return None if self.manifest is None else json.loads(self.manifest)

    def config_json(self) -> dict:
        return json.loads(self.config)


class ImageSource:
    """An opened image: `documents`, and `open_layer(i)` (uncompressed tar stream)."""

    def __init__(self, documents: ImageDocuments, opener: Callable[[int], BinaryIO],
                 closer: Callable[[], None] = lambda: None) -> None:
        self.documents = documents
        self._opener = opener
        self._closer = closer

    @property
    def name(self) -> str:
        return self.documents.name

    def open_layer(self, index: int) -> BinaryIO:
        """The uncompressed tar of layer `index` (0 = base), streamed."""
        return open_decompressed(self._opener(index))

    def close(self) -> None:
        self._closer()

    def __enter__(self) -> "ImageSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- a store's image -----------------------------------------------------------------

def from_store(store: "Store", ref: str, *, name: str | None = None) -> ImageSource:
    """An image of `store` (ImageNotFound when it has none of that name)."""
    image = store.resolve(ref)
    manifest = _read_blob_file(store.blobs.path(image.manifest_digest), image.manifest_digest)
    config = _read_blob_file(store.blobs.path(image.config_digest), image.config_digest)
    layers = tuple(SourceLayer(l.diff_id, l.digest, l.media_type, l.size) for l in image.layers)
    # the manifest's own descriptors (a pulled image keeps the registry's blobs)
    m = json.loads(manifest)
    if len(m.get("layers") or ()) == len(layers):
        layers = tuple(SourceLayer(l.diff_id, d.get("digest"), d.get("mediaType"), d.get("size"))
                       for l, d in zip(layers, m["layers"]))
    docs = ImageDocuments(name=name or ref, kind="store", manifest=manifest,
                          manifest_digest=image.manifest_digest, config=config,
                          config_digest=image.config_digest, layers=layers)
    stored = image.layers

    def opener(i: int) -> BinaryIO:
        return store.blobs.open(stored[i].digest)

    return ImageSource(docs, opener)


def _read_blob_file(path: Path, digest: str) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CorruptContent(f"blob {digest} is missing ({path})", digest=digest) from None
    if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        raise CorruptContent(f"blob {digest} does not match its digest ({path})", digest=digest)
    return data


# -- archives ------------------------------------------------------------------------

def _one_image(images: list[ArchivedImage], where: str) -> ArchivedImage:
    if len(images) != 1:
        names = ", ".join(n for im in images for n in im.names) or f"{len(images)} unnamed"
        raise StoreError(f"{where} holds {len(images)} images ({names}): "
                         "compare archives of one image each")
    return images[0]


def _from_reader(reader, name: str, fmt: str, kind: str) -> ImageSource:
    images = read_oci_archive(reader) if fmt == "oci" else read_docker_archive(reader)
    im = _one_image(images, reader.path)
    layers = tuple(SourceLayer(l.diff_id, l.digest, l.media_type, l.size) for l in im.layers)
    docs = ImageDocuments(name=name, kind=kind, manifest=im.manifest,
                          manifest_digest=im.manifest_digest, config=im.config,
                          config_digest=im.config_digest, layers=layers)
    members = [l.member for l in im.layers]
    return ImageSource(docs, lambda i: reader.open(members[i]), reader.close)


def from_archive(path: str | os.PathLike, *, fmt: str | None = None,
                 name: str | None = None, tmp_dir: str | os.PathLike | None = None) -> ImageSource:
    """The one image of a docker-archive or OCI archive file (`fmt` None: detected)."""
    reader = ArchiveReader(path, tmp_dir=tmp_dir)
    try:
        found = detect_format(reader)
        if fmt is not None and fmt != found:
            raise StoreError(f"{reader.path} is a {found} archive, not a {fmt} one", path=reader.path)
        kind = "oci-archive" if found == "oci" else "docker-archive"
        return _from_reader(reader, name or os.fspath(path), found, kind)
    except BaseException:
        reader.close()
        raise


class LayoutReader:
    """An OCI image layout directory, read through the member interface the archive
    readers use (read / has / size / open by relative name), never outside the dir."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        self._root = Path(path)
        if not (self._root / "oci-layout").is_file():
            raise StoreError(f"{self.path} is not an OCI image layout (no oci-layout file)",
                             path=self.path)

    def _member(self, name: str) -> Path:
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if any(p == ".." for p in parts):
            raise CorruptContent(f"{self.path}: member {name!r} leaves the layout", path=self.path)
        p = self._root.joinpath(*parts)
        if p.is_symlink() or not p.is_file():
            raise CorruptContent(f"{self.path}: {name} is missing or not a regular file",
                                 path=self.path)
        return p

    def has(self, name: str) -> bool:
        try:
            self._member(name)
            return True
        except StoreError:
            return False

    def size(self, name: str) -> int:
        return self._member(name).stat().st_size

    def open(self, name: str) -> BinaryIO:
        return open(self._member(name), "rb")

    def read(self, name: str, limit: int = MAX_DOCUMENT) -> bytes:
        p = self._member(name)
        if p.stat().st_size > limit:
            raise CorruptContent(f"{self.path}: {name} is larger than the {limit} bytes allowed "
                                 "for a JSON document", path=self.path)
        return p.read_bytes()

    def close(self) -> None:
        pass


def from_layout(path: str | os.PathLike, *, name: str | None = None) -> ImageSource:
    """The one image of an OCI layout directory."""
    reader = LayoutReader(path)
    return _from_reader(reader, name or os.fspath(path), "oci", "oci-layout")


# -- any spec ------------------------------------------------------------------------

def open_image(spec: str, *, store: "Store | None" = None,
               tmp_dir: str | os.PathLike | None = None) -> ImageSource:
    """The image `spec` names (see the module docstring). A spec that is neither an
    existing path nor a transport-prefixed one is a reference in `store`
    (ImageNotFound when absent; StoreError when no store is given)."""
    for prefix in TRANSPORTS:
        if spec.startswith(prefix):
            rest = spec[len(prefix):]
            if prefix == "oci:":
                return from_layout(rest, name=spec)
            if prefix == "lamina:":
                return _store_ref(store, rest, spec)
            fmt = "docker" if prefix == "docker-archive:" else "oci"
            return from_archive(rest, fmt=fmt, name=spec, tmp_dir=tmp_dir)
    p = Path(spec)
    if os.sep in spec or spec.startswith(".") or p.exists():
        if p.is_dir():
            return from_layout(p, name=spec)
        if p.exists():
            return from_archive(p, name=spec, tmp_dir=tmp_dir)
        if os.sep in spec and not _looks_like_reference(spec):
            raise StoreError(f"{spec}: no such file or directory", path=spec)
    return _store_ref(store, spec, spec)


def _looks_like_reference(spec: str) -> bool:
    from lamina.store import refs

    try:
        refs.parse(spec)
        return True
    except StoreError:
        return False


def _store_ref(store: "Store | None", ref: str, name: str) -> ImageSource:
    if store is None:
        raise StoreError(f"{name}: not a file or directory, and no store to look it up in")
    return from_store(store, ref, name=name)


__all__ = ["ImageDocuments", "ImageSource", "LayoutReader", "SourceLayer", "from_archive",
           "from_layout", "from_store", "open_image", "TRANSPORTS"]
