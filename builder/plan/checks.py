"""Build checks that need the build's knowledge, and the whole check run.

Owns BuildKit's linter rules that depend on more than the text: the global ARGs
and their defaults (UndefinedArgInFrom, InvalidDefaultArgInFrom,
RedundantTargetPlatform, FromPlatformFlagConstDisallowed), each stage's variables
as the build sees them (UndefinedVar), the base images' configs
(InvalidBaseImagePlatform, and the SHELL and ENV a base brings) and the
.dockerignore (CopyIgnoredFile). `check_dockerfile` runs these together with the
text rules of lamina.grammar.checks, which stages a build needs deciding which
stage rules run, and applies the `check` directive (or the
BUILDKIT_DOCKERFILE_CHECK build arg, which replaces it).

Pure functions: base images come through a `base_config(ref)` callable that
returns an OCI image config dict or None (unknown: the rules that need it stay
silent for that stage rather than guess).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from lamina.builder.errors import BuildError
from lamina.builder.context.dockerignore import IgnoreRules, go_clean
from lamina.builder.plan.args import GlobalScope
from lamina.builder.plan.imageconfig import DEFAULT_PATH
from lamina.builder.plan.resolve import lookup_stage, stage_references
from lamina.builder.plan.resolved import Platform, normalize_arch
from lamina.grammar import ast
from lamina.grammar.checks import (
    Finding, StageChecker, StageText, dockerfile_check_options, file_findings,
    filter_findings, split_stages,
)
from lamina.grammar.columns import variable_column, word_column
from lamina.grammar.directives import CheckOptions, parse_check_options
from lamina.grammar.errors import DockerfileError
from lamina.grammar.goquote import go_quote
from lamina.grammar.shell import expand, referenced_names

CHECK_BUILD_ARG = "BUILDKIT_DOCKERFILE_CHECK"
# args BuildKit defines for FROM lines besides the platform ones lamina sets
_MORE_GLOBAL_ARGS = ("BUILDOSVERSION", "TARGETOSVERSION", "TARGETSTAGE")
# args BuildKit never puts in a stage's environment
_NON_ENV_ARGS = frozenset({"BUILDKIT_SBOM_SCAN_CONTEXT", "BUILDKIT_SBOM_SCAN_STAGE"})

BaseConfig = Callable[[str], "Mapping | None"]


# -- helpers ---------------------------------------------------------------------------

def levenshtein(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def suggest(name: str, options: Iterable[str]) -> str:
    """The closest option at an edit distance below 3 (the first of the closest),
    or "" (also when `name` itself is an option), as BuildKit's suggestions."""
    best, best_distance = "", 3
    for option in options:
        if option == name:
            return ""
        distance = levenshtein(name, option)
        if distance < best_distance:
            best, best_distance = option, distance
    return best


def check_options(dockerfile: ast.Dockerfile, build_args: Mapping[str, str]) -> CheckOptions:
    """The check options of a build: the BUILDKIT_DOCKERFILE_CHECK build arg when
    given (it replaces the directive), else the `# check=` directive."""
    if CHECK_BUILD_ARG in build_args:
        try:
            return parse_check_options(build_args[CHECK_BUILD_ARG])
        except ValueError as exc:
            raise BuildError(f"failed to parse build-arg:{CHECK_BUILD_ARG}: {exc}") from None
    return dockerfile_check_options(dockerfile)


def _names(word: str, escape: str) -> frozenset[str]:
    try:
        return referenced_names(word, escape)
    except DockerfileError:
        return frozenset()


def _expand(word: str, env: Mapping[str, str], escape: str) -> str | None:
    try:
        return expand(word, env, escape=escape)
    except DockerfileError:
        return None


# -- the FROM lines ---------------------------------------------------------------------

@dataclass(frozen=True)
class Globals:
    """The global scope as FROM lines see it: values, and every name FROM may use."""

    env: dict[str, str]
    keys: tuple[str, ...]


def global_args(meta: Iterable[ast.Instruction], build_args: Mapping[str, str],
                platform: Platform, escape: str) -> Globals | None:
    """The global args (None when a default cannot be expanded: the build reports it)."""
    scope = GlobalScope.initial(build_args, platform)
    declared: list[str] = []
    for inst in meta:
        if not isinstance(inst, ast.Arg):
            continue
        for decl in inst.args:
            try:
                scope = scope.declare(decl.name, decl.default, build_args,
                                      lambda w, env: expand(w, env, escape=escape))
            except DockerfileError:
                return None
            declared.append(decl.name)
    env = scope.env()
    for name in _MORE_GLOBAL_ARGS:
        env.setdefault(name, "")
    keys = tuple(dict.fromkeys([*env, *declared]))
    return Globals(env, keys)


