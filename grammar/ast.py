"""The Dockerfile AST: frozen dataclasses produced by `grammar.parse`.

Owns the shape of a parsed Dockerfile, nothing else: no parsing, no I/O.

Conventions (what the build engine may rely on):

- Every word and value is kept *raw*, as BuildKit's parser keeps it: variables are
  not expanded and quotes are not removed where BuildKit's parser keeps them
  (ENV/LABEL values, ARG defaults, shell-form text, COPY sources). Expansion and
  quote removal happen at build time with the ARG/ENV in scope (grammar.shell).
  Exec-form (JSON) elements are already decoded JSON strings.
- Flag values are unquoted the way BuildKit unquotes flags (`--chown="1:1"` →
  value `1:1`), but not variable-expanded (`--from=$BASE` stays `$BASE`).
- `Span` lines are 1-based and inclusive; an instruction's span covers its
  continuation lines and its heredoc bodies.
- `Instruction.words` holds the instruction's arguments exactly as BuildKit's
  parser node lists them (what `dump` prints); the typed fields are what a
  consumer should use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import re


@dataclass(frozen=True)
class Span:
    """1-based inclusive range of source lines."""

    start: int
    end: int


@dataclass(frozen=True)
class Flag:
    """One `--name[=value]` flag; a bare `--link` has value None."""

    name: str
    value: str | None

    def render(self) -> str:
        """The flag as BuildKit's parser keeps it (`--name=value` or `--name`)."""
        return f"--{self.name}" if self.value is None else f"--{self.name}={self.value}"


_LEADING_TABS = re.compile(r"^\t+", re.MULTILINE)


@dataclass(frozen=True)
class Heredoc:
    """A here-document attached to RUN/COPY/ADD (`<<EOF` … `EOF`).

    `body` is the raw text between the `<<` line and the terminator, every line with
    its newline. `strip_tabs` is set for `<<-`; `content` applies it. `expand` is False
    when any part of the delimiter was quoted (`<<"EOF"`, `<<'EOF'`): then the body is
    taken literally. `fd` is the file descriptor written before `<<` (`3<<EOF`), or None.
    """

    delimiter: str
    body: str
    expand: bool
    strip_tabs: bool
    fd: int | None

    @property
    def content(self) -> str:
        """The body as the instruction sees it (leading tabs removed for `<<-`)."""
        return _LEADING_TABS.sub("", self.body) if self.strip_tabs else self.body


@dataclass(frozen=True)
class Directive:
    """A parser directive (`# syntax=…`, `# escape=…`, `# check=…`); name lower-cased."""

    name: str
    value: str
    line: int


@dataclass(frozen=True)
class ShellForm:
    """Shell form: the command text after the flags (continuations joined)."""

    text: str


@dataclass(frozen=True)
class ExecForm:
    """Exec (JSON array) form: the decoded elements."""

    args: tuple[str, ...]


Command = ShellForm | ExecForm


@dataclass(frozen=True)
class KeyValue:
    """One ENV/LABEL pair. `legacy` is the `ENV key value` form (value = rest of line)."""

    key: str
    value: str
    legacy: bool


@dataclass(frozen=True)
class ArgDecl:
    """One ARG declaration: `name` or `name=default` (default raw, may be "")."""

    name: str
    default: str | None


@dataclass(frozen=True, kw_only=True)
class Instruction:
    """Fields common to every instruction.

    keyword: canonical upper-case keyword ("COPY").
    flags:   the `--flags` in source order.
    span:    source lines covered (continuations and heredoc bodies included).
    source:  the original text of those lines (joined with "\\n", no final newline).
    words:   the arguments as BuildKit's parser node lists them (for dump/history).

    Source facts kept for build checks (grammar.checks), not part of equality:
    keyword_text:        the keyword as written ("From", "copy"); "" when unknown.
    comments:            the comment lines before the instruction since the previous
                         one, `#` and surrounding blanks removed (BuildKit's
                         PrevComment: a bare `#` clears them, directives excluded).
    empty_continuations: the blank lines inside the instruction's line continuation.
    """

    keyword: str
    flags: tuple[Flag, ...]
    span: Span
    source: str
    words: tuple[str, ...] = field(default=(), repr=False)
    keyword_text: str = field(default="", repr=False, compare=False)
    comments: tuple[str, ...] = field(default=(), repr=False, compare=False)
    empty_continuations: tuple[int, ...] = field(default=(), repr=False, compare=False)

    def flag(self, name: str) -> str | None:
        """The value of the last `--name` flag ("true" for a bare one), or None."""
        value = None
        for f in self.flags:
            if f.name == name:
                value = "true" if f.value is None else f.value
        return value

    def flag_values(self, name: str) -> tuple[str, ...]:
        """All values of a repeatable flag (`--mount`, `--exclude`), in order."""
        return tuple("true" if f.value is None else f.value for f in self.flags if f.name == name)

    def has_flag(self, name: str) -> bool:
        return any(f.name == name for f in self.flags)

    def bool_flag(self, name: str) -> bool:
        """A boolean flag (`--link`, `--link=true`, `--link=false`), default False."""
        value = self.flag(name)
        return value is not None and value.lower() == "true"


