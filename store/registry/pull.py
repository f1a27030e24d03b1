"""Pulling an image from a registry into the store, every byte verified.

    pull_image(store, "localhost:5000/app:1.0", platform=None) -> Pulled

The manifest is fetched with content negotiation (OCI and Docker schema 2 manifests
and indexes / manifest lists); an index gives the manifest of the requested
platform (default: the host's). Schema 1 gets a clear error. Manifests and configs
are read with a size cap; blobs stream into the blob store while being hashed, a
dropped connection resumes with ``Range``, and nothing is stored whose digest or
size differs from its descriptor. Layers download in parallel (bounded). The image
is recorded with its manifest bytes as the registry sent them, so its manifest digest
and its image ID are the registry's. Its RepoDigest (store.repodigests) is, as docker
records it, the digest the reference resolves to in the registry: the index's when a
tag names an index (the digest users pin, valid for every platform), the manifest's
for a single image or a pull by a platform manifest's digest. When the index holds an
attestation manifest for the chosen image (BuildKit's layout), its provenance and SBOM
are recorded with the image (store.attestations), so `lamina verify` works on it.
"""

from __future__ import annotations

import json
import os
import platform as host_platform
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import httpx

from lamina.store import attestations, bloblocations, oci, refs, repodigests
from lamina.store.blobs import check_digest, sha256_digest
from lamina.store.errors import CorruptContent, StoreError
from lamina.store.compression import kind_for_media_type, media_type_for
from lamina.store.layerdigest import LayerDigester
from lamina.store.layers import LayerBlob, describe_layer
from lamina.store.registry.session import RegistryError, RegistrySession, repo_scope

MAX_MANIFEST_BYTES = 4 << 20   # containerd's limit for manifests and indexes
MAX_CONFIG_BYTES = 16 << 20
PARALLEL_DOWNLOADS = 4
CHUNK = 1 << 20
SCHEMA1_TYPES = ("application/vnd.docker.distribution.manifest.v1+json",
                 "application/vnd.docker.distribution.manifest.v1+prettyjws")
ACCEPT = ", ".join([oci.OCI_INDEX, oci.DOCKER_MANIFEST_LIST, oci.OCI_MANIFEST, oci.DOCKER_MANIFEST,
                    *SCHEMA1_TYPES])

Progress = Callable[[str, int, int], None]  # (what, bytes done, bytes total)


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        return f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")


def host() -> Platform:
    machine = host_platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
            "armv7l": "arm", "i686": "386", "i386": "386", "ppc64le": "ppc64le",
            "s390x": "s390x", "riscv64": "riscv64"}.get(machine, machine)
    variant = "v8" if arch == "arm64" else ("v7" if arch == "arm" else None)
    return Platform("linux", arch, variant)


def parse_platform(text: str) -> Platform:
    parts = text.strip().lower().split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise StoreError(f"invalid platform {text!r} (expected os/arch[/variant], e.g. linux/arm64)")
    return Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else None)


@dataclass(frozen=True)
class Pulled:
    reference: str          # the normalized reference pulled
    manifest_digest: str    # the image's manifest (the platform's, for an index)
    image: Any              # lamina.store Image
    downloaded: int         # blob bytes fetched
    repo_digest: str        # what the reference resolves to (RepoDigest): an index's, or manifest_digest


