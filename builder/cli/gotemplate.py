"""The subset of Go's text/template that docker users write in `--format`, run on
Python values (dicts, lists, strings, numbers) with Go's printing rules.

Supported (anything else is a TemplateSyntaxError naming it):
- text and actions `{{ ... }}`, trim markers `{{- ` / ` -}}`, comments `{{/* */}}`;
- operands: `.`, fields `.A.B` (a dict's keys), `$` and variables `$x`, `$x.A`,
  string ("..." with Go escapes, `raw`), number, `true`/`false`/`nil` literals,
  parenthesised pipelines `(index .X 0)`;
- pipelines `a | f b` (the value goes in as the last argument), `{{$x := pipeline}}`;
- `{{if}}`/`{{else if}}`/`{{else}}`/`{{end}}`, `{{with}}`, `{{range}}` over a list or
  a dict (keys sorted, as Go), with `$v :=` or `$k, $v :=`, and `{{else}}`;
- functions: docker's `json`, `join`, `split`, `lower`, `upper`, `title`, `pad`,
  `truncate`, `println`, and Go's `index`, `len`, `print`, `printf` (%s %d %v %q %%),
  `eq`, `ne`, `lt`, `le`, `gt`, `ge`, `and`, `or`, `not`.
Not supported: `define`, `template`, `block`, `break`, `continue`, `slice`, `call`,
`html`, `js`, `urlquery`, method calls.

Printing follows Go's fmt `%v`: lists as `[a b]`, dicts as `map[k:v]` (keys sorted),
null as `<nil>`, a missing key as `<no value>`. A `Record` (one row of a listing) is
strict: a field it lacks is an error (docker: "can't evaluate field"), and `json .`
of it escapes <, > and & as Go's json.Marshal does.

The syntax (tokens, pipelines, the node tree) is builder.cli.templateparse; this
module owns values, functions and running a parsed template.
"""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal
from dataclasses import dataclass
from typing import Any, Callable

from lamina.builder.cli.templateparse import (Field, Ident, Literal, Node, Pipeline, TemplateError,  # noqa: F401
                                              TemplateSyntaxError, Var, FUNCTION_NAMES, parse)

__all__ = ["Template", "TemplateError", "TemplateSyntaxError", "Record", "MISSING", "go_str",
           "GoStruct", "GoMap", "GoNilSlice", "GoDuration", "GoTime", "go_duration",
           "parse", "render"]


class _Missing:
    def __repr__(self) -> str:
        return "<no value>"

    def __bool__(self) -> bool:
        return False


MISSING = _Missing()


class Record(dict):
    """A listing row (docker's formatter context): a field it lacks is an error."""

    kind = "row"


class GoStruct(dict):
    """A Go struct (docker's inspect types): `fields` maps each field, in declaration
    order, to its zero value, which a field access gets when the dict lacks the key (the
    dict itself holds what JSON shows: Go's omitempty). A field not declared is an error;
    printed as Go's %v of a struct, `{v1 v2 ...}`."""

    def __init__(self, kind: str, fields: dict[str, Any], values: dict[str, Any] | None = None) -> None:
        super().__init__(values or {})
        self.kind = kind
        self.fields = fields

    def field(self, name: str) -> Any:
        if name in self:
            return self[name]
        if name in self.fields:
            return self.fields[name]
        raise TemplateError(f"can't evaluate field {name} in type {self.kind}")


class GoMap(dict):
    """A typed Go map: `index` of a missing key is `zero` (the element type's zero
    value); `nil` ones print `map[]` and marshal as null."""

    def __init__(self, values: dict | None = None, *, zero: Any = "", nil: bool = False) -> None:
        super().__init__(values or {})
        self.zero = zero
        self.nil = nil and not values


class GoNilSlice(list):
    """A nil Go slice: printed `[]`, marshalled as null."""


class GoDuration(int):
    """A time.Duration in nanoseconds: printed as Go's Duration.String() ("1m30s"),
    marshalled as the number."""


class GoTime(str):
    """A time.Time: marshalled as the RFC 3339 text it holds, printed as `shown` (Go's
    Time.String(), e.g. "2026-01-02 03:04:05.123 +0000 UTC")."""

    shown: str = ""

    def __new__(cls, text: str, shown: str) -> "GoTime":
        t = super().__new__(cls, text)
        t.shown = shown
        return t


