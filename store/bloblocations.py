"""Where blobs live in registries: (registry, repository, digest) as pulls and pushes saw them.

A pull that stored an image verified from ``REG/a/app`` and a push that made a blob
present in ``REG/b/app`` (uploaded, mounted, or already there) leave a row here, so a
later push of the same blob to another repository of the *same* registry asks the
registry to mount it (``POST /v2/<dest>/blobs/uploads/?mount=<digest>&from=<repo>``)
instead of uploading it — as skopeo's blob-info cache and containerd's
distribution-source labels do.

A row is a hint, never a fact the store relies on: the registry decides whether the
mount happens (a blob deleted there since, or a repository the user may not read,
makes it open a plain upload, which the push then uses), and `forget` drops a row the
registry refuted. Rows never cross registries: `candidates` answers only for the
registry asked about. The table is capped at MAX_ROWS (the least recently seen go
first), so it needs no gc; a row outliving its stored blob stays useful (pushing the
same bytes again, e.g. a re-export of the layer, mounts them).

Recording is best effort: a store database that cannot be written (busy, full) costs a
later mount, never a pull or a push.
"""

from __future__ import annotations

import sqlite3
import time
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

from lamina.store.errors import StoreError

if TYPE_CHECKING:
    from lamina.store.root import StoreRoot

MAX_ROWS = 50_000
MAX_CANDIDATES = 3  # repositories tried per blob (each a request, and a token with token auth)


def remember(root: "StoreRoot", registry: str, repository: str, digests: Iterable[str],
             now: float | None = None) -> None:
    """Record that `repository` of `registry` has the blobs `digests` (seen now)."""
    digests = sorted({d for d in digests if d})
    if not registry or not repository or not digests:
        return
    seen = time.time() if now is None else now
    try:
        with root.db.write(durable=False) as c:
            c.executemany("INSERT INTO blob_locations(registry, digest, repository, seen) VALUES (?,?,?,?) "
                          "ON CONFLICT(registry, digest, repository) DO UPDATE SET seen=excluded.seen",
                          [(registry, d, repository, seen) for d in digests])
            excess = c.execute("SELECT COUNT(*) FROM blob_locations").fetchone()[0] - MAX_ROWS
            if excess > 0:
                c.execute("DELETE FROM blob_locations WHERE rowid IN (SELECT rowid FROM blob_locations "
                          "ORDER BY seen LIMIT ?)", (excess,))
    except (StoreError, sqlite3.DatabaseError):
        pass  # a hint lost: the next push of these blobs uploads them


def candidates(root: "StoreRoot", registry: str, digests: Sequence[str], *, exclude: str = "",
               limit: int = MAX_CANDIDATES) -> Mapping[str, list[str]]:
    """For each of `digests`: the repositories of `registry` (never another registry)
    recorded as having it, most recently seen first, at most `limit`, without `exclude`
    (the destination itself)."""
    out: dict[str, list[str]] = {d: [] for d in digests}
    if not registry or not digests:
        return out
    try:
        with root.db.read() as c:
            for d in out:
                rows = c.execute("SELECT repository FROM blob_locations WHERE registry=? AND digest=? "
                                 "AND repository<>? ORDER BY seen DESC, repository LIMIT ?",
                                 (registry, d, exclude, limit)).fetchall()
                out[d] = [r[0] for r in rows]
    except (StoreError, sqlite3.DatabaseError):
        pass
    return out


def forget(root: "StoreRoot", registry: str, pairs: Iterable[tuple[str, str]]) -> None:
    """Drop the rows (repository, digest) of `registry` the registry refuted."""
    pairs = list(pairs)
    if not pairs:
        return
    try:
        with root.db.write(durable=False) as c:
            c.executemany("DELETE FROM blob_locations WHERE registry=? AND repository=? AND digest=?",
                          [(registry, repo, d) for repo, d in pairs])
    except (StoreError, sqlite3.DatabaseError):
        pass