def fetch_manifest(session: RegistrySession, path: str, ref: str) -> tuple[bytes, str, str]:
    """(bytes, media type, digest) of manifest `ref` (tag or digest) of repository `path`."""
    # capped in size and in time (a registry dripping bytes stalls no build)
    data, headers = session.get_small(f"/v2/{path}/manifests/{ref}", scope=repo_scope(path),
                                      limit=MAX_MANIFEST_BYTES, headers={"Accept": ACCEPT},
                                      what=f"registry {session.host}: manifest {path}:{ref}")
    content_type = headers.get("content-type", "").split(";")[0].strip()
    digest = sha256_digest(data)
    if ":" in ref and digest != ref:  # a digest (a tag has no ':'): the bytes must hash to it
        raise CorruptContent(f"registry {session.host} sent a manifest for {path}@{ref} whose content "
                             f"hashes to {digest}", digest=ref)
    try:
        doc = json.loads(data)
    except ValueError:
        raise CorruptContent(f"registry {session.host}: manifest {path}:{ref} is not JSON") from None
    if not isinstance(doc, dict):
        raise CorruptContent(f"registry {session.host}: manifest {path}:{ref} is not a JSON object")
    media_type = doc.get("mediaType") or content_type
    if doc.get("schemaVersion") == 1 or media_type in SCHEMA1_TYPES:
        raise RegistryError(f"{path}:{ref} is a Docker schema 1 manifest, which lamina does not read "
                            "(deprecated since 2017: push it again with a current tool)")
    if not media_type:
        media_type = oci.OCI_INDEX if "manifests" in doc else oci.OCI_MANIFEST
    return data, media_type, digest


def _entry_digest(value: str, where: str) -> str:
    """An index entry's digest, which must be a sha256 digest: anything else (a tag,
    another algorithm) would be fetched as a ref the index does not pin."""
    try:
        check_digest(value)
    except StoreError:
        raise CorruptContent(f"{where}: index entry digest {value!r} is not a sha256 digest",
                             digest=value) from None
    return value


def choose_manifest(index: dict, want: Platform, where: str) -> str:
    """The digest of the manifest for `want` in an index / manifest list."""
    entries = index.get("manifests")
    if not isinstance(entries, list):
        raise CorruptContent(f"{where}: index without a manifests list")
    offered = []
    fallback = None
    for e in entries:
        if not isinstance(e, dict):
            continue
        if not isinstance(e.get("digest"), str):
            raise CorruptContent(f"{where}: index entry without a digest")
        p = e.get("platform") or {}
        if not isinstance(p, dict):
            continue
        # only strings count (a registry's JSON may hold anything there)
        p = {k: v for k, v in p.items() if k in ("os", "architecture", "variant") and isinstance(v, str)}
        offered.append("/".join(x for x in (p.get("os"), p.get("architecture"), p.get("variant")) if x))
        if p.get("os") != want.os or p.get("architecture") != want.architecture:
            continue
        if want.variant is None or p.get("variant") in (want.variant, None):
            if p.get("variant") == want.variant:
                return _entry_digest(e["digest"], where)
            fallback = fallback or e["digest"]
    if fallback:
        return _entry_digest(fallback, where)
    raise RegistryError(f"{where} has no image for platform {want} (it has: "
                        f"{', '.join(o for o in offered if o) or 'none'}); choose one with --platform")


def fetch_blob(session: RegistrySession, blobs, path: str, digest: str, size: int | None,
               progress: Progress | None = None, what: str = "",
               on_chunk: Callable[[bytes], None] | None = None,
               on_restart: Callable[[], None] | None = None) -> int:
    """Stream blob `digest` into the store (verified); returns the bytes downloaded
    (-1 when the store already had it). Every chunk stored is also given to
    `on_chunk`; `on_restart` is called when the download starts over from byte 0."""
    if blobs.exists(digest):
        return -1
    writer = blobs.writer()
    try:
        resumes = 0
        while True:
            headers = {"Range": f"bytes={writer.size}-"} if writer.size else {}
            try:
                with session.request("GET", f"/v2/{path}/blobs/{digest}", scope=repo_scope(path),
                                     headers=headers, ok=(200, 206)) as resp:
                    if writer.size and resp.status_code == 200:
                        writer.abort()  # no range support: start again from 0
                        writer = blobs.writer()
                        if on_restart:
                            on_restart()
                    for chunk in resp.iter_raw():  # as received: a drop keeps what came
                        writer.write(chunk)
                        if on_chunk:
                            on_chunk(chunk)
                        if size is not None and writer.size > size:
                            raise CorruptContent(f"registry {session.host}: blob {digest} is larger than "
                                                 f"its descriptor's {size} bytes", digest=digest)
                        if progress:
                            progress(what or digest, writer.size, size or 0)
                break
            except (httpx.TransportError, RegistryError) as e:
                if isinstance(e, RegistryError) and not _dropped(e):
                    raise
                resumes += 1
                if resumes > 5:
                    raise RegistryError(f"registry {session.host}: download of {digest} kept failing: {e}") from None
        if size is not None and writer.size != size:
            raise CorruptContent(f"registry {session.host}: blob {digest} has {writer.size} bytes, its "
                                 f"descriptor says {size}", digest=digest)
        writer.commit(digest)  # CorruptContent if the bytes do not hash to digest
        return size or 0
    finally:
        writer.abort()


