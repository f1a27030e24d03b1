"""The remote build cache of a build: `--cache-from` / `--cache-to` as buildx names
them, between the executor and lamina.store.registry.cache.

    type=registry,ref=REG/NAME:TAG[,mode=min|max][,compression=gzip|zstd]   (from, to)
    REG/NAME:TAG                                   (from: as type=registry,ref=)
    type=local,src=DIR   /  type=local,dest=DIR[,mode=..]                    (from / to)
    type=inline                                    (to: the records ride in the image's
                                                    manifest; read back with type=registry)

The executor asks `lookup(key)` after a local-cache miss. A remote hit gives the
layer as the cache describes it, without fetching it: the blob is fetched (and
checked against its digest and diff_id, then recorded in the store and the local
cache) only when `ensure()` is asked for it — when a later step that runs needs it
as a lower dir. The image's layers are recorded at commit as remote blobs of the
cache's repository (`commit_layers`, store.remoteblobs) and fetched only when read,
so a build whose steps all hit downloads only what is read afterwards (none when it
only pushes to the cache's registry: the push mounts them), never the layers of
stages it copies from. If such a fetch fails the build is told (`RemoteLayerLost`) and builds again
without the remote cache. `record()` collects every step of the build; `export()`
writes mode=min (the steps of the final image) or mode=max (every step) records.
A cache that cannot be read or written is a WARNING in the build output, never a
failed build. On a miss with no local history, `previous()` gives the cache's
inputs of the same step, so the miss is explained across machines.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable

from lamina.builder.errors import BuildError
from lamina.builder.plan.cachekey import CacheInputs
from lamina.store.cache import CacheEntry
from lamina.store.errors import StoreError
from lamina.store.layers import LayerBlob


class _OnUse:
    """A module imported at its first attribute use: a build without --cache-from or
    --cache-to never loads the registry client (httpx alone: ~50 ms of every start)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str):
        import importlib

        return getattr(importlib.import_module(self._name), attr)


httpx = _OnUse("httpx")
rc = _OnUse("lamina.store.registry.cache")
_layout = _OnUse("lamina.store.registry.cachelayout")

TYPES = ("registry", "local", "inline")
COMPRESSIONS = ("gzip", "zstd")
PARALLEL_FETCHES = 4
# options buildx knows that change nothing here
_IGNORED = frozenset({"ignore-error", "oci-mediatypes", "image-manifest", "compression-level",
                      "force-compression", "name"})


@dataclass(frozen=True)
class CacheSpec:
    """One --cache-from / --cache-to value."""

    type: str
    ref: str | None = None
    path: Path | None = None
    mode: str = "min"
    compression: str = "gzip"
    text: str = ""

    @property
    def where(self) -> str:
        return self.ref or (str(self.path) if self.path else "the image (inline)")


def parse_cache_spec(text: str, *, export: bool) -> CacheSpec:
    flag = "--cache-to" if export else "--cache-from"
    if "=" not in text.split(",", 1)[0]:  # a bare reference
        if export:
            raise BuildError(f"invalid {flag} {text!r}: expected type=registry,ref=NAME:TAG, "
                             "type=local,dest=DIR or type=inline")
        text = f"type=registry,ref={text}"
    fields: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep or not key:
            raise BuildError(f"invalid {flag} {text!r}: expected key=value pairs")
        fields[key] = value.strip()
    kind = fields.pop("type", "registry" if "ref" in fields else "")
    if kind not in TYPES or (kind == "inline" and not export):
        kinds = "registry, local or inline" if export else "registry or local"
        raise BuildError(f"invalid {flag} {text!r}: type must be {kinds} (read an inline cache with "
                         "type=registry,ref=IMAGE)" if kind == "inline" else
                         f"invalid {flag} {text!r}: type must be {kinds}")
    mode = fields.pop("mode", "min")
    if mode not in rc.MODES:
        raise BuildError(f"invalid {flag} {text!r}: mode must be min or max")
    compression = fields.pop("compression", "gzip")
    if compression not in COMPRESSIONS:
        raise BuildError(f"invalid {flag} {text!r}: compression must be gzip or zstd")
    ref = fields.pop("ref", None)
    path = fields.pop("dest" if export else "src", None)
    if kind == "local" and export and "src" in fields or kind == "local" and not export and "dest" in fields:
        raise BuildError(f"invalid {flag} {text!r}: a local cache is read from src=DIR and written to dest=DIR")
    unknown = sorted(k for k in fields if k not in _IGNORED)
    if unknown:
        raise BuildError(f"invalid {flag} {text!r}: unknown option {unknown[0]!r}")
    if kind == "registry":
        if not ref:
            raise BuildError(f"invalid {flag} {text!r}: ref=NAME:TAG is required")
        from lamina.store import refs
        try:
            refs.parse(ref)
        except StoreError as e:
            raise BuildError(f"invalid {flag} {text!r}: {e.message}") from None
        return CacheSpec("registry", ref=ref, mode=mode, compression=compression, text=text)
    if kind == "local":
        if not path:
            raise BuildError(f"invalid {flag} {text!r}: {'dest' if export else 'src'}=DIR is required")
        return CacheSpec("local", path=Path(path), mode=mode, compression=compression, text=text)
    return CacheSpec("inline", mode="min", compression=compression, text=text)


