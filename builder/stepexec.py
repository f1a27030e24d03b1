"""Running one filesystem step (RUN, COPY/ADD, WORKDIR) over a fresh overlay upper
dir and turning that dir into a layer: RUN in the sandbox (builder.steps.run),
COPY/ADD and WORKDIR in a private mount namespace over the merged view
(builder.sandbox.mountedroot). The upper dir becomes both the layer's blob (with its
files' real times) and, by rename, the layer's extracted dir, the next step's lower
dir. An empty diff gives no layer (None) here; the image still gets one where
BuildKit's does (``adds_layer``): every RUN, COPY/ADD and WORKDIR other than ``/`` is
a layer in a BuildKit image even when it changed nothing — the empty tar (diff_id
sha256:5f70bf18…; dockerfile2llb commits them "withLayer", its exporter keeps each
snapshot of the chain) — so ``EmptyLayer`` stands in for it and the image ID is
docker's. Scratch dirs live in the store's tmp and are removed whatever happens."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

from lamina.builder.plan.resolved import ResolvedCopy, ResolvedRun, ResolvedWorkdir
from lamina.builder.plan.stageplan import Step
from lamina.builder.progress import Progress, StepLabel
from lamina.builder.sandbox.mountedroot import in_mounted_root
from lamina.builder.steps.files import apply_copy, apply_workdir
from lamina.builder.steps.run import RunEnvironment, execute_run
from lamina.store.errors import StoreError
from lamina.store.layers import LayerBlob


def execute_step(store, lease, step: Step, *, lowers: tuple[Path, ...], label: StepLabel,
                 progress: Progress, run_env: RunEnvironment, prepared,
                 source_lowers: tuple[Path, ...] | None,
                 mount_layers: Callable, reuse: Callable[[Path], object] = lambda upper: None,
                 clamp_epoch: int | None = None) -> LayerBlob | None:
    """The layer step `step` adds on `lowers` (top-most first), or None. `prepared`:
    the COPY/ADD sources; `source_lowers`: the layers of a `--from` source;
    `mount_layers(mount)`: (layer dirs, name) of a RUN --mount=from;
    `reuse(upper)`: a previous COPY result whose unchanged files may be moved over;
    `clamp_epoch`: also store the layer's form for that SOURCE_DATE_EPOCH (a step of
    the image: the commit will need it)."""
    from lamina.store.locks import remove_tree

    r = step.resolved
    upper = store.temp_path("upper")
    work = store.temp_path("work")
    scratch = store.temp_path("step")
    for d in (upper, work, scratch):
        d.mkdir()
    try:
        workdir = step.config.working_dir or "/"
        if isinstance(r, ResolvedRun):
            execute_run(r, lower_dirs=lowers, upper_dir=upper, work_dir=work,
                        scratch_dir=scratch, step_env=step.run_env(), user=step.config.user,
                        workdir=workdir, env=run_env,
                        on_output=lambda data: progress.output(label, data),
                        fail=step.error, layers_of=mount_layers)
            # the sandbox's cleanup has stripped overlayfs's bookkeeping (finalize_upper)
        elif isinstance(r, ResolvedCopy):
            _copy(r, prepared, lowers, upper, work, scratch, workdir, source_lowers, reuse)
        elif isinstance(r, ResolvedWorkdir):
            user = step.config.user

            def mkdir(root: Path, view_roots: dict) -> None:
                apply_workdir(root, r, user, None)

            in_mounted_root(lowers, upper, work, scratch, mkdir)
        if not any(upper.iterdir()):
            return None
        try:
            layer = store.write_layer(upper, lease=lease, clamp_epoch=clamp_epoch)  # real times
        except StoreError as e:  # what the step made cannot be a layer: name the step
            raise step.error(e.message) from None
        store.adopt_layer_dir(layer.diff_id, upper)
        return layer
    finally:
        for d in (upper, work, scratch):
            if d.exists():
                remove_tree(d)


def _copy(r: ResolvedCopy, prepared, lowers, upper: Path, work: Path, scratch: Path,
          workdir: str, source_lowers, reuse) -> None:
    views = {"source": source_lowers} if source_lowers is not None else {}
    previous = reuse(upper)

    def copy(root: Path, view_roots: dict) -> tuple[str, ...]:
        # created dirs and heredoc files get the time of now: the commit clamps them
        return apply_copy(root, r, prepared, workdir=workdir, source_root=view_roots.get("source"),
                          source_date_epoch=None, reuse=previous)

    try:
        claimed = in_mounted_root(lowers, upper, work, scratch, copy, views=views)
        if claimed:  # unchanged files: moved from the previous result's dir
            from lamina.builder.steps.reuse import move_claimed
            move_claimed(previous, claimed)
    finally:
        if previous is not None:
            from lamina.builder.steps.reuse import discard
            discard(previous)


def adds_layer(resolved) -> bool:
    """Does the step give the image a layer even when its diff is empty (BuildKit's
    withLayer)? Every RUN and COPY/ADD, and WORKDIR except of "/"."""
    if isinstance(resolved, ResolvedWorkdir):
        return resolved.creates_dir
    return isinstance(resolved, (ResolvedRun, ResolvedCopy))


class EmptyLayer:
    """The empty layer (a tar with no entries) of one build, written once when a step
    that adds a layer changed nothing."""

    def __init__(self, store, lease) -> None:
        self._store, self._lease = store, lease
        self._layer: LayerBlob | None = None
        self._lock = threading.Lock()  # stages of one wave may ask at once

    def get(self) -> LayerBlob:
        from lamina.store.locks import remove_tree

        with self._lock:
            if self._layer is None:
                empty = self._store.temp_path("empty")
                empty.mkdir()
                try:
                    self._layer = self._store.write_layer(empty, lease=self._lease)
                    self._store.adopt_layer_dir(self._layer.diff_id, empty)
                finally:
                    if empty.exists():
                        remove_tree(empty)
            return self._layer
