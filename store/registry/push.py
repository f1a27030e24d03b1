"""Pushing an image of the store to a registry.

    push_image(store, "app:1.0", "localhost:5000/team/app:1.0") -> Pushed

Layers go as the store's export does (gzip by default, which every registry client
reads — the image ID stays the same; ``compression="zstd"`` pushes the stored
bytes). Each blob is first asked for with HEAD and skipped when the registry has it;
a blob the registry has in another repository of the same registry is mounted
(``?mount=&from=``) instead of uploaded. The repositories tried, at most
bloblocations.MAX_CANDIDATES, in order: the one a layer recorded but not fetched
(store.remoteblobs) comes from (pushing it then downloads nothing), those where earlier
pulls and pushes saw the blob (store.bloblocations, most recent first), then the
source's own repository when it is named on the destination registry. A mount asks
for pull on the source repository along with push on the destination (one token of
both scopes, as docker and containers/image ask); a token service or registry that
refuses it, or a registry that answers 202 (no mount: the blob is not there any
more), costs only that attempt: the upload it opened is used (or, when another
repository is left to try, cancelled), and a refuted record is forgotten. Otherwise
the blob is uploaded monolithically (POST, then one PUT with the digest) from the
blob file, so a retry re-sends it from its start. Every blob of a pushed image is
recorded as present in the destination repository (store.bloblocations). The
manifest goes last, with its own media type. An image with
attestations (store.attestations) goes as BuildKit pushes it: the statements and the
attestation config as blobs, the image manifest and the attestation manifest by
digest, then the index holding both under the tag. The digest the tag then resolves
to (the index's, with attestations) is the image's RepoDigest in the destination
repository (store.repodigests), as docker records it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Sequence

from lamina.store import attestations, bloblocations, oci, refs, repodigests
from lamina.store.blobs import sha256_digest
from lamina.store.errors import StoreError
from lamina.store.registry.session import RegistryError, RegistrySession, Unauthorized, repo_scope

PARALLEL_UPLOADS = 4
CHUNK = 1 << 20
# blobs larger than this go in PATCH chunks of UPLOAD_CHUNK (a dropped connection
# then costs one chunk, and proxies with body limits pass them); smaller ones in one PUT
# (one request, hashed once by the registry: a 96 MB layer pushed ~10% faster than in
# 16 MiB chunks to docker-registry on loopback - bench/registry_bench.py)
CHUNKED_THRESHOLD = 256 << 20
UPLOAD_CHUNK = 16 << 20

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Pushed:
    reference: str
    manifest_digest: str  # the image manifest as pushed
    uploaded: int      # blob bytes sent
    skipped: int       # blobs the registry already had (or mounted)
    index_digest: str | None = None  # the index the tag names, when attestations went along

    @property
    def digest(self) -> str:
        """What the tag resolves to in the registry (the RepoDigest recorded)."""
        return self.index_digest or self.manifest_digest


def _has_blob(session: RegistrySession, path: str, digest: str, scope: str) -> bool:
    with session.request("HEAD", f"/v2/{path}/blobs/{digest}", scope=scope, ok=(200, 404)) as resp:
        return resp.status_code == 200


def upload_blob(session: RegistrySession, blobs, path: str, digest: str, scope: str,
                mount_from: str | Sequence[str] | None, progress: Progress | None, what: str,
                *, refuted: list[tuple[str, str]] | None = None) -> int:
    """Make stored blob `digest` present in repository `path`: skipped when the
    registry has it, mounted from one of the repositories `mount_from` (tried in
    order) when it can be, uploaded otherwise. (repository, digest) of each mount the
    registry declined go to `refuted`. Returns the bytes sent, or -1 when nothing had
    to be sent."""
    if _has_blob(session, path, digest, scope):
        return -1
    sources = [mount_from] if isinstance(mount_from, str) else list(mount_from or ())
    location = _start_upload(session, path, digest, scope, [s for s in sources if s and s != path],
                             refuted)
    if location is None:
        return -1  # mounted from another repository
    size = blobs.size(digest)
    if size > CHUNKED_THRESHOLD:
        location = _patch_chunks(session, blobs, digest, size, _absolute(session, location), scope,
                                 progress, what)
        sep = "&" if "?" in location else "?"
        with session.request("PUT", f"{location}{sep}digest={digest}", scope=scope, body=b"",
                             headers={"Content-Length": "0"}, ok=(201, 204)):
            pass
        return size
    location = _absolute(session, location)
    sep = "&" if "?" in location else "?"

    def body():
        f = blobs.open(digest)

        def chunks():
            sent = 0
            try:
                while True:
                    chunk = f.read(CHUNK)
                    if not chunk:
                        break
                    sent += len(chunk)
                    if progress:
                        progress(what, sent, size)
                    yield chunk
            finally:
                f.close()
        return chunks()

    with session.request("PUT", f"{location}{sep}digest={digest}", scope=scope, body=body,
                         headers={"Content-Type": "application/octet-stream",
                                  "Content-Length": str(size)}, ok=(201, 204)):
        pass
    return size


def _start_upload(session: RegistrySession, path: str, digest: str, scope: str,
                  sources: Sequence[str], refuted: list[tuple[str, str]] | None) -> str | None:
    """Open an upload of `digest` to `path`, first asking the registry to mount it from
    each of `sources`: None when one did, else the upload's location."""
    for i, source in enumerate(sources):
        # the mount needs pull on the source too: one token for both scopes
        mount_scope = f"{scope} {repo_scope(source, 'pull')}"
        try:
            with session.request("POST", f"/v2/{path}/blobs/uploads/", scope=mount_scope,
                                 params={"mount": digest, "from": source}, ok=(201, 202)) as resp:
                if resp.status_code == 201:
                    return None
                location = resp.headers.get("location")
        except Unauthorized:
            continue  # no pull on the source for these credentials: try the next, or upload
        except RegistryError as e:
            if e.status is None or e.status >= 500:
                raise  # the registry is failing, not declining the mount
            if refuted is not None:
                refuted.append((source, digest))
            continue
        if refuted is not None:
            refuted.append((source, digest))  # 202: the source does not have it (any more)
        if not location:
            continue
        if i == len(sources) - 1:
            return _absolute(session, location)  # the upload the registry opened instead
        _cancel(session, _absolute(session, location), scope)
    with session.request("POST", f"/v2/{path}/blobs/uploads/", scope=scope, ok=(202,)) as resp:
        location = resp.headers.get("location")
    if not location:
        raise RegistryError(f"registry {session.host} started an upload without a Location")
    return _absolute(session, location)