class RemoteLayerLost(BuildError):
    """A layer a remote cache hit promised could not be fetched or was not valid."""


@dataclass
class _Pending:
    layer: LayerBlob                    # as the cache describes it
    source: rc.CacheSource
    entries: list[tuple[str, str]] = field(default_factory=list)  # (key, parent) for the local cache


@dataclass
class _Loaded:
    source: rc.CacheSource
    by_key: dict[str, rc.CacheRecord]
    data: rc.CacheData


class RemoteCache:
    """The remote caches of one build (none: every method is a cheap no-op)."""

    def __init__(self, store, imports: Iterable[CacheSpec] = (), exports: Iterable[CacheSpec] = (),
                 progress=None, dockerfile: str = "Dockerfile", epoch: int | None = None) -> None:
        self.store = store
        self.epoch = epoch
        self.imports = tuple(imports)
        self.exports = tuple(exports)
        self.progress = progress
        self.dockerfile = Path(dockerfile).name
        self._loaded: list[_Loaded] = []
        self._previous: dict[str, rc.CacheRecord] = {}
        self._pending: dict[str, _Pending] = {}
        self._fetched: dict[str, LayerBlob] = {}
        self._records: dict[str, rc.CacheRecord] = {}
        self._layers: dict[str, LayerBlob] = {}
        self._hit_epochs: dict[str, int] = {}      # key -> epoch of the remote record it hit
        self._stamped: set[str] = set()            # diff_ids of hit layers re-stamped for self.epoch
        self._committed: dict[str, LayerBlob] = {}  # step layer diff_id -> the image's layer
        self._fetching = threading.Lock()  # exports provide layers from several threads

    def _warn(self, message: str) -> None:
        if self.progress is not None:
            self.progress.note("WARNING: " + message)

    def _note(self, message: str) -> None:
        if self.progress is not None:
            self.progress.note(message)

    # -- importing -------------------------------------------------------------------

    def open(self) -> None:
        """Read every --cache-from (a failure is a warning: that cache is skipped)."""
        for spec in self.imports:
            source: rc.CacheSource | None = None
            try:
                source = (rc.RegistryCacheSource(spec.ref) if spec.type == "registry"
                          else _layout.LayoutCacheSource(spec.path))
                data = source.load()
            except (StoreError, httpx.HTTPError, OSError) as e:
                if source is not None:
                    source.close()
                self._warn(f"cannot import the build cache from {spec.where}: {_reason(e)}")
                continue
            self._loaded.append(_Loaded(source, {r.key: r for r in data.records}, data))
            for r in data.records:
                best = self._previous.get(r.position)
                if r.inputs and (best is None or r.created > best.created):
                    self._previous[r.position] = r
            self._note(f"importing cache from {spec.where}: {_steps(len(data.records))}")

    def close(self) -> None:
        for loaded in self._loaded:
            loaded.source.close()

    def position(self, stage, step) -> str:
        return f"{self.dockerfile}:{stage.display_name}:{step.index}"

    def lookup(self, key: str, parent: str, lease=None) -> tuple[LayerBlob | None] | None:
        """(the step's layer or None,) on a hit in a remote cache, else None. The layer
        may not be in the store yet: `ensure` fetches it when it is needed."""
        for loaded in self._loaded:
            record = loaded.by_key.get(key)
            if record is None or record.epoch is not None and record.epoch != self.epoch:
                continue  # (a layer whose times were clamped for another SOURCE_DATE_EPOCH)
            if record.epoch is not None:
                # a layer re-stamped for this epoch: not for the local cache, whose
                # entries hold for any epoch (the commit re-stamps their layers)
                self._hit_epochs[key] = record.epoch
                if record.diff_id is not None:
                    self._stamped.add(record.diff_id)
            local_ok = record.epoch is None
            if record.diff_id is None:
                self._put_local(key, None, parent)
                return (None,)
            layer = self._fetched.get(record.diff_id) or self._local_layer(record.diff_id, lease)
            if layer is not None:
                if local_ok:
                    self._put_local(key, layer.diff_id, parent)
                return (layer,)
            pending = self._pending.get(record.diff_id)
            if pending is None:
                pending = self._pending[record.diff_id] = _Pending(loaded.data.layers[record.diff_id],
                                                                   loaded.source)
            if local_ok:
                pending.entries.append((key, parent))
            return (pending.layer,)
        return None

    def _local_layer(self, diff_id: str, lease) -> LayerBlob | None:
        try:
            layer = self.store.layer(diff_id)
        except StoreError:
            return None
        if not self.store.blobs.exists(layer.digest):
            return None
        if lease is not None:
            lease.hold(layers=[diff_id], blobs=[layer.digest])
        return layer

    def _put_local(self, key: str, diff_id: str | None, parent: str) -> None:
        try:
            self.store.cache.put(key, CacheEntry(diff_id=diff_id, config_change={}, parent=parent))
        except StoreError:
            pass  # the local cache is an optimisation here

    def stamped(self, diff_id: str) -> bool:
        """Whether a hit's layer is already re-stamped for this build's epoch (as the
        image holds it): committing it needs no second pass."""
        return diff_id in self._stamped

    def previous(self, stage, step) -> CacheInputs | None:
        """The inputs a remote cache recorded for this step (newest), for explanations."""
        record = self._previous.get(self.position(stage, step))
        if record is None:
            return None
        try:
            return CacheInputs.from_json(record.inputs)
        except (ValueError, TypeError):
            return None

    def ensure(self, layers: Iterable[LayerBlob], lease=None) -> tuple[LayerBlob, ...]:
        """`layers` with every layer a remote hit promised fetched into the store,
        verified and recorded (returned as recorded). RemoteLayerLost on failure."""
        layers = tuple(layers)
        with self._fetching:
            todo = [self._pending[l.diff_id] for l in layers
                    if l.diff_id in self._pending and l.diff_id not in self._fetched]
            if todo:
                self._fetch(todo, lease)
            return tuple(self._fetched.get(l.diff_id, l) for l in layers)

    def commit_layers(self, layers: Iterable[LayerBlob], lease=None) -> tuple[LayerBlob, ...]:
        """`layers` ready to be an image's: a remote hit from a registry cache is
        recorded as a remote blob of the cache's repository (store.remoteblobs: fetched
        only when something reads it, mounted registry side by a push), a hit from a
        local cache is fetched (`ensure`). So a build that only pushes downloads none."""
        layers = tuple(layers)
        with self._fetching:
            local, remote = [], []
            for l in layers:
                p = self._pending.get(l.diff_id)
                if p is None or l.diff_id in self._fetched:
                    continue
                (remote if getattr(p.source, "origin", None) else local).append(p)
            for p in remote:  # still there? (a HEAD each; the bytes are checked when read)
                try:
                    there = p.source.has_blob(p.layer)
                except (StoreError, httpx.HTTPError, OSError) as e:
                    raise RemoteLayerLost(f"cannot check cached layer {p.layer.digest} at "
                                          f"{p.source.where}: {_reason(e)}") from None
                if not there:
                    raise RemoteLayerLost(f"cached layer {p.layer.digest} is gone from "
                                          f"{p.source.where}")
            for p in remote:
                origin = p.source.origin
                self.store.record_remote_layers([p.layer], f"{origin[0]}/{origin[1]}")
                if lease is not None:
                    lease.hold(layers=[p.layer.diff_id], blobs=[p.layer.digest])
                self._fetched[p.layer.diff_id] = p.layer
                for key, parent in p.entries:
                    self._put_local(key, p.layer.diff_id, parent)
            if local:
                self._fetch(local, lease)
            return tuple(self._fetched.get(l.diff_id, l) for l in layers)

    def _fetch(self, todo: list[_Pending], lease) -> None:
        started = time.monotonic()

        def one(p: _Pending) -> LayerBlob:
            return rc.import_layer(self.store, p.source, p.layer, lease)

        failure = None
        with ThreadPoolExecutor(max_workers=min(PARALLEL_FETCHES, len(todo))) as pool:
            futures = [(p, pool.submit(one, p)) for p in todo]
            for p, f in futures:  # every fetch ends before we go on
                try:
                    self._fetched[p.layer.diff_id] = blob = f.result()
                except (StoreError, httpx.HTTPError, OSError) as e:
                    failure = failure or (p, e)
                    continue
                for key, parent in p.entries:
                    self._put_local(key, blob.diff_id, parent)
        if failure is not None:
            p, e = failure
            raise RemoteLayerLost(f"cannot fetch cached layer {p.layer.digest} from {p.source.where}: "
                                  f"{_reason(e)}")
        size = sum(p.layer.size for p in todo)
        self._note(f"fetched {len(todo)} cached layer{'s' if len(todo) != 1 else ''} "
                   f"({size} bytes) in {time.monotonic() - started:.1f}s")

    def lost(self, error: RemoteLayerLost) -> None:
        """After RemoteLayerLost: forget the remote sources (the build starts again)."""
        self._warn(f"{error.message}: building again without the remote cache")
        self.close()
        self._loaded = []
        self._previous = {}
        self._pending = {}
        self._records = {}
        self._layers = {}
        self._hit_epochs = {}
        self._stamped = set()

    # -- exporting -------------------------------------------------------------------

    def record(self, stage, step, key, inputs: CacheInputs, layer: LayerBlob | None, parent: str) -> None:
        """Note a step of this build for the --cache-to exports."""
        if not self.exports:
            return
        self._records[str(key)] = rc.CacheRecord(
            key=str(key), diff_id=layer.diff_id if layer else None, parent=parent,
            position=self.position(stage, step), inputs=inputs.sealed().to_json(), created=time.time(),
            epoch=self._hit_epochs.get(str(key)))
        if layer is not None:
            self._layers[layer.diff_id] = layer

    def committed(self, step_layers, image_layers) -> None:
        """The layers the image was committed with, position by position with the
        steps' layers (the same, or re-stamped for SOURCE_DATE_EPOCH): the exported
        records of those steps name the image's layers, so image and cache share
        blobs and a cold build commits the cached layers as they are."""
        step_layers, image_layers = list(step_layers), list(image_layers)
        if len(step_layers) == len(image_layers):
            for step, image in zip(step_layers, image_layers):
                self._committed[step.diff_id] = image

    def _as_committed(self, r: rc.CacheRecord) -> rc.CacheRecord:
        image = self._committed.get(r.diff_id) if r.diff_id else None
        if image is None or image.diff_id == r.diff_id:
            return r
        return replace(r, diff_id=image.diff_id, epoch=self.epoch)

    def _chain(self, final_parent: str) -> list[rc.CacheRecord]:
        """The records of the final image's steps (mode=min), first step first."""
        out = []
        parent = final_parent
        while parent.startswith("step:") and parent[5:] in self._records and len(out) <= len(self._records):
            record = self._records[parent[5:]]
            out.append(record)
            parent = record.parent
        return out[::-1]

    def _selected(self, mode: str, final_parent: str) -> list[rc.CacheRecord]:
        records = list(self._records.values()) if mode == "max" else self._chain(final_parent)
        return [self._as_committed(r) for r in records]

    def inline_annotations(self, final_parent: str) -> dict[str, str] | None:
        """The manifest annotation of --cache-to type=inline (mode=min; the per-file
        digests of COPY steps are left out, to keep the manifest small)."""
        if not any(s.type == "inline" for s in self.exports):
            return None
        records = []
        for r in self._selected("min", final_parent):
            inputs = json.loads(r.inputs)
            inputs.pop("files", None)
            records.append(replace(r, inputs=json.dumps(inputs, sort_keys=True)))
        return rc.inline_annotation(rc.CacheData(records=tuple(records)))

    def export(self, final_parent: str, lease=None) -> None:
        """Write every --cache-to registry/local cache (failures are warnings)."""
        for spec in self.exports:
            if spec.type == "inline":
                continue
            started = time.monotonic()
            try:
                records = self._selected(spec.mode, final_parent)
                data, origins = self._export_data(records, spec.compression, lease)
                if spec.type == "registry":
                    pushed = rc.push_cache(self.store, spec.ref, data, mode=spec.mode,
                                           provide=lambda l: self._provide(l, lease), origins=origins)
                    self._note(f"exported cache to {pushed.reference} ({spec.mode}: {_steps(pushed.records)}, "
                               f"{pushed.uploaded} bytes uploaded, {pushed.reused} layers reused) "
                               f"in {time.monotonic() - started:.1f}s")
                else:
                    _layout.write_layout(self.store, spec.path, data, mode=spec.mode,
                                    provide=lambda l: self._provide(l, lease))
                    self._note(f"exported cache to {spec.path} ({spec.mode}: {_steps(len(data.records))}) "
                               f"in {time.monotonic() - started:.1f}s")
            except (StoreError, BuildError, httpx.HTTPError, OSError) as e:
                self._warn(f"cannot export the build cache to {spec.where}: {_reason(e)}")

    def _export_data(self, records: list[rc.CacheRecord], compression: str,
                     lease) -> tuple[rc.CacheData, dict[str, tuple[str, str]]]:
        """The records with the blob to export for each layer: a layer not fetched
        from its cache keeps that cache's blob (mounted or skipped registry side),
        a stored zstd layer is exported gzip (the blob a push of the image uploads)
        unless compression=zstd."""
        from lamina.store.recompress import needs_conversion, recompress_layers, recorded_blob

        layers: dict[str, LayerBlob] = {}
        origins: dict[str, tuple[str, str]] = {}
        convert: list[LayerBlob] = []
        for r in records:
            if r.diff_id is None or r.diff_id in layers:
                continue
            layer = (self._fetched.get(r.diff_id) or self._layers.get(r.diff_id)
                     or next(l for l in self._committed.values() if l.diff_id == r.diff_id))
            pending = self._pending.get(r.diff_id)
            if pending is not None and r.diff_id not in self._fetched:
                layers[r.diff_id] = pending.layer
                if pending.source.origin is not None:
                    origins[pending.layer.digest] = pending.source.origin
                continue
            if compression == "gzip" and needs_conversion(layer.media_type, "gzip"):
                found = recorded_blob(self.store, r.diff_id, "gzip")
                if found is None:
                    convert.append(layer)
                    continue
                layer = found
            layers[r.diff_id] = layer
        if convert:
            layers.update(recompress_layers(self.store, convert, "gzip"))
        if lease is not None and layers:
            lease.hold(blobs=[l.digest for l in layers.values()])
        return rc.CacheData(records=tuple(records), layers=layers), origins

    def _provide(self, layer: LayerBlob, lease) -> None:
        """Put a cached layer's blob into the store (for an export elsewhere)."""
        pending = self._pending.get(layer.diff_id)
        if pending is None:
            raise StoreError(f"layer blob {layer.digest} is not in the store", digest=layer.digest)
        try:
            self.ensure([pending.layer], lease)
        except RemoteLayerLost as e:
            raise StoreError(e.message, digest=layer.digest) from None


def _steps(n: int) -> str:
    return f"{n} step" if n == 1 else f"{n} steps"


def _reason(e: BaseException) -> str:
    text = getattr(e, "message", None) or str(e) or type(e).__name__
    return text.splitlines()[0][:300]


__all__ = ["CacheSpec", "RemoteCache", "RemoteLayerLost", "parse_cache_spec"]
