"""Recording what a build used, and attaching its attestations to the built image.

`RecordingBuild` is the executor's `Build` that also notes every image it resolves
(FROM, COPY --from, RUN --mount from=: reference, manifest digest, image ID) and
every filesystem step's cache inputs (remote sources: ADD URL digests and git
commits; the step list for mode=max) - through the two points every step and every
image lookup already pass (`resolve_image`, `_remember`), so the build itself runs
exactly as without attestations.

`attach_attestations(store, build, image, provenance=..., sbom=...)` then computes
the provenance predicate (builder.attest.provenance) and the SBOM
(builder.attest.sbom) and records them for the image (store.attestations). The image
(config, manifest, ID) is not touched.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from lamina.builder.attest.provenance import (BaseUse, BuildInputs, StepUse, context_digest, git_context,
                                              provenance_predicate)
from lamina.builder.context.context import BuildContext
from lamina.builder.errors import BuildError
from lamina.builder.executor import Build
from lamina.store import attestations
from lamina.store.store import Image, Store


class RecordingBuild(Build):
    """A Build that records its inputs for the provenance (see the module docstring)."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.bases: list[BaseUse] = []
        self.remote_sources: dict[str, str] = {}
        self.steps: list[StepUse] = []
        self.network_used = False

    def resolve_image(self, ref, stage=None):
        image = super().resolve_image(ref, stage)
        self.bases.append(BaseUse(ref, image.manifest_digest, image.config_digest))
        return image

    def _remember(self, stage, step, inputs) -> None:
        super()._remember(stage, step, inputs)
        for name, value in inputs.sources:
            if name.startswith(("url:", "git:")):
                self.remote_sources[name] = value
        if step.keyword == "RUN" and inputs.network not in ("none",):
            self.network_used = True
        self.steps.append(StepUse(stage=stage.display_name, line=step.line, instruction=step.display,
                                  cache_key=str(inputs.key()), layer=bool(step.creates_layer)))


def _dockerfile_path(context_dir: Path, dockerfile: Path) -> str:
    ctx, df = os.path.realpath(context_dir), os.path.realpath(dockerfile)
    if df.startswith(ctx.rstrip("/") + "/"):
        return os.path.relpath(df, ctx)
    return df


def build_inputs(store: Store, build: RecordingBuild) -> BuildInputs:
    """The BuildInputs of a finished RecordingBuild."""
    from lamina.builder.cli.version import lamina_version

    opts = build.options
    from lamina.builder.context.contextfile import read_context_file

    data = read_context_file(opts.dockerfile, "the Dockerfile")  # as the build read it
    ctx = BuildContext.open(opts.context_dir, opts.dockerfile, store.root / "cache" / "statcache")
    try:
        cdigest = context_digest(ctx.entries())
    finally:
        ctx.stat_cache.close()
    return BuildInputs(
        dockerfile_path=_dockerfile_path(opts.context_dir, opts.dockerfile),
        dockerfile_digest="sha256:" + hashlib.sha256(data).hexdigest(),
        dockerfile_text=data.decode("utf-8", "replace"),
        context_digest=cdigest,
        git=git_context(Path(opts.context_dir)),
        build_args=dict(opts.build_args),
        target=opts.target,
        source_date_epoch=build.epoch,
        bases=tuple(build.bases),
        remote_sources=dict(build.remote_sources),
        steps=tuple(build.steps),
        network_used=build.network_used and opts.network != "none",
        network=opts.network,
        labels=dict(opts.labels),
        ulimits=tuple(str(u) for u in opts.limits.ulimits),
        lamina_version=lamina_version(),
    )


def attach_attestations(store: Store, build: Build, image: Image, *, provenance: str | None,
                        sbom: bool) -> dict[str, dict]:
    """Compute and record the image's attestations; returns them (predicate type ->
    predicate). `provenance`: None, "min" or "max" (needs a RecordingBuild)."""
    preds: dict[str, dict] = {}
    if provenance is not None and isinstance(build, RecordingBuild):
        try:
            inputs = build_inputs(store, build)
        except (BuildError, OSError) as e:  # e.g. a context file vanished: the image is still good
            message = e.message if isinstance(e, BuildError) else f"{e.strerror or e} ({e.filename})"
            build.progress.note(f"warning: no provenance attached: {message}")
        else:
            preds[attestations.SLSA_PROVENANCE_V1] = provenance_predicate(inputs, provenance)
    if sbom:
        from lamina.builder.attest.sbom import image_sbom
        preds[attestations.SPDX_DOCUMENT] = image_sbom(store, image, epoch=build.epoch,
                                                       name=(build.options.tags or (image.config_digest,))[0])
    if preds:
        attestations.attach(store, image.manifest_digest, preds)
    return preds
