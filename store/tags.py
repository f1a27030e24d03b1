"""Tags: point a name at an image, remove a name, and `rmi` (docker's rules: a
tag goes, and the image with its last tag; by ID, an image named in several
repositories needs force; an image a container uses stays, store.holds)."""

from __future__ import annotations

import time
from typing import Callable, Sequence

from lamina.store import holds, refs
from lamina.store.errors import ImageNotFound, StoreError
from lamina.store.images import Image, load_image, resolve_digest, set_tag
from lamina.store.root import StoreRoot


def tag(root: StoreRoot, ref: str, target: str) -> Image:
    """Point tag `ref` at the image `target` names (`lamina tag TARGET REF`)."""
    r = refs.parse_tag(ref)
    with root.db.write():
        md = resolve_digest(root, target)
        set_tag(root.db.conn, str(r), md, time.time())
    return load_image(root, md)


def untag(root: StoreRoot, ref: str) -> str:
    """Remove a tag (the image stays). Returns the manifest digest it pointed at."""
    r = refs.parse_tag(ref)
    with root.db.write() as c:
        row = c.execute("SELECT manifest_digest FROM tags WHERE name=?", (str(r),)).fetchone()
        if row is None:
            raise ImageNotFound(f"no such image: {ref} (not a tag in this store)", ref=ref)
        c.execute("DELETE FROM tags WHERE name=?", (str(r),))
        return row["manifest_digest"]


def remove_image(root: StoreRoot, ref: str, *, force: bool = False,
                 users: Callable[[str], Sequence[holds.ImageUser]] | None = None) -> list[str]:
    """`rmi` as docker: a tag is removed, and the image goes with its last tag.
    By ID, an image tagged in several repositories needs `force`. Returns lines
    like docker's ("Untagged: app:latest", "Deleted: sha256:...").

    An image in use (`users(manifest digest)`; by default the holds on it, store.holds)
    is docker's conflict: its last tag is not removed without `force`; by ID it is not
    deleted without `force`, nor at all while a `hard` user (a running container) has
    it; `force` on its last tag then only untags it."""
    out: list[str] = []
    with root.db.write() as c:
        md = resolve_digest(root, ref)
        in_use = list(users(md)) if users is not None else \
            [holds.ImageUser(n) for n in holds.holders(root, image=md)]
        short = c.execute("SELECT config_digest FROM images WHERE manifest_digest=?",
                          (md,)).fetchone()[0].split(":")[1][:12]
        by_tag = None
        try:
            r = refs.parse(ref)
            if r.digest is None and c.execute("SELECT 1 FROM tags WHERE name=? AND manifest_digest=?",
                                              (str(r), md)).fetchone():
                by_tag = str(r)
        except refs.InvalidReference:
            pass
        tags = [t["name"] for t in c.execute("SELECT name FROM tags WHERE manifest_digest=? ORDER BY name",
                                             (md,))]
        if by_tag is not None:
            if in_use and len(tags) == 1 and not force:
                raise StoreError(f'conflict: unable to remove repository reference "{ref}" (must '
                                 f"force) - {in_use[0].name} is using its referenced image {short}",
                                 ref=ref)
            c.execute("DELETE FROM tags WHERE name=?", (by_tag,))
            out.append(f"Untagged: {refs.familiar(by_tag)}")
            tags.remove(by_tag)
            if tags or any(u.hard for u in in_use):
                return out  # docker: an image a running container uses stays, untagged
        else:
            hard = [u for u in in_use if u.hard]
            if hard:
                raise StoreError(f"conflict: unable to delete {short} (cannot be forced) - image "
                                 f"is being used by {hard[0].described}", ref=ref)
            repos = {refs.parse(t, default_tag=False).name for t in tags}
            if in_use and len(repos) <= 1 and not force:
                raise StoreError(f"conflict: unable to delete {short} (must be forced) - image "
                                 f"is being used by {in_use[0].described}", ref=ref)
            if len(repos) > 1 and not force:
                cfg = c.execute("SELECT config_digest FROM images WHERE manifest_digest=?", (md,)).fetchone()[0]
                raise StoreError(f"conflict: unable to delete {cfg.split(':')[1][:12]} (must be forced) - "
                                 f"image is referenced in multiple repositories", ref=ref)
            for t in tags:
                c.execute("DELETE FROM tags WHERE name=?", (t,))
                out.append(f"Untagged: {refs.familiar(t)}")
        cfg = c.execute("SELECT config_digest FROM images WHERE manifest_digest=?", (md,)).fetchone()[0]
        c.execute("DELETE FROM images WHERE manifest_digest=?", (md,))
        out.append(f"Deleted: {cfg}")
    return out
