"""The syntax of lamina's Go-template subset (see builder.cli.gotemplate): the
tokens of an action, operands and pipelines, and the node tree of `{{if}}`,
`{{with}}`, `{{range}}` with trim markers and comments. What the subset lacks is a
TemplateSyntaxError naming it, raised before the template runs."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any


class TemplateError(Exception):
    """A template failed while it ran (e.g. index out of range, unknown field)."""


class TemplateSyntaxError(TemplateError):
    """A template that cannot be parsed, or uses what the subset lacks."""



# the functions builder.cli.gotemplate defines (`and`/`or` included)
FUNCTION_NAMES = frozenset({"json", "join", "split", "lower", "upper", "title", "pad", "truncate", "index",
                            "len", "print", "println", "printf", "eq", "ne", "lt", "le", "gt", "ge", "not",
                            "and", "or"})
_UNSUPPORTED = {"define", "template", "block", "break", "continue", "slice", "call", "html", "js",
                "urlquery"}


@dataclass(frozen=True)
class Field:
    names: tuple[str, ...]        # .A.B from dot


@dataclass(frozen=True)
class Var:
    name: str                     # "$" or "$x"
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class Literal:
    value: Any


@dataclass(frozen=True)
class Ident:
    name: str


@dataclass(frozen=True)
class Pipeline:
    decl: tuple[str, ...]                      # variables declared: ($x) or ($k, $v)
    commands: tuple[tuple[Any, ...], ...]      # each: operands (first may be an Ident)
    names: tuple[str, ...] = ()                # field chain after a parenthesised pipeline


@dataclass
class Node:
    kind: str                       # text | action | if | with | range
    text: str = ""
    pipe: Pipeline | None = None
    body: list["Node"] = field(default_factory=list)
    orelse: list["Node"] = field(default_factory=list)


_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<str>"(?:[^"\\\n]|\\.)*")
  | (?P<raw>`[^`]*`)
  | (?P<char>'(?:[^'\\]|\\.)+')
  | (?P<decl>:=|=)
  | (?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+)
  | (?P<dot>\.)
  | (?P<var>\$[A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<num>[-+]?(?:0[xX][0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+))
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[|(),])
  | (?P<closefield>\)(?:\.[A-Za-z_][A-Za-z0-9_]*)+)
""", re.X)


def _tokens(src: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(src):
        m = _TOKEN.match(src, pos)
        if m is None:
            raise TemplateSyntaxError(f"unexpected {src[pos]!r} in action {{{{{src}}}}}")
        kind = m.lastgroup
        if kind == "punct" and m.group() == ")":
            m2 = re.compile(r"\)((?:\.[A-Za-z_][A-Za-z0-9_]*)+)").match(src, pos)
            if m2:
                out.append(("closefield", m2.group(1)))
                pos = m2.end()
                continue
        if kind != "ws":
            out.append((kind, m.group()))
        pos = m.end()
    return out


def _go_string(tok: str) -> str:
    try:
        return json.loads(tok) if "\\x" not in tok and "\\'" not in tok else \
            bytes(tok[1:-1], "utf-8").decode("unicode_escape")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise TemplateSyntaxError(f"bad string literal {tok}") from None


class _PipeParser:
    def __init__(self, toks: list[tuple[str, str]], src: str) -> None:
        self.toks, self.i, self.src = toks, 0, src

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> tuple[str, str]:
        t = self.toks[self.i]
        self.i += 1
        return t

    def pipeline(self, allow_decl: bool = True) -> Pipeline:
        decl: list[str] = []
        if allow_decl:
            j = self.i
            names = []
            while j < len(self.toks) and self.toks[j][0] == "var" and "." not in self.toks[j][1]:
                names.append(self.toks[j][1])
                j += 1
                if j < len(self.toks) and self.toks[j] == ("punct", ","):
                    j += 1
                    continue
                break
            if names and j < len(self.toks) and self.toks[j][0] == "decl":
                decl, self.i = names, j + 1
        commands = []
        while True:
            cmd = []
            while (t := self.peek()) is not None and t not in (("punct", "|"), ("punct", ")")) \
                    and t[0] != "closefield":
                cmd.append(self.operand())
            if not cmd:
                raise TemplateSyntaxError(f"missing value for command in {{{{{self.src}}}}}")
            commands.append(tuple(cmd))
            if self.peek() == ("punct", "|"):
                self.take()
                continue
            break
        return Pipeline(tuple(decl), tuple(commands))

    def operand(self) -> Any:
        kind, val = self.take()
        if kind == "field":
            return Field(tuple(val[1:].split(".")))
        if kind == "dot":
            return Field(())
        if kind == "var":
            name, *rest = val.split(".")
            return Var(name, tuple(rest))
        if kind == "str":
            return Literal(_go_string(val))
        if kind == "raw":
            return Literal(val[1:-1])
        if kind == "char":
            return Literal(ord(_go_string('"' + val[1:-1] + '"')))
        if kind == "num":
            try:
                return Literal(int(val, 0))
            except ValueError:
                return Literal(float(val))
        if kind == "ident":
            if val in ("true", "false"):
                return Literal(val == "true")
            if val == "nil":
                return Literal(None)
            if val in _UNSUPPORTED:
                raise TemplateSyntaxError(f"{val!r} is not in lamina's Go-template subset")
            if val not in FUNCTION_NAMES:
                raise TemplateSyntaxError(f'function "{val}" not defined')
            return Ident(val)
        if (kind, val) == ("punct", "("):
            inner = self.pipeline(allow_decl=False)
            t = self.peek()
            if t is None:
                raise TemplateSyntaxError(f"unclosed left paren in {{{{{self.src}}}}}")
            self.take()
            if t[0] == "closefield":
                return Pipeline(inner.decl, inner.commands, tuple(t[1][1:].split(".")))
            return inner
        raise TemplateSyntaxError(f"unexpected {val!r} in {{{{{self.src}}}}}")


def _parse_pipeline(src: str, allow_decl: bool = True) -> Pipeline:
    p = _PipeParser(_tokens(src), src)
    pipe = p.pipeline(allow_decl)
    if p.peek() is not None:
        raise TemplateSyntaxError(f"unexpected {p.peek()[1]!r} in {{{{{src}}}}}")
    return pipe


_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)