def _dropped(e: RegistryError) -> bool:
    return e.status is None and "failed" in e.message


def fetch_small_blob(session: RegistrySession, path: str, digest: str, limit: int) -> bytes:
    data, _ = session.get_small(f"/v2/{path}/blobs/{digest}", scope=repo_scope(path), limit=limit,
                                what=f"registry {session.host}: blob {digest}")
    if sha256_digest(data) != digest:
        raise CorruptContent(f"registry {session.host} sent blob {digest} with other content", digest=digest)
    return data


def pull_image(store, reference: str, *, platform: Platform | None = None,
               session: RegistrySession | None = None, progress: Progress | None = None,
               tag: bool = True, lazy: bool = False) -> Pulled:
    """Pull `reference` into `store` and tag it there (by its normalized name).
    `lazy`: fetch the manifest and config only and record the layers as remote blobs
    of the image's repository (store.remoteblobs), fetched when first read."""
    ref = refs.parse(reference)
    if session is not None:
        return _pull(store, session, ref, platform or host(), progress, tag, lazy)
    errors = []
    for server in mirrors_for(ref.domain) + (ref.domain,):
        with RegistrySession(server) as s:
            try:
                return _pull(store, s, ref, platform or host(), progress, tag, lazy)
            except RegistryError as e:
                if server == ref.domain:
                    if errors:
                        raise RegistryError(f"{e.message} (mirrors tried first: {'; '.join(errors)})",
                                            status=e.status) from None
                    raise
                errors.append(f"{server}: {e.message}")
    raise AssertionError("unreachable")


def mirrors_for(domain: str) -> tuple[str, ...]:
    """Pull-through mirrors of Docker Hub (``LAMINA_REGISTRY_MIRRORS=host[:port],...``,
    as dockerd's registry-mirrors), tried in order before docker.io itself; a mirror
    that fails is skipped. Other registries have none."""
    if domain != refs.DEFAULT_DOMAIN:
        return ()
    raw = os.environ.get("LAMINA_REGISTRY_MIRRORS", "")
    mirrors = tuple(m.strip().split("://", 1)[-1].rstrip("/") for m in raw.split(",") if m.strip())
    if any("@" in m.split("/", 1)[0] for m in mirrors):
        # it would be the mirror's "host" in every message (and sent as is): never shown
        raise StoreError("LAMINA_REGISTRY_MIRRORS: a mirror URL may not carry credentials "
                         "(user:password@): log in to the mirror with `lamina login HOST[:PORT]`")
    return mirrors


