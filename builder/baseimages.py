"""Base images a build names (FROM, COPY --from=IMAGE, RUN --mount=from=IMAGE): the
store's copy, or a pull from the image's registry when the store lacks it or the
build says `--pull`. A `name@digest` already in the store is never fetched again:
its content cannot change; each reference is pulled at most once per build.

The pull is lazy: the manifest and config now, the layers recorded as remote blobs of
the image's repository (store.remoteblobs) and fetched, verified, when a step first
reads them (a RUN or COPY on the base, COPY --from the image). A build whose steps all
hit the cache downloads no base layer; pushing it mounts them registry side."""

from __future__ import annotations

from lamina.builder.progress import Progress
from lamina.store.errors import ImageNotFound


class BaseImages:
    def __init__(self, store, progress: Progress, *, pull: bool) -> None:
        self.store = store
        self.progress = progress
        self.pull = pull
        self._pulled: set[str] = set()

    def in_store(self, ref: str) -> bool:
        try:
            self.store.resolve(ref)
            return True
        except ImageNotFound:
            return False

    def ensure(self, ref: str) -> None:
        """Make `ref` present in the store (StoreError when it cannot be pulled)."""
        if self.pull or not self.in_store(ref):
            self._pull(ref)

    def _pull(self, ref: str) -> None:
        from lamina.store import refs
        from lamina.store.registry.pull import pull_image

        if refs.looks_like_id(ref):
            raise ImageNotFound(f"no image with ID {ref!r} in the store")
        parsed = refs.parse(ref)
        if parsed.digest is not None and self.in_store(ref):
            return
        if ref in self._pulled:
            return
        self.progress.note(f"pulling {parsed.familiar}")
        pulled = pull_image(self.store, ref, lazy=True)  # layers fetched when first read
        self._pulled.add(ref)
        self.progress.note(f"pulled {parsed.familiar}: {pulled.repo_digest}")