@dataclass(frozen=True, kw_only=True)
class From(Instruction):
    """FROM [--platform=…] image [AS name]; `name` is lower-cased (stage names are)."""

    image: str
    name: str | None


@dataclass(frozen=True, kw_only=True)
class Run(Instruction):
    command: Command
    heredocs: tuple[Heredoc, ...]


@dataclass(frozen=True, kw_only=True)
class Cmd(Instruction):
    command: Command


@dataclass(frozen=True, kw_only=True)
class Entrypoint(Instruction):
    command: Command


@dataclass(frozen=True, kw_only=True)
class Shell(Instruction):
    """SHELL ["executable", "parameters"]: only the exec form exists."""

    args: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class Env(Instruction):
    pairs: tuple[KeyValue, ...]


@dataclass(frozen=True, kw_only=True)
class Label(Instruction):
    pairs: tuple[KeyValue, ...]


@dataclass(frozen=True, kw_only=True)
class Maintainer(Instruction):
    name: str


@dataclass(frozen=True, kw_only=True)
class Expose(Instruction):
    ports: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class _SourcesDest(Instruction):
    """COPY/ADD: `sources` as written (a heredoc source stays `<<EOF`), `dest`, the heredocs."""

    sources: tuple[str, ...]
    dest: str
    heredocs: tuple[Heredoc, ...]
    exec_form: bool = False

    def heredoc_for(self, source: str) -> Heredoc | None:
        """The heredoc a source word such as `<<EOF` / `<<-"EOF"` names, if any."""
        from lamina.grammar.heredoc import parse_heredoc_word  # local: heredoc imports nothing of ast users

        marker = parse_heredoc_word(source)
        if marker is None:
            return None
        for doc in self.heredocs:
            if doc.delimiter == marker.delimiter:
                return doc
        return None


@dataclass(frozen=True, kw_only=True)
class Copy(_SourcesDest):
    pass


@dataclass(frozen=True, kw_only=True)
class Add(_SourcesDest):
    pass


@dataclass(frozen=True, kw_only=True)
class Volume(Instruction):
    paths: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class User(Instruction):
    user: str


@dataclass(frozen=True, kw_only=True)
class Workdir(Instruction):
    path: str


@dataclass(frozen=True, kw_only=True)
class Arg(Instruction):
    """ARG name[=default] ...: one declaration per word (quotes kept in defaults)."""

    args: tuple[ArgDecl, ...]


@dataclass(frozen=True, kw_only=True)
class Onbuild(Instruction):
    """ONBUILD: the trigger instruction, parsed (its span is the ONBUILD's)."""

    instruction: Instruction


@dataclass(frozen=True, kw_only=True)
class Stopsignal(Instruction):
    signal: str


@dataclass(frozen=True, kw_only=True)
class Healthcheck(Instruction):
    """HEALTHCHECK NONE (command None) or HEALTHCHECK [flags] CMD command."""

    kind: str
    command: Command | None


@dataclass(frozen=True)
class Dockerfile:
    path: str
    directives: tuple[Directive, ...]
    escape: str
    instructions: tuple[Instruction, ...]

    def directive(self, name: str) -> str | None:
        for d in self.directives:
            if d.name == name:
                return d.value
        return None


KEYWORDS = (
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK",
    "LABEL", "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME",
    "WORKDIR",
)