def parse(source: str) -> list[Node]:
    """The node tree of a template; TemplateSyntaxError on what the subset lacks."""
    pieces: list[tuple[str, str]] = []  # ("text", s) | ("action", s)
    pos = 0
    for m in _ACTION.finditer(source):
        text = source[pos:m.start()]
        if m.group(1):
            text = text.rstrip()
        if pieces and pieces[-1][0] == "trim":
            text = text.lstrip()
            pieces.pop()
        pieces.append(("text", text))
        pieces.append(("action", m.group(2).strip()))
        if m.group(3):
            pieces.append(("trim", ""))
        pos = m.end()
    tail = source[pos:]
    if "{{" in tail:
        raise TemplateSyntaxError("unclosed action")
    if pieces and pieces[-1][0] == "trim":
        pieces.pop()
        tail = tail.lstrip()
    pieces.append(("text", tail))

    root: list[Node] = []
    stack: list[tuple[Node, list[Node]]] = []   # open block, list being filled
    current = root
    for kind, s in pieces:
        if kind == "text":
            if s:
                current.append(Node("text", text=s))
            continue
        if s.startswith("/*"):
            if not s.endswith("*/"):
                raise TemplateSyntaxError("unclosed comment")
            continue
        word = s.split(None, 1)[0] if s else ""
        rest = s[len(word):].strip()
        if word in ("if", "with", "range"):
            node = Node(word, pipe=_parse_pipeline(rest))
            current.append(node)
            stack.append((node, current))
            current = node.body
        elif word == "else":
            if not stack:
                raise TemplateSyntaxError("unexpected {{else}}")
            node, _ = stack[-1]
            if rest.startswith("if ") or rest.startswith("with "):
                # {{else if X}}: a new block in the else branch, closed by the chain's {{end}}
                w2 = rest.split(None, 1)
                inner = Node(w2[0], pipe=_parse_pipeline(w2[1]))
                node.orelse.append(inner)
                stack[-1] = (inner, stack[-1][1])
                current = inner.body
            elif rest:
                raise TemplateSyntaxError(f"unexpected {rest!r} after else")
            else:
                current = node.orelse
        elif word == "end":
            if not stack:
                raise TemplateSyntaxError("unexpected {{end}}")
            _, current = stack.pop()
        elif word in _UNSUPPORTED:
            raise TemplateSyntaxError(f"{{{{{word}}}}} is not in lamina's Go-template subset")
        elif not s:
            raise TemplateSyntaxError("missing value for command")
        else:
            current.append(Node("action", pipe=_parse_pipeline(s)))
    if stack:
        raise TemplateSyntaxError(f"unexpected EOF: {{{{{stack[-1][0].kind}}}}} without {{{{end}}}}")
    return root