def _pull(store, session: RegistrySession, ref: refs.Reference, want: Platform,
          progress: Progress | None, tag: bool, lazy: bool = False) -> Pulled:
    where = ref.familiar
    target = ref.digest or ref.tag or refs.DEFAULT_TAG
    data, media_type, digest = fetch_manifest(session, ref.path, target)
    resolved = digest  # what `ref` names in the registry: the RepoDigest (an index's, as docker)
    seen = {digest}
    predicates: dict = {}
    if media_type in oci.INDEX_TYPES:
        chosen = choose_manifest(json.loads(data), want, where)
        if chosen in seen:
            raise CorruptContent(f"{where}: the index refers to itself")
        predicates = _attestations(session, ref.path, json.loads(data), chosen)
        data, media_type, digest = fetch_manifest(session, ref.path, chosen)
        if media_type in oci.INDEX_TYPES:
            raise CorruptContent(f"{where}: the index for {want} points at another index")
    manifest = oci.decode(data, f"{where}: manifest")
    oci.check_manifest(manifest, f"{where}: manifest")
    cdesc = manifest["config"]
    layers_desc = manifest["layers"]
    downloaded = 0
    added: list[str] = []
    if lazy:
        config = fetch_small_blob(session, ref.path, cdesc["digest"], MAX_CONFIG_BYTES)
        return _record_lazily(store, ref, data, digest, config, layers_desc, predicates, tag, resolved)
    with store.writing():
        try:
            with ThreadPoolExecutor(max_workers=PARALLEL_DOWNLOADS) as pool:
                # the config first, beside the layers: they start a round trip earlier
                config_future = pool.submit(fetch_small_blob, session, ref.path, cdesc["digest"],
                                            MAX_CONFIG_BYTES)
                futures = [pool.submit(_fetch_layer, session, store, ref.path, d,
                                       f"{where}: layer {i + 1}/{len(layers_desc)} ({d['digest']})",
                                       progress, f"layer {i + 1}/{len(layers_desc)}")
                           for i, d in enumerate(layers_desc)]
                failure = None
                try:
                    config = config_future.result()
                except BaseException as e:  # noqa: BLE001 - re-raised once the layers ended
                    failure = e
                layers = []
                for d, f in zip(layers_desc, futures):  # every download ends before we go on
                    try:
                        n, layer = f.result()
                    except BaseException as e:  # noqa: BLE001 - re-raised below
                        failure = failure or e
                        continue
                    layers.append(layer)
                    if n >= 0:
                        downloaded += n
                        added.append(d["digest"])
                if failure is not None:
                    raise failure
            names = [str(refs.parse_tag(str(ref)))] if tag and ref.digest is None else []
            from lamina.store import remoteblobs
            for layer in layers:  # verified bytes replace another image's claim for them
                remoteblobs.settle(store, layer)
            image = store.add_manifest(data, config, layers, names)
            repodigests.record(store, ref.name, resolved, image.manifest_digest)
            # verified blobs of this repository: a push to another repository here mounts them
            bloblocations.remember(store, session.host, ref.path, [cdesc["digest"]] + [l.digest for l in layers])
            if predicates and image.manifest_digest == digest:  # provenance/SBOM came along
                attestations.attach(store, image.manifest_digest, predicates)
        except BaseException:
            # nothing of a refused image stays (blobs an earlier pull stored are kept)
            for d in added:
                try:
                    store.blobs.delete(d)
                except StoreError:
                    pass
            raise
    return Pulled(reference=str(ref), manifest_digest=digest, image=image, downloaded=downloaded,
                  repo_digest=resolved)


def _record_lazily(store, ref: refs.Reference, data: bytes, digest: str, config: bytes,
                   layers_desc: list, predicates: dict, tag: bool, resolved: str) -> Pulled:
    """Record the image with its layers as remote blobs of its repository: described by
    the manifest (digest, size, media type) and the config (diff_id); fetched, and
    checked against all of these, when first read (`fetch_remote`). `resolved`: the
    digest `ref` names in the registry (the RepoDigest: an index's or `digest`)."""
    where = ref.familiar
    diff_ids = oci.diff_ids(oci.decode(config, f"{where}: config"))
    if len(diff_ids) != len(layers_desc):
        raise CorruptContent(f"{where}: the config lists {len(diff_ids)} layers, the manifest "
                             f"{len(layers_desc)}")
    layers = []
    for d, diff_id in zip(layers_desc, diff_ids):
        check_digest(d["digest"])
        check_digest(diff_id)
        layers.append(LayerBlob(diff_id=diff_id, digest=d["digest"], size=int(d["size"]),
                                media_type=d.get("mediaType") or oci.OCI_LAYER_GZIP,
                                uncompressed_size=0))
    with store.writing():
        store.record_remote_layers(layers, f"{ref.domain}/{ref.path}")
        names = [str(refs.parse_tag(str(ref)))] if tag and ref.digest is None else []
        image = store.add_manifest(data, config, layers, names)
        repodigests.record(store, ref.name, resolved, image.manifest_digest)
        if predicates and image.manifest_digest == digest:
            attestations.attach(store, image.manifest_digest, predicates)
    return Pulled(reference=str(ref), manifest_digest=digest, image=image, downloaded=0,
                  repo_digest=resolved)


