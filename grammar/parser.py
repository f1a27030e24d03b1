"""Dockerfile text → AST (`parse`).

Owns the pipeline: the line scanner (grammar/lines.py: directives, comments,
continuations) yields logical lines; the Lark grammar (grammar/dockerfile.lark)
parses each into keyword, flags, `--` and argument text (ONBUILD nesting
included) and parses exec-form JSON; BuildKit's per-instruction argument rules
(grammar/words.py) split the arguments; heredoc bodies are read for shell-form
RUN/COPY/ADD; grammar/instructions.py validates flags and arguments and builds
the frozen AST nodes. Every error is a DockerfileError placed at a line and
column of the original file.

Errors come in file order; within one instruction, in BuildKit's order: line
syntax (flags, JSON, ENV/LABEL form), then heredocs, then argument and flag
validation.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
import difflib
import hashlib
import os
from importlib import resources

import lark
from lark import Lark, Token, Transformer, Tree
from lark.exceptions import LarkError, UnexpectedInput

from lamina.grammar import ast
from lamina.grammar.errors import DockerfileError
from lamina.grammar.goquote import go_quote as _go_quote
from lamina.grammar.heredoc import HeredocMarker, heredocs_in_line
from lamina.grammar.lines import LineScanner, LogicalLine
from lamina.grammar.node import Node
from lamina.grammar.words import (
    GO_SPACE,
    decode_json_string,
    json_number_fits,
    parse_words,
    split_legacy,
    split_whitespace,
    trim_left_space,
    trim_space,
    unquote_flag,
)

HEREDOC_KEYWORDS = frozenset({"RUN", "COPY", "ADD"})
_SPACE = frozenset(GO_SPACE)
_MAX_JSON_DEPTH = 10000  # encoding/json's nesting limit


class _NonString:
    """A JSON value that is not a string (literal, object, array)."""

    __slots__ = ("overflow",)

    def __init__(self, overflow: bool) -> None:
        self.overflow = overflow


class _JsonValues(Transformer):
    """Applied while parsing: collapses nested JSON values into _NonString markers."""

    @staticmethod
    def _overflow(children: list) -> bool:
        for child in children:
            if isinstance(child, _NonString):
                if child.overflow:
                    return True
            elif isinstance(child, Token) and child.type == "JNUMBER" and not json_number_fits(child):
                return True
        return False

    def jliteral(self, children: list) -> _NonString:
        return _NonString(False)

    def jarray(self, children: list) -> _NonString:
        return _NonString(self._overflow(children))

    def jobject(self, children: list) -> _NonString:
        return _NonString(self._overflow(children))


def _cache_file(grammar_text: str) -> str | None:
    """Where Lark may keep its analysed grammar (x10 faster start): a file in the
    user's own cache dir, never a predictable name in a shared /tmp (Lark's default
    cache loads a pickle — a root process must not load one someone else planted)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    directory = os.path.join(base, "lamina")
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        st = os.stat(directory)
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            return None
    except OSError:
        return None
    key = hashlib.sha256(f"{lark.__version__}\0{grammar_text}".encode()).hexdigest()[:24]
    return os.path.join(directory, f"dockerfile-grammar-{key}.lark")


def _make_parser() -> Lark:
    text = resources.files(__package__).joinpath("dockerfile.lark").read_text(encoding="utf-8")
    options = dict(parser="lalr", lexer="contextual", start=["line", "json_array"],
                   transformer=_JsonValues())
    cache = _cache_file(text)
    if cache is not None:
        try:
            return Lark(text, cache=cache, **options)
        except Exception:  # an unreadable or stale cache: build without it
            pass
    return Lark(text, **options)


_LARK = _make_parser()


class NotJSON(Exception):
    """The argument text is not a JSON array (→ shell form)."""


def _json_depth_exceeded(text: str) -> bool:
    if text.count("[") + text.count("{") <= _MAX_JSON_DEPTH:
        return False
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest > _MAX_JSON_DEPTH


def parse_json_array(text: str) -> tuple[str, ...]:
    """BuildKit's parseJSON: the strings of a JSON array.

    Raises NotJSON when the text is not a JSON array Go would decode (the caller
    falls back to the shell form) and ValueError when it is one but holds
    something other than strings.
    """
    text = trim_left_space(text)
    if not text.startswith("[") or _json_depth_exceeded(text):
        raise NotJSON
    try:
        tree = _LARK.parse(text, start="json_array")
    except LarkError:
        raise NotJSON from None
    elements = tree.children
    if _JsonValues._overflow(elements):
        raise NotJSON  # Go cannot hold the number in a float64: Unmarshal fails
    out = []
    for element in elements:
        if not (isinstance(element, Token) and element.type == "JSTRING"):
            raise ValueError("when using JSON array syntax, arrays must be comprised of strings only")
        out.append(decode_json_string(element))
    return tuple(out)


