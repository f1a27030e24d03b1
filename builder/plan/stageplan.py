"""Phase 2 of planning: the steps of one stage, once its base is known.

`plan_stage(plan, stage, base=...)` -> `StagePlan`: with the base (None for
scratch, a `BaseImage` for a resolved image config, the `StagePlan` of the base
stage for `FROM <stage>`), every instruction (the base's ONBUILD triggers first)
becomes a `Step`: the AST, its resolved form (builder.resolve), the environment
and args it sees and those it depends on (builder.args), the image config before
it and its history entry (builder.imageconfig); `Step.cache_inputs()` gives the
labeled inputs of its cache key (builder.cachekey). Pure; errors are BuildErrors
at the instruction's line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from lamina.builder.plan.args import ArgScope, proxy_run_env, resolve_arg
from lamina.builder.plan.cachekey import CacheInputs, pairs
from lamina.builder.errors import BuildError
from lamina.builder.plan.history import HistoryEntry
from lamina.builder.plan.imageconfig import ImageConfig, ImageState
from lamina.builder.plan.resolve import (
    ResolveContext, error_at, lookup_stage, resolve_copy, resolve_metadata, resolve_run,
)
from lamina.builder.plan.resolved import (
    Platform, Resolved, ResolvedArg, ResolvedCopy, ResolvedRun, ResolvedWorkdir,
)
from lamina.grammar import ast
from lamina.grammar.errors import DockerfileError
from lamina.grammar.shell import expand, referenced_names

if TYPE_CHECKING:  # pragma: no cover - builder.plan imports this module
    from lamina.builder.plan.plan import BuildPlan, Stage

Pairs = tuple[tuple[str, str], ...]

@dataclass(frozen=True)
class BaseImage:
    """A resolved base image: its config section and config digest (`sha256:...`)."""

    config: ImageConfig
    digest: str = ""
    reference: str = ""


@dataclass(frozen=True)
class Step:
    """One instruction of a stage, ready to execute or apply.

    env         the build environment the step sees (image ENV + ARG values), ordered
    args        the ARGs declared in the stage so far (name, value or None)
    used_args   the args (name, value) the step depends on: for RUN every arg in its
                environment, otherwise the args its expanded words reference
    config      the image config before the step (user, workdir, shell, env)
    proxy_env   for RUN: predefined proxy build args (not in the key nor history)
    onbuild     the step comes from an ONBUILD trigger of the base
    """

    stage: int
    index: int
    instruction: ast.Instruction
    resolved: Resolved
    env: Pairs
    args: tuple[tuple[str, str | None], ...]
    used_args: Pairs
    config: ImageConfig
    history: HistoryEntry | None
    platform: Platform
    proxy_env: Pairs = ()
    onbuild: bool = False
    path: str = ""

    @property
    def keyword(self) -> str:
        return self.instruction.keyword

    @property
    def line(self) -> int:
        return self.instruction.span.start

    @property
    def creates_layer(self) -> bool:
        return self.history is not None and not self.history.empty_layer

    @property
    def display(self) -> str:
        """A one-line text for progress output (the source's first line)."""
        first = self.instruction.source.split("\n", 1)[0].strip()
        return ("ONBUILD " + first) if self.onbuild and not first.upper().startswith("ONBUILD") \
            else first

    def error(self, message: str) -> BuildError:
        """A BuildError at this step's line (for failures found while executing)."""
        return error_at(self.path, self.instruction, message)

    def run_env(self) -> Pairs:
        """The full environment of a RUN: build env, then the proxy args under both
        names (args.proxy_run_env)."""
        return proxy_run_env(self.env, self.proxy_env)

    def context_reads(self) -> tuple[str, ...]:
        """The build-context paths this step reads (COPY/ADD sources without --from,
        RUN bind mounts without from=): the executor computes their content key."""
        r = self.resolved
        if isinstance(r, ResolvedCopy) and r.from_stage is None and r.from_image is None:
            return tuple(src for src in r.sources if not re.match(r"(?i)^(https?://|git@)", src))
        if isinstance(r, ResolvedRun):
            return tuple(m.source or "/" for m in r.mounts
                         if m.type == "bind" and m.from_stage is None and m.from_image is None)
        return ()

    def cache_inputs(self, parent: str, *, content: str = "",
                     files: Mapping[str, str] | Iterable[tuple[str, str]] = (),
                     sources: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> CacheInputs:
        """The labeled inputs of this step's cache key. `parent` comes from
        builder.cachekey.parent_*; `content`/`files` are the content key (and per-file
        digests) of the context files it reads (`context_reads()`); `sources` the keys
        of the stages/images it reads (COPY --from, RUN --mount from=), e.g.
        {"stage:builder": <final key of that stage>} or {"image:alpine": <digest>}."""
        r = self.resolved
        common = dict(parent=parent, args=self.used_args, platform=str(self.platform),
                      sources=pairs(sources))
        if isinstance(r, ResolvedRun):
            body = {"argv": list(r.argv),
                    "files": [[f.name, f.data, f.mode] for f in r.files]}
            return CacheInputs(
                instruction="RUN " + _canon(body), flags=(("security", r.security),),
                env=self.env, user=self.config.user, workdir=self.config.working_dir,
                mounts=tuple(m.spec() for m in r.mounts), network=r.network,
                content=content, files=pairs(files), **common)
        if isinstance(r, ResolvedCopy):
            body = {"sources": list(r.sources), "dest": r.dest_path, "from": r.from_,
                    "inline": [[f.name, f.data] for f in r.inline]}
            flags = {"chown": r.chown, "chmod": r.chmod, "link": str(r.link).lower(),
                     "parents": str(r.parents).lower(), "exclude": _canon(list(r.exclude)),
                     "checksum": r.checksum, "keep-git-dir": str(r.keep_git_dir).lower(),
                     "unpack": "" if r.unpack is None else str(r.unpack).lower()}
            return CacheInputs(instruction=r.keyword + " " + _canon(body), flags=flags,
                               content=content, files=pairs(files), **common)
        if isinstance(r, ResolvedWorkdir):
            return CacheInputs(instruction=f"WORKDIR {r.path}", user=self.config.user, **common)
        # metadata-only steps make no layer; a key still identifies them
        text = self.history.created_by if self.history else repr(r)
        return CacheInputs(instruction=text, **common)


def _canon(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class StagePlan:
    """The steps of one stage and the image they lead to.

    `initial` is the image state the stage starts from (config of the base, PATH
    ensured, ONBUILD cleared); `final` the state after every step. Their `history`
    holds the entries this Dockerfile adds (a stage based on another stage starts
    with that stage's entries); the executor prepends a base image's own history.
    """

    stage: Stage
    base: BaseImage | None
    steps: tuple[Step, ...]
    initial: ImageState
    final: ImageState
    final_scope: ArgScope

    @property
    def config(self) -> ImageConfig:
        return self.final.config


def expand_onbuild(triggers: Sequence[str], *, path: str = "Dockerfile",
                   escape: str = "\\", at: ast.From | None = None) -> tuple[ast.Instruction, ...]:
    """Parse a base image's OnBuild triggers into instructions (each must be one
    instruction; ONBUILD, FROM and MAINTAINER are not allowed). Errors are placed
    at `at` (the FROM line that inherits the triggers), as BuildKit does."""
    from lamina.grammar import parse

    out: list[ast.Instruction] = []
    for trigger in triggers:
        def fail(message: str) -> BuildError:
            if at is None:
                return BuildError(f"ONBUILD trigger {trigger!r}: {message}", file=path)
            return error_at(path, at, f"ONBUILD trigger {trigger!r}: {message}")

        text = trigger if escape == "\\" else f"# escape={escape}\n{trigger}"
        try:
            parsed = parse(text, path=path)
        except DockerfileError as exc:
            raise fail(exc.message) from None
        if len(parsed.instructions) != 1:
            raise fail("onbuild trigger should be a single expression")
        inst = parsed.instructions[0]
        if inst.keyword in ("ONBUILD", "FROM", "MAINTAINER"):
            raise fail(f"{inst.keyword} isn't allowed as an ONBUILD trigger")
        if at is not None:
            inst = replace(inst, span=at.span, source=f"ONBUILD {trigger.split(chr(10))[0]}")
        out.append(inst)
    return tuple(out)


def plan_stage(plan: BuildPlan, stage: Stage | int | str, *,
               base: BaseImage | StagePlan | None = None) -> StagePlan:
    """Phase 2: the steps of one stage, given what it is based on: None for scratch,
    a `BaseImage` for an image, the `StagePlan` of the base stage for `FROM <stage>`."""
    if isinstance(stage, (int, str)):
        stage = plan.stage(stage)
    path, escape = plan.path, plan.dockerfile.escape

    triggers: tuple[ast.Instruction, ...]
    if stage.base_stage is not None:
        if not isinstance(base, StagePlan) or base.stage.index != stage.base_stage:
            raise BuildError(f"stage {stage.display_name} needs the plan of stage "
                             f"{plan.stage_names[stage.base_stage] or stage.base_stage}")
        parent = base.final
        initial = ImageState(config=replace(parent.config, on_build=()), author=parent.author,
                             history=parent.history)
        scope = base.final_scope
        triggers = tuple(x.instruction for x in base.stage.instructions
                         if isinstance(x, ast.Onbuild))
        base_image = base.base
    elif stage.is_scratch:
        initial = ImageState(config=ImageConfig.scratch())
        scope = ArgScope.from_image_env(initial.config.env)
        triggers = ()
        base_image = None
    else:
        if not isinstance(base, BaseImage):
            raise BuildError(f"stage {stage.display_name} needs its base image {stage.base}")
        config = base.config.with_default_path()
        initial = ImageState(config=replace(config, on_build=()))
        # one entry per name, the last value (a base image may repeat a name; BuildKit's
        # LLB env then holds the last one, while the config keeps every entry)
        scope = ArgScope.from_image_env(config.env_dict().items())
        triggers = expand_onbuild(base.config.on_build, path=path, escape=escape,
                                  at=stage.from_) if base.config.on_build else ()
        base_image = base

    names = plan.stage_names
    planned = {st.index for st in plan.stages}
    image_state = initial
    steps: list[Step] = []
    sequence = [(inst, True) for inst in triggers] + [(inst, False) for inst in stage.instructions]
    for position, (inst, from_trigger) in enumerate(sequence):

        def lookup(value: str, allow_index: bool, inst=inst) -> tuple[int | None, str | None]:
            dep, image = lookup_stage(names, value, allow_index=allow_index,
                                       error=lambda m: error_at(path, inst, m))
            if dep is not None and (dep >= stage.index or dep not in planned):
                raise error_at(path, inst, f'cannot copy from stage "{value}", it needs to be '
                               f'defined before current stage "{stage.display_name}"')
            return dep, image

        ctx = ResolveContext(path=path, escape=escape, instruction=inst,
                             env=scope.env_dict(), config=image_state.config, lookup=lookup)
        env_before = scope.env
        args_before = scope.declared
        if isinstance(inst, ast.Arg):
            resolved_pairs = []
            for decl in inst.args:
                value = resolve_arg(decl.name, decl.default, build_args=dict(plan.build_args),
                                    globals_=plan.globals, scope=scope,
                                    expand=lambda w, env: _expand_in(ctx, w, env))
                scope = scope.declare(decl.name, value)
                resolved_pairs.append((decl.name, value))
            resolved: Resolved = ResolvedArg(tuple(resolved_pairs))
            used = tuple(sorted((k, v) for k, v in resolved_pairs if v is not None))
            used = tuple(sorted(set(used) | set(_arg_deps(ctx, args_before, env_before))))
        elif isinstance(inst, ast.Run):
            resolved = resolve_run(ctx, inst)
            used = scope.args_in_env()
        elif isinstance(inst, (ast.Copy, ast.Add)):
            resolved = resolve_copy(ctx, inst)
            used = scope.args_among(ctx.referenced)
        elif isinstance(inst, ast.From):  # pragma: no cover - sections never hold FROM
            raise error_at(path, inst, "unexpected FROM")
        else:
            resolved = resolve_metadata(ctx, inst)
            used = scope.args_among(ctx.referenced)
            if isinstance(inst, ast.Env):
                for key, value in resolved.pairs:
                    scope = scope.set_env(key, value)

        entry_state = image_state.advance(resolved, build_args=args_before,
                                          env=dict(env_before))
        entry = entry_state.history[-1] if len(entry_state.history) > len(image_state.history) \
            else None
        steps.append(Step(
            stage=stage.index, index=position, instruction=inst, resolved=resolved,
            env=env_before, args=args_before, used_args=used, config=image_state.config,
            history=entry, platform=stage.platform,
            proxy_env=plan.proxy_env if isinstance(resolved, ResolvedRun) else (),
            onbuild=from_trigger, path=path))
        image_state = entry_state

    return StagePlan(stage=stage, base=base_image, steps=tuple(steps), initial=initial,
                     final=image_state, final_scope=scope)


def _expand_in(ctx: ResolveContext, word: str, env: Mapping[str, str]) -> str:
    """Expand an ARG default in the stage environment as it is at that declaration."""
    ctx.referenced |= referenced_names(word, ctx.escape) if "$" in word else set()
    try:
        return expand(word, env, escape=ctx.escape)
    except DockerfileError as exc:
        raise ctx.error(exc.message) from None


def _arg_deps(ctx: ResolveContext, declared: Iterable[tuple[str, str | None]],
              env: Pairs) -> Pairs:
    """Args in scope that an ARG's defaults referenced."""
    names = {k for k, _ in declared}
    values = dict(env)
    return tuple((n, values[n]) for n in ctx.referenced if n in names and n in values)


def plan_all(plan: BuildPlan, bases: Mapping[int, BaseImage] | None = None) -> dict[int, StagePlan]:
    """Plan every stage in order, given the resolved base image of each image-based
    stage (a convenience for tests and dry runs; the executor plans stage by stage)."""
    bases = dict(bases or {})
    out: dict[int, StagePlan] = {}
    for st in plan.stages:
        if st.base_stage is not None:
            out[st.index] = plan_stage(plan, st, base=out[st.base_stage])
        elif st.is_scratch:
            out[st.index] = plan_stage(plan, st)
        else:
            base = bases.get(st.index) or BaseImage(ImageConfig())
            out[st.index] = plan_stage(plan, st, base=base)
    return out


__all__ = ["BaseImage", "Step", "StagePlan", "plan_stage", "plan_all", "expand_onbuild"]
