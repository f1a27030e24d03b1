"""Repository digests: which registry manifest digest an image is known by in which
repository (docker's RepoDigests, `name@sha256:…`). Recorded when an image is pulled
(the registry's manifest, kept byte for byte) or pushed (the manifest as sent, which
may differ from the stored one by its layer compression); shown per image ID."""

from __future__ import annotations

from lamina.store import refs
from lamina.store.root import StoreRoot


def record(root: StoreRoot, repository: str, digest: str, manifest_digest: str) -> None:
    """`repository` (a canonical name) serves the image stored as `manifest_digest`
    under `digest`."""
    with root.db.write() as c:
        c.execute("INSERT OR REPLACE INTO repo_digests(repository, digest, manifest_digest) "
                  "VALUES (?,?,?)", (repository, digest, manifest_digest))


def for_image(root: StoreRoot, config_digest: str) -> list[str]:
    """`name@digest` of every repository the image (by ID) is known in, familiar names
    as docker prints them, sorted."""
    rows = root.db.query("SELECT r.repository, r.digest FROM repo_digests r JOIN images i "
                         "ON r.manifest_digest = i.manifest_digest WHERE i.config_digest=?",
                         (config_digest,))
    return sorted({f"{refs.familiar(row['repository'])}@{row['digest']}" for row in rows})