def go_duration(ns: int) -> str:
    """Go's time.Duration.String()."""
    if ns == 0:
        return "0s"
    sign, u = ("-" if ns < 0 else ""), abs(ns)
    if u < 1_000_000_000:
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if u >= size or unit == "ns":
                whole, frac = divmod(u, size)
                digits = f"{frac:0{len(str(size)) - 1}d}".rstrip("0") if size > 1 else ""
                return f"{sign}{whole}{'.' + digits if digits else ''}{unit}"
    secs, frac = divmod(u, 1_000_000_000)
    h, rest = divmod(secs, 3600)
    m, s = divmod(rest, 60)
    digits = f"{frac:09d}".rstrip("0")
    out = f"{s}{'.' + digits if digits else ''}s"
    if h:
        return f"{sign}{h}h{m}m{out}"
    if m:
        return f"{sign}{m}m{out}"
    return sign + out


# -- printing ----------------------------------------------------------------------------

def go_float(f: float) -> str:
    """Go's %v of a float64: the shortest digits, in e-notation when the exponent is
    below -4 or at least 6 (strconv 'g' with shortest precision)."""
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    if f == 0:
        return "0"
    d = Decimal(repr(f)).normalize()
    exp = d.adjusted()
    if exp < -4 or exp >= 6:
        digits = "".join(map(str, d.as_tuple().digits))
        mant = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{'-' if f < 0 else ''}{mant}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    return format(d, "f")


def go_str(v: Any) -> str:
    """A value as Go's fmt.Sprint prints it (text/template's output of an action)."""
    if v is MISSING:
        return "<no value>"
    if v is None:
        return "<nil>"
    if isinstance(v, GoStruct):
        return "{" + " ".join(go_str(v.field(k)) for k in v.fields) + "}"
    if isinstance(v, GoDuration):
        return go_duration(int(v))
    if isinstance(v, GoTime):
        return v.shown
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return v
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return go_float(v)
    if isinstance(v, dict):
        return "map[" + " ".join(f"{go_str(k)}:{go_str(v[k])}" for k in sorted(v)) + "]"
    if isinstance(v, (list, tuple)):
        return "[" + " ".join(go_str(x) for x in v) + "]"
    return str(v)


def _truth(v: Any) -> bool:
    if v is None or v is MISSING:
        return False
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        return v != 0
    if isinstance(v, (str, list, tuple, dict)):
        return len(v) > 0
    return True


def _json_value(v: Any) -> Any:
    """A value as Go's encoder sees it: a missing key is null, an integral float is
    written without a fraction (Go's float64 1e6 is `1000000`)."""
    if v is MISSING or (isinstance(v, GoMap) and v.nil) or isinstance(v, GoNilSlice):
        return None
    if isinstance(v, GoDuration):
        return int(v)
    if isinstance(v, GoTime):
        return str(v)
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e21:
        return int(v)
    if isinstance(v, dict):
        return {k: _json_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_value(x) for x in v]
    return v


def go_json(v: Any) -> str:
    """docker's `json` function: Go's encoder without HTML escaping, compact. A Record
    marshals itself (json.Marshal: <, > and & escaped), as docker's contexts do."""
    if isinstance(v, Record):
        return (json.dumps(v, separators=(",", ":"), ensure_ascii=False)
                .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))
    return json.dumps(_json_value(v), separators=(",", ":"), ensure_ascii=False, default=str)


# -- functions ---------------------------------------------------------------------------

def _join(items: Any, sep: Any) -> str:
    if not isinstance(items, (list, tuple)):
        raise TemplateError(f"wrong type for value; expected []string; got {_go_type(items)}")
    return str(sep).join(go_str(x) for x in items)


def _index(item: Any, *keys: Any) -> Any:
    for k in keys:
        if isinstance(item, (list, tuple, str)):
            if not isinstance(k, int) or isinstance(k, bool):
                raise TemplateError(f"cannot index slice/array with type {_go_type(k)}")
            if not 0 <= k < len(item):
                raise TemplateError(f"index out of range: {k}")
            item = item[k]
        elif isinstance(item, GoMap):
            item = item.get(k, item.zero)
        elif isinstance(item, dict):
            if k in item:
                item = item[k]
            else:  # the zero value of the map's element type
                item = "" if item and all(isinstance(x, str) for x in item.values()) else MISSING
        elif item is None or item is MISSING:
            raise TemplateError("index of untyped nil")
        else:
            raise TemplateError(f"can't index item of type {_go_type(item)}")
    return item