def from_findings(path: str, stages: Iterable[StageText], globals_: Globals,
                  escape: str) -> list[Finding]:
    """UndefinedArgInFrom, RedundantTargetPlatform, FromPlatformFlagConstDisallowed."""
    out: list[Finding] = []
    for st in stages:
        from_ = st.from_
        words = [from_.image]
        platform = from_.flag("platform")
        if platform is not None:
            words.append(platform)
        for word in words:
            for name in sorted(_names(word, escape) - set(globals_.keys)):
                hint = suggest(name, globals_.keys)
                message = f"FROM argument '{name}' is not declared"
                if hint:
                    message += f" (did you mean {hint}?)"
                out.append(Finding("UndefinedArgInFrom", message, from_.span.start,
                                   variable_column(from_, name, escape), path))
        if platform is None:
            continue
        names = _names(platform, escape)
        value = _expand(platform, globals_.env, escape)
        column = word_column(from_, "--platform", key=True)
        if names == {"TARGETPLATFORM"} and value == globals_.env.get("TARGETPLATFORM"):
            out.append(Finding("RedundantTargetPlatform",
                               f"Setting platform to predefined {platform} in FROM is redundant as "
                               "this is the default behavior", from_.span.start, column, path))
        if not names and value:
            try:
                parsed = Platform.parse(value)
            except BuildError:
                continue
            stage_name = from_.name or ""
            if parsed.os in stage_name or parsed.architecture in stage_name:
                continue
            out.append(Finding("FromPlatformFlagConstDisallowed",
                               f"FROM --platform flag should not use constant value {go_quote(value)}",
                               from_.span.start, column, path))
    return out


def default_arg_findings(path: str, meta: Iterable[ast.Instruction], stages: Iterable[StageText],
                         platform: Platform, escape: str) -> list[Finding]:
    """InvalidDefaultArgInFrom: each FROM with the global ARGs' defaults only."""
    from lamina.store.refs import InvalidReference, parse as parse_reference

    globals_ = global_args(meta, {}, platform, escape)
    if globals_ is None:
        return []
    out = []
    for st in stages:
        base = _expand(st.from_.image, globals_.env, escape)
        if base is None:
            return out
        try:
            parse_reference(base, default_tag=False)
            continue
        except InvalidReference:
            pass
        out.append(Finding("InvalidDefaultArgInFrom",
                           f"Default value for ARG {st.from_.image} results in empty or invalid "
                           "base image name", st.from_.span.start,
                           word_column(st.from_, st.from_.image), path))
    return out


# -- which stages a build needs -------------------------------------------------------------

def _stage_refs(inst: ast.Instruction, names: tuple[str | None, ...]) -> list[int]:
    out = []
    for value, allow_index in stage_references(inst):
        try:
            dep, _ = lookup_stage(names, value, allow_index=allow_index, error=ValueError)
        except ValueError:
            continue
        if dep is not None:
            out.append(dep)
    return out


def needed_stages(stages: tuple[StageText, ...], bases: Mapping[int, int | None],
                  target: str | None) -> set[int]:
    """The stages the target (named, else the last) needs, itself included."""
    names = tuple(st.from_.name for st in stages)
    if target:
        found = [i for i, n in enumerate(names) if n == target.lower()]
        if not found:
            return set(range(len(stages)))  # the build reports the unknown target
        start = found[-1]
    else:
        start = len(stages) - 1
    seen: set[int] = set()
    todo = [start]
    while todo:
        i = todo.pop()
        if i in seen or not 0 <= i < len(stages):
            continue
        seen.add(i)
        if bases.get(i) is not None:
            todo.append(bases[i])
        for inst in stages[i].body:
            todo.extend(_stage_refs(inst, names))
    return seen


# -- inside a stage ---------------------------------------------------------------------------

@dataclass
class StageState:
    """What a stage leaves to a stage built on it: its variables (None: unknown,
    its base image is not available), its declared ARGs, the stage rules' state."""

    env: dict[str, str] | None
    declared: tuple[str, ...] = ()
    checker: StageChecker | None = None


