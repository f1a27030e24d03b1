"""HCL2 expressions and string templates of a bake file, evaluated.

python-hcl2 parses a bake file's structure but leaves every expression as text:
a quoted string stays `"…"` with its escapes, a heredoc `"<<EOT…EOT"`, anything
else (a variable, a call, an operation) as bare text or `${…}`. This module turns
those into values, with the subset of HCL a bake file uses:

- templates: `${expr}` interpolation, `$${` and `%%{` escapes (a template that is
  exactly one `${expr}` yields the value itself, not its text); `%{ if }`/`%{ for }`
  directives are refused with a clear error;
- expressions: strings, numbers, `true`/`false`/`null`, lists `[a, b]`, variables,
  `a.b` / `a[0]` access, function calls (buildx's common stdlib subset, builder.bake.hclfuncs, and
  the file's own `function` blocks), `! - * / % + - < <= > >= == != && ||`,
  `cond ? a : b`, parentheses.

`Scope.lookup(name)` supplies variable values; `Scope.call(name, args)` user
functions. Errors raise ExpressionError (the caller adds the file and attribute).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from lamina.builder.bake.hclfuncs import FUNCTIONS, ExpressionError, check_size, to_string
from lamina.builder.bake.hclfuncs import number as _number
from lamina.builder.bake.hclfuncs import truth as _truth


@dataclass(frozen=True)
class Scope:
    """Where names and user functions come from while evaluating."""

    lookup: Callable[[str], Any]
    call: Callable[[str, list], Any] | None = None


# -- raw python-hcl2 values -> values ------------------------------------------------------

def evaluate_raw(raw: Any, scope: Scope) -> Any:
    """A value as python-hcl2 left it (quotes kept) -> its evaluated value."""
    if isinstance(raw, bool) or raw is None or isinstance(raw, (int, float)):
        return raw
    if isinstance(raw, list):
        return [evaluate_raw(item, scope) for item in raw]
    if isinstance(raw, dict):
        return {unquote_key(k): evaluate_raw(v, scope) for k, v in raw.items()
                if not k.startswith("__")}
    if not isinstance(raw, str):
        raise ExpressionError(f"unexpected value {raw!r}")
    text = raw
    if text.startswith('"<<') and text.endswith('"'):
        return evaluate_template(heredoc_body(text[1:-1]), scope)
    if len(text) >= 2 and text.startswith('"') and text.endswith('"'):
        return evaluate_template(unescape(text[1:-1]), scope)
    if text.startswith("${") and text.endswith("}") and _closes_at_end(text):
        return evaluate_expression(text[2:-1], scope)
    return evaluate_expression(text, scope)


def unquote_key(key: str) -> str:
    if len(key) >= 2 and key.startswith('"') and key.endswith('"'):
        return unescape(key[1:-1])
    return key


def _closes_at_end(text: str) -> bool:
    """True if the `${` at the start is closed by the final `}` (not `${a} ${b}`)."""
    try:
        return _interpolation_end(text, 2) == len(text) - 1
    except ExpressionError:
        return False


def heredoc_body(text: str) -> str:
    """`<<EOT\\n…\\nEOT` or `<<-EOT` (indented: common leading spaces removed)."""
    first, _, rest = text.partition("\n")
    indented = first.startswith("<<-")
    lines = rest.split("\n")
    if lines and lines[-1].strip() == first.lstrip("<-").strip():
        lines = lines[:-1]
    if indented:
        widths = [len(l) - len(l.lstrip(" \t")) for l in lines if l.strip()]
        cut = min(widths) if widths else 0
        lines = [l[cut:] for l in lines]
    return "\n".join(lines) + "\n" if lines else ""


_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}


def unescape(body: str) -> str:
    """HCL's quoted-string escapes (\\n \\r \\t \\" \\\\ \\uNNNN \\UNNNNNNNN)."""
    out = []
    i = 0
    while i < len(body):
        c = body[i]
        if c != "\\" or i + 1 >= len(body):
            out.append(c)
            i += 1
            continue
        nxt = body[i + 1]
        if nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        elif nxt in "uU":
            width = 4 if nxt == "u" else 8
            digits = body[i + 2:i + 2 + width]
            if len(digits) != width or not re.fullmatch(r"[0-9a-fA-F]+", digits):
                raise ExpressionError(f"invalid escape \\{nxt}{digits}")
            out.append(chr(int(digits, 16)))
            i += 2 + width
        else:
            raise ExpressionError(f"invalid escape sequence \\{nxt}")
    return "".join(out)