class Parser:
    """Parses one Dockerfile text; `run()` returns the AST or raises DockerfileError."""

    def __init__(self, text: str, path: str) -> None:
        self.path = path
        self.scanner = LineScanner(text, path)

    # -- errors ---------------------------------------------------------------

    def error_at(self, line: LogicalLine, offset: int, message: str) -> DockerfileError:
        line_no, column = line.position(offset)
        return self.scanner.error(message, line_no, column)

    # -- driver ---------------------------------------------------------------

    def run(self) -> ast.Dockerfile:
        from lamina.grammar.instructions import build_instruction

        instructions: list[ast.Instruction] = []
        while (line := self.scanner.next_line()) is not None:
            node = self.parse_line(line, line.text, 0)
            self.read_heredocs(line, node)
            instruction = build_instruction(self, line, node)
            instructions.append(replace(  # source facts for build checks (grammar.checks)
                instruction, keyword_text=node.word, comments=line.comments,
                empty_continuations=tuple(line.empty_continuations)))
        directives = tuple(ast.Directive(name, value, line_no)
                           for name, value, line_no in self.scanner.found_directives)
        if not instructions:
            raise DockerfileError("file with no instructions", file=self.path)
        return ast.Dockerfile(path=self.path, directives=directives,
                              escape=self.scanner.escape, instructions=tuple(instructions))

    # -- one logical line ----------------------------------------------------

    def parse_line(self, line: LogicalLine, text: str, base: int) -> Node:
        """Parse `text` (= line.text[base:]) into a Node."""
        if trim_space(text) == "":
            raise self.error_at(line, base, "empty instruction (a line continuation with nothing after it)")
        try:
            tree = _LARK.parse(text, start="line")
        except UnexpectedInput as err:
            raise self.error_at(line, base + (err.pos_in_stream or 0), "syntax error") from None
        return self.node_from_tree(line, text, base, tree.children[0])

    def node_from_tree(self, line: LogicalLine, text: str, base: int, tree: Tree) -> Node:
        kind = tree.data
        tokens = tree.children
        if kind == "unknown":
            self.unknown(line, base + tokens[0].start_pos, tokens[0])
        head: Token = tokens[0]
        node = Node(keyword=head.upper(), word=str(head), offset=base + head.start_pos,
                    flags=[], rest="", rest_offset=base + head.end_pos)
        rest_tree: Tree | None = None
        for item in tokens[1:]:
            if isinstance(item, Token) and item.type == "FLAG":
                word = trim_left_space(item)
                value = unquote_flag(word)
                if value == "--":  # a quoted `--""` still ends the flags
                    return self.reparse_after(line, text, base, node, item.end_pos)
                node.flags.append((value, base + item.end_pos - len(word)))
            elif isinstance(item, Token) and item.type == "DASHDASH":
                node.rest_offset = base + item.end_pos
            else:
                rest_tree = item
        if kind == "onbuild":
            if rest_tree is not None:
                node.child = self.node_from_tree(line, text, base, rest_tree)
                node.rest_offset = node.child.offset
                node.rest = trim_space(text[node.child.offset - base:])
            return node
        if rest_tree is not None and rest_tree.children:
            rest_token = rest_tree.children[-1]
            if rest_token.type in ("REST", "REST_ANY"):
                content = trim_left_space(rest_token)
                node.rest = trim_space(content)
                node.rest_offset = base + rest_token.end_pos - len(content)
        self.split_args(line, node)
        return node

    def reparse_after(self, line: LogicalLine, text: str, base: int, node: Node, end: int) -> Node:
        """Flags ended by a processed `--`: the rest of the text is the arguments."""
        remainder = text[end:]
        stripped = trim_left_space(remainder)
        node.rest_offset = base + end + (len(remainder) - len(stripped))
        node.rest = trim_space(stripped)
        if node.keyword == "ONBUILD":
            if node.rest:
                node.child = self.parse_line(line, line.text[node.rest_offset:], node.rest_offset)
            return node
        self.split_args(line, node)
        return node

    def unknown(self, line: LogicalLine, offset: int, token: Token) -> None:
        word = str(token)
        for i, ch in enumerate(word):
            if ch in "\t\v\f\r ":
                word = word[:i]
                break
        message = f"unknown instruction: {word}"
        close = difflib.get_close_matches(word.upper(), ast.KEYWORDS, n=1, cutoff=0.75)
        if close:
            message += f" (did you mean {close[0].lower()}?)"
        raise self.error_at(line, offset, message)

    # -- arguments (BuildKit's line parsers) -----------------------------------

    def split_args(self, line: LogicalLine, node: Node) -> None:
        keyword, rest = node.keyword, node.rest
        try:
            if keyword in ("RUN", "CMD", "ENTRYPOINT", "SHELL"):
                node.command = self.maybe_json(node, rest)
                node.words = _command_words(node.command)
            elif keyword in ("ADD", "COPY", "VOLUME"):
                try:
                    node.words = parse_json_array(rest)
                    node.is_json = True
                except NotJSON:
                    node.words = tuple(split_whitespace(rest))
            elif keyword in ("FROM", "EXPOSE"):
                node.words = tuple(split_whitespace(rest))
            elif keyword in ("ENV", "LABEL"):
                node.pairs = self.name_values(line, node)
                node.words = tuple(w for p in node.pairs for w in (p.key, p.value, "" if p.legacy else "="))
            elif keyword == "ARG":
                node.words = tuple(parse_words(rest, self.scanner.escape))
            elif keyword == "HEALTHCHECK":
                self.health_args(node)
            else:  # MAINTAINER, USER, WORKDIR, STOPSIGNAL
                node.words = (rest,) if rest else ()
        except ValueError as err:
            raise self.error_at(line, node.rest_offset, str(err)) from None

    def maybe_json(self, node: Node, rest: str) -> ast.ShellForm | ast.ExecForm | None:
        if rest == "":
            return None
        try:
            args = parse_json_array(rest)
        except NotJSON:
            return ast.ShellForm(rest)
        node.is_json = True
        return ast.ExecForm(args)

    def health_args(self, node: Node) -> None:
        rest = node.rest
        sep = 0
        while sep < len(rest) and rest[sep] not in _SPACE:
            sep += 1
        if sep == 0:
            return
        kind = rest[:sep]
        after = trim_left_space(rest[sep:])
        node.command = self.maybe_json(node, after)
        node.words = (kind,) + _command_words(node.command)

    def name_values(self, line: LogicalLine, node: Node) -> tuple[ast.KeyValue, ...]:
        rest = node.rest
        words = parse_words(rest, self.scanner.escape)
        if not words:
            return ()
        if "=" not in words[0]:
            parts = split_legacy(rest)
            if len(parts) < 2:
                raise ValueError(f"{node.keyword} must have two arguments")
            return (ast.KeyValue(parts[0], parts[1], True),)
        pairs = []
        search = 0
        for word in words:
            at = rest.find(word, search)
            search = at + len(word) if at >= 0 else search
            if "=" not in word:
                raise self.error_at(
                    line, node.rest_offset + max(at, 0),
                    f"Syntax error - can't find = in {_go_quote(word)}. Must be of the form: name=value")
            key, _, value = word.partition("=")
            pairs.append(ast.KeyValue(key, value, False))
        return tuple(pairs)

    # -- heredocs --------------------------------------------------------------

    def read_heredocs(self, line: LogicalLine, node: Node) -> None:
        target = node.child if node.keyword == "ONBUILD" else node
        if target is None or target.keyword not in HEREDOC_KEYWORDS or target.is_json:
            return
        for offset, marker in heredocs_in_line(line.text):
            body = self.scanner.read_heredoc(marker.delimiter, marker.strip_tabs)
            if body is None:
                raise self.error_at(line, offset, f"unterminated heredoc {marker.delimiter}")
            target.heredocs.append(_heredoc(marker, body))
        line.end = self.scanner.pos


def _heredoc(marker: HeredocMarker, body: str) -> ast.Heredoc:
    return ast.Heredoc(delimiter=marker.delimiter, body=body, expand=marker.expand,
                       strip_tabs=marker.strip_tabs, fd=marker.fd)


def _command_words(command: ast.ShellForm | ast.ExecForm | None) -> tuple[str, ...]:
    if command is None:
        return ()
    if isinstance(command, ast.ShellForm):
        return (command.text,)
    return command.args


def parse(text: str, *, path: str = "Dockerfile") -> ast.Dockerfile:
    """Parse Dockerfile text into a `Dockerfile` AST; raises DockerfileError."""
    try:
        return Parser(text, path).run()
    except DockerfileError:
        raise
    except RecursionError:
        raise DockerfileError("Dockerfile nested too deeply", file=path) from None