def fetch_remote(store, digest: str, source: str, described: LayerBlob | None = None) -> None:
    """Fetch recorded remote layer blob `digest` from repository `source` (DOMAIN/PATH)
    into `store`: checked against its digest, size and recorded diff_id, and walked as a
    tar, while it arrives (as `pull_image` does). StoreError naming the layer and the
    repository when it cannot be had; nothing stays of a refused blob, but a blob whose
    bytes are another layer than recorded stays, recorded as that layer (the bytes
    decide: a false claim shadows no image that has the blob)."""
    from lamina.store import remoteblobs
    from lamina.store.locks import flocked

    check_digest(digest)  # it names a lock file below
    layer = remoteblobs.layer_of(store, digest)
    if layer is None:
        raise StoreError(f"blob {digest} is recorded as remote but belongs to no layer", digest=digest)
    repo = refs.parse(source)
    where = f"layer {layer.diff_id} (blob {digest}) of {repo.domain}/{repo.path}"
    # `described`: the blob as another claim describes it (size, media type), when the
    # recorded one is in doubt (store.Store.record_remote_layers)
    d = described or layer
    desc = {"digest": digest, "size": d.size, "mediaType": d.media_type}
    with store.writing(), flocked(store.locks_dir / f"fetch-{digest.split(':')[-1]}.lock"):
        if store.blobs.exists(digest):  # another process fetched it meanwhile: is it this layer?
            got = _layer_blob(store, desc, where)
            if got.diff_id != layer.diff_id:
                remoteblobs.settle(store, got)  # the bytes decide (store.remoteblobs)
                raise CorruptContent(f"{where}: the blob holds diff_id {got.diff_id}, the image "
                                     f"says {layer.diff_id}", digest=digest)
            remoteblobs.fetched(store, digest)
            return
        errors = []
        servers = mirrors_for(repo.domain) + (repo.domain,)
        for server in servers:
            try:
                with RegistrySession(server) as session:
                    _, got = _fetch_layer(session, store, repo.path, desc, where, None, "")
                break
            except (RegistryError, httpx.HTTPError, OSError) as e:
                reason = getattr(e, "message", None) or str(e)
                errors.append(reason if len(servers) == 1 else f"{server}: {reason}")
        else:
            raise StoreError(f"{where}: not fetched yet, and cannot be fetched: "
                             + "; ".join(errors), digest=digest)
        if got.diff_id != layer.diff_id:
            # the bytes (digest, size, tar walk) are another layer than claimed: recorded
            # as what they are, so the false claim shadows no image that has this blob
            remoteblobs.settle(store, got)
            raise CorruptContent(f"{where}: the blob holds diff_id {got.diff_id}, the image "
                                 f"says {layer.diff_id}", digest=digest)
        if got.uncompressed_size and not layer.uncompressed_size:
            with store.db.write() as c:  # the sizes the images counted as compressed till now
                c.execute("UPDATE layer_blobs SET uncompressed_size=? WHERE digest=?",
                          (got.uncompressed_size, digest))
                c.execute("UPDATE layers SET size=? WHERE diff_id=? AND (size IS NULL OR size=0)",
                          (got.uncompressed_size, layer.diff_id))
                c.execute("UPDATE images SET size = size + ? WHERE manifest_digest IN "
                          "(SELECT manifest_digest FROM image_layers WHERE digest=?)",
                          (got.uncompressed_size - layer.size, digest))
        remoteblobs.fetched(store, digest)


