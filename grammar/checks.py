"""Build checks that need only the Dockerfile text: BuildKit's linter rules, by name.

Owns the rules a parsed Dockerfile can answer by itself, each a pure function of
the AST, and the `Finding` they produce. The message of every rule is the text
BuildKit prints (scripts grep for it); `EXPLANATIONS` says in one line why each
rule exists.

Whole-file rules (`file_findings`), checked for every stage of the file:
    StageNameCasing, FromAsCasing, NoEmptyContinuation, ConsistentInstructionCasing,
    DuplicateStageName, ReservedStageName, MaintainerDeprecated.
Stage rules (`StageChecker`, one per stage, fed the stage's instructions in
order), which BuildKit checks while it builds a stage, so only for the stages a
build needs (all of them under `--check`):
    JSONArgsRecommended, LegacyKeyValueFormat, WorkdirRelativePath,
    MultipleInstructionsDisallowed, SecretsUsedInArgOrEnv, ExposeProtoCasing,
    ExposeInvalidFormat.
Some stage rules look at words after variable expansion and at what the base
stage left (a SHELL, an absolute WORKDIR): the caller may pass an `expand`
function and the base's state; `stage_findings` runs them with the text alone
(a base is found by its literal stage name; words holding variables are skipped).

Rules needing the build's knowledge (ARG values, base image configs, the
.dockerignore) live in lamina.builder.plan.checks, which also applies the
`check` directive (`filter_findings`).

Positions: the line is BuildKit's (the instruction's first line; for
NoEmptyContinuation the instruction's last line). BuildKit gives no column (its
ranges are whole lines), so the column is lamina's, 1-based, on that line: the
word the rule is about - the stage name (StageNameCasing, DuplicateStageName,
ReservedStageName), the AS (FromAsCasing), the key (LegacyKeyValueFormat,
SecretsUsedInArgOrEnv), the path (WorkdirRelativePath), the port (Expose*), the
source (CopyIgnoredFile), the image (InvalidDefaultArgInFrom,
InvalidBaseImagePlatform), the `--platform` flag (RedundantTargetPlatform,
FromPlatformFlagConstDisallowed), the `$` of the variable (UndefinedVar,
UndefinedArgInFrom); column 1 for NoEmptyContinuation; the keyword for the rules
about the whole instruction (ConsistentInstructionCasing, JSONArgsRecommended,
MaintainerDeprecated, MultipleInstructionsDisallowed), and whenever the word is on
a continuation line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
import re

from lamina.grammar import ast
from lamina.grammar.columns import keyword_column, word_column
from lamina.grammar.directives import CheckOptions, check_options_in_comments
from lamina.grammar.goquote import go_quote


@dataclass(frozen=True)
class Finding:
    """One build-check finding: BuildKit's rule name and message, where it is."""

    rule: str
    message: str
    line: int
    column: int
    file: str

    def short(self) -> str:
        """BuildKit's one-line form: `Rule: message (line N)`."""
        return f"{self.rule}: {self.message} (line {self.line})"


