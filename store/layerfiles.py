"""The files of a layer tar as records, streamed: what an image comparison needs to
know of each member (type, mode, owner, size, content digest, link target, device
numbers, mtime, xattrs, whiteouts), never the content itself.

`layer_files(stream)` walks an uncompressed layer tar with store.tarformat.TarReader
and yields one `FileRecord` per member, in archive order, hashing regular files'
data on the way (memory does not grow with file sizes). `read_files(stream, paths,
limit)` is the second pass that fetches the bytes of a few named small files (for a
text diff). `merge_layers` applies layers in order as a container runtime would
(OCI whiteouts and opaque dirs) to give the image's final filesystem.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from typing import BinaryIO, Iterable, Iterator

from lamina.store.tarformat import (BLKTYPE, CHRTYPE, DIRTYPE, FIFOTYPE, LNKTYPE, REGTYPE,
                                    SYMTYPE, TarReader)

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"

_TYPES = {REGTYPE: "file", DIRTYPE: "dir", SYMTYPE: "symlink", LNKTYPE: "hardlink",
          CHRTYPE: "char", BLKTYPE: "block", FIFOTYPE: "fifo"}


def clean_path(name: bytes) -> str:
    """A member name as a relative path: no leading `./` or `/`, no trailing `/`,
    no empty or `.` components (bytes that are not UTF-8 kept by surrogateescape)."""
    parts = [p for p in os.fsdecode(name).split("/") if p not in ("", ".")]
    return "/".join(parts)


def _xattr_text(value: bytes) -> str:
    try:
        text = value.decode("utf-8")
        if text.isprintable():
            return text
    except UnicodeDecodeError:
        pass
    return "0x" + value.hex()


@dataclass(frozen=True)
class FileRecord:
    """One layer member. `path` is the member's cleaned name (for a whiteout, the
    `.wh.` name itself); `whiteout` is the path it removes ("" if none) and `opaque`
    marks `.wh..wh..opq` (then `whiteout` is the opaque directory, "" for the root).
    `digest` is "sha256:..." of a regular file's data, "" for anything else."""

    path: str
    type: str
    mode: int = 0
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime: int = 0
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: tuple[tuple[str, str], ...] = ()
    digest: str = ""
    whiteout: str | None = None
    opaque: bool = False
    position: int = 0  # index of the member in its tar


def layer_files(stream: BinaryIO) -> Iterator[FileRecord]:
    """The members of the uncompressed layer tar `stream`, in archive order."""
    reader = TarReader(stream)
    position = 0
    while True:
        e = reader.next()
        if e is None:
            return
        path = clean_path(e.name)
        kind = _TYPES.get(e.type, "other:" + e.type.decode("latin-1"))
        digest = ""
        if e.type == REGTYPE:
            h = hashlib.sha256()
            reader.read_data(h.update)
            digest = "sha256:" + h.hexdigest()
        parent, _, base = path.rpartition("/")
        whiteout, opaque = None, False
        if base == OPAQUE:
            whiteout, opaque = parent, True
        elif base.startswith(WHITEOUT):
            whiteout = (parent + "/" if parent else "") + base[len(WHITEOUT):]
        linkname = os.fsdecode(e.linkname)
        if e.type == LNKTYPE:
            linkname = clean_path(e.linkname)
        yield FileRecord(
            path=path, type=kind, mode=e.mode, uid=e.uid, gid=e.gid,
            size=e.size if e.type == REGTYPE else 0, mtime=e.mtime, linkname=linkname,
            devmajor=e.devmajor if e.type in (CHRTYPE, BLKTYPE) else 0,
            devminor=e.devminor if e.type in (CHRTYPE, BLKTYPE) else 0,
            xattrs=tuple(sorted((os.fsdecode(k), _xattr_text(v)) for k, v in e.xattrs.items())),
            digest=digest, whiteout=whiteout, opaque=opaque, position=position)
        position += 1


def read_files(stream: BinaryIO, paths: Iterable[str], limit: int) -> dict[str, bytes]:
    """The data of the regular files named `paths` in the layer tar `stream`, each at
    most `limit` bytes (larger ones are left out)."""
    wanted = set(paths)
    out: dict[str, bytes] = {}
    reader = TarReader(stream)
    while wanted:
        e = reader.next()
        if e is None:
            break
        path = clean_path(e.name)
        if e.type != REGTYPE or path not in wanted or e.size > limit:
            continue
        parts: list[bytes] = []
        reader.read_data(parts.append)
        out[path] = b"".join(parts)
        wanted.discard(path)
    return out


@dataclass(frozen=True)
class MergedFile:
    """A file of an image's final filesystem and the layer (index) that put it there."""

    record: FileRecord
    layer: int


def merge_layers(layers: Iterable[Iterable[FileRecord]]) -> dict[str, MergedFile]:
    """The final filesystem of layers applied in order: a whiteout removes its path
    and everything below it from the layers underneath, an opaque marker hides the
    lower contents of its dir; a hard link keeps its target's data (digest, size)."""
    files: dict[str, MergedFile] = {}
    for index, records in enumerate(layers):
        removed: list[tuple[str, bool]] = []  # (path, keep the dir itself)
        added: dict[str, MergedFile] = {}
        for r in records:
            if r.whiteout is not None:
                removed.append((r.whiteout, r.opaque))
                continue
            if r.type == "hardlink":
                target = added.get(r.linkname) or files.get(r.linkname)
                if target is not None:
                    r = replace(r, digest=target.record.digest, size=target.record.size)
            added[r.path] = MergedFile(r, index)
        for path, keep_dir in removed:
            prefix = path + "/" if path else ""
            for name in [n for n in files if n.startswith(prefix)]:
                del files[name]
            if not keep_dir:
                files.pop(path, None)
        for path, f in added.items():
            old = files.get(path)
            if old is not None and old.record.type == "dir" and f.record.type != "dir":
                for name in [n for n in files if n.startswith(path + "/")]:
                    del files[name]
            files[path] = f
    return files


__all__ = ["FileRecord", "MergedFile", "clean_path", "layer_files", "merge_layers", "read_files"]