# -- templates -------------------------------------------------------------------------

def evaluate_template(text: str, scope: Scope) -> Any:
    parts: list[Any] = []
    literal: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("$${", i):
            literal.append("${")
            i += 3
        elif text.startswith("%%{", i):
            literal.append("%{")
            i += 3
        elif text.startswith("${", i):
            end = _interpolation_end(text, i + 2)
            if literal:
                parts.append("".join(literal))
                literal = []
            inner = text[i + 2:end].strip().lstrip("~").rstrip("~")
            parts.append(_Value(evaluate_expression(inner, scope)))
            i = end + 1
        elif text.startswith("%{", i):
            raise ExpressionError("template directives (%{ if }, %{ for }) are not supported")
        else:
            literal.append(text[i])
            i += 1
    if literal:
        parts.append("".join(literal))
    if len(parts) == 1 and isinstance(parts[0], _Value):
        return parts[0].value
    return check_size("".join(p if isinstance(p, str) else to_string(p.value) for p in parts),
                      "string template")


@dataclass(frozen=True)
class _Value:
    value: Any


def _interpolation_end(text: str, start: int) -> int:
    """Index of the `}` closing an interpolation whose body starts at `start`."""
    depth = 0
    i = start
    while i < len(text):
        c = text[i]
        if c == '"':
            i = _string_end(text, i) + 1
            continue
        if c in "{([":
            depth += 1
        elif c in ")]":
            depth -= 1
        elif c == "}":
            if depth == 0:
                return i
            depth -= 1
        i += 1
    raise ExpressionError(f"unclosed ${{ in {text!r}")


def _string_end(text: str, start: int) -> int:
    """Index of the `"` closing the string opening at `start` (templates nest)."""
    i = start + 1
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == '"':
            return i
        if text.startswith("${", i):
            i = _interpolation_end(text, i + 2) + 1
            continue
        i += 1
    raise ExpressionError(f"unterminated string in {text!r}")