EXPLANATIONS: dict[str, str] = {
    "StageNameCasing": "stage names are written in lower case, unlike instruction keywords",
    "FromAsCasing": "write AS in the same case as its FROM keyword",
    "NoEmptyContinuation": "a blank line inside a line continuation is deprecated and will become an error",
    "ConsistentInstructionCasing": "write every instruction keyword in one case, the one most of the file uses",
    "DuplicateStageName": "two stages with one name make references to that name ambiguous",
    "ReservedStageName": "'scratch' and 'context' mean something else where a stage name is expected",
    "JSONArgsRecommended": "a shell-form CMD/ENTRYPOINT runs under /bin/sh, which does not forward signals to the program",
    "MaintainerDeprecated": "MAINTAINER is deprecated; set the org.opencontainers.image.authors label",
    "UndefinedArgInFrom": "a FROM line uses a variable that no global ARG declares",
    "WorkdirRelativePath": "a relative WORKDIR depends on the base image's working directory",
    "UndefinedVar": "a variable is used before any ARG or ENV defines it",
    "MultipleInstructionsDisallowed": "only the last CMD, ENTRYPOINT or HEALTHCHECK of a stage takes effect",
    "LegacyKeyValueFormat": "the space-separated `key value` form is deprecated; use key=value",
    "InvalidBaseImagePlatform": "the base image is for another platform than the one being built",
    "RedundantTargetPlatform": "FROM already uses the target platform; --platform=$TARGETPLATFORM adds nothing",
    "SecretsUsedInArgOrEnv": "ARG and ENV values stay in the image and its history; use secret mounts for secrets",
    "InvalidDefaultArgInFrom": "with only the ARG defaults, this FROM does not name a valid image",
    "FromPlatformFlagConstDisallowed": "a constant FROM --platform pins the stage to one platform",
    "CopyIgnoredFile": "the file is excluded by .dockerignore, so it is not in the build context",
    "ExposeProtoCasing": "EXPOSE protocols are written in lower case",
    "ExposeInvalidFormat": "EXPOSE takes a container port and protocol, not an address or a host port",
}

RULES = tuple(EXPLANATIONS)

_LEGACY_INSTRUCTION = re.compile(r'^"(\S+) key=value"')


def explain(finding: Finding) -> str:
    """The one-line explanation of a finding, naming the instruction where the rule
    is about one (LegacyKeyValueFormat fires on ENV and LABEL: its BuildKit message
    says which)."""
    if finding.rule == "LegacyKeyValueFormat":
        m = _LEGACY_INSTRUCTION.match(finding.message)
        if m:
            word = m.group(1)
            return (f"the space-separated `{word} key value` form is deprecated; "
                    f"use `{word} key=value`")
    return EXPLANATIONS.get(finding.rule, "")

# Rules that BuildKit runs with the file's options only, without the
# per-instruction `# check=` comments (those apply to all the other rules).
FILE_WIDE_RULES = frozenset({"NoEmptyContinuation", "ConsistentInstructionCasing",
                             "DuplicateStageName", "ReservedStageName",
                             "InvalidDefaultArgInFrom", "InvalidBaseImagePlatform"})

RESERVED_STAGE_NAMES = ("context", "scratch")

_SECRET = re.compile(r"(?i)(?:_|^)(?:apikey|auth|credential|credentials|key|password|pword"
                     r"|passwd|secret|token)(?:_|$)")
_NOT_SECRET = re.compile(r"(?i)(?:_|^)(?:public|file|version)(?:_|$)")

Expand = Callable[[ast.Instruction, str], "str | None"]


# -- positions: lamina.grammar.columns -------------------------------------------------

def _finding(path: str, rule: str, message: str, inst: ast.Instruction,
             column: int | None = None, line: int | None = None) -> Finding:
    return Finding(rule, message, inst.span.start if line is None else line,
                   keyword_column(inst) if column is None else column, path)


# -- stages ------------------------------------------------------------------------

@dataclass(frozen=True)
class StageText:
    """A stage as the text shows it: its FROM, its body, the earlier stage its FROM
    names literally (None: an image, scratch, or a name with variables)."""

    index: int
    from_: ast.From
    body: tuple[ast.Instruction, ...]
    base_stage: int | None


def split_stages(dockerfile: ast.Dockerfile) -> tuple[tuple[ast.Instruction, ...], tuple[StageText, ...]]:
    """(the instructions before the first FROM, the stages in file order)."""
    meta: list[ast.Instruction] = []
    sections: list[tuple[ast.From, list[ast.Instruction]]] = []
    for inst in dockerfile.instructions:
        if isinstance(inst, ast.From):
            sections.append((inst, []))
        elif sections:
            sections[-1][1].append(inst)
        else:
            meta.append(inst)
    stages = []
    for i, (from_, body) in enumerate(sections):
        base = from_.image.lower()
        earlier = [j for j in range(i) if sections[j][0].name == base]
        stages.append(StageText(i, from_, tuple(body), earlier[-1] if earlier else None))
    return tuple(meta), tuple(stages)


