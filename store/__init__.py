"""store: bytes on disk.

Content-addressed blobs, layer tars (deterministic write, safe extract), OCI
manifests/configs/index, tags, the build-cache index, gc, fsck and the archive
formats. Imports nothing else of lamina.
"""

from lamina.store.errors import StoreError

__all__ = ["StoreError"]
