"""The functions a bake file's expressions may call (the part of buildx's stdlib
that bake files commonly use), and the value rules they share with
builder.bake.hclexpr: string conversion, truth, numbers."""

from __future__ import annotations

import re
import time
from typing import Any, Callable


class ExpressionError(Exception):
    """An expression that cannot be parsed or evaluated; `str(e)` says why."""


def to_string(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float, str)):
        return str(value)
    raise ExpressionError(f"cannot use a {type(value).__name__} value in a string template")


def truth(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value in ("true", "false"):
        return value == "true"
    raise ExpressionError(f"a condition must be a bool, not {value!r}")


def number(value: Any) -> int | float:
    if isinstance(value, bool):
        raise ExpressionError(f"a number is needed, not {value!r}")
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            try:
                return float(value)
            except ValueError:
                pass
    raise ExpressionError(f"a number is needed, not {value!r}")


# -- functions: the part of buildx's stdlib bake files commonly use ----------------------

def _join(sep, *lists):
    return str(sep).join(to_string(x) for l in lists for x in l)


def _coalesce(*values):
    for v in values:
        if v is not None and v != "":
            return v
    raise ExpressionError("coalesce(): no non-null, non-empty argument")


def _format(fmt, *args):
    values = iter(args)

    def one(m: re.Match) -> str:
        spec = m.group(1)
        if spec == "%":
            return "%"
        value = next(values)
        if spec == "d":
            return str(int(number(value)))
        if spec == "q":
            return '"' + to_string(value).replace('"', '\\"') + '"'
        return to_string(value)

    return re.sub(r"%([%sdvq])", one, str(fmt))


def _substr(s, offset, length):
    s, offset, length = str(s), int(number(offset)), int(number(length))
    if offset < 0:
        offset += len(s)
    return s[offset:] if length < 0 else s[offset:offset + length]


def _timestamp():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "equal": lambda a, b: a == b,
    "notequal": lambda a, b: a != b,
    "and": lambda *v: all(truth(x) for x in v),
    "or": lambda *v: any(truth(x) for x in v),
    "not": lambda v: not truth(v),
    "lower": lambda s: str(s).lower(),
    "upper": lambda s: str(s).upper(),
    "trimspace": lambda s: str(s).strip(),
    "trim": lambda s, chars: str(s).strip(str(chars)),
    "trimprefix": lambda s, p: str(s)[len(p):] if str(s).startswith(p) else str(s),
    "trimsuffix": lambda s, p: str(s)[:-len(p)] if p and str(s).endswith(p) else str(s),
    "replace": lambda s, old, new: str(s).replace(str(old), str(new)),
    "regex_replace": lambda s, pattern, new: re.sub(str(pattern), re.sub(r"\$(\d)", r"\\\1", str(new)), str(s)),
    "join": _join,
    "split": lambda sep, s: str(s).split(str(sep)),
    "concat": lambda *lists: [x for l in lists for x in l],
    "coalesce": _coalesce,
    "length": lambda v: len(v),
    "contains": lambda l, v: v in l,
    "element": lambda l, i: l[int(number(i)) % len(l)],
    "distinct": lambda l: list(dict.fromkeys(l)),
    "substr": _substr,
    "format": _format,
    "timestamp": _timestamp,
    "add": lambda a, b: number(a) + number(b),
    "subtract": lambda a, b: number(a) - number(b),
    "tostring": to_string,
    "tonumber": number,
    "tobool": truth,
}