# -- whole-file rules ----------------------------------------------------------------

def _self_consistent(word: str) -> bool:
    return word == word.lower() or word == word.upper()


def _keyword(inst: ast.Instruction) -> str:
    return inst.keyword_text or inst.keyword


def file_findings(dockerfile: ast.Dockerfile) -> list[Finding]:
    """The whole-file rules, in file order."""
    path = dockerfile.path
    out: list[Finding] = []
    _, stages = split_stages(dockerfile)
    for inst in dockerfile.instructions:
        if inst.empty_continuations:
            out.append(_finding(path, "NoEmptyContinuation", "Empty continuation line", inst,
                                column=1, line=logical_end(inst)))
        if isinstance(inst, ast.From):
            out.extend(_from_casing(path, inst))
        if isinstance(inst, ast.Maintainer):
            out.append(_finding(path, "MaintainerDeprecated",
                                "Maintainer instruction is deprecated in favor of using label", inst))
    out.extend(_stage_names(path, stages))
    out.extend(_instruction_casing(path, stages))
    out.sort(key=lambda f: f.line)
    return out


def logical_end(inst: ast.Instruction) -> int:
    """The last line of the instruction's own text (before any heredoc body): where
    BuildKit places an empty-continuation finding."""
    end = inst.span.end
    docs = getattr(inst, "heredocs", ())
    if isinstance(inst, ast.Onbuild):
        docs = getattr(inst.instruction, "heredocs", ())
    for doc in docs:
        end -= doc.body.count("\n") + 1
    return end


def _from_casing(path: str, inst: ast.From) -> Iterator[Finding]:
    words = inst.words
    if len(words) == 3 and words[2] != words[2].lower():
        yield _finding(path, "StageNameCasing", f"Stage name '{words[2]}' should be lowercase",
                       inst, column=stage_name_column(inst))
    if len(words) >= 3:
        keyword = _keyword(inst)
        as_word = words[1]
        if keyword == keyword.lower() and keyword != keyword.upper():
            mismatch = as_word != as_word.lower()
        elif keyword == keyword.upper():
            mismatch = as_word != as_word.upper()
        else:
            mismatch = False  # a mixed-case FROM is ConsistentInstructionCasing's finding
        if mismatch:
            yield _finding(path, "FromAsCasing",
                           f"'{as_word}' and '{keyword}' keywords' casing do not match", inst,
                           column=word_column(inst, as_word))


def stage_name_column(inst: ast.From) -> int:
    """The column of the stage name (the word after AS, not an image of that name)."""
    words = inst.words
    if len(words) != 3:
        return keyword_column(inst)
    as_column = word_column(inst, words[1])
    return word_column(inst, words[2], after=as_column + len(words[1]))


def _stage_names(path: str, stages: Iterable[StageText]) -> Iterator[Finding]:
    seen: set[str] = set()
    for st in stages:
        name = st.from_.name
        if not name:
            continue
        if name in RESERVED_STAGE_NAMES:
            yield _finding(path, "ReservedStageName",
                           f"Stage name should not use the same name as reserved stage {go_quote(name)}",
                           st.from_, column=stage_name_column(st.from_))
        if name in seen:
            yield _finding(path, "DuplicateStageName",
                           f"Duplicate stage name {go_quote(name)}, stage names should be unique",
                           st.from_, column=stage_name_column(st.from_))
        seen.add(name)


def _instruction_casing(path: str, stages: tuple[StageText, ...]) -> Iterator[Finding]:
    """Instructions of the stages (not the global ARGs) against the majority casing."""
    instructions = [i for st in stages for i in (st.from_, *st.body)]
    lower = upper = 0
    for inst in instructions:
        word = _keyword(inst)
        if _self_consistent(word):
            if word == word.lower():
                lower += 1
            else:
                upper += 1
    majority_lower = lower > upper
    for inst in instructions:
        word = _keyword(inst)
        casing = ""
        if majority_lower and word != word.lower():
            casing = "lowercase"
        elif not majority_lower and word != word.upper():
            casing = "uppercase"
        if casing:
            yield _finding(path, "ConsistentInstructionCasing",
                           f"Command '{word}' should match the case of the command majority ({casing})",
                           inst)