@dataclass
class StageWalk:
    """The dispatch-time checks of one stage, its instructions in order."""

    path: str
    escape: str
    env: dict[str, str] | None
    declared: list[str]
    checker: StageChecker
    build_args: Mapping[str, str]
    globals_env: Mapping[str, str]
    ignore: IgnoreRules | None
    findings: list[Finding] = field(default_factory=list)

    def expand_word(self, inst: ast.Instruction, word: str) -> str | None:
        if self.env is None:
            return None if "$" in word else word
        return _expand(word, self.env, self.escape)

    def undefined(self, inst: ast.Instruction, words: Iterable[str], *, quotes: bool = True) -> None:
        if self.env is None:
            return
        names: set[str] = set()
        for word in words:
            try:
                names |= referenced_names(word, self.escape, process_quotes=quotes)
            except DockerfileError:
                continue
        missing = names - set(self.env) - set(self.declared) - _NON_ENV_ARGS
        for name in sorted(missing):
            hint = suggest(name, self.env)
            message = f"Usage of undefined variable '${name}'"
            if hint:
                message += f" (did you mean ${hint}?)"
            self.findings.append(Finding("UndefinedVar", message, inst.span.start,
                                         variable_column(inst, name, self.escape, quotes=quotes),
                                         self.path))

    def visit(self, inst: ast.Instruction) -> None:
        self.findings.extend(self.checker.visit(inst))
        if isinstance(inst, (ast.Env, ast.Label)):
            self.undefined(inst, [w for p in inst.pairs for w in (p.key, p.value)])
            if isinstance(inst, ast.Env) and self.env is not None:
                updates = [(self.expand_word(inst, p.key), self.expand_word(inst, p.value))
                           for p in inst.pairs]
                for key, value in updates:
                    if key is not None and value is not None:
                        self.env[key] = value
        elif isinstance(inst, (ast.Copy, ast.Add)):
            self._copy(inst)
        elif isinstance(inst, ast.Workdir):
            self.undefined(inst, [inst.path])
        elif isinstance(inst, ast.User):
            self.undefined(inst, [inst.user])
        elif isinstance(inst, ast.Volume):
            self.undefined(inst, inst.paths)
        elif isinstance(inst, ast.Stopsignal):
            self.undefined(inst, [inst.signal])
        elif isinstance(inst, ast.Run):
            self.undefined(inst, inst.flag_values("mount"))
        elif isinstance(inst, ast.Arg):
            self._arg(inst)

    def _arg(self, inst: ast.Arg) -> None:
        for decl in inst.args:
            value: str | None = None
            if decl.name in self.build_args:
                value = self.build_args[decl.name]
            elif decl.default is not None:
                self.undefined(inst, [decl.default])
                value = self.expand_word(inst, decl.default) if self.env is not None else None
            elif decl.name in self.globals_env:
                value = self.globals_env[decl.name]
            if value is not None and self.env is not None and decl.name not in _NON_ENV_ARGS:
                self.env[decl.name] = value
            self.declared.append(decl.name)

    def _copy(self, inst: ast.Copy | ast.Add) -> None:
        words = [s for s in inst.sources if inst.heredoc_for(s) is None] + [inst.dest]
        for flag in ("chown", "chmod", "checksum") if isinstance(inst, ast.Add) else ("chown", "chmod"):
            value = inst.flag(flag)
            if value is not None:
                words.append(value)
        self.undefined(inst, words)
        for doc in inst.heredocs:
            if doc.expand:
                self.undefined(inst, [doc.content], quotes=False)
        if self.ignore is None or not self.ignore or self.ignore.has_exceptions:
            return
        if isinstance(inst, ast.Copy) and inst.flag("from"):
            return
        cmd = "Add" if isinstance(inst, ast.Add) else "Copy"
        for source in inst.sources:
            if inst.heredoc_for(source) is not None:
                continue
            value = self.expand_word(inst, source)
            if value is None or (cmd == "Add" and ("://" in value or value.startswith("git@"))):
                continue
            self._ignored(inst, cmd, source, value)

    def _ignored(self, inst: ast.Instruction, cmd: str, raw: str, value: str) -> None:
        clean = go_clean(value)
        if clean in (".", "/"):
            patterns = [p.text for p in self.ignore.patterns if not p.exception]
            if not any(p in ("*", "**", "**/*") for p in patterns):
                return
            excluded = True
        else:
            excluded = self.ignore.match(clean)[0]
        if excluded:
            self.findings.append(Finding(
                "CopyIgnoredFile",
                f"Attempting to {cmd} file {go_quote(clean)} that is excluded by .dockerignore",
                inst.span.start, word_column(inst, raw), self.path))


def _image_env(config: Mapping | None) -> dict[str, str] | None:
    if config is None:
        return None
    env: dict[str, str] = {}
    for item in (config.get("config") or {}).get("Env") or ():
        key, _, value = str(item).partition("=")
        env[key] = value
    env.setdefault("PATH", DEFAULT_PATH)
    return env


