"""Content-addressed blob storage: ROOT/blobs/sha256/<hex>, written crash-safely.

Owns the bytes of every blob (layers, configs, manifests) and nothing else: no
metadata, no reference counting (that is store.db / store.gc). Every write goes to a
temp file in ROOT/tmp (same filesystem as ROOT/blobs), is fsynced, renamed into place
and the directory fsynced, so a blob path either does not exist or holds exactly the
bytes its name promises. Writing the same bytes twice stores them once; concurrent
writers of the same blob race harmlessly (rename of identical content).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from lamina.store.errors import BlobNotFound, CorruptContent, StoreError

_DIGEST_RE = re.compile(r"sha256:([0-9a-f]{64})")
_HEX_RE = re.compile(r"[0-9a-f]{64}")
CHUNK = 1 << 20
TMP_PREFIX = "blob-"


def check_digest(digest: str) -> str:
    """The hex part of a "sha256:<64 lowercase hex>" digest; StoreError otherwise."""
    if not isinstance(digest, str):
        raise StoreError(f"invalid digest {digest!r}: expected 'sha256:<64 hex digits>'")
    m = _DIGEST_RE.fullmatch(digest)
    if m is None:
        raise StoreError(f"invalid digest {digest!r}: expected 'sha256:<64 hex digits>'",
                         digest=digest)
    return m.group(1)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobWriter:
    """Streams bytes into a temp file while hashing them; `commit()` makes it a blob.

    Use as a context manager. Leaving the block without a successful commit (or with an
    exception) removes the temp file. `digest_so_far()` / `size` are available at any
    time, e.g. to name a blob before deciding to keep it.
    """

    def __init__(self, store: "BlobStore") -> None:
        self._store = store
        fd, name = tempfile.mkstemp(prefix=TMP_PREFIX, dir=store.tmp_dir)
        self._tmp = Path(name)
        self._file = os.fdopen(fd, "wb", buffering=CHUNK)
        self._hash = hashlib.sha256()
        self.size = 0
        self._done = False

    def write(self, data) -> int:
        if self._done:
            raise StoreError("write to a blob writer after commit/abort")
        n = memoryview(data).nbytes
        self._hash.update(data)
        self._file.write(data)  # BufferedWriter: writes everything or raises
        self.size += n
        return n

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        pass

    def digest_so_far(self) -> str:
        return "sha256:" + self._hash.hexdigest()

    def commit(self, expected: str | None = None) -> tuple[str, int]:
        """fsync, check `expected` (CorruptContent on mismatch, nothing stored), rename
        into place, fsync the blob dir. Returns (digest, size)."""
        if self._done:
            raise StoreError("blob writer already committed or aborted")
        if expected is not None:
            check_digest(expected)
        digest = self.digest_so_far()
        try:
            if expected is not None and digest != expected:
                raise CorruptContent(
                    f"content does not match its digest: expected {expected}, got {digest} "
                    f"({self.size} bytes)", digest=expected)
            self._file.flush()
            os.fsync(self._file.fileno())
            os.fchmod(self._file.fileno(), 0o644)
            self._file.close()
            final = self._store.path(digest)
            if final.exists():
                # deduplicated: same bytes already stored
                self._tmp.unlink()
            else:
                os.rename(self._tmp, final)
                _fsync_dir(final.parent)
        except BaseException:
            self.abort()
            raise
        self._done = True
        return digest, self.size

    def abort(self) -> None:
        """Drop the temp file (idempotent)."""
        self._done = True
        try:
            self._file.close()
        except OSError:
            pass
        try:
            self._tmp.unlink()
        except FileNotFoundError:
            pass

    def __enter__(self) -> "BlobWriter":
        return self

    def __exit__(self, *exc) -> None:
        if not self._done:
            self.abort()


class BlobStore:
    """The blobs of one lamina store root."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        # called with the digest of a blob that is not here; True once it has fetched
        # it (a recorded remote layer blob: store.remoteblobs), False if it cannot
        self.fetch_missing: Callable[[str], bool] | None = None
        self.blob_dir = self.root / "blobs" / "sha256"
        self.tmp_dir = self.root / "tmp"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.blob_dir / check_digest(digest)

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def writer(self) -> BlobWriter:
        return BlobWriter(self)

    def put(self, data: bytes) -> str:
        digest = sha256_digest(data)
        if self.exists(digest):
            return digest
        with self.writer() as w:
            w.write(data)
            return w.commit(digest)[0]

    def ingest(self, stream: BinaryIO, expected: str | None = None) -> tuple[str, int]:
        """Copy `stream` to EOF into a blob. With `expected`, a mismatch raises
        CorruptContent and stores nothing. Returns (digest, size)."""
        with self.writer() as w:
            while True:
                chunk = stream.read(CHUNK)
                if not chunk:
                    break
                w.write(chunk)
            return w.commit(expected)

    def open(self, digest: str) -> BinaryIO:
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            if self.fetch_missing is not None and self.fetch_missing(digest):
                return open(self.path(digest), "rb")
            raise BlobNotFound(f"blob {digest} is not in the store ({self.blob_dir})",
                               digest=digest) from None

    def read(self, digest: str) -> bytes:
        with self.open(digest) as f:
            return f.read()

    def size(self, digest: str) -> int:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            if self.fetch_missing is not None and self.fetch_missing(digest):
                return self.path(digest).stat().st_size
            raise BlobNotFound(f"blob {digest} is not in the store ({self.blob_dir})",
                               digest=digest) from None

    def delete(self, digest: str) -> None:
        """Remove a blob; a blob already gone is not an error (gc may race gc)."""
        try:
            self.path(digest).unlink()
        except FileNotFoundError:
            return
        _fsync_dir(self.blob_dir)

    def digests(self) -> Iterator[str]:
        """Every stored digest (names that are not 64 lowercase hex are skipped)."""
        with os.scandir(self.blob_dir) as it:
            for entry in it:
                if _HEX_RE.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                    yield "sha256:" + entry.name

    def verify(self, digest: str) -> bool:
        """Re-hash the stored bytes: True when they match their name."""
        h = hashlib.sha256()
        with self.open(digest) as f:
            while True:
                chunk = f.read(CHUNK)
                if not chunk:
                    break
                h.update(chunk)
        return "sha256:" + h.hexdigest() == digest

    def clean_tmp(self, older_than: float = 24 * 3600) -> int:
        """Remove blob temp files older than `older_than` seconds (left by a killed
        writer). Returns how many were removed. Young ones may belong to a live writer."""
        removed = 0
        now = time.time()
        with os.scandir(self.tmp_dir) as it:
            for entry in it:
                if not entry.name.startswith(TMP_PREFIX):
                    continue
                try:
                    if now - entry.stat(follow_symlinks=False).st_mtime >= older_than:
                        os.unlink(entry.path)
                        removed += 1
                except FileNotFoundError:
                    pass
        return removed
