"""Instruction validation: parsed nodes → typed AST instructions.

Owns what BuildKit's `instructions` package checks when it turns a parser node
into a command: which `--flags` each instruction takes and their types (string,
boolean, repeatable), argument counts, FROM's `AS name`, ONBUILD triggers,
HEALTHCHECK types, durations and retries, SHELL's JSON-only form, RUN
--network/--security values and what a --mount can be checked for before
variables are expanded. Builds the frozen dataclasses of grammar/ast.py.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Protocol

from lamina.grammar import ast
from lamina.grammar.heredoc import parse_heredoc_word
from lamina.grammar.words import trim_space

if TYPE_CHECKING:  # pragma: no cover
    from lamina.grammar.errors import DockerfileError
    from lamina.grammar.lines import LogicalLine
    from lamina.grammar.node import Node


class Parser(Protocol):
    """What build_instruction needs of grammar.parser.Parser (which builds on this
    module): the source lines and errors placed in the file."""

    scanner: Any

    def error_at(self, line: "LogicalLine", offset: int, message: str) -> "DockerfileError": ...

STRING, BOOL, LIST = "string", "bool", "list"

FLAGS: dict[str, dict[str, str]] = {
    "FROM": {"platform": STRING},
    "RUN": {"mount": LIST, "network": STRING, "security": STRING},
    "COPY": {"from": STRING, "chown": STRING, "chmod": STRING, "link": BOOL,
             "parents": BOOL, "exclude": LIST},
    "ADD": {"chown": STRING, "chmod": STRING, "link": BOOL, "keep-git-dir": BOOL,
            "checksum": STRING, "unpack": BOOL, "exclude": LIST},
    "HEALTHCHECK": {"interval": STRING, "timeout": STRING, "start-period": STRING,
                    "start-interval": STRING, "retries": STRING},
}

NETWORK_MODES = ("default", "none", "host")
SECURITY_MODES = ("sandbox", "insecure")
_STAGE_NAME = re.compile(r"[a-z][a-z0-9\-_.]*\Z")
_DURATION_PART = re.compile(r"([0-9]*)(\.[0-9]*)?([^0-9.]+)")
_DURATION_UNITS = {"ns": 1, "us": 1e3, "\u00b5s": 1e3, "\u03bcs": 1e3, "ms": 1e6,
                   "s": 1e9, "m": 60e9, "h": 3600e9}


class _Invalid(Exception):
    """A validation failure at an offset of the logical line."""

    def __init__(self, message: str, offset: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


def build_instruction(parser: "Parser", line: "LogicalLine", node: "Node") -> ast.Instruction:
    span = ast.Span(line.start, line.end)
    source = "\n".join(parser.scanner.source_line(n) for n in range(line.start, line.end + 1))
    try:
        return _build(node, span, source)
    except _Invalid as err:
        offset = node.offset if err.offset is None else err.offset
        raise parser.error_at(line, offset, err.message) from None


def _flags(node: "Node") -> tuple[ast.Flag, ...]:
    """BuildKit's BFlags.Parse for the node's instruction."""
    allowed = FLAGS.get(node.keyword, {})
    seen: set[str] = set()
    out = []
    for word, offset in node.flags:
        body = word[2:]
        name, eq, value = body.partition("=")
        kind = allowed.get(name)
        if kind is None:
            raise _Invalid(f"unknown flag: {name}", offset)
        if name in seen and kind != LIST:
            raise _Invalid(f"duplicate flag specified: {name}", offset)
        seen.add(name)
        if kind == BOOL:
            if eq and value == "":
                raise _Invalid(f"missing a value on flag: {name}", offset)
            if eq and value.lower() not in ("true", "false"):
                raise _Invalid(f"expecting boolean value for flag {name}, not: {value}", offset)
        elif not eq:
            raise _Invalid(f"missing a value on flag: {name}", offset)
        out.append(ast.Flag(name, value if eq else None))
    return tuple(out)


def _flag_offset(node: "Node", name: str) -> int | None:
    for word, offset in node.flags:
        if word[2:].partition("=")[0] == name:
            return offset
    return None


def _build(node: "Node", span: ast.Span, source: str) -> ast.Instruction:
    flags = _flags(node)
    common = dict(keyword=node.keyword, flags=flags, span=span, source=source, words=node.words)
    kw = node.keyword
    words = node.words
    if kw == "FROM":
        if len(words) == 3 and words[1].lower() == "as":
            name = words[2].lower()
            if not _STAGE_NAME.match(name):
                raise _Invalid(f"invalid name for build stage: {_quote(words[2])}, "
                               "name can't start with a number or contain symbols", node.rest_offset)
            return ast.From(image=words[0], name=name, **common)
        if len(words) != 1:
            raise _Invalid("FROM requires either one or three arguments")
        return ast.From(image=words[0], name=None, **common)
    if kw == "RUN":
        _check_run_flags(node, flags)
        if node.command == ast.ExecForm(()):
            raise _Invalid("RUN requires at least one argument")
        # a bare RUN is BuildKit's `/bin/sh -c ""` (an empty shell form)
        command = ast.ShellForm("") if node.command is None else node.command
        return ast.Run(command=command, heredocs=tuple(node.heredocs), **common)
    if kw in ("CMD", "ENTRYPOINT"):
        cls = ast.Cmd if kw == "CMD" else ast.Entrypoint
        # bare CMD/ENTRYPOINT: BuildKit's empty shell form, `/bin/sh -c ""`
        command = ast.ShellForm("") if node.command is None else node.command
        return cls(command=command, **common)
    if kw == "SHELL":
        if node.command is None or node.command == ast.ExecForm(()):
            raise _Invalid("SHELL requires at least one argument")
        if not isinstance(node.command, ast.ExecForm):
            raise _Invalid("SHELL requires the arguments to be in JSON form", node.rest_offset)
        return ast.Shell(args=node.command.args, **common)
    if kw in ("ENV", "LABEL"):
        if not node.pairs:
            raise _Invalid(f"{kw} requires at least one argument")
        if any(p.key == "" for p in node.pairs):
            raise _Invalid(f"{kw} names can not be blank", node.rest_offset)
        cls = ast.Env if kw == "ENV" else ast.Label
        return cls(pairs=node.pairs, **common)
    if kw == "ARG":
        if not words:
            raise _Invalid("ARG requires at least one argument")
        decls = []
        for word in words:
            name, eq, value = word.partition("=")
            if eq and name == "":
                raise _Invalid("ARG names can not be blank", node.rest_offset)
            decls.append(ast.ArgDecl(name, value if eq else None))
        return ast.Arg(args=tuple(decls), **common)
    if kw in ("COPY", "ADD"):
        if len(words) < 2:
            raise _Invalid(f"{kw} requires at least two arguments, but only one was provided. "
                           "Destination could not be determined.")
        if parse_heredoc_word(words[-1]) is not None:
            raise _Invalid(f"{kw} cannot accept a heredoc as a destination", node.rest_offset)
        cls = ast.Copy if kw == "COPY" else ast.Add
        return cls(sources=words[:-1], dest=words[-1], heredocs=tuple(node.heredocs),
                   exec_form=node.is_json, **common)
    if kw == "VOLUME":
        if not words:
            raise _Invalid("VOLUME requires at least one argument")
        paths = tuple(trim_space(w) for w in words)
        if any(p == "" for p in paths):
            raise _Invalid("VOLUME specified can not be an empty string", node.rest_offset)
        return ast.Volume(paths=paths, **common)
    if kw == "EXPOSE":
        if not words:
            raise _Invalid("EXPOSE requires at least one argument")
        return ast.Expose(ports=words, **common)
    if kw in ("MAINTAINER", "USER", "WORKDIR", "STOPSIGNAL"):
        if len(words) != 1:
            raise _Invalid(f"{kw} requires exactly one argument")
        if kw == "MAINTAINER":
            return ast.Maintainer(name=words[0], **common)
        if kw == "USER":
            return ast.User(user=words[0], **common)
        if kw == "WORKDIR":
            return ast.Workdir(path=words[0], **common)
        return ast.Stopsignal(signal=words[0], **common)
    if kw == "HEALTHCHECK":
        return _healthcheck(node, flags, common)
    if kw == "ONBUILD":
        child = node.child
        if child is None:
            raise _Invalid("ONBUILD requires at least one argument")
        if child.keyword == "ONBUILD":
            raise _Invalid("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed", child.offset)
        if child.keyword in ("FROM", "MAINTAINER"):
            raise _Invalid(f"{child.keyword} isn't allowed as an ONBUILD trigger", child.offset)
        inner = _build(child, span, source)
        return ast.Onbuild(instruction=inner, **common)
    raise _Invalid(f"unknown instruction: {node.word}")  # pragma: no cover - grammar prevents it


def _check_run_flags(node: "Node", flags: tuple[ast.Flag, ...]) -> None:
    for flag in flags:
        value = flag.value or ""
        offset = _flag_offset(node, flag.name)
        if flag.name == "network" and "$" not in value and value not in NETWORK_MODES:
            raise _Invalid(f"unsupported network mode {_quote(value)}", offset)
        if flag.name == "security" and "$" not in value and value not in SECURITY_MODES:
            raise _Invalid(f"unsupported security mode {_quote(value)}", offset)
    for word, offset in node.flags:
        name, _, value = word[2:].partition("=")
        if name == "mount":
            _check_mount(value, offset)


def _check_mount(value: str, offset: int) -> None:
    """What BuildKit checks of a --mount before expansion: its `from` holds no variable."""
    from lamina.grammar.mounts import MountError, split_fields

    try:
        fields = split_fields(value)
    except MountError as err:
        raise _Invalid(str(err), offset) from None
    for item in fields:
        key, eq, val = item.partition("=")
        if eq and key.lower() == "from" and re.search(r"\$.", val):
            raise _Invalid("'from' doesn't support variable expansion, define alias stage instead", offset)


def _healthcheck(node: "Node", flags: tuple[ast.Flag, ...], common: dict) -> ast.Healthcheck:
    words = node.words
    if not words:
        raise _Invalid("HEALTHCHECK requires at least one argument")
    kind = words[0].upper()
    if kind == "NONE":
        if len(words) > 1:
            raise _Invalid("HEALTHCHECK NONE takes no arguments", node.rest_offset)
        return ast.Healthcheck(kind="NONE", command=None, **common)
    if kind != "CMD":
        raise _Invalid(f"Unknown type {_quote(kind)} in HEALTHCHECK (try CMD)", node.rest_offset)
    if node.command is None or node.command == ast.ExecForm(()):
        raise _Invalid("Missing command after HEALTHCHECK CMD", node.rest_offset)
    for flag in flags:
        offset = _flag_offset(node, flag.name)
        value = flag.value or ""
        if flag.name == "retries":
            retries = _parse_int32(value, offset)
            if retries < 0:
                raise _Invalid(f"--retries cannot be negative ({retries})", offset)
        else:
            nanos = _parse_duration(value, offset)
            if nanos != 0 and nanos < 1e6:
                raise _Invalid(f"Interval {_quote(flag.name)} cannot be less than 1ms", offset)
    return ast.Healthcheck(kind="CMD", command=node.command, **common)


def _parse_int32(value: str, offset: int | None) -> int:
    if not re.fullmatch(r"[+-]?[0-9]+", value):
        raise _Invalid(f"strconv.ParseInt: parsing {_quote(value)}: invalid syntax", offset)
    number = int(value)
    if not -2**31 <= number < 2**31:
        raise _Invalid(f"strconv.ParseInt: parsing {_quote(value)}: value out of range", offset)
    return number


def _parse_duration(value: str, offset: int | None) -> float:
    """Go's time.ParseDuration, returning nanoseconds ("" means unset: 0)."""
    if value == "":
        return 0
    text = value
    sign = 1
    if text[:1] in "+-":
        sign = -1 if text[0] == "-" else 1
        text = text[1:]
    if text == "0":
        return 0
    if text == "":
        raise _Invalid(f"time: invalid duration {_quote(value)}", offset)
    total = 0.0
    pos = 0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if match is None or (match.group(1) == "" and (match.group(2) or ".") == "."):
            raise _Invalid(f"time: invalid duration {_quote(value)}", offset)
        whole, frac, unit = match.groups()
        unit_match = re.match(r"[^0-9.]+", unit)
        unit = unit_match.group(0) if unit_match else unit
        if unit not in _DURATION_UNITS:
            raise _Invalid(f"time: unknown unit {_quote(unit)} in duration {_quote(value)}", offset)
        total += float((whole or "0") + (frac or "")) * _DURATION_UNITS[unit]
        pos = match.end()
    return sign * total


def _quote(s: str) -> str:
    from lamina.grammar.dump import go_quote

    return go_quote(s)