def _image_platform(config: Mapping) -> Platform | None:
    os_, arch = config.get("os"), config.get("architecture")
    if not os_ or not arch:
        return None
    arch, variant = normalize_arch(str(arch).lower(), str(config.get("variant") or "").lower())
    return Platform(str(os_).lower(), arch, variant)


# -- the whole run ------------------------------------------------------------------------------

def check_dockerfile(dockerfile: ast.Dockerfile, *, build_args: Mapping[str, str] | None = None,
                     target: str | None = None, platform: Platform | None = None,
                     all_stages: bool = False, base_config: BaseConfig | None = None,
                     ignore: IgnoreRules | None = None,
                     options: CheckOptions | None = None) -> list[Finding]:
    """Every build check, the check options applied, sorted by line.

    The whole-file rules and the FROM-line rules cover every stage; the stage rules
    cover the stages the target needs, or every stage with `all_stages` (`--check`
    without `--target`, as BuildKit's lint does). Raises BuildError/DockerfileError
    for a malformed check directive or build arg.
    """
    build_args = dict(build_args or {})
    platform = platform or Platform.host()
    base_config = base_config or (lambda ref: None)
    if options is None:
        options = check_options(dockerfile, build_args)
    if options.skip_all:
        return []
    path, escape = dockerfile.path, dockerfile.escape
    meta, stages = split_stages(dockerfile)
    findings = file_findings(dockerfile)
    findings += default_arg_findings(path, meta, stages, platform, escape)

    globals_ = global_args(meta, build_args, platform, escape)
    names = [st.from_.name for st in stages]
    bases: dict[int, int | None] = {}
    base_words: dict[int, str | None] = {}
    for st in stages:
        word = _expand(st.from_.image, globals_.env, escape) if globals_ else None
        base_words[st.index] = word
        earlier = [j for j in range(st.index) if word is not None and names[j] == word]
        bases[st.index] = earlier[-1] if earlier else None
    if globals_ is not None:
        findings += from_findings(path, stages, globals_, escape)

    wanted = set(range(len(stages))) if all_stages and not target else needed_stages(stages, bases, target)
    states: dict[int, StageState] = {}
    for st in stages:
        findings += _walk_stage(st, states, bases, base_words, globals_, build_args, platform,
                                base_config, ignore, path, escape, report=st.index in wanted)
    return filter_findings(findings, dockerfile, options)


def _walk_stage(st: StageText, states: dict[int, StageState], bases: Mapping[int, int | None],
                base_words: Mapping[int, str | None], globals_: Globals | None,
                build_args: Mapping[str, str], platform: Platform, base_config: BaseConfig,
                ignore: IgnoreRules | None, path: str, escape: str, *, report: bool) -> list[Finding]:
    findings: list[Finding] = []
    base_index = bases.get(st.index)
    word = base_words.get(st.index)
    shell_set = workdir_set = False
    declared: tuple[str, ...] = ()
    if base_index is not None:
        parent = states[base_index]
        env = dict(parent.env) if parent.env is not None else None
        declared = parent.declared
        if parent.checker is not None:
            shell_set, workdir_set = parent.checker.shell_set, parent.checker.workdir_set
    elif word == "scratch":
        env = {"PATH": DEFAULT_PATH}
    else:
        config = base_config(word) if (word and report) else None
        env = _image_env(config)
        if config is not None:
            shell_set = bool((config.get("config") or {}).get("Shell"))
            actual = _image_platform(config)
            expected = platform
            raw = st.from_.flag("platform")
            if raw is not None and globals_ is not None:
                value = _expand(raw, globals_.env, escape)
                try:
                    expected = Platform.parse(value) if value else platform
                except BuildError:
                    expected = platform
            if actual is not None and (actual.os, actual.architecture) != (expected.os, expected.architecture):
                findings.append(Finding(
                    "InvalidBaseImagePlatform",
                    f"Base image {word} was pulled with platform {go_quote(str(actual))}, "
                    f"expected {go_quote(str(expected))} for current build",
                    st.from_.span.start, word_column(st.from_, st.from_.image), path))
    checker = StageChecker(path, shell_set=shell_set, workdir_set=workdir_set)
    walk = StageWalk(path=path, escape=escape, env=env, declared=list(declared), checker=checker,
                     build_args=build_args, globals_env=globals_.env if globals_ else {},
                     ignore=ignore)
    checker.expand = walk.expand_word
    for inst in st.body:
        walk.visit(inst)
    states[st.index] = StageState(env=walk.env, declared=tuple(walk.declared), checker=checker)
    return findings + walk.findings if report else []


__all__ = ["CHECK_BUILD_ARG", "Finding", "check_dockerfile", "check_options", "suggest",
           "needed_stages", "levenshtein"]
