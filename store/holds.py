"""Holds: named gc roots that last until they are released, whoever is alive.

A lease (store.lease) lasts as long as the process holding it; a *hold* lasts until
its holder releases it by name, across kills and reboots. What uses store content
for longer than one lamina process registers one: a container (builder.containers)
holds its image's manifest, config and layers from `create` until `rm`, running or
stopped.

    hold(root, "container <id>", blobs=[...], layers=[...], images=[...])
    release(root, "container <id>")
    names(root) -> list[str]                      # every hold's name
    holders(root, image=manifest_digest) -> list[str]
    held_items(conn) -> {kind: {value}}           # for gc's mark phase

Rows live in the table `holds` (name, kind, value; kinds as lease items: blob,
layer, cache, image), created on first use. Items are added under the shared gc
lock (as a lease's), so a hold made before gc starts is seen by it.

`ImageUser` is what `rmi` is told about an image's users (store.tags.remove_image):
a name as the user knows it, its state and whether `-f` may override it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

from lamina.store.db import LEASE_KINDS
from lamina.store.errors import StoreError

if TYPE_CHECKING:
    from lamina.store.root import StoreRoot

_TABLE = """
CREATE TABLE IF NOT EXISTS holds (
    name  TEXT NOT NULL,                   -- the holder, e.g. "container <id>"
    kind  TEXT NOT NULL,                   -- blob | layer | cache | image
    value TEXT NOT NULL,
    PRIMARY KEY (name, kind, value)
)
"""


@dataclass(frozen=True)
class ImageUser:
    """One user of an image, as `rmi` reports it: "container 1a2b3c4d5e6f" in state
    "stopped"; `hard`: not even `-f` removes the image (docker: a running container)."""

    name: str
    state: str = ""
    hard: bool = False

    @property
    def described(self) -> str:
        return f"{self.state} {self.name}" if self.state else self.name


def _has_table(conn) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='holds'"
                        ).fetchone() is not None


def hold(root: "StoreRoot", name: str, *, blobs: Iterable[str] = (), layers: Iterable[str] = (),
         cache_keys: Iterable[str] = (), images: Iterable[str] = ()) -> None:
    """Add items to the hold `name` (made on first use)."""
    if not name:
        raise StoreError("a hold needs a name")
    items = [(k, v) for k, vs in (("blob", blobs), ("layer", layers), ("cache", cache_keys),
                                  ("image", images)) for v in vs]
    with root.writing(), root.db.write() as c:
        c.execute(_TABLE)
        c.executemany("INSERT OR IGNORE INTO holds(name, kind, value) VALUES (?,?,?)",
                      [(name, k, v) for k, v in items])


def release(root: "StoreRoot", name: str) -> None:
    """Drop the hold `name` (nothing if there is none)."""
    with root.db.write() as c:
        if _has_table(c):
            c.execute("DELETE FROM holds WHERE name=?", (name,))


def names(root: "StoreRoot") -> list[str]:
    with root.db.read() as c:
        if not _has_table(c):
            return []
        return [r[0] for r in c.execute("SELECT DISTINCT name FROM holds ORDER BY name")]


def holders(root: "StoreRoot", *, image: str) -> list[str]:
    """The names of the holds on the image with manifest digest `image`."""
    with root.db.read() as c:
        if not _has_table(c):
            return []
        return [r[0] for r in c.execute(
            "SELECT name FROM holds WHERE kind='image' AND value=? ORDER BY name", (image,))]


def held_items(conn) -> dict[str, set[str]]:
    """Everything held, by kind (inside gc's transaction); empty without the table."""
    out: dict[str, set[str]] = {k: set() for k in LEASE_KINDS}
    if _has_table(conn):
        for kind, value in conn.execute("SELECT kind, value FROM holds"):
            out.setdefault(kind, set()).add(value)
    return out
