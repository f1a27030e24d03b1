"""The exception hierarchy of `store`: every failure a user can meet while lamina
reads or writes its store, an archive or a layer tar. Each carries what the user
needs to act (a path, a digest, a reference)."""

from __future__ import annotations


class StoreError(Exception):
    """Base of every store failure; `str()` is one clear line for the CLI."""

    def __init__(self, message: str, *, path: str | None = None, digest: str | None = None,
                 ref: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        self.digest = digest
        self.ref = ref

    def __str__(self) -> str:
        return self.message


class ImageNotFound(StoreError):
    """A reference names no image in the store."""


class BlobNotFound(StoreError):
    """A digest names no blob in the store."""


class CorruptContent(StoreError):
    """Bytes on disk (or in an archive) do not match their digest or format."""


class UnsafeArchive(StoreError):
    """A tar member would land outside its root, or is of a kind not allowed."""