def _title(s: Any) -> str:
    """Go's strings.Title: the first letter of every word upper-cased, the rest kept."""
    out, prev_sep = [], True
    for ch in str(s):
        out.append(ch.upper() if prev_sep and ch.isalpha() else ch)
        prev_sep = not (ch.isalnum() or ch == "_") if ch.isascii() else ch.isspace()
    return "".join(out)


def _len(v: Any) -> int:
    if isinstance(v, (str, list, tuple, dict)):
        return len(v)
    raise TemplateError(f"len of type {_go_type(v)}")


def _print(*args: Any) -> str:
    out = []
    for i, a in enumerate(args):  # Go's Sprint: a space between operands when neither is a string
        if i and not isinstance(a, str) and not isinstance(args[i - 1], str):
            out.append(" ")
        out.append(go_str(a))
    return "".join(out)


def _printf(fmt: Any, *args: Any) -> str:
    it = iter(args)

    def verb(m: re.Match) -> str:
        v = m.group(1)
        if v == "%":
            return "%"
        try:
            a = next(it)
        except StopIteration:
            return f"%!{v}(MISSING)"
        if v == "q":
            return json.dumps(go_str(a), ensure_ascii=False)
        if v == "d" and isinstance(a, int) and not isinstance(a, bool):
            return str(a)
        return go_str(a)
    return re.sub(r"%([sdvq%])", verb, str(fmt))


def _cmp(op: Callable[[Any, Any], bool]) -> Callable[..., bool]:
    def f(a: Any, b: Any) -> bool:
        try:
            return op(a, b)
        except TypeError:
            raise TemplateError(f"incompatible types for comparison: {_go_type(a)} and {_go_type(b)}") from None
    return f


def _eq(a: Any, *bs: Any) -> bool:
    return any(a == b for b in bs)


def _go_type(v: Any) -> str:
    if v is None or v is MISSING:
        return "<nil>"
    return {bool: "bool", int: "int", float: "float64", str: "string", list: "[]interface {}",
            tuple: "[]interface {}"}.get(type(v), "map[string]interface {}" if isinstance(v, dict) else type(v).__name__)


def _split(s: Any, sep: Any) -> list[str]:
    s, sep = str(s), str(sep)
    return list(s) if sep == "" else s.split(sep)


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "json": go_json,
    "join": _join,
    "split": _split,
    "lower": lambda s: str(s).lower(),
    "upper": lambda s: str(s).upper(),
    "title": _title,
    "pad": lambda s, left, right: " " * int(left) + go_str(s) + " " * int(right),
    "truncate": lambda s, n: go_str(s)[: int(n)],
    "index": _index,
    "len": _len,
    "print": _print,
    "println": lambda *a: " ".join(go_str(x) for x in a) + "\n",
    "printf": _printf,
    "eq": _eq,
    "ne": lambda a, b: a != b,
    "lt": _cmp(lambda a, b: a < b),
    "le": _cmp(lambda a, b: a <= b),
    "gt": _cmp(lambda a, b: a > b),
    "ge": _cmp(lambda a, b: a >= b),
    "not": lambda a: not _truth(a),
}
# `and`/`or` return one of their operands, as Go's
_LOGIC = {"and", "or"}
assert set(FUNCTIONS) | _LOGIC == FUNCTION_NAMES
# in a table header every formatting function passes its (header) argument through
_HEADER_PASS = {"json", "join", "split", "lower", "upper", "title", "pad", "truncate", "index"}


# -- execution ---------------------------------------------------------------------------

