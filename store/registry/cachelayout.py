"""The build cache in an OCI image layout directory (`--cache-to type=local,dest=DIR`,
`--cache-from type=local,src=DIR`): the cache artifact of store.registry.cache
with its blobs under DIR/blobs/sha256/ and DIR/index.json naming its manifest
(artifactType application/vnd.lamina.cache.v1+json, ref name "latest").

Every file is written to a temp name, fsynced and renamed, blobs first and
index.json last, so a reader sees the old cache or the new one; blobs are named
by digest, so concurrent writers never damage each other's. Reading verifies
every blob against its digest (paths are built only from checked digests).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from lamina.store import oci
from lamina.store.blobs import check_digest, sha256_digest
from lamina.store.errors import CorruptContent, StoreError
from lamina.store.layers import LayerBlob
from lamina.store.registry.cache import (ARTIFACT_TYPE, MAX_RECORDS_BYTES, CacheData, CacheSource, Provide,
                                         artifact, check_size, decode_records, merge, records_descriptor)
from lamina.store.registry.pull import MAX_MANIFEST_BYTES


class LayoutCacheSource(CacheSource):
    """A cache written by `write_layout` (an OCI image layout directory)."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.where = str(self.dir)

    def _blob_path(self, digest: str) -> Path:
        return self.dir / "blobs" / "sha256" / check_digest(digest)

    def _read(self, digest: str, limit: int) -> bytes:
        try:
            with open(self._blob_path(digest), "rb") as f:
                data = f.read(limit + 1)
        except OSError as e:
            raise StoreError(f"{self.where}: cannot read blob {digest}: {e.strerror or e}",
                             path=str(self._blob_path(digest))) from None
        if len(data) > limit:
            raise CorruptContent(f"{self.where}: blob {digest} is larger than {limit} bytes", digest=digest)
        if sha256_digest(data) != digest:
            raise CorruptContent(f"{self.where}: blob {digest} does not match its digest", digest=digest)
        return data

    def load(self) -> CacheData:
        try:
            index = (self.dir / "index.json").read_bytes()
        except OSError as e:
            raise StoreError(f"no build cache in {self.where}: {e.strerror or e}", path=self.where) from None
        idx = oci.decode(index, f"{self.where}/index.json")
        oci.check_index(idx, f"{self.where}/index.json")
        for d in idx["manifests"]:
            if d.get("artifactType") == ARTIFACT_TYPE and d["size"] <= MAX_MANIFEST_BYTES:
                manifest = oci.decode(self._read(d["digest"], MAX_MANIFEST_BYTES), f"{self.where}: manifest")
                desc = records_descriptor(manifest, self.where)
                if desc is not None:
                    check_size(desc, self.where)
                    return decode_records(self._read(desc.digest, MAX_RECORDS_BYTES), self.where)
        raise CorruptContent(f"{self.where}/index.json names no lamina build cache")

    def fetch_blob(self, blobs, layer: LayerBlob) -> None:
        if blobs.exists(layer.digest):
            return
        try:
            f = open(self._blob_path(layer.digest), "rb")
        except OSError as e:
            raise StoreError(f"{self.where}: cannot read layer blob {layer.digest}: {e.strerror or e}",
                             digest=layer.digest) from None
        with f:
            _, size = blobs.ingest(f, expected=layer.digest)
        if size != layer.size:
            blobs.delete(layer.digest)
            raise CorruptContent(f"{self.where}: layer blob {layer.digest} has {size} bytes, "
                                 f"the cache says {layer.size}", digest=layer.digest)


# -- writing to an OCI layout ------------------------------------------------------------

def _place(directory: Path, name: str, write: Callable[[Any], None]) -> None:
    """Write a file by temp file + fsync + rename (readers see it whole or not at all)."""
    target = directory / name
    # an exclusive temp file with an unguessable name: the destination dir may be
    # shared, and a planted symlink at a predictable name would be written through
    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def _copy_blob(blobs, digest: str) -> Callable[[Any], None]:
    def write(out) -> None:
        with blobs.open(digest) as f:
            while chunk := f.read(1 << 20):
                out.write(chunk)
    return write


def write_layout(store, directory: Path, data: CacheData, *, mode: str = "min",
                 provide: Provide) -> str:
    """Write `data` as the cache artifact of the OCI image layout `directory`
    (created if needed): blobs (each by rename) first, index.json (by rename)
    last. mode=max merges the cache already there. Returns the manifest digest."""
    directory = Path(directory)
    blob_dir = directory / "blobs" / "sha256"
    try:
        blob_dir.mkdir(parents=True, exist_ok=True)
        if not (directory / "oci-layout").exists():
            _place(directory, "oci-layout", lambda f: f.write(b'{"imageLayoutVersion":"1.0.0"}'))
        old = None
        if mode == "max":
            try:
                old = LayoutCacheSource(directory).load()
            except StoreError:
                old = None
        merged = merge(data, old)
        if any(not (blob_dir / l.digest.split(":", 1)[1]).is_file() for l in merged.used_layers()
               if l.diff_id not in data.layers):
            merged = data  # a layer of the old cache is gone: write ours alone
        for layer in data.used_layers():
            name = layer.digest.split(":", 1)[1]
            if (blob_dir / name).is_file():
                continue
            if not store.blobs.exists(layer.digest):
                provide(layer)
            _place(blob_dir, name, _copy_blob(store.blobs, layer.digest))
        config, records, manifest = artifact(merged, mode)
        for blob in (config, records, manifest):
            name = sha256_digest(blob).split(":", 1)[1]
            if not (blob_dir / name).is_file():
                _place(blob_dir, name, lambda f, b=blob: f.write(b))
        digest = sha256_digest(manifest)
        index = {"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": [{
            "mediaType": oci.OCI_MANIFEST, "artifactType": ARTIFACT_TYPE, "digest": digest,
            "size": len(manifest), "annotations": {oci.ANNOTATION_REF_NAME: "latest"}}]}
        _place(directory, "index.json", lambda f: f.write(oci.encode(index, "index")))
        return digest
    except OSError as e:
        raise StoreError(f"cannot write the build cache to {directory}: {e.strerror or e}",
                         path=str(directory)) from None


__all__ = ["LayoutCacheSource", "write_layout"]