# -- stage rules ----------------------------------------------------------------------

def is_secret_name(name: str) -> bool:
    """BuildKit's SecretsUsedInArgOrEnv test of an ARG/ENV name."""
    return bool(_SECRET.search(name)) and not _NOT_SECRET.search(name)


def _port_parts(raw: str) -> tuple[str, str, str]:
    """(host ip, host port, container port[/proto]) of an EXPOSE word."""
    parts = raw.split(":")
    if len(parts) == 1:
        return "", "", parts[0]
    if len(parts) == 2:
        return "", parts[0], parts[1]
    return ":".join(parts[:-2]), parts[-2], parts[-1]


def _port_proto(container: str) -> str | None:
    """The protocol of `port[/proto]` ("tcp" by default); None when malformed."""
    parts = container.split("/")
    if container == "" or parts[0] == "":
        return None
    if len(parts) == 1 or parts[1] == "":
        return "tcp"
    return parts[1]


@dataclass
class StageChecker:
    """The stage rules for one stage, fed its instructions in order.

    `shell_set`: a SHELL is in effect from the base (image config or base stage);
    `workdir_set`: a WORKDIR of this Dockerfile is in effect from the base stage.
    `expand(inst, word)` gives a word after variable expansion, or None when
    unknown (then rules that need the value skip it); default: words without `$`
    as they are.
    """

    path: str
    shell_set: bool = False
    workdir_set: bool = False
    expand: Expand | None = None
    _last: dict[str, ast.Instruction] = field(default_factory=dict)

    def _value(self, inst: ast.Instruction, word: str) -> str | None:
        if self.expand is not None:
            return self.expand(inst, word)
        return None if "$" in word else word

    def visit(self, inst: ast.Instruction) -> list[Finding]:
        path = self.path
        out: list[Finding] = []
        keyword = _keyword(inst)
        if isinstance(inst, (ast.Cmd, ast.Entrypoint, ast.Healthcheck)):
            previous = self._last.get(inst.keyword)
            if previous is not None:  # the earlier one is the one that is ignored
                out.append(_finding(path, "MultipleInstructionsDisallowed",
                                    f"Multiple {keyword} instructions should not be used in the same "
                                    "stage because only the last one will be used", previous))
            self._last[inst.keyword] = inst
        if isinstance(inst, (ast.Cmd, ast.Entrypoint)):
            if isinstance(inst.command, ast.ShellForm) and not self.shell_set:
                out.append(_finding(path, "JSONArgsRecommended",
                                    f"JSON arguments recommended for {keyword} to prevent "
                                    "unintended behavior related to OS signals", inst))
        elif isinstance(inst, ast.Shell):
            self.shell_set = True
        elif isinstance(inst, (ast.Env, ast.Label)):
            for pair in inst.pairs:
                if pair.legacy:
                    out.append(_finding(path, "LegacyKeyValueFormat",
                                        f'"{keyword} key=value" should be used instead of legacy '
                                        f'"{keyword} key value" format', inst,
                                        column=word_column(inst, pair.key, key=True)))
                if isinstance(inst, ast.Env):
                    key = self._value(inst, pair.key)
                    if key is not None and is_secret_name(key):
                        out.append(self._secret(inst, "ENV", key, pair.key))
        elif isinstance(inst, ast.Arg):
            for decl in inst.args:
                if is_secret_name(decl.name):
                    out.append(self._secret(inst, "ARG", decl.name, decl.name))
        elif isinstance(inst, ast.Workdir):
            value = self._value(inst, inst.path)
            if not self.workdir_set and value is not None and not value.startswith("/"):
                out.append(_finding(path, "WorkdirRelativePath",
                                    f"Relative workdir {go_quote(value)} can have unexpected "
                                    "results if the base image changes", inst,
                                    column=word_column(inst, inst.path)))
            self.workdir_set = True
        elif isinstance(inst, ast.Expose):
            out.extend(self._expose(inst))
        return out

    def _secret(self, inst: ast.Instruction, kind: str, key: str, raw: str) -> Finding:
        return _finding(self.path, "SecretsUsedInArgOrEnv",
                        f"Do not use ARG or ENV instructions for sensitive data ({kind} {go_quote(key)})",
                        inst, column=word_column(inst, raw, key=True))

    def _expose(self, inst: ast.Expose) -> Iterator[Finding]:
        for word in inst.ports:
            value = self._value(inst, word)
            if value is None:
                continue
            column = word_column(inst, word)
            for port in value.split():
                ip, host_port, container = _port_parts(port)
                proto = _port_proto(container)
                if proto is None:
                    continue
                if proto != proto.lower():
                    yield _finding(self.path, "ExposeProtoCasing",
                                   f"Defined protocol '{port}' in EXPOSE instruction should be lowercase",
                                   inst, column=column)
                if ip or host_port:
                    yield _finding(self.path, "ExposeInvalidFormat",
                                   "EXPOSE instruction should not define an IP address or host-port "
                                   f"mapping, found '{port}'", inst, column=column)


