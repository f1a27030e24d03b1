"""Repository digests: which digest an image is known by in which repository (docker's
RepoDigests, `name@sha256:…`): the digest its reference resolves to in the registry,
as docker records it. Recorded when an image is pulled (the manifest the reference
names, kept byte for byte, or the index / manifest list it names, from which the
platform's image was taken) or pushed (the manifest as sent, which may differ from the
stored one by its layer compression, or the index holding it and its attestations);
shown per image ID, and resolved: `name@digest` names the image recorded under it
(`image_for`) when no stored manifest has that digest (an index's, never stored as an
image). One image per (repository, digest): the last pulled or pushed, as docker's
reference store keeps it."""

from __future__ import annotations

from lamina.store import refs
from lamina.store.root import StoreRoot


def record(root: StoreRoot, repository: str, digest: str, manifest_digest: str) -> None:
    """`repository` (a canonical name) serves the image stored as `manifest_digest`
    under `digest`."""
    with root.db.write() as c:
        c.execute("INSERT OR REPLACE INTO repo_digests(repository, digest, manifest_digest) "
                  "VALUES (?,?,?)", (repository, digest, manifest_digest))


def image_for(root: StoreRoot, repository: str, digest: str) -> str | None:
    """The manifest digest of the image `repository` (a canonical name) serves under
    `digest`, when recorded."""
    row = root.db.query_one("SELECT manifest_digest FROM repo_digests WHERE repository=? AND digest=?",
                            (repository, digest))
    return row["manifest_digest"] if row is not None else None


def for_image(root: StoreRoot, config_digest: str) -> list[str]:
    """`name@digest` of every repository the image (by ID) is known in, familiar names
    as docker prints them, sorted."""
    rows = root.db.query("SELECT r.repository, r.digest FROM repo_digests r JOIN images i "
                         "ON r.manifest_digest = i.manifest_digest WHERE i.config_digest=?",
                         (config_digest,))
    return sorted({f"{refs.familiar(row['repository'])}@{row['digest']}" for row in rows})