class _Exec:
    def __init__(self, root: Any, header: bool) -> None:
        self.root = root
        self.header = header

    def field(self, value: Any, names: tuple[str, ...]) -> Any:
        for n in names:
            if isinstance(value, GoStruct):
                value = value.field(n)
            elif isinstance(value, Record):
                if n not in value:
                    raise TemplateError(f"can't evaluate field {n} in type {value.kind}")
                value = value[n]
            elif isinstance(value, dict):
                value = value.get(n, MISSING)
            elif value is None or value is MISSING:
                raise TemplateError(f"nil pointer evaluating interface {{}}.{n}")
            else:
                raise TemplateError(f"can't evaluate field {n} in type {_go_type(value)}")
        return value

    def operand(self, op: Any, dot: Any, scope: dict[str, Any]) -> Any:
        if isinstance(op, Field):
            return self.field(dot, op.names)
        if isinstance(op, Var):
            if op.name not in scope:
                raise TemplateSyntaxError(f"undefined variable: {op.name}")
            return self.field(scope[op.name], op.names)
        if isinstance(op, Literal):
            return op.value
        if isinstance(op, Pipeline):
            return self.field(self.pipeline(op, dot, scope), op.names)
        raise TemplateError(f"can't use {op} as a value")

    def pipeline(self, pipe: Pipeline, dot: Any, scope: dict[str, Any]) -> Any:
        value: Any = _NOTHING
        for cmd in pipe.commands:
            head = cmd[0]
            if isinstance(head, Ident):
                args = [self.operand(a, dot, scope) for a in cmd[1:]]
                if value is not _NOTHING:
                    args.append(value)
                value = self.call(head.name, args)
            else:
                if len(cmd) > 1 or value is not _NOTHING:
                    raise TemplateError(f"can't give argument to non-function {_describe(head)}")
                value = self.operand(head, dot, scope)
        for name in pipe.decl[-1:]:
            scope[name] = value
        return value

    def call(self, name: str, args: list[Any]) -> Any:
        if name in _LOGIC:
            if not args:
                raise TemplateError(f"wrong number of args for {name}")
            for a in args[:-1]:
                if _truth(a) != (name == "and"):
                    return a
            return args[-1]
        if self.header and name in _HEADER_PASS:
            return args[0] if args else ""
        try:
            return FUNCTIONS[name](*args)
        except TemplateError as e:
            raise TemplateError(f"error calling {name}: {e}") from None
        except TypeError:
            raise TemplateError(f"wrong number of args for {name}: got {len(args)}") from None
        except ValueError as e:  # e.g. pad/truncate given a word where a number belongs
            raise TemplateError(f"error calling {name}: {e}") from None

    def run(self, nodes: list[Node], dot: Any, scope: dict[str, Any], out: list[str]) -> None:
        for n in nodes:
            if n.kind == "text":
                out.append(n.text)
            elif n.kind == "action":
                v = self.pipeline(n.pipe, dot, scope)
                if not n.pipe.decl:
                    out.append(go_str(v))
            elif n.kind in ("if", "with"):
                inner = dict(scope)
                v = self.pipeline(n.pipe, dot, inner)
                if _truth(v):
                    self.run(n.body, v if n.kind == "with" else dot, inner, out)
                else:
                    self.run(n.orelse, dot, dict(scope), out)
            elif n.kind == "range":
                inner = dict(scope)
                pipe = Pipeline((), n.pipe.commands, n.pipe.names)
                v = self.pipeline(pipe, dot, inner)
                if isinstance(v, dict):
                    items = [(k, v[k]) for k in sorted(v)]
                elif isinstance(v, (list, tuple)):
                    items = list(enumerate(v))
                elif v is None or v is MISSING:
                    items = []
                else:
                    raise TemplateError(f"range can't iterate over {go_str(v)}")
                if not items:
                    self.run(n.orelse, dot, dict(scope), out)
                for k, item in items:
                    s = dict(inner)
                    if len(n.pipe.decl) == 1:
                        s[n.pipe.decl[0]] = item
                    elif len(n.pipe.decl) == 2:
                        s[n.pipe.decl[0]], s[n.pipe.decl[1]] = k, item
                    self.run(n.body, item, s, out)


_NOTHING = object()


def _describe(op: Any) -> str:
    if isinstance(op, Field):
        return "." + ".".join(op.names)
    if isinstance(op, Var):
        return ".".join((op.name, *op.names))
    if isinstance(op, Literal):
        return go_str(op.value)
    return "(pipeline)"


@dataclass(frozen=True)
class Template:
    """A parsed template; `render(data)` runs it (`header=True`: as docker renders a
    table header, every formatting function passing its argument through)."""

    source: str
    nodes: tuple[Node, ...]

    def render(self, data: Any, *, header: bool = False) -> str:
        out: list[str] = []
        try:
            _Exec(data, header).run(list(self.nodes), data, {"$": data}, out)
        except RecursionError:  # an image's label or healthcheck of JSON arrays 500 deep
            raise TemplateError("a value is nested too deeply to print") from None
        return "".join(out)


def compile_template(source: str) -> Template:
    return Template(source, tuple(parse(source)))


def render(source: str, data: Any) -> str:
    return compile_template(source).render(data)
