"""Root filesystem tarballs as images (`lamina import`, like `docker import`): a tar
(plain, gzip, zstd, xz or bzip2) is extracted safely into ROOT/tmp, written back as
one deterministic layer, committed as a one-layer image, and the extracted tree
becomes the layer's directory (no second extraction)."""

from __future__ import annotations

import bz2
import lzma
import time
from pathlib import Path
from typing import Any, BinaryIO, Mapping

from lamina.store import oci, refs
from lamina.store.compression import PrefixedReader, open_decompressed
from lamina.store.epoch import source_date_epoch as sde_in_force
from lamina.store.errors import CorruptContent, StoreError, UnsafeArchive
from lamina.store.images import Image, commit_image, load_image
from lamina.store.layerdirs import make_layer_dir
from lamina.store.layers import extract_as_layer
from lamina.store.locks import remove_tree
from lamina.store.root import StoreRoot


def import_rootfs(store: StoreRoot, tarball: Path, ref: str | None, *,
                  changes: Mapping[str, Any] | None = None, message: str | None = None,
                  compression: str | None = None, source_date_epoch: int | None = None) -> Image:
    parsed = [refs.parse_tag(ref)] if ref else []  # a bad name fails before any work
    sde = sde_in_force(source_date_epoch)
    created = oci.format_time(sde if sde is not None else time.time())
    with store.writing():
        tmp = store.temp_path("import")
        tmp.mkdir()
        try:
            try:
                f = open(tarball, "rb", buffering=1 << 20)  # 512-byte headers: 9x fewer reads
            except OSError as e:
                raise StoreError(f"cannot read {tarball}: {e.strerror or e}", path=str(tarball)) from None
            with f:  # extracted and archived in one pass when the tar allows it
                try:
                    layer = extract_as_layer(store.blobs, open_any_compression(f, tarball), tmp,
                                             compression=compression or store.layer_compression,  # type: ignore[arg-type]
                                             source_date_epoch=sde)
                except (CorruptContent, UnsafeArchive) as e:
                    # the tar's own words ("truncated at byte N") name no file: say which
                    if str(tarball) in e.message:
                        raise
                    raise type(e)(f"cannot import {tarball}: {e.message}", path=str(tarball)) from None
            history = {"created": created, "comment": message or f"Imported from {tarball.name}"}
            cfg = oci.build_config(diff_ids=[layer.diff_id], history=[history],
                                   container_config=dict(changes or {}), created=created)
            image = commit_image(store, cfg, [layer], [str(t) for t in parsed])
            if sde is None:  # the extracted tree is exactly the layer (no clamped times): keep it
                make_layer_dir(store, layer.diff_id, tmp)
        finally:
            remove_tree(tmp)
    return load_image(store, image.manifest_digest)


def open_any_compression(f: BinaryIO, path: Path) -> BinaryIO:
    """The uncompressed bytes of a tarball: xz and bzip2 here, gzip/zstd/plain by
    store.compression."""
    head = f.read(6)
    if head.startswith(b"\xfd7zXZ\x00"):
        return _Checked(lzma.LZMAFile(PrefixedReader(head, f)), path)  # type: ignore[arg-type,return-value]
    if head.startswith(b"BZh"):
        return _Checked(bz2.BZ2File(PrefixedReader(head, f)), path)  # type: ignore[arg-type,return-value]
    return open_decompressed(PrefixedReader(head, f))  # type: ignore[arg-type]


class _Checked:
    """A decompressing reader whose format errors become CorruptContent."""

    def __init__(self, inner, path: Path) -> None:
        self._inner = inner
        self._path = path

    def read(self, n: int = -1) -> bytes:
        try:
            return self._inner.read(n)
        except (lzma.LZMAError, OSError, EOFError) as e:
            raise CorruptContent(f"{self._path}: corrupt compressed data ({e})", path=str(self._path)) from None

    def readable(self) -> bool:
        return True
