"""The tar container of image archives (docker-archive and OCI archive), both ways.

`TarWriter` writes a deterministic tar: entries in the order given (callers sort),
PAX/ustar headers with mtime 0, uid/gid 0, empty uname/gname, fixed modes, no
extended records unless a size or name needs one; the archive ends with two zero
blocks. Same entries in -> same bytes out.

`ArchiveReader` reads an archive *by member name*: it indexes the headers once,
resolves in-archive symlinks and hard links (podman and docker write layer.tar as
a symlink) inside the archive's own namespace, and hands out bounded streams of
member data. Nothing is ever extracted to disk, so a hostile member name
(`../../etc/passwd`, `/abs`) cannot write anywhere; it can only fail to be found.
A gzip- or zstd-compressed archive (`docker save | gzip`) is first decompressed
into an anonymous temp file, so members can be read by seeking. A cut archive
(no end-of-archive block, a member running past the end) is CorruptContent.

The model both formats share: `ExportImage` (what a save writes: stored bytes and
names) and `ArchivedImage` / `ArchivedLayer` (what a reader found: config bytes,
manifest bytes if any, and the member holding each layer with the digests it must
have). store.docker_archive and store.oci_archive translate between these and
their layouts; store.archive joins them to the Store.
"""

from __future__ import annotations

import os
import tarfile
import tempfile
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterable, Protocol, Sequence

from lamina.store import compression
from lamina.store.errors import CorruptContent, StoreError

BLOCK = 512
CHUNK = 1 << 20
MAX_DOCUMENT = 32 << 20  # manifest.json, index.json, configs and manifests are read whole
MAX_LINK_HOPS = 40


# -- writing -----------------------------------------------------------------------

def _header(name: str, *, kind: bytes, size: int = 0, mode: int = 0o644, linkname: str = "") -> bytes:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.mode = mode
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    info.linkname = linkname
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="strict")