def stage_findings(dockerfile: ast.Dockerfile, stages: Iterable[int] | None = None) -> list[Finding]:
    """The stage rules over the text alone, for the given stage indexes (all by
    default); a base stage is found by its literal name."""
    _, all_stages = split_stages(dockerfile)
    wanted = set(range(len(all_stages))) if stages is None else set(stages)
    after: dict[int, StageChecker] = {}
    out: list[Finding] = []
    for st in all_stages:
        base = after.get(st.base_stage) if st.base_stage is not None else None
        checker = StageChecker(dockerfile.path,
                               shell_set=base.shell_set if base else False,
                               workdir_set=base.workdir_set if base else False)
        found = [f for inst in st.body for f in checker.visit(inst)]
        after[st.index] = checker
        if st.index in wanted:
            out.extend(found)
    return out


def text_findings(dockerfile: ast.Dockerfile) -> list[Finding]:
    """Every text rule over every stage, the `check` directive applied."""
    options = dockerfile_check_options(dockerfile)
    found = file_findings(dockerfile) + stage_findings(dockerfile)
    return filter_findings(found, dockerfile, options)


# -- the check directive ------------------------------------------------------------------

def dockerfile_check_options(dockerfile: ast.Dockerfile) -> CheckOptions:
    """The options of the file's `# check=` directive (none: the defaults). Raises
    DockerfileError at the directive's line when its value is malformed."""
    from lamina.grammar.directives import parse_check_options
    from lamina.grammar.errors import DockerfileError

    for d in dockerfile.directives:
        if d.name == "check":
            try:
                return parse_check_options(d.value)
            except ValueError as exc:
                raise DockerfileError(f"failed to parse check options: {exc}", file=dockerfile.path,
                                      line=d.line, column=1) from None
    return CheckOptions()


def filter_findings(findings: Iterable[Finding], dockerfile: ast.Dockerfile,
                    options: CheckOptions) -> list[Finding]:
    """Drop what the options skip, and what a `# check=skip=...` comment right before
    the finding's instruction skips (not for the whole-file rules); sorted by line."""
    by_line = {inst.span.start: inst for inst in dockerfile.instructions}
    out: list[Finding] = []
    for f in sorted(findings, key=lambda f: (f.line, f.column)):
        effective = options
        inst = by_line.get(f.line)
        if inst is not None and f.rule not in FILE_WIDE_RULES:
            local = check_options_in_comments(inst.comments)
            if local is not None:
                effective = options.merged(local)
        if not effective.skips(f.rule):
            out.append(f)
    return out