def _attestations(session: RegistrySession, path: str, index: dict, image_digest: str) -> dict:
    """The predicates of the attestation manifest an index holds for `image_digest`
    (BuildKit's layout, store.attestations); {} when it has none or they cannot be read
    (attestations never fail a pull: malformed entries, annotations or layers of the
    registry's JSON included)."""
    try:
        for target, desc in attestations.attestation_descriptors(index):
            if target != image_digest:
                continue
            data, _, _ = fetch_manifest(session, path, _entry_digest(desc.get("digest"), path))
            statements = attestations.read_statements(
                data, lambda d: fetch_small_blob(session, path, d, MAX_CONFIG_BYTES))
            return {t: st.get("predicate") or {} for t, st in statements.items()}
    except (StoreError, KeyError, TypeError, AttributeError, ValueError):
        return {}
    return {}


def _fetch_layer(session: RegistrySession, store, path: str, desc: dict, where: str,
                 progress: Progress | None, what: str) -> tuple[int, LayerBlob]:
    """Download one layer blob (unless stored) with its diff_id computed and its tar
    walked while it arrives (store.layerdigest); (bytes downloaded or -1, LayerBlob)."""
    box = [LayerDigester()]

    def restart() -> None:
        box[0].abandon()
        box[0] = LayerDigester()

    try:
        n = fetch_blob(session, store.blobs, path, desc["digest"], desc.get("size"), progress, what,
                       on_chunk=lambda chunk: box[0].feed(chunk), on_restart=restart)
    except BaseException:
        box[0].abandon()
        raise
    if n < 0:  # already stored: describe it from the store
        box[0].abandon()
        return n, _layer_blob(store, desc, where)
    try:
        diff_id, usize, kind = box[0].finish()
        media_type = _media_type(desc, kind, where)
    except CorruptContent as e:
        store.blobs.delete(desc["digest"])  # downloaded by this pull: not a layer, not kept
        raise CorruptContent(f"{where}: {e.message}", digest=desc["digest"]) from None
    return n, LayerBlob(diff_id=diff_id, digest=desc["digest"], size=desc.get("size") or n,
                        media_type=media_type, uncompressed_size=usize)


def _media_type(desc: dict, kind: str, where: str) -> str:
    """The layer's media type: the manifest's when it names the compression the bytes
    really have (a gzip type on zstd bytes would be stored, exported and pushed as a
    gzip layer that gzip-only consumers cannot read: refused, as `load` refuses it),
    else the one of the bytes when the manifest names none."""
    declared = desc.get("mediaType")
    if not declared:
        return media_type_for(kind)
    try:
        promised = kind_for_media_type(declared)
    except StoreError:
        raise CorruptContent(f"unsupported layer media type {declared!r}",
                             digest=desc["digest"]) from None
    if promised != kind:
        raise CorruptContent(f"media type {declared} promises {promised} but the blob is {kind}",
                             digest=desc["digest"])
    return declared


def _layer_blob(store, desc: dict, where: str) -> LayerBlob:
    try:
        described = describe_layer(store.blobs, desc["digest"])
    except CorruptContent as e:
        raise CorruptContent(f"{where}: {e.message}", digest=desc["digest"]) from None
    try:
        media_type = _media_type(desc, kind_for_media_type(described.media_type), where)
    except CorruptContent as e:
        raise CorruptContent(f"{where}: {e.message}", digest=desc["digest"]) from None
    return LayerBlob(diff_id=described.diff_id, digest=described.digest, size=described.size,
                     media_type=media_type, uncompressed_size=described.uncompressed_size)
