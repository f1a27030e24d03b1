"""The build executor: a Dockerfile + a context -> an image in the store.

`Build(store, options, progress).run()` parses the Dockerfile (grammar), plans the
stages the target needs (builder.plan), and builds them in dependency order. For
each stage it resolves the base (scratch, a stage built earlier, an image in the
store), plans its steps (builder.stageplan), and for every filesystem step (RUN,
COPY, ADD, WORKDIR):

- computes the step's cache inputs (builder.cachekey): the parent chain, the
  expanded instruction, env/args/user/workdir, the content key of exactly the
  context files it reads, the keys of stages it reads, what an ADD's remote sources
  are now (git commit by ls-remote, URL checksum or validated digest: no clone or
  download before a miss);
- on a hit reuses the stored layer without running anything;
- on a miss says why (which input changed since the last build of that step:
  builder.missrecords), runs it over a fresh overlay upper dir — RUN in the sandbox,
  COPY/ADD/WORKDIR in a private mount namespace — and turns the upper dir into a
  layer (builder.stepexec): a blob for the image and, by rename, the layer's
  extracted dir for the next step's lowerdir. A step whose diff is empty adds the
  empty layer where BuildKit does (builder.stepexec.adds_layer). Base images come from the store or their registry
  (builder.baseimages); independent stages run in parallel (builder.stagewaves).

Metadata steps (ENV, LABEL, CMD...) only change the config, computed by the plan;
they are not part of the cache chain, so changing a LABEL never invalidates a RUN
below it. The image is committed with `created` and history times from
SOURCE_DATE_EPOCH (default 0: reproducible by default), then tagged. Step layers
keep their files' real times, so no cache key names the epoch; the commit stores
each with its mtimes clamped to the epoch (store.layertimes, once per layer and epoch).
Everything the build uses is held by a store lease, so a concurrent gc keeps it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping

from lamina.builder.plan.cachekey import CacheInputs, parent_image, parent_scratch, parent_step
from lamina.builder.context.context import BuildContext
from lamina.builder.context.copysrc import content_key, select_sources
from lamina.builder.baseimages import BaseImages
from lamina.builder.errors import BuildError
from lamina.builder.missrecords import MissRecords
from lamina.builder.plan.imageconfig import ImageConfig, platform_config_fields
from lamina.builder.sandbox.cgrouplayout import check as cgroup_notes
from lamina.builder.sandbox.limits import Limits
from lamina.builder.plan.plan import SCRATCH, BuildPlan, Stage, plan_build
from lamina.builder.progress import Progress, StepLabel
from lamina.builder.remotecache import RemoteCache, RemoteLayerLost
from lamina.builder.plan.resolved import FILESYSTEM_KINDS, Platform, ResolvedCopy, ResolvedRun
from lamina.builder.plan.stageplan import BaseImage, StagePlan, Step, plan_stage
from lamina.builder.steps.files import fetch_copy, identify_copy, remote_sources
from lamina.builder.stagewaves import build_in_waves
from lamina.builder.stepexec import EmptyLayer, adds_layer, execute_step
from lamina.builder.steps.run import RunEnvironment, check_network
from lamina.grammar import parse
from lamina.store.cache import CacheEntry
from lamina.store.errors import ImageNotFound, StoreError
from lamina.store.layers import LayerBlob
from lamina.store.layertimes import clamped_layer
from lamina.store.store import Image, Store, source_date_epoch

DEFAULT_SOURCE_DATE_EPOCH = 0


@dataclass(frozen=True)
class BuildOptions:
    """What `lamina build` was asked to do."""

    context_dir: Path
    dockerfile: Path
    tags: tuple[str, ...] = ()
    build_args: Mapping[str, str] = field(default_factory=dict)
    target: str | None = None
    no_cache: bool = False
    network: str = "default"                  # default | none | host (as docker)
    allow_network_host: bool = False          # --allow network.host (RUN --network=host)
    secrets: Mapping[str, Path] = field(default_factory=dict)
    ssh: Mapping = field(default_factory=dict)  # --ssh: id -> builder.steps.ssh.SSHSource
    source_date_epoch: int | None = None      # None: $SOURCE_DATE_EPOCH, else 0
    allowed_reads: tuple[Path, ...] = ()      # --allow fs.read=PATH (file:// git sources)
    limits: Limits = Limits()                 # --memory, --pids-limit... of every RUN
    pull: bool = False                        # --pull: re-resolve every base tag in its registry
    cache_from: tuple = ()                    # --cache-from: builder.remotecache.CacheSpec
    cache_to: tuple = ()                      # --cache-to: builder.remotecache.CacheSpec
    labels: Mapping[str, str] = field(default_factory=dict)  # --label: over the Dockerfile's LABELs


@dataclass(frozen=True)
class StageResult:
    """A built stage: its plan, every layer of its image (base first), the OCI
    history entries, and the cache parent its last filesystem step left."""

    plan: StagePlan
    layers: tuple[LayerBlob, ...]
    history: tuple[dict, ...]
    parent: str


def rfc3339(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _resolve_epoch(value: int | None) -> int:
    """The build's SOURCE_DATE_EPOCH: given, else the environment's (validated by
    the store's rules), else 0 — reproducible by default."""
    epoch = source_date_epoch(value)
    return DEFAULT_SOURCE_DATE_EPOCH if epoch is None else epoch


class Build:
    """One build on one store. Not reusable: make a new one per build."""

    def __init__(self, store: Store, options: BuildOptions, progress: Progress) -> None:
        self.store = store
        self.options = options
        self.progress = progress
        self.epoch = _resolve_epoch(options.source_date_epoch)
        self.results: dict[int, StageResult] = {}
        self.step_number = 0
        self._numbering = threading.Lock()  # stages of one wave label their steps at once
        self.lease = None
        self.context: BuildContext | None = None
        self.misses = MissRecords(store.root / "buildinfo", options.dockerfile)
        self.base_images = BaseImages(store, progress, pull=options.pull)
        self._step_layers: set[str] = set()  # diff_ids of step layers (real times, clamped at commit)
        self.remote = RemoteCache(store, options.cache_from, options.cache_to, progress,
                                  str(options.dockerfile), epoch=self.epoch)
        self.run_env = RunEnvironment(
            context_dir=Path(options.context_dir), cache_mounts_dir=store.root / "cache-mounts",
            secrets=dict(options.secrets), network=options.network, limits=options.limits,
            allow_network_host=options.allow_network_host, ssh=dict(options.ssh))

    # -- the whole build -----------------------------------------------------------------

    def read_dockerfile(self) -> tuple[str, str]:
        from lamina.builder.context.contextfile import read_context_file

        path = self.options.dockerfile
        try:  # symlinks resolved inside its directory: never a host file (hostile context)
            return read_context_file(path, "the Dockerfile").decode("utf-8"), str(path)
        except FileNotFoundError:
            raise BuildError(f"cannot read the Dockerfile {path}: no such file") from None
        except UnicodeDecodeError:
            raise BuildError(f"cannot read the Dockerfile {path}: not UTF-8 text") from None

    def plan(self) -> BuildPlan:
        text, shown = self.read_dockerfile()
        dockerfile = parse(text, path=shown)
        return plan_build(dockerfile, build_args=dict(self.options.build_args),
                          target=self.options.target, platform=Platform.host())

    def run(self) -> Image:
        plan = self.plan()
        for warning in plan.warnings:
            self.progress.note(warning)
        for note in cgroup_notes(self.options.limits):  # raises if a limit cannot apply
            self.progress.note(note)
        self.context = BuildContext.open(self.options.context_dir, self.options.dockerfile,
                                         self.store.root / "cache" / "statcache")
        self.run_env = replace(self.run_env, context=self.context)
        try:
            with self.store.lease() as lease:
                self.lease = lease
                self._empty_layer = EmptyLayer(self.store, lease)
                self.remote.open()
                for attempt in (1, 2):
                    try:
                        self.build_stages(plan)
                        committing = time.monotonic()  # "writing image": the commit alone
                        image = self.commit(plan, self.results[plan.target])
                        committed = time.monotonic() - committing
                        break
                    except RemoteLayerLost as e:  # a remote cache hit's layer cannot be fetched
                        if attempt == 2:
                            raise
                        self.remote.lost(e)
                        self.results.clear()
                self.remote.export(self.results[plan.target].parent, lease)
        finally:
            self.remote.close()
            self.context.stat_cache.close()
        self.progress.finished(image.config_digest, tuple(self.options.tags), committed)
        return image

    def commit(self, plan: BuildPlan, result: StageResult) -> Image:
        final = result.plan.final
        config: dict = {"created": rfc3339(self.epoch)}
        if final.author:
            config["author"] = final.author
        config.update(platform_config_fields(plan.platform))
        config["config"] = final.config.to_oci_dict()
        if self.options.labels:  # BuildKit: --label set on the target's config, no history entry
            labels = {**config["config"].get("Labels", {}), **self.options.labels}
            config["config"]["Labels"] = dict(sorted(labels.items()))
        config["history"] = list(result.history)
        layers = self.remote.commit_layers(result.layers, self.lease)  # remote hits: not fetched
        layers = [clamped_layer(self.store, l, self.epoch, lease=self.lease)
                  if l.diff_id in self._step_layers and not self.remote.stamped(l.diff_id) else l
                  for l in layers]  # (a remote cache's layers may come re-stamped for the epoch)
        config["rootfs"] = {"type": "layers", "diff_ids": [l.diff_id for l in layers]}
        self.remote.committed(result.layers, layers)  # the cache names the image's layers
        return self.store.commit_image(config, layers, tags=self.options.tags,
                                       manifest_annotations=self.remote.inline_annotations(result.parent))

    # -- stages --------------------------------------------------------------------------

    def resolve_image(self, ref: str, stage: Stage | None = None) -> Image:
        """The image `ref` names, held by the build's lease. Resolving and holding
        happen under the store's writer lock, so a gc cannot slip in between."""
        try:
            self.base_images.ensure(ref)
            with self.store.writing():
                image = self.store.resolve(ref)
                self.lease.hold(blobs=[image.manifest_digest, image.config_digest],
                                layers=[l.diff_id for l in image.layers])
                return image
        except (ImageNotFound, StoreError) as e:
            message = (f"base image {ref!r} is not in the store and cannot be pulled: {e.message}"
                       if not isinstance(e, ImageNotFound) else
                       f"base image {ref!r} is not in the store")
            if stage is not None:
                raise BuildError(message, file=self.options.dockerfile.as_posix(),
                                 line=stage.from_.span.start,
                                 source_line=stage.from_.source.split("\n")[0]) from None
            raise BuildError(message) from None

    def build_stages(self, plan: BuildPlan) -> None:
        """Every stage the target needs, wave by wave, the stages of one wave at the
        same time (builder.stagewaves)."""
        def build(index: int) -> None:
            self.results[index] = self.build_stage(plan, plan.stage(index))

        build_in_waves(plan.levels(), build)

    def build_stage(self, plan: BuildPlan, stage: Stage) -> StageResult:
        if stage.base_stage is not None:
            base = self.results[stage.base_stage]
            sp = plan_stage(plan, stage, base=base.plan)
            layers, history, parent = base.layers, base.history, base.parent
        elif stage.is_scratch:
            sp = plan_stage(plan, stage)
            layers, history, parent = (), (), parent_scratch()
        else:
            image = self.resolve_image(stage.base, stage)
            base = BaseImage(config=ImageConfig.from_oci_dict(image.config.get("config")),
                             digest=image.config_digest, reference=stage.base)
            sp = plan_stage(plan, stage, base=base)
            layers = tuple(image.layers)
            history = tuple(image.config.get("history") or ())
            parent = parent_image(image.config_digest)
        created = rfc3339(self.epoch)
        history = list(history)
        layers = list(layers)
        total = sum(1 for s in sp.steps if isinstance(s.resolved, FILESYSTEM_KINDS))
        for step in sp.steps:  # entitlements before any step of the stage runs (or hits)
            if isinstance(step.resolved, ResolvedRun):
                check_network(step.resolved, self.run_env, step.error)
        position = 0
        for step in sp.steps:
            if isinstance(step.resolved, FILESYSTEM_KINDS):
                position += 1
                label = self.label(stage, position, total, step)
                layer, parent = self.filesystem_step(plan, stage, step, label, layers, parent)
                if layer is None and adds_layer(step.resolved):  # as BuildKit: an empty one
                    layer = self._empty_layer.get()
                if layer is not None:
                    layers.append(layer)
                    self._step_layers.add(layer.diff_id)
                if step.history is not None:
                    entry = step.history.to_oci_dict(created)
                    if layer is None:
                        entry["empty_layer"] = True
                    else:
                        entry.pop("empty_layer", None)
                    history.append(entry)
            elif step.history is not None:
                history.append(step.history.to_oci_dict(created))
        return StageResult(plan=sp, layers=tuple(layers), history=tuple(history), parent=parent)

    def label(self, stage: Stage, position: int, total: int, step: Step) -> StepLabel:
        with self._numbering:
            self.step_number += 1
            number = self.step_number
        return StepLabel(number=number, stage=stage.display_name, index=position,
                         total=total, text=step.display)

    # -- one filesystem step -------------------------------------------------------------

    def _source_stack(self, r: ResolvedCopy) -> tuple[str, tuple[LayerBlob, ...]] | None:
        """For COPY --from: (the cache source name and key, its layers)."""
        if r.from_stage is not None:
            res = self.results[r.from_stage]
            return f"stage:{r.from_stage}={res.parent}", res.layers
        if r.from_image == SCRATCH:   # the empty filesystem, never an image to pull
            return "scratch", ()
        if r.from_image is not None:
            img = self.resolve_image(r.from_image)
            return f"image:{r.from_image}={img.config_digest}", tuple(img.layers)
        return None

    def _mount_source(self, m) -> tuple[tuple[str, str], tuple[Path, ...], str]:
        """For RUN --mount from=: ((cache source name, its key), its layer dirs, a name)."""
        if m.from_stage is not None:
            res = self.results[m.from_stage]
            return ((f"stage:{m.from_stage}", res.parent), self._lower_dirs(res.layers),
                    f"stage {m.from_}")
        if m.from_image == SCRATCH:   # the empty filesystem (see _source_stack)
            return ("scratch", ""), (), "scratch"
        img = self.resolve_image(m.from_image)
        return ((f"image:{m.from_image}", img.config_digest), self._lower_dirs(img.layers),
                f"image {m.from_image}")

    def _lower_dirs(self, layers) -> tuple[Path, ...]:
        layers = self.remote.ensure(layers, self.lease)  # fetch remote cache hits' layers
        return tuple(self.store.layer_dir(l.diff_id) for l in reversed(list(layers)))

    def filesystem_step(self, plan: BuildPlan, stage: Stage, step: Step, label: StepLabel,
                        layers: list[LayerBlob], parent: str) -> tuple[LayerBlob | None, str]:
        r = step.resolved
        content, files, sources = "", (), {}
        prepared = None
        source = None
        download_dir = self.store.temp_path("download")
        if isinstance(r, ResolvedCopy) and any(remote_sources(r)):
            download_dir.mkdir()  # identifying a URL may download it; else made on a miss
        try:
            try:
                if isinstance(r, ResolvedCopy):
                    source = self._source_stack(r)
                    if source is not None:
                        name, _, key = source[0].partition("=")
                        sources = {name: key}
                    # cheap: git commits by ls-remote, URL digests by checksum or validation;
                    # cloning and downloading wait for a miss (fetch_copy below)
                    prepared = identify_copy(r, self.context, download_dir,
                                             allowed_reads=self.options.allowed_reads,
                                             url_records=self._url_records)
                    if prepared.selection is not None:
                        content = content_key(prepared.selection)
                        files = tuple((e.path, e.digest or e.link_target or e.kind)
                                      for e in prepared.selection.entries)
                    sources.update(prepared.remote_keys())
                elif isinstance(r, ResolvedRun) and step.context_reads():
                    try:
                        selection = select_sources(self.context, list(step.context_reads()))
                    except BuildError as e:
                        raise BuildError("RUN --mount=type=bind: " +
                                         e.message.removeprefix("COPY failed: ")) from None
                    content = content_key(selection)
                    files = tuple((e.path, e.digest or e.link_target or e.kind)
                                  for e in selection.entries)
                if isinstance(r, ResolvedRun):
                    sources = dict(self._mount_source(m)[0] for m in r.mounts
                                   if m.from_stage is not None or m.from_image is not None)
            except BuildError as e:
                raise self._at(step, e) from None
            inputs = step.cache_inputs(parent, content=content, files=files, sources=sources)
            if isinstance(r, ResolvedRun) and r.network not in ("none", "host"):
                # a RUN without --network= runs with the build's --network
                inputs = replace(inputs, network=self.options.network)
            if isinstance(r, ResolvedRun) and self.options.limits.ulimits:
                # --ulimit: part of the exec's metadata, and of the key, as in BuildKit
                inputs = replace(inputs, ulimits=self.options.limits.ulimits)
            # no epoch in the key: step layers keep real times, the commit clamps them
            key = inputs.key()
            if not self.options.no_cache:
                entry = self.store.cache.lookup(str(key), lease=self.lease)
                if entry is not None and self._usable(entry):
                    self.progress.cached(label)
                    layer = self.store.layer(entry.diff_id) if entry.diff_id else None
                    self._remember(stage, step, inputs)
                    self.remote.record(stage, step, key, inputs, layer, parent)
                    return layer, parent_step(key)
                hit = self.remote.lookup(str(key), parent, self.lease)
                if hit is not None:  # the layer is fetched when a later step or the commit needs it
                    self.progress.cached(label)
                    self._remember(stage, step, inputs)
                    self.remote.record(stage, step, key, inputs, hit[0], parent)
                    return hit[0], parent_step(key)
            self.progress.started(label)
            self.progress.missed(label, self._why(stage, step, inputs))
            t0 = time.monotonic()
            try:
                if prepared is not None:
                    download_dir.mkdir(exist_ok=True)
                    prepared = fetch_copy(prepared, download_dir, url_records=self._url_records)
                layer = self._execute(step, label, layers, prepared, source,
                                      clamp=self._in_image(plan, stage),
                                      reuse=lambda upper: self._copy_reuse(stage, step, inputs,
                                                                           source, upper, layers))
            except BuildError as e:
                err = self._at(step, e)
                self.progress.failed(label, e.message.split("\n")[0])
                raise err from None
            self.store.cache.put(str(key), CacheEntry(diff_id=layer.diff_id if layer else None,
                                                      config_change={}, parent=parent))
            self._remember(stage, step, inputs)
            self.remote.record(stage, step, key, inputs, layer, parent)
            self.progress.done(label, time.monotonic() - t0)
            return layer, parent_step(key)
        finally:
            from lamina.store.locks import remove_tree
            remove_tree(download_dir)

    @property
    def _url_records(self) -> Path:
        """Where the last download of each ADD URL is recorded (validators, digest)."""
        return self.store.root / "cache" / "urls"

    def _usable(self, entry: CacheEntry) -> bool:
        if entry.diff_id is None:
            return True
        try:
            self.store.layer(entry.diff_id)
            return True
        except StoreError:
            return False

    def _at(self, step: Step, e: BuildError) -> BuildError:
        if e.line is not None or isinstance(e, RemoteLayerLost):
            return e
        return step.error(e.message)

    def _copy_reuse(self, stage: Stage, step: Step, inputs: CacheInputs, source, upper: Path,
                    layers):
        """A COPY from the context that misses only because some files changed: the
        previous result of the step, whose unchanged files are moved over, not copied
        again (builder.steps.reuse). None when there is nothing to reuse."""
        r = step.resolved
        if self.options.no_cache or source is not None or r.keyword != "COPY" or r.inline:
            return None
        previous = self.misses.previous(stage.display_name, step.index)
        if previous is None:
            return None
        from lamina.builder.steps.reuse import previous_copy
        in_use = {l.diff_id for res in self.results.values() for l in res.layers}
        return previous_copy(self.store, self.lease, previous, inputs, str(upper),
                             in_use | {l.diff_id for l in layers})

    def _execute(self, step: Step, label: StepLabel, layers, prepared, source, *,
                 clamp: bool = False, reuse=lambda upper: None) -> LayerBlob | None:
        return execute_step(
            self.store, self.lease, step, lowers=self._lower_dirs(layers), label=label,
            progress=self.progress, run_env=self.run_env, prepared=prepared,
            source_lowers=self._lower_dirs(source[1]) if source is not None else None,
            mount_layers=lambda m: self._mount_source(m)[1:], reuse=reuse,
            clamp_epoch=self.epoch if clamp else None)

    @staticmethod
    def _in_image(plan: BuildPlan, stage: Stage) -> bool:
        """Whether the stage's layers end up in the image (the target stage and the
        stages it is built FROM): their snapshots also write the epoch-clamped layer
        the commit needs, in the same walk (store.layertimes)."""
        st = plan.target_stage
        while True:
            if st.index == stage.index:
                return True
            if st.base_stage is None:
                return False
            st = plan.stage(st.base_stage)

    # -- explaining misses (builder.missrecords) -------------------------------------------

    def _why(self, stage: Stage, step: Step, inputs: CacheInputs) -> str:
        if self.options.no_cache:
            return "--no-cache"
        if self.misses.previous(stage.display_name, step.index) is None:
            # not built here before: as the remote cache recorded it, if it did
            return self.misses.why(stage.display_name, step.index, inputs,
                                   fallback=self.remote.previous(stage, step))
        return self.misses.why(stage.display_name, step.index, inputs)

    def _remember(self, stage: Stage, step: Step, inputs: CacheInputs) -> None:
        self.misses.remember(stage.display_name, step.index, inputs)
