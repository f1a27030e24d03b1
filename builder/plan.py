"""The build plan: a Dockerfile AST -> the stages to build and their steps.

Two phases, both pure:

1. `plan_build(dockerfile, build_args=, target=, platform=)` -> `BuildPlan`:
   global ARGs, FROM expansion, stage references (`FROM <stage>`, `COPY
   --from=<name|index|image>`, `RUN --mount=from=<stage>`), the target (default:
   the last stage), pruning to the stages the target needs (an unused stage is
   never planned, so it cannot fail the build), a dependency order and the waves
   of independent stages, unconsumed build-arg warnings, platform checks.
2. `plan_stage(plan, stage, base=...)` -> `StagePlan`: once the executor knows the
   base (scratch, a resolved image config, or the `StagePlan` of the base stage),
   every instruction (ONBUILD triggers of the base first) becomes a `Step`: the
   AST, its resolved form, the environment and args it sees and depends on, the
   image config before it, its history entry; `Step.cache_inputs()` gives the
   labeled inputs of its cache key.

Errors are `BuildError`s naming file, line and the line itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from builder.args import (
    ArgScope, GlobalScope, PLATFORM_ARGS, proxy_env, resolve_arg, unconsumed_build_args,
    unconsumed_warning,
)
from builder.cachekey import CacheInputs, pairs
from builder.errors import BuildError
from builder.imageconfig import HistoryEntry, ImageConfig, ImageState, history_entry
from builder.resolve import (
    ResolveContext, error_at, resolve_copy, resolve_metadata, resolve_run,
)
from builder.resolved import (
    Platform, Resolved, ResolvedArg, ResolvedCopy, ResolvedRun, ResolvedWorkdir,
)
from grammar import ast
from grammar.errors import DockerfileError
from grammar.mounts import MountError, split_fields
from grammar.shell import expand, referenced_names

SCRATCH = "scratch"
Pairs = tuple[tuple[str, str], ...]

# --------------------------------------------------------------------------- phase 1


@dataclass(frozen=True)
class Stage:
    """One FROM ... section that the target needs.

    `base` is the FROM image word after global-ARG expansion; `base_stage` the index
    of the earlier stage it names (else it is "scratch" or an image reference).
    `stage_deps` are the stages that must be built first (base stage, COPY --from,
    RUN --mount from=), `image_deps` other images it reads.
    """

    index: int
    name: str | None
    from_: ast.From
    base: str
    base_stage: int | None
    platform: Platform
    instructions: tuple[ast.Instruction, ...]
    stage_deps: tuple[int, ...] = ()
    image_deps: tuple[str, ...] = ()
    global_args_used: tuple[str, ...] = ()

    @property
    def display_name(self) -> str:
        return self.name or f"stage-{self.index}"

    @property
    def is_scratch(self) -> bool:
        return self.base_stage is None and self.base.lower() == SCRATCH

    @property
    def base_image(self) -> str | None:
        """The image reference to pull/resolve, or None (scratch or a stage)."""
        return None if self.base_stage is not None or self.is_scratch else self.base


@dataclass(frozen=True)
class BuildPlan:
    """The stages to build, in an order where every stage follows its dependencies."""

    dockerfile: ast.Dockerfile
    stages: tuple[Stage, ...]  # the needed stages only, in file order
    target: int
    platform: Platform
    globals: GlobalScope
    build_args: Pairs
    proxy_env: Pairs  # predefined proxy args given as build args (RUN env only)
    warnings: tuple[str, ...]
    stage_names: tuple[str | None, ...]  # every stage of the file, by index

    @property
    def path(self) -> str:
        return self.dockerfile.path

    @property
    def target_stage(self) -> Stage:
        return self.stage(self.target)

    def stage(self, ref: int | str) -> Stage:
        for st in self.stages:
            if st.index == ref or (isinstance(ref, str) and st.name == ref.lower()):
                return st
        raise KeyError(ref)

    def order(self) -> tuple[int, ...]:
        return tuple(st.index for st in self.stages)

    def levels(self) -> tuple[tuple[int, ...], ...]:
        """Waves of stages: each wave needs only earlier waves, so the stages of one
        wave can be built in parallel."""
        level: dict[int, int] = {}
        for st in self.stages:  # file order is a dependency order
            level[st.index] = 1 + max((level[d] for d in st.stage_deps), default=-1)
        waves: dict[int, list[int]] = {}
        for idx, lv in level.items():
            waves.setdefault(lv, []).append(idx)
        return tuple(tuple(sorted(waves[k])) for k in sorted(waves))

    def needs(self, index: int) -> frozenset[int]:
        """Every stage `index` depends on, directly or not."""
        seen: set[int] = set()
        todo = list(self.stage(index).stage_deps)
        while todo:
            i = todo.pop()
            if i not in seen:
                seen.add(i)
                todo.extend(self.stage(i).stage_deps)
        return frozenset(seen)

    def independent(self, a: int, b: int) -> bool:
        """Neither stage needs the other: they may be built at the same time."""
        return a != b and a not in self.needs(b) and b not in self.needs(a)


def _lookup_stage(names: Sequence[str | None], value: str, *, allow_index: bool,
                  error) -> tuple[int | None, str | None]:
    """`--from` value -> (stage index, None) or (None, image reference)."""
    if allow_index and re.fullmatch(r"[+-]?[0-9]+", value):
        index = int(value)
        if not 0 <= index < len(names):
            raise error(f"invalid stage index {index}")
        return index, None
    wanted = value.lower()
    found = [i for i, n in enumerate(names) if n == wanted]
    if found:
        return found[-1], None
    return None, value


def _mount_from(value: str) -> tuple[str, str]:
    """(type, from) of a --mount value, before expansion (for the stage graph)."""
    try:
        fields = split_fields(value)
    except MountError:
        return "bind", ""
    kind, source = "bind", ""
    for item in fields:
        key, eq, val = item.partition("=")
        if eq and key.lower() == "type":
            kind = val.lower()
        elif eq and key.lower() == "from":
            source = val
    return kind, source


def _references(inst: ast.Instruction) -> list[tuple[str, bool]]:
    """(value, allow_index) of each stage/image reference an instruction makes."""
    if isinstance(inst, ast.Onbuild):
        return []
    out: list[tuple[str, bool]] = []
    if isinstance(inst, (ast.Copy, ast.Add)) and inst.flag("from"):
        out.append((inst.flag("from"), True))
    if isinstance(inst, ast.Run):
        for value in inst.flag_values("mount"):
            kind, source = _mount_from(value)
            if source and kind != "tmpfs":
                out.append((source, False))
    return out


def _expand_global(path: str, inst: ast.Instruction, word: str, env: Mapping[str, str],
                   escape: str) -> str:
    try:
        return expand(word, env, escape=escape)
    except DockerfileError as exc:
        raise error_at(path, inst, exc.message) from None


def plan_build(dockerfile: ast.Dockerfile, *, build_args: Mapping[str, str] | None = None,
               target: str | None = None, platform: Platform | None = None) -> BuildPlan:
    """Phase 1: which stages to build, in which order, with which global args."""
    build_args = dict(build_args or {})
    platform = platform or Platform.host()
    path, escape = dockerfile.path, dockerfile.escape

    meta: list[ast.Arg] = []
    sections: list[tuple[ast.From, list[ast.Instruction]]] = []
    for inst in dockerfile.instructions:
        if isinstance(inst, ast.From):
            sections.append((inst, []))
        elif not sections:
            if not isinstance(inst, ast.Arg):
                raise error_at(path, inst, "no build stage in current context")
            meta.append(inst)
        else:
            sections[-1][1].append(inst)
    if not sections:
        raise BuildError("dockerfile contains no stages to build", file=path)

    scope = GlobalScope.initial(build_args, platform)
    for inst in meta:
        for decl in inst.args:
            scope = scope.declare(
                decl.name, decl.default, build_args,
                lambda word, env, inst=inst: _expand_global(path, inst, word, env, escape))
    genv = scope.env()

    names = tuple(f.name for f, _ in sections)
    warnings: list[str] = []
    for name in sorted({n for n in names if n}):
        if names.count(name) > 1:
            warnings.append(f'duplicate stage name "{name}": references use the last one')

    if target:
        wanted = target.lower()
        matches = [i for i, n in enumerate(names) if n == wanted]
        if not matches:
            listed = ", ".join(n for n in names if n) or "none are named"
            raise BuildError(f'target stage "{target}" could not be found (stages: {listed})',
                             file=path)
        target_index = matches[-1]
    else:
        target_index = len(sections) - 1

    stages: dict[int, Stage] = {}
    state: dict[int, str] = {}  # "visiting" | "done"

    def visit(i: int) -> None:
        if state.get(i) == "done":
            return
        if state.get(i) == "visiting":
            raise error_at(path, sections[i][0],
                           f"circular dependency detected on stage: {names[i] or f'stage-{i}'}")
        state[i] = "visiting"
        stage = _build_stage(i)
        stages[i] = stage
        for dep in stage.stage_deps:
            visit(dep)
        state[i] = "done"

    def _build_stage(i: int) -> Stage:
        from_, body = sections[i]
        base = _expand_global(path, from_, from_.image, genv, escape)
        used = sorted(referenced_names(from_.image, escape) & set(genv))
        if base == "":
            raise error_at(path, from_, f"base name ({from_.image}) should not be blank")
        base_stage = None
        earlier = [j for j in range(i) if names[j] == base.lower()]
        if earlier:
            base_stage = earlier[-1]
        stage_platform = platform
        if from_.flag("platform"):
            raw = from_.flag("platform")
            text = _expand_global(path, from_, raw, genv, escape)
            used = sorted(set(used) | (referenced_names(raw, escape) & set(genv)))
            if text == "":
                raise error_at(path, from_, f"empty platform value from expression {raw}")
            try:
                stage_platform = Platform.parse(text)
            except BuildError as exc:
                raise error_at(path, from_, f"failed to parse platform {raw}: {exc.message}") from None
            if stage_platform != platform:
                raise error_at(path, from_, f"FROM --platform={stage_platform}: only {platform} "
                               "can be built here (no emulation)")
        deps: list[int] = [] if base_stage is None else [base_stage]
        images: list[str] = []
        scanned = list(body)
        if base_stage is not None:  # the base stage's ONBUILD triggers run here
            scanned += [x.instruction for x in sections[base_stage][1] if isinstance(x, ast.Onbuild)]
        for inst in scanned:
            for value, allow_index in _references(inst):
                if isinstance(inst, (ast.Copy, ast.Add)):
                    try:
                        plain = expand(value, {}, escape=escape)
                    except DockerfileError:
                        plain = None
                    if plain != value:
                        raise error_at(path, inst, "variable expansion is not supported for "
                                       "--from, define a new stage with FROM using ARG from "
                                       "global scope as a workaround")
                dep, image = _lookup_stage(names, value, allow_index=allow_index,
                                           error=lambda m, inst=inst: error_at(path, inst, m))
                if dep is not None:
                    if dep == i or (dep > i and _reaches(dep, i)):
                        raise error_at(path, inst, "circular dependency detected on stage: "
                                       f"{names[i] or f'stage-{i}'}")
                    if dep > i:
                        raise error_at(path, inst, f'cannot copy from stage "{value}", it needs '
                                       f'to be defined before current stage '
                                       f'"{names[i] or f"stage-{i}"}"')
                    if dep not in deps:
                        deps.append(dep)
                elif image and image not in images:
                    images.append(image)
        return Stage(index=i, name=names[i], from_=from_, base=base, base_stage=base_stage,
                     platform=stage_platform, instructions=tuple(body),
                     stage_deps=tuple(deps), image_deps=tuple(images),
                     global_args_used=tuple(used))

    def _reaches(start: int, goal: int) -> bool:
        """Whether stage `start` refers (transitively, by name/index) to `goal`."""
        seen: set[int] = set()
        todo = [start]
        while todo:
            j = todo.pop()
            if j in seen:
                continue
            seen.add(j)
            try:
                base_word = expand(sections[j][0].image, genv, escape=escape).lower()
            except DockerfileError:
                base_word = ""
            bases = [k for k in range(j) if names[k] == base_word]
            if bases and bases[-1] == goal:
                return True
            if bases:
                todo.append(bases[-1])
            for inst in sections[j][1]:
                for value, allow_index in _references(inst):
                    try:
                        dep, _ = _lookup_stage(names, value, allow_index=allow_index,
                                               error=lambda m: BuildError(m))
                    except BuildError:
                        continue
                    if dep == goal:
                        return True
                    if dep is not None:
                        todo.append(dep)
        return False

    visit(target_index)
    planned = tuple(stages[i] for i in sorted(stages))

    declared = set(scope.declared)
    for st in planned:
        for inst in st.instructions:
            if isinstance(inst, ast.Arg):
                declared.update(d.name for d in inst.args)
            if isinstance(inst, ast.Onbuild) and isinstance(inst.instruction, ast.Arg):
                declared.update(d.name for d in inst.instruction.args)
    unused = unconsumed_build_args(build_args, declared)
    if unused:
        warnings.append(unconsumed_warning(unused))

    return BuildPlan(
        dockerfile=dockerfile, stages=planned, target=target_index, platform=platform,
        globals=scope, build_args=pairs(build_args), proxy_env=proxy_env(build_args),
        warnings=tuple(warnings), stage_names=names)


# --------------------------------------------------------------------------- phase 2


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
        """The full environment of a RUN: build env plus undeclared proxy args."""
        env = dict(self.env)
        for k, v in self.proxy_env:
            env.setdefault(k, v)
        return tuple(env.items())

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
    from grammar import parse

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
    if not isinstance(stage, Stage):
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
        scope = ArgScope.from_image_env(config.env)
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
            dep, image = _lookup_stage(names, value, allow_index=allow_index,
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
        declared_names = {k for k, _ in args_before}
        steps.append(Step(
            stage=stage.index, index=position, instruction=inst, resolved=resolved,
            env=env_before, args=args_before, used_args=used, config=image_state.config,
            history=entry, platform=stage.platform,
            proxy_env=tuple(p for p in plan.proxy_env if p[0] not in declared_names)
            if isinstance(resolved, ResolvedRun) else (),
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


__all__ = [
    "Stage", "BuildPlan", "BaseImage", "Step", "StagePlan", "plan_build", "plan_stage",
    "plan_all", "expand_onbuild", "PLATFORM_ARGS",
]
