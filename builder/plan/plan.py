"""The build plan: a Dockerfile AST -> the stages to build, in order.

`plan_build(dockerfile, build_args=, target=, platform=)` -> `BuildPlan`: global
ARGs (builder.args), FROM expansion, stage references (`FROM <stage>`, `COPY
--from=<name|index|image>`, `RUN --mount=from=<stage>`), the target (default: the
last stage), pruning to the stages the target needs (an unused stage is never
planned, so it cannot fail the build), a dependency order and the waves of
independent stages, unconsumed build-arg warnings, platform checks.

The steps of each stage are planned once its base is known: `plan_stage` in
builder.stageplan (re-exported here with `Step`, `StagePlan`, `BaseImage`).
Pure functions; errors are `BuildError`s naming file, line and the line itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from lamina.builder.plan.args import GlobalScope, proxy_env, unconsumed_build_args, unconsumed_warning
from lamina.builder.plan.cachekey import pairs
from lamina.builder.errors import BuildError
from lamina.builder.plan.resolve import error_at, lookup_stage, stage_references
from lamina.builder.plan.resolved import Platform
from lamina.grammar import ast
from lamina.grammar.errors import DockerfileError
from lamina.grammar.shell import expand, referenced_names

SCRATCH = "scratch"
Pairs = tuple[tuple[str, str], ...]

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
        # as written: dockerfile2llb compares the base name with emptyImageName
        return self.base_stage is None and self.base == SCRATCH

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
    warnings: list[str] = [w for w in (frontend_warning(dockerfile),) if w]
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

    def enter(i: int):
        """Start visiting stage i: its dependencies still to visit, or None if done."""
        if state.get(i) == "done":
            return None
        if state.get(i) == "visiting":
            raise error_at(path, sections[i][0],
                           f"circular dependency detected on stage: {names[i] or f'stage-{i}'}")
        state[i] = "visiting"
        stage = _build_stage(i)
        stages[i] = stage
        return iter(stage.stage_deps)

    def visit(i: int) -> None:
        # depth first with a stack of our own: a chain of thousands of `FROM prev AS
        # next` stages (a few KB of Dockerfile) passed Python's recursion limit
        deps = enter(i)
        stack = [] if deps is None else [(i, deps)]
        while stack:
            top, deps = stack[-1]
            dep = next(deps, None)
            if dep is None:
                state[top] = "done"
                stack.pop()
                continue
            more = enter(dep)
            if more is not None:
                stack.append((dep, more))

    def _build_stage(i: int) -> Stage:
        from_, body = sections[i]
        base = _expand_global(path, from_, from_.image, genv, escape)
        used = sorted(referenced_names(from_.image, escape) & set(genv))
        if base == "":
            raise error_at(path, from_, f"base name ({from_.image}) should not be blank")
        base_stage = None
        # the stage of that exact name (names are lowercased, the base name is not:
        # dockerfile2llb's addState looks up statesByName[BaseName]); `FROM Builder`
        # is an image reference, invalid in upper case
        earlier = [j for j in range(i) if names[j] == base]
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
            for value, allow_index in stage_references(inst):
                dep, image = _reference(inst, value, allow_index)
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
                # from=scratch (as written) is the empty filesystem: dockerfile2llb makes
                # an unregistered stage of it, whose BaseName is emptyImageName
                elif image and image != SCRATCH and image not in images:
                    images.append(image)
        return Stage(index=i, name=names[i], from_=from_, base=base, base_stage=base_stage,
                     platform=stage_platform, instructions=tuple(body),
                     stage_deps=tuple(deps), image_deps=tuple(images),
                     global_args_used=tuple(used))

    def _reference(inst: ast.Instruction, value: str,
                   allow_index: bool) -> tuple[int | None, str | None]:
        if isinstance(inst, (ast.Copy, ast.Add)):
            try:
                plain = expand(value, {}, escape=escape)
            except DockerfileError:
                plain = None
            if plain != value:
                raise error_at(path, inst, "variable expansion is not supported for "
                               "--from, define a new stage with FROM using ARG from "
                               "global scope as a workaround")
        return lookup_stage(names, value, allow_index=allow_index,
                            error=lambda m: error_at(path, inst, m))

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
                base_word = expand(sections[j][0].image, genv, escape=escape)
            except DockerfileError:
                base_word = ""
            bases = [k for k in range(j) if names[k] == base_word]
            if bases and bases[-1] == goal:
                return True
            if bases:
                todo.append(bases[-1])
            for inst in sections[j][1]:
                for value, allow_index in stage_references(inst):
                    try:
                        dep, _ = lookup_stage(names, value, allow_index=allow_index,
                                               error=lambda m: BuildError(m))
                    except BuildError:
                        continue
                    if dep == goal:
                        return True
                    if dep is not None:
                        todo.append(dep)
        return False

    # BuildKit turns the instructions of every stage into commands (toCommand) and checks
    # the whole stage graph for cycles (validateCircularDependency) before it keeps the
    # stages the target needs: a --from naming a stage index out of range, with a
    # variable, or closing a cycle fails the build in a stage the target does not use too
    for i, (_, body) in enumerate(sections):
        for inst in body:
            for value, allow_index in stage_references(inst):
                dep, _ = _reference(inst, value, allow_index)
                if dep is not None and (dep == i or (dep > i and _reaches(dep, i))):
                    raise error_at(path, inst, "circular dependency detected on stage: "
                                   f"{names[i] or f'stage-{i}'}")
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


# the Dockerfile frontend lamina implements itself, by the image names it is published
# under (docker.io/docker/dockerfile:1.7, docker/dockerfile-upstream:master, @sha256:...)
STANDARD_FRONTENDS = ("docker/dockerfile", "docker/dockerfile-upstream")


def frontend_warning(dockerfile: ast.Dockerfile) -> str | None:
    """A warning when `# syntax=` names another frontend than the Dockerfile one: BuildKit
    would fetch and run that image to read the file; lamina reads it as a Dockerfile
    (the standard frontend's own names, whatever tag or digest, say nothing)."""
    for d in dockerfile.directives:
        if d.name != "syntax" or not d.value.strip():
            continue
        name = d.value.strip().split("@", 1)[0]
        if name.rfind(":") > name.rfind("/"):
            name = name[:name.rfind(":")]
        for registry in ("docker.io/", "index.docker.io/", "registry-1.docker.io/"):
            if name.lower().startswith(registry):
                name = name[len(registry):]
        if name.lower() not in STANDARD_FRONTENDS:
            return (f"[Warning] {dockerfile.path}:{d.line}: `# syntax={d.value.strip()}` names "
                    "a frontend other than the Dockerfile one; lamina builds the file with its "
                    "own Dockerfile frontend and does not run that image")
    return None


__all__ = ["Stage", "BuildPlan", "plan_build", "lookup_stage", "frontend_warning"]
# Phase 2 (steps of a stage: plan_stage, plan_all, StagePlan) is builder.plan.stageplan,
# which builds on this module.