class TarWriter:
    """Appends deterministic entries to a binary stream; `close()` writes the end marker
    (it does not close the stream). Tracks the number of bytes written."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self.written = 0

    def _emit(self, data: bytes) -> None:
        self._out.write(data)
        self.written += len(data)

    def _pad(self, size: int) -> None:
        rest = size % BLOCK
        if rest:
            self._emit(b"\0" * (BLOCK - rest))

    def add_dir(self, name: str) -> None:
        self._emit(_header(name.rstrip("/") + "/", kind=tarfile.DIRTYPE, mode=0o755))

    def add_bytes(self, name: str, data: bytes) -> None:
        self._emit(_header(name, kind=tarfile.REGTYPE, size=len(data)))
        self._emit(data)
        self._pad(len(data))

    def add_stream(self, name: str, size: int, chunks: Iterable[bytes]) -> None:
        """A regular file of exactly `size` bytes taken from `chunks`; StoreError when the
        chunks add up to another size (the output is then unusable: callers abort)."""
        self._emit(_header(name, kind=tarfile.REGTYPE, size=size))
        got = 0
        for chunk in chunks:
            got += len(chunk)
            if got > size:
                raise StoreError(f"{name}: content is longer than the {size} bytes announced")
            self._emit(chunk)
        if got != size:
            raise StoreError(f"{name}: content is {got} bytes, {size} were announced")
        self._pad(size)

    def close(self) -> None:
        self._emit(b"\0" * (2 * BLOCK))


def sort_key(name: str) -> tuple[str, ...]:
    """Order of entries in a written archive: as a directory walk visits them (a
    directory right before its children, siblings by name)."""
    return tuple(name.rstrip("/").split("/"))


# -- reading -----------------------------------------------------------------------

def _clean(name: str) -> str | None:
    """Normalised member name ('./a//b' -> 'a/b'); None for names that escape the root
    ('..' components or absolute paths): such members are never looked up."""
    if not name or name.startswith("/"):
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        return None
    return "/".join(parts)


class _BoundedReader:
    """Reads exactly `size` bytes of one member from a shared seekable file."""

    def __init__(self, f: BinaryIO, offset: int, size: int, what: str) -> None:
        self._f = f
        self._pos = offset
        self._left = size
        self._what = what

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        if n is None or n < 0 or n > self._left:
            n = self._left
        self._f.seek(self._pos)
        data = self._f.read(n)
        if len(data) != n:
            raise CorruptContent(f"{self._what}: archive is truncated")
        self._pos += n
        self._left -= n
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        pass

    def __enter__(self) -> "_BoundedReader":
        return self

    def __exit__(self, *exc) -> None:
        pass


class _CopyingReader:
    """A stream that writes everything read from `src` to `out`."""

    def __init__(self, src, out: BinaryIO) -> None:
        self._src = src
        self._out = out

    def read(self, n: int = -1) -> bytes:
        data = self._src.read(n)
        self._out.write(data)
        return data


class ArchiveReader:
    """Random access to the members of a (possibly compressed) tar archive by name."""

    def __init__(self, path: str | os.PathLike, *, tmp_dir: str | os.PathLike | None = None) -> None:
        self.path = os.fspath(path)
        try:
            self._file: BinaryIO = open(self.path, "rb")
        except FileNotFoundError:
            raise StoreError(f"archive not found: {self.path}", path=self.path) from None
        except IsADirectoryError:
            raise StoreError(f"{self.path} is a directory, not an archive file", path=self.path) from None
        try:
            self._file = self._decompressed(self._file, tmp_dir)
            self._members = self._index()
        except BaseException:
            self._file.close()
            raise

    def _decompressed(self, f: BinaryIO, tmp_dir) -> BinaryIO:
        head = f.read(6)
        f.seek(0)
        try:
            kind = compression.detect(head)
        except StoreError as e:
            raise StoreError(f"{self.path}: {e.message.replace('layer', 'archive')}", path=self.path) from None
        if kind == "none":
            return f
        out = tempfile.TemporaryFile(dir=tmp_dir)
        try:
            with f:
                # copied only up to the tar's end-of-archive block: a few MiB of
                # compressed zeros after it would otherwise fill the disk with
                # gigabytes nothing reads (a "zip bomb"); a tar that ends badly is
                # copied up to the bad block, which _index then refuses
                copy = _CopyingReader(compression.open_decompressed(f), out)
                try:
                    with tarfile.open(fileobj=copy, mode="r|") as tf:
                        for _ in tf:
                            pass
                except (tarfile.TarError, EOFError, ValueError, UnicodeError, OverflowError):
                    pass
                copy.read(2 * BLOCK)  # the second zero block, when tarfile did not read it
        except CorruptContent as e:
            out.close()
            raise CorruptContent(f"{self.path}: compressed archive is corrupt: {e.message}",
                                 path=self.path) from None
        except BaseException:
            out.close()
            raise
        out.seek(0)
        return out

    def _index(self) -> dict[str, tarfile.TarInfo]:
        end = os.fstat(self._file.fileno()).st_size
        if end == 0:
            raise CorruptContent(f"{self.path}: empty file, not an image archive", path=self.path)
        members: dict[str, tarfile.TarInfo] = {}
        try:
            tf = tarfile.open(fileobj=self._file, mode="r:")
            for info in tf:
                name = _clean(info.name)
                if name is None:
                    continue
                if info.isreg() and info.offset_data + info.size > end:
                    raise CorruptContent(f"{self.path}: archive is truncated (member {info.name})",
                                         path=self.path)
                members[name] = info  # a later member of the same name wins, as with tar -x
            # tarfile takes EOF or a bad header for the end of the archive: insist on the
            # zero block every tar writer puts there, so a cut archive is not "shorter"
            self._file.seek(tf.offset)
            if self._file.read(BLOCK) != b"\0" * BLOCK:
                raise CorruptContent(f"{self.path}: archive is truncated or corrupt after "
                                     f"{len(members)} members (no end-of-archive marker)",
                                     path=self.path)
        except CorruptContent:
            raise
        except (tarfile.TarError, EOFError, ValueError, UnicodeError, OverflowError) as e:
            raise CorruptContent(f"{self.path}: not a valid tar archive ({e})", path=self.path) from None
        if not members:
            raise CorruptContent(f"{self.path}: no usable members, not an image archive", path=self.path)
        return members

    # -- lookups -------------------------------------------------------------------

    def names(self) -> list[str]:
        return list(self._members)

    def has(self, name: str) -> bool:
        try:
            self.resolve(name)
        except StoreError:
            return False
        return True

    def resolve(self, name: str) -> tarfile.TarInfo:
        """The regular-file member `name` designates, following symlinks (relative to
        their directory, absolute ones from the archive root, '..' clamped at the root)
        and hard links; StoreError when missing, looping or not a regular file."""
        hops = 0
        pending = name.split("/")
        done: list[str] = []
        while pending:
            part = pending.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                if done:
                    done.pop()
                continue
            cand = "/".join(done + [part])
            info = self._members.get(cand)
            if info is not None and (info.issym() or info.islnk()):
                hops += 1
                if hops > MAX_LINK_HOPS:
                    raise CorruptContent(f"{self.path}: too many links resolving {name!r}", path=self.path)
                target = info.linkname
                if info.islnk() or target.startswith("/"):
                    done = []  # hard link targets are archive-root relative
                pending = target.split("/") + pending
                continue
            done.append(part)
        final = "/".join(done)
        info = self._members.get(final)
        if info is None:
            raise CorruptContent(f"{self.path}: member {name!r} is missing from the archive",
                                 path=self.path)
        if not info.isreg():
            raise CorruptContent(f"{self.path}: member {name!r} is not a regular file", path=self.path)
        return info

    def size(self, name: str) -> int:
        return self.resolve(name).size

    def open(self, name: str) -> _BoundedReader:
        info = self.resolve(name)
        return _BoundedReader(self._file, info.offset_data, info.size, f"{self.path}: {name}")

    def read(self, name: str, limit: int = MAX_DOCUMENT) -> bytes:
        info = self.resolve(name)
        if info.size > limit:
            raise CorruptContent(f"{self.path}: member {name!r} is {info.size} bytes, larger than "
                                 f"the {limit} bytes allowed for a JSON document", path=self.path)
        return self.open(name).read()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "ArchiveReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()



# -- what an archive holds (the model the format modules write and read) ------------

class LayerLike(Protocol):
    """What writing needs to know of a stored layer (store.layers.LayerBlob fits)."""

    diff_id: str
    digest: str
    size: int
    media_type: str
    uncompressed_size: int | None


@dataclass(frozen=True)
class ExportImage:
    """One image to write into an archive: its exact stored bytes, and the canonical
    references (`docker.io/library/app:latest`) to record for it."""

    manifest_digest: str
    manifest: bytes
    config_digest: str
    config: bytes
    layers: Sequence[LayerLike]
    names: tuple[str, ...] = ()
    attestation: Any = None  # store.attestations.AttestationSet: written as an index (OCI only)


@dataclass(frozen=True)
class ArchivedLayer:
    """A layer found in an archive: the member holding it and what it must hash to.
    `digest`/`media_type`/`size` come from an OCI manifest (None in a docker-archive,
    where the blob is whatever the member holds)."""

    member: str
    diff_id: str
    digest: str | None = None
    media_type: str | None = None
    size: int | None = None


@dataclass(frozen=True)
class ArchivedImage:
    """An image found in an archive. `manifest` is None for a docker-archive (which
    has none): the loader synthesises one."""

    config: bytes
    config_digest: str
    layers: tuple[ArchivedLayer, ...]
    names: tuple[str, ...] = ()
    manifest: bytes | None = None
    manifest_digest: str | None = None