# -- expressions -----------------------------------------------------------------------

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_-]*)
  | (?P<op>==|!=|<=|>=|&&|\|\||\.\.\.|[-+*/%!<>?:()\[\],.{}=])
  | (?P<string>")
""", re.VERBOSE)


def _tokenize(text: str) -> list[tuple[str, Any]]:
    tokens: list[tuple[str, Any]] = []
    i = 0
    while i < len(text):
        m = _TOKEN.match(text, i)
        if not m:
            raise ExpressionError(f"unexpected character {text[i]!r} in {text!r}")
        kind = m.lastgroup
        if kind == "string":
            end = _string_end(text, i)
            tokens.append(("string", text[i + 1:end]))
            i = end + 1
            continue
        if kind == "number":
            raw = m.group()
            tokens.append(("number", float(raw) if any(c in raw for c in ".eE") else int(raw)))
        elif kind == "name":
            tokens.append(("name", m.group()))
        elif kind == "op":
            tokens.append(("op", m.group()))
        i = m.end()
    tokens.append(("end", None))
    return tokens


_BINARY = {  # operator -> precedence (higher binds tighter), as HCL
    "||": 1, "&&": 2, "==": 3, "!=": 3, "<": 4, "<=": 4, ">": 4, ">=": 4,
    "+": 5, "-": 5, "*": 6, "/": 6, "%": 6,
}


class _Parser:
    def __init__(self, text: str, scope: Scope) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.pos = 0
        self.scope = scope

    def peek(self) -> tuple[str, Any]:
        return self.tokens[self.pos]

    def take(self) -> tuple[str, Any]:
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def expect(self, op: str) -> None:
        kind, value = self.take()
        if kind != "op" or value != op:
            raise ExpressionError(f"expected {op!r} in {self.text!r}")

    def parse(self) -> Any:
        value = self.conditional()
        if self.peek()[0] != "end":
            raise ExpressionError(f"unexpected {self.peek()[1]!r} in {self.text!r}")
        return value

    def conditional(self) -> Any:
        cond = self.binary(0)
        if self.peek() == ("op", "?"):
            self.take()
            yes = self.conditional()
            self.expect(":")
            no = self.conditional()
            return yes if _truth(cond) else no
        return cond

    def binary(self, floor: int) -> Any:
        left = self.unary()
        while True:
            kind, op = self.peek()
            if kind != "op" or op not in _BINARY or _BINARY[op] <= floor:
                return left
            self.take()
            right = self.binary(_BINARY[op])
            left = _apply(op, left, right)

    def unary(self) -> Any:
        kind, op = self.peek()
        if kind == "op" and op == "!":
            self.take()
            return not _truth(self.unary())
        if kind == "op" and op == "-":
            self.take()
            value = self.unary()
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ExpressionError(f"cannot negate {value!r}")
            return -value
        return self.postfix(self.primary())

    def postfix(self, value: Any) -> Any:
        while True:
            tok = self.peek()
            if tok == ("op", "["):
                self.take()
                index = self.conditional()
                self.expect("]")
                value = _index(value, index)
            elif tok == ("op", ".") and self.tokens[self.pos + 1][0] in ("name", "number"):
                self.take()
                value = _index(value, self.take()[1])
            else:
                return value

    def primary(self) -> Any:
        kind, value = self.take()
        if kind == "number":
            return value
        if kind == "string":
            return evaluate_template(unescape_template_string(value), self.scope)
        if kind == "op" and value == "(":
            inner = self.conditional()
            self.expect(")")
            return inner
        if kind == "op" and value == "[":
            items = []
            while self.peek() != ("op", "]"):
                items.append(self.conditional())
                if self.peek() == ("op", ","):
                    self.take()
                elif self.peek() != ("op", "]"):
                    raise ExpressionError(f"expected ',' or ']' in {self.text!r}")
            self.take()
            return items
        if kind == "name":
            if value == "true":
                return True
            if value == "false":
                return False
            if value == "null":
                return None
            if self.peek() == ("op", "("):
                return self.call(value)
            return self.scope.lookup(value)
        raise ExpressionError(f"unexpected {value!r} in {self.text!r}")

    def call(self, name: str) -> Any:
        self.expect("(")
        args = []
        expand = False
        while self.peek() != ("op", ")"):
            args.append(self.conditional())
            if self.peek() == ("op", "..."):
                self.take()
                expand = True
            if self.peek() == ("op", ","):
                self.take()
            elif self.peek() != ("op", ")"):
                raise ExpressionError(f"expected ',' or ')' in call of {name}()")
        self.take()
        if expand:
            if not isinstance(args[-1], list):
                raise ExpressionError(f"{name}(...): only a list can be expanded with ...")
            args = args[:-1] + list(args[-1])
        if name in FUNCTIONS:
            try:
                return check_size(FUNCTIONS[name](*args), f"{name}()")
            except (TypeError, ValueError, IndexError, KeyError, ZeroDivisionError, re.error) as e:
                raise ExpressionError(f"{name}({', '.join(map(repr, args))}): {e}") from None
        if self.scope.call is not None:
            return self.scope.call(name, args)
        raise ExpressionError(f"unknown function {name}()")


def unescape_template_string(body: str) -> str:
    """Escapes of a quoted string inside an expression, keeping `${…}` intact."""
    return unescape(body)


def evaluate_expression(text: str, scope: Scope) -> Any:
    return _Parser(text, scope).parse()


def _apply(op: str, a: Any, b: Any) -> Any:
    if op == "||":
        return _truth(a) or _truth(b)
    if op == "&&":
        return _truth(a) and _truth(b)
    if op == "==":
        return a == b
    if op == "!=":
        return a != b
    x, y = _number(a), _number(b)
    if op == "<":
        return x < y
    if op == "<=":
        return x <= y
    if op == ">":
        return x > y
    if op == ">=":
        return x >= y
    if op == "+":
        return x + y
    if op == "-":
        return x - y
    if op == "*":
        return x * y
    if op == "/":
        if y == 0:
            raise ExpressionError("division by zero")
        result = x / y
        return int(result) if result.is_integer() else result
    if y == 0:
        raise ExpressionError("modulo by zero")
    return x % y


def _index(value: Any, key: Any) -> Any:
    try:
        if isinstance(value, list):
            return value[int(_number(key))]
        if isinstance(value, dict):
            return value[str(key)]
    except (IndexError, KeyError):
        raise ExpressionError(f"no element {key!r} in {value!r}") from None
    raise ExpressionError(f"cannot index {value!r}")
