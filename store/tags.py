"""Tags: point a name at an image, remove a name, and `rmi` (docker's rules: a
tag goes, and the image with its last tag; by ID, an image named in several
repositories needs force)."""

from __future__ import annotations

import time

from lamina.store import refs
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


def remove_image(root: StoreRoot, ref: str, *, force: bool = False) -> list[str]:
    """`rmi` as docker: a tag is removed, and the image goes with its last tag.
    By ID, an image tagged in several repositories needs `force`. Returns lines
    like docker's ("Untagged: app:latest", "Deleted: sha256:...")."""
    out: list[str] = []
    with root.db.write() as c:
        md = resolve_digest(root, ref)
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
            c.execute("DELETE FROM tags WHERE name=?", (by_tag,))
            out.append(f"Untagged: {refs.familiar(by_tag)}")
            tags.remove(by_tag)
            if tags:
                return out
        else:
            repos = {refs.parse(t, default_tag=False).name for t in tags}
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
