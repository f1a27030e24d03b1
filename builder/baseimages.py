"""Base images a build names (FROM, COPY --from=IMAGE, RUN --mount=from=IMAGE): the
store's copy, or a pull from the image's registry when the store lacks it or the
build says `--pull`. A `name@digest` already in the store is never fetched again:
its content cannot change; each reference is pulled at most once per build."""

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
        pulled = pull_image(self.store, ref)
        self._pulled.add(ref)
        self.progress.note(f"pulled {parsed.familiar}: {pulled.manifest_digest}")