def _cancel(session: RegistrySession, location: str, scope: str) -> None:
    """Cancel an upload the registry opened (best effort: it expires anyway)."""
    try:
        with session.request("DELETE", location, scope=scope, ok=(200, 204, 404), retry=False):
            pass
    except RegistryError:
        pass


def _absolute(session: RegistrySession, location: str) -> str:
    return session.base_url() + location if location.startswith("/") else location


def _patch_chunks(session: RegistrySession, blobs, digest: str, size: int, location: str,
                  scope: str, progress: Progress | None, what: str) -> str:
    """Send the blob in PATCH chunks (OCI distribution's chunked upload); returns the
    location of the last answer, to which the closing PUT goes."""
    offset = 0
    with blobs.open(digest) as f:
        while offset < size:
            f.seek(offset)
            data = f.read(UPLOAD_CHUNK)
            end = offset + len(data) - 1
            with session.request("PATCH", location, scope=scope, body=data,
                                 headers={"Content-Type": "application/octet-stream",
                                          "Content-Range": f"{offset}-{end}",
                                          "Content-Length": str(len(data))}, ok=(202,)) as resp:
                location = _absolute(session, resp.headers.get("location") or location)
            offset = end + 1
            if progress:
                progress(what, offset, size)
    return location


def push_image(store, source: str, destination: str | None = None, *, compression: str = "gzip",
               session: RegistrySession | None = None, progress: Progress | None = None) -> Pushed:
    """Push the store's image `source` to `destination` (default: `source` itself)."""
    from lamina.store.archive import export_images
    from lamina.store.recompress import export_all

    dest = refs.parse(destination or source)
    if dest.digest is not None:
        raise StoreError(f"cannot push to a digest reference {destination or source!r}: name a tag")
    tag = dest.tag or refs.DEFAULT_TAG
    (stored,) = export_images(store, [source])
    (image,) = attestations.for_export(store, [stored.manifest_digest], export_all(store, [stored], compression))
    att = image.attestation  # with attestations: an index (image + attestation manifest), as buildx
    if att is not None:
        attestations.put_blobs(store, att)
    mount_from = _same_registry_repo(source, dest)
    own = session is None
    session = session or RegistrySession(dest.domain)
    scope = repo_scope(dest.path, "pull,push")
    try:
        blobs = [(image.config_digest, "config")]
        blobs += [(l.digest, f"layer {i + 1}/{len(image.layers)}") for i, l in enumerate(image.layers)]
        if att is not None:
            blobs += [(d, "attestation") for d in (att.config_digest, *att.statements)]
        uploaded = skipped = 0
        known = bloblocations.candidates(store, dest.domain, [d for d, _ in blobs], exclude=dest.path)
        refuted: list[tuple[str, str]] = []
        with ThreadPoolExecutor(max_workers=PARALLEL_UPLOADS) as pool:
            futures = [pool.submit(upload_blob, session, store.blobs, dest.path, d, scope,
                                   mount_sources(_remote_repo(store, d, dest), known[d], mount_from),
                                   progress, what, refuted=refuted)
                       for d, what in blobs]
            for f in futures:
                n = f.result()
                if n < 0:
                    skipped += 1
                else:
                    uploaded += n
        manifest = image.manifest
        media_type = oci.manifest_media_type(oci.decode(manifest, "manifest"))
        if att is not None:  # the manifests by digest, then the index under the tag
            for body, mt in ((manifest, media_type), (att.manifest, oci.OCI_MANIFEST)):
                with session.request("PUT", f"/v2/{dest.path}/manifests/{sha256_digest(body)}", scope=scope,
                                     body=body, headers={"Content-Type": mt}, ok=(201, 200)):
                    pass
            manifest, media_type = att.index, oci.OCI_INDEX
        with session.request("PUT", f"/v2/{dest.path}/manifests/{tag}", scope=scope, body=manifest,
                             headers={"Content-Type": media_type}, ok=(201, 200)) as resp:
            served = resp.headers.get("docker-content-digest")
        digest = sha256_digest(manifest)
        if served and served != digest:
            raise RegistryError(f"registry {session.host} stored the manifest as {served}, not {digest}")
        # the RepoDigest: what the tag names (the index, with attestations), as docker records it
        # the image exported above: `source` may name another one by now (a concurrent
        # build moved the tag while the blobs went up)
        repodigests.record(store, dest.name, digest, stored.manifest_digest)
        index_digest = None
        if att is not None:
            index_digest, digest = digest, image.manifest_digest
        bloblocations.forget(store, dest.domain, refuted)
        bloblocations.remember(store, dest.domain, dest.path, [d for d, _ in blobs])
        return Pushed(reference=str(dest.with_tag(tag)) if dest.tag is None else str(dest),
                      manifest_digest=digest, uploaded=uploaded, skipped=skipped, index_digest=index_digest)
    finally:
        if own:
            session.close()


def mount_sources(*groups: str | Sequence[str] | None) -> list[str]:
    """The repositories to try a mount from: `groups` in order, each once, at most
    bloblocations.MAX_CANDIDATES."""
    out: list[str] = []
    for g in groups:
        for repo in ([g] if isinstance(g, str) else (g or ())):
            if repo and repo not in out:
                out.append(repo)
    return out[:bloblocations.MAX_CANDIDATES]


def _remote_repo(store, digest: str, dest: refs.Reference) -> str | None:
    """The repository of dest's registry that has `digest`, a layer blob the store has
    recorded but not fetched (store.remoteblobs): mounted from there, never fetched
    only to be sent back."""
    source = store.remote_source(digest)
    if source is None:
        return None
    src = refs.parse(source)
    return src.path if src.domain == dest.domain else None


def _same_registry_repo(source: str, dest: refs.Reference) -> str | None:
    """The repository of `source` when it is another repository of dest's registry:
    its blobs are mounted there (no upload) when the registry allows it."""
    if refs.is_digest(source) or refs.looks_like_id(source):
        return None  # an image ID or manifest digest names no repository
    try:
        src = refs.parse(source)
    except StoreError:
        return None
    if src.domain == dest.domain and src.path != dest.path:
        return src.path
    return None
