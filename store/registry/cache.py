"""The remote build cache as an OCI artifact: its format, and reading and writing
it in a registry (`type=registry`), an OCI image layout directory (`type=local`)
or the manifest of an image (`type=inline`).

A cache is a set of `CacheRecord`s — a step's cache key -> the layer (diff_id) the
step produced or None, its parent, where in the Dockerfile it was and the step's
cache inputs (JSON the builder writes, for miss explanations) — and a blob
descriptor (`LayerBlob`) for every layer they name. In a registry or a layout it
is one OCI image manifest (image-spec v1.1 artifact):

    mediaType     application/vnd.oci.image.manifest.v1+json
    artifactType  application/vnd.lamina.cache.v1+json
    config        application/vnd.lamina.cache.config.v1+json  {"mode":..,"schema":..}
    layers        the layer blobs themselves (the builder passes the gzip blobs a
                  push of the image uploads: image and cache share blobs), then
                  one application/vnd.lamina.cache.records.v1+json blob: the records

Inline, the records (without the layer table) are the manifest annotation
`dev.lamina.cache.v1` of an image; its layers are the image's own, matched to
diff_ids through its config. The image ID (config digest) does not change.

Writing: every blob first, the manifest (registry) or index.json (layout, by
rename) last, so a reader sees the old cache or the new one, never a mix; two
writers of one ref leave one of their caches. mode=max merges the records already
at the ref (newest first, at most MAX_RECORDS). Reading checks every record and
descriptor (a bad one makes the whole cache unreadable: CorruptContent), and a
layer fetched from a cache is verified against its digest and its diff_id before
it is recorded (`import_layer`). Imports only lamina.store.
"""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from lamina.store import bloblocations, oci, refs
from lamina.store.blobs import sha256_digest
from lamina.store.compression import kind_for_media_type
from lamina.store.errors import CorruptContent, StoreError
from lamina.store.layerrecords import record_layer
from lamina.store.layers import LayerBlob, describe_layer
from lamina.store.registry.pull import (choose_manifest, fetch_blob, fetch_manifest,
                                        fetch_small_blob, host, repo_scope)
from lamina.store.registry.push import PARALLEL_UPLOADS, upload_blob
from lamina.store.registry.session import RegistryError, RegistrySession, Unauthorized

SCHEMA = "lamina.cache.v1"
ARTIFACT_TYPE = "application/vnd.lamina.cache.v1+json"
CONFIG_TYPE = "application/vnd.lamina.cache.config.v1+json"
RECORDS_TYPE = "application/vnd.lamina.cache.records.v1+json"
INLINE_ANNOTATION = "dev.lamina.cache.v1"
MAX_RECORDS = 4000
MAX_RECORDS_BYTES = 64 << 20
MODES = ("min", "max")

_KEY_RE = re.compile(r"[0-9a-f]{64}")
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")

Provide = Callable[[LayerBlob], None]  # puts a layer's blob into the local store


@dataclass(frozen=True)
class CacheRecord:
    """One cached step. `inputs` is JSON text the store does not interpret; `epoch`,
    when set, is the SOURCE_DATE_EPOCH the layer's file times were clamped to (the
    layer as an image holds it), valid only for builds with that epoch."""

    key: str
    diff_id: str | None
    parent: str = ""
    position: str = ""
    inputs: str = ""
    created: float = 0.0
    epoch: int | None = None


@dataclass(frozen=True)
class CacheData:
    records: tuple[CacheRecord, ...] = ()
    layers: Mapping[str, LayerBlob] = field(default_factory=dict)  # diff_id -> blob

    def used_layers(self) -> list[LayerBlob]:
        """The blobs the records name, each once, in record order."""
        seen: dict[str, LayerBlob] = {}
        for r in self.records:
            if r.diff_id is not None and r.diff_id not in seen:
                seen[r.diff_id] = self.layers[r.diff_id]
        return list(seen.values())


# -- the records document ------------------------------------------------------------

def _record_json(r: CacheRecord) -> dict[str, Any]:
    out: dict[str, Any] = {"key": r.key, "layer": r.diff_id, "parent": r.parent,
                           "position": r.position, "created": round(r.created, 3)}
    if r.inputs:
        out["inputs"] = json.loads(r.inputs)
    if r.epoch is not None:
        out["epoch"] = r.epoch
    return out


def encode_records(data: CacheData, *, with_layers: bool = True) -> bytes:
    """Canonical JSON of the records (and, unless inline, the layer table)."""
    doc: dict[str, Any] = {"schema": SCHEMA, "records": [_record_json(r) for r in data.records]}
    if with_layers:
        doc["layers"] = [{"diffID": l.diff_id, "digest": l.digest, "size": l.size,
                          "mediaType": l.media_type, "uncompressedSize": l.uncompressed_size}
                         for l in data.used_layers()]
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise CorruptContent(f"{what}: bad number {value!r}")
    return value


def _digest(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _DIGEST_RE.fullmatch(value):
        raise CorruptContent(f"{what}: bad digest {value!r}")
    return value


def _text(value: Any, what: str, limit: int = 4096) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise CorruptContent(f"{what}: not a string (of at most {limit} characters)")
    return value


def decode_records(data: bytes, where: str, layers: Mapping[str, LayerBlob] | None = None) -> CacheData:
    """Parse and check a records document; `layers` (inline) replaces its layer table.
    CorruptContent naming `where` for anything malformed."""
    doc = oci.decode(data, f"{where}: cache records")
    if doc.get("schema") != SCHEMA:
        raise CorruptContent(f"{where}: cache schema {doc.get('schema')!r} is not {SCHEMA!r}")
    if layers is None:
        table = doc.get("layers")
        if not isinstance(table, list):
            raise CorruptContent(f"{where}: cache records without a layer table")
        layers = {}
        for i, l in enumerate(table):
            what = f"{where}: cache layer {i}"
            if not isinstance(l, dict):
                raise CorruptContent(f"{what}: not an object")
            media_type = _text(l.get("mediaType"), what, 256)
            if media_type not in oci.LAYER_TYPES:
                raise CorruptContent(f"{what}: unsupported media type {media_type!r}")
            diff_id = _digest(l.get("diffID"), what)
            layers[diff_id] = LayerBlob(diff_id=diff_id, digest=_digest(l.get("digest"), what),
                                        size=_int(l.get("size"), what), media_type=media_type,
                                        uncompressed_size=_int(l.get("uncompressedSize", 0), what))
    items = doc.get("records")
    if not isinstance(items, list):
        raise CorruptContent(f"{where}: cache records is not a list")
    records = []
    for i, r in enumerate(items):
        what = f"{where}: cache record {i}"
        if not isinstance(r, dict):
            raise CorruptContent(f"{what}: not an object")
        key = r.get("key")
        if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
            raise CorruptContent(f"{what}: bad key {key!r}")
        diff_id = r.get("layer")
        if diff_id is not None:
            _digest(diff_id, what)
            if diff_id not in layers:
                raise CorruptContent(f"{what}: layer {diff_id} is not in the cache")
        inputs = r.get("inputs")
        if inputs is not None and not isinstance(inputs, dict):
            raise CorruptContent(f"{what}: inputs is not an object")
        created = r.get("created", 0)
        if not isinstance(created, (int, float)) or isinstance(created, bool):
            raise CorruptContent(f"{what}: bad time {created!r}")
        epoch = r.get("epoch")
        if epoch is not None:
            _int(epoch, what)
        records.append(CacheRecord(
            key=key, diff_id=diff_id, parent=_text(r.get("parent", ""), what),
            position=_text(r.get("position", ""), what), created=float(created), epoch=epoch,
            inputs=json.dumps(inputs, sort_keys=True, ensure_ascii=False) if inputs is not None else ""))
    return CacheData(records=tuple(records), layers=dict(layers))


def merge(new: CacheData, old: CacheData | None, limit: int = MAX_RECORDS) -> CacheData:
    """`new`'s records, then `old`'s that `new` lacks, newest first, at most `limit`."""
    if old is None:
        return new
    keys = {r.key for r in new.records}
    kept = sorted((r for r in old.records if r.key not in keys), key=lambda r: -r.created)
    records = (list(new.records) + kept)[:max(limit, len(new.records))]
    layers = {**old.layers, **new.layers}
    return CacheData(records=tuple(records),
                     layers={r.diff_id: layers[r.diff_id] for r in records if r.diff_id is not None})


def artifact(data: CacheData, mode: str) -> tuple[bytes, bytes, bytes]:
    """(config bytes, records bytes, manifest bytes) of the cache artifact."""
    config = json.dumps({"mode": mode, "schema": SCHEMA}, sort_keys=True, separators=(",", ":")).encode()
    records = encode_records(data)
    manifest = oci.build_manifest(
        oci.Descriptor(CONFIG_TYPE, sha256_digest(config), len(config)),
        [oci.Descriptor(l.media_type, l.digest, l.size) for l in data.used_layers()]
        + [oci.Descriptor(RECORDS_TYPE, sha256_digest(records), len(records))])
    manifest["artifactType"] = ARTIFACT_TYPE
    return config, records, oci.encode(manifest, "manifest")


def records_descriptor(manifest: Mapping[str, Any], where: str) -> oci.Descriptor | None:
    """The records blob of a cache artifact manifest, None if it is not one."""
    config = manifest.get("config")
    if manifest.get("artifactType") != ARTIFACT_TYPE and not (
            isinstance(config, dict) and config.get("mediaType") == CONFIG_TYPE):
        return None
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        raise CorruptContent(f"{where}: cache manifest without layers")
    found = [l for l in layers if isinstance(l, dict) and l.get("mediaType") == RECORDS_TYPE]
    if len(found) != 1:
        raise CorruptContent(f"{where}: cache manifest has {len(found)} records blobs, expected 1")
    return oci.Descriptor.from_json(found[0], f"{where}: records descriptor")


def inline_annotation(data: CacheData) -> dict[str, str]:
    """The manifest annotation that carries `data` inline (its layers must be the image's)."""
    return {INLINE_ANNOTATION: encode_records(data, with_layers=False).decode()}


def _inline(manifest: Mapping[str, Any], config: bytes, where: str) -> CacheData:
    cfg = oci.decode(config, f"{where}: image config")
    diff_ids = oci.diff_ids(cfg) if isinstance(cfg.get("rootfs"), dict) else []
    descs = manifest.get("layers") or []
    if len(diff_ids) != len(descs):
        raise CorruptContent(f"{where}: the image's config and manifest list different layer counts")
    layers = {}
    for i, (d, diff_id) in enumerate(zip(descs, diff_ids)):
        desc = oci.Descriptor.from_json(d, f"{where}: layer {i}")
        layers[_digest(diff_id, f"{where}: diff_id {i}")] = LayerBlob(
            diff_id=diff_id, digest=desc.digest, size=desc.size, media_type=desc.media_type,
            uncompressed_size=0)
    return decode_records(manifest["annotations"][INLINE_ANNOTATION].encode(), where, layers)


# -- reading ------------------------------------------------------------------------

class CacheSource:
    """Where cache records and their layer blobs are read from."""

    where: str = ""
    origin: tuple[str, str] | None = None  # (registry host, repository): blobs mountable from there

    def load(self) -> CacheData:
        raise NotImplementedError

    def fetch_blob(self, blobs, layer: LayerBlob) -> None:
        """Store `layer`'s blob in `blobs`, verified against its digest and size."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class RegistryCacheSource(CacheSource):
    """A cache artifact, or an image with an inline cache, at a registry reference."""

    def __init__(self, reference: str, *, session: RegistrySession | None = None) -> None:
        self.ref = refs.parse(reference)
        self.where = self.ref.familiar
        self.origin = (self.ref.domain, self.ref.path)
        self._own = session is None
        self.session = session or RegistrySession(self.ref.domain)

    def load(self) -> CacheData:
        s, path = self.session, self.ref.path
        data, media_type, _ = fetch_manifest(s, path, self.ref.digest or self.ref.tag or refs.DEFAULT_TAG)
        if media_type in oci.INDEX_TYPES:  # an image with inline cache, several platforms
            data, media_type, _ = fetch_manifest(s, path, choose_manifest(
                oci.decode(data, f"{self.where}: index"), host(), self.where))
        manifest = oci.decode(data, f"{self.where}: manifest")
        desc = records_descriptor(manifest, self.where)
        if desc is not None:
            check_size(desc, self.where)
            return decode_records(fetch_small_blob(s, path, desc.digest, MAX_RECORDS_BYTES), self.where)
        if INLINE_ANNOTATION in (manifest.get("annotations") or {}):
            config = oci.Descriptor.from_json(manifest.get("config"), f"{self.where}: config")
            check_size(config, self.where)
            return _inline(manifest, fetch_small_blob(s, path, config.digest, MAX_RECORDS_BYTES), self.where)
        raise CorruptContent(f"{self.where} is neither a lamina build cache nor an image with an "
                             "inline cache")

    def fetch_blob(self, blobs, layer: LayerBlob) -> None:
        fetch_blob(self.session, blobs, self.ref.path, layer.digest, layer.size)

    def has_blob(self, layer: LayerBlob) -> bool:
        """Does the cache's repository still have the layer's blob, of its size (HEAD)?"""
        with self.session.request("HEAD", f"/v2/{self.ref.path}/blobs/{layer.digest}",
                                  scope=repo_scope(self.ref.path), ok=(200, 404)) as resp:
            if resp.status_code != 200:
                return False
            length = resp.headers.get("content-length")
            return length is None or not length.isdigit() or int(length) == layer.size

    def close(self) -> None:
        if self._own:
            self.session.close()


def check_size(desc: oci.Descriptor, where: str) -> None:
    if desc.size > MAX_RECORDS_BYTES:
        raise CorruptContent(f"{where}: cache blob {desc.digest} is {desc.size} bytes "
                             f"(more than {MAX_RECORDS_BYTES >> 20} MiB)")


def import_layer(store, source: CacheSource, layer: LayerBlob, lease=None) -> LayerBlob:
    """Fetch a cached layer's blob into `store` (unless there), check that it is a
    valid layer tar with the diff_id the cache claims, and record it (held by
    `lease`). Returns the layer as recorded. Nothing stays of a refused blob."""
    with store.writing():
        added = not store.blobs.exists(layer.digest)
        if added:
            source.fetch_blob(store.blobs, layer)
        try:
            described = describe_layer(store.blobs, layer.digest)
            if described.diff_id != layer.diff_id:
                raise CorruptContent(f"{source.where}: layer blob {layer.digest} holds diff_id "
                                     f"{described.diff_id}, the cache says {layer.diff_id}",
                                     digest=layer.digest)
        except BaseException:
            if added:
                store.blobs.delete(layer.digest)
            raise
        try:
            same_kind = kind_for_media_type(layer.media_type) == kind_for_media_type(described.media_type)
        except StoreError:
            same_kind = False
        blob = LayerBlob(diff_id=layer.diff_id, digest=layer.digest, size=described.size,
                         media_type=layer.media_type if same_kind else described.media_type,
                         uncompressed_size=described.uncompressed_size)
        record_layer(store, blob)
        if source.origin is not None:  # verified from there: pushes to its registry mount it
            bloblocations.remember(store, *source.origin, [blob.digest])
        if lease is not None:
            lease.hold(layers=[blob.diff_id], blobs=[blob.digest])
    return blob


# -- writing to a registry --------------------------------------------------------------

@dataclass(frozen=True)
class PushedCache:
    reference: str
    manifest_digest: str
    records: int
    uploaded: int   # layer bytes sent
    reused: int     # layer blobs the registry had or mounted


def _put_bytes(session: RegistrySession, path: str, data: bytes, scope: str) -> None:
    digest = sha256_digest(data)
    with session.request("HEAD", f"/v2/{path}/blobs/{digest}", scope=scope, ok=(200, 404)) as resp:
        if resp.status_code == 200:
            return
    with session.request("POST", f"/v2/{path}/blobs/uploads/", scope=scope, ok=(202,)) as resp:
        location = resp.headers.get("location") or ""
    if not location:
        raise RegistryError(f"registry {session.host} started an upload without a Location")
    if location.startswith("/"):
        location = session.base_url() + location
    sep = "&" if "?" in location else "?"
    with session.request("PUT", f"{location}{sep}digest={digest}", scope=scope, body=data,
                         headers={"Content-Type": "application/octet-stream"}, ok=(201, 204)):
        pass


def _has(session: RegistrySession, path: str, digest: str, scope: str) -> bool:
    with session.request("HEAD", f"/v2/{path}/blobs/{digest}", scope=scope, ok=(200, 404)) as resp:
        return resp.status_code == 200


def _mount(session: RegistrySession, path: str, digest: str, source: str, scope: str) -> bool:
    """Cross-repository mount of `digest` from `source`; False when the registry
    declines (the upload it opened instead is cancelled) or the credentials have no
    pull on `source` (asked along with `scope`, as push.upload_blob asks)."""
    try:
        with session.request("POST", f"/v2/{path}/blobs/uploads/", scope=f"{scope} {repo_scope(source)}",
                             params={"mount": digest, "from": source}, ok=(201, 202)) as resp:
            if resp.status_code == 201:
                return True
            location = resp.headers.get("location")
    except Unauthorized:
        return False
    if location:
        try:
            with session.request("DELETE", location if "://" in location else session.base_url() + location,
                                 scope=scope, ok=(200, 204, 404), retry=False):
                pass
        except StoreError:
            pass
    return False


def _load_existing(session: RegistrySession, path: str, tag: str, where: str) -> CacheData | None:
    try:
        data, _, _ = fetch_manifest(session, path, tag)
        desc = records_descriptor(oci.decode(data, where), where)
        if desc is None:
            return None
        check_size(desc, where)
        return decode_records(fetch_small_blob(session, path, desc.digest, MAX_RECORDS_BYTES), where)
    except StoreError:  # nothing there, or nothing usable: overwritten
        return None


def push_cache(store, reference: str, data: CacheData, *, mode: str = "min", provide: Provide,
               origins: Mapping[str, tuple[str, str]] | None = None,
               session: RegistrySession | None = None) -> PushedCache:
    """Write `data` as the cache artifact at `reference`. Layer blobs the registry has
    are skipped, those a source repository of the same registry has are mounted
    (`origins`: digest -> (host, repository)), the others are uploaded from the
    store (after `provide(layer)` put them there). mode=max merges the records
    already at `reference`. Blobs first, the manifest last."""
    dest = refs.parse(reference)
    if dest.digest is not None:
        raise StoreError(f"cannot write a build cache to a digest reference {reference!r}: name a tag")
    tag = dest.tag or refs.DEFAULT_TAG
    own = session is None
    session = session or RegistrySession(dest.domain)
    scope = repo_scope(dest.path, "pull,push")
    origins = origins or {}
    try:
        merged = merge(data, _load_existing(session, dest.path, tag, dest.familiar)) if mode == "max" else data
        def send(layer: LayerBlob) -> int:
            """Bytes uploaded, or -1 when the registry had or mounted the blob."""
            origin = origins.get(layer.digest)
            if _has(session, dest.path, layer.digest, scope):
                return -1
            if (not store.blobs.exists(layer.digest) and origin is not None and origin[0] == dest.domain
                    and origin[1] != dest.path and _mount(session, dest.path, layer.digest, origin[1], scope)):
                return -1
            if not store.blobs.exists(layer.digest):
                provide(layer)
            return upload_blob(session, store.blobs, dest.path, layer.digest, scope, known[layer.digest],
                               None, "layer", refuted=refuted)

        uploaded = reused = 0
        known = bloblocations.candidates(store, dest.domain, [l.digest for l in data.used_layers()],
                                         exclude=dest.path)
        refuted: list[tuple[str, str]] = []
        with ThreadPoolExecutor(max_workers=PARALLEL_UPLOADS) as pool:
            futures = [pool.submit(send, l) for l in data.used_layers()]
            for f in futures:  # every upload ends (or fails) before the manifest is written
                n = f.result()
                reused += n < 0
                uploaded += max(n, 0)
        # a 400 (blob unknown) comes from a merged layer gone from the registry, or from
        # a blob another writer is committing at the same moment: try again, then alone
        attempts = [merged, merged, data, data] if merged is not data else [data, data, data]
        for n, attempt in enumerate(attempts):
            config, records, manifest = artifact(attempt, mode)
            _put_bytes(session, dest.path, config, scope)
            _put_bytes(session, dest.path, records, scope)
            try:
                with session.request("PUT", f"/v2/{dest.path}/manifests/{tag}", scope=scope, body=manifest,
                                     headers={"Content-Type": oci.OCI_MANIFEST}, ok=(200, 201)):
                    pass
                break
            except RegistryError as e:
                if n == len(attempts) - 1 or e.status != 400:
                    raise
                time.sleep(0.2 * (n + 1))
        bloblocations.forget(store, dest.domain, refuted)
        bloblocations.remember(store, dest.domain, dest.path, [l.digest for l in data.used_layers()])
        return PushedCache(reference=str(dest.with_tag(tag)) if dest.tag is None else str(dest),
                           manifest_digest=sha256_digest(manifest), records=len(attempt.records),
                           uploaded=uploaded, reused=reused)
    finally:
        if own:
            session.close()


__all__ = ["ARTIFACT_TYPE", "CONFIG_TYPE", "RECORDS_TYPE", "INLINE_ANNOTATION", "MODES", "CacheRecord",
           "CacheData", "CacheSource", "RegistryCacheSource", "PushedCache", "encode_records",
           "decode_records", "merge", "artifact", "inline_annotation", "import_layer", "push_cache",
           "records_descriptor", "check_size"]
