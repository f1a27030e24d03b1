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


# A bake file is hostile input. Go's RE2 (buildx) matches in linear time; Python's
# backtracking `re` takes exponential time on `(a+)+$`, so patterns run on the
# `regex` engine (python-hcl2's own dependency) under a time limit. Values are capped:
# `"${v}${v}"` over forty variables, or one `replace` of every character by a long
# string, would otherwise grow past any memory.
REGEX_SECONDS = 2.0
MAX_VALUE = 1 << 20   # characters of a string, items of a list


def check_size(value: Any, what: str) -> Any:
    if isinstance(value, (str, list, dict)) and len(value) > MAX_VALUE:
        raise ExpressionError(f"{what}: the value is longer than {MAX_VALUE} "
                              f"{'characters' if isinstance(value, str) else 'items'}")
    return value


def _replace(s, old, new):
    s, old, new = str(s), str(old), str(new)
    grows = (len(s) + 1 if old == "" else s.count(old)) * len(new)
    if grows > MAX_VALUE:
        raise ExpressionError(f"replace(): the result would be longer than {MAX_VALUE} characters")
    return s.replace(old, new)


def _regex_replace(s, pattern, new):
    import regex

    s, new = str(s), re.sub(r"\$(\d)", r"\\\1", str(new))
    try:
        compiled = regex.compile(str(pattern))
        count = sum(1 for _ in compiled.finditer(s, timeout=REGEX_SECONDS))
        # a back-reference copies at most the whole input
        each = len(new) * (len(s) + 1 if "\\" in new else 1)
        if count * each > MAX_VALUE:
            raise ExpressionError(f"regex_replace(): the result could be longer than "
                                  f"{MAX_VALUE} characters")
        return compiled.sub(new, s, timeout=REGEX_SECONDS)
    except TimeoutError:
        raise ExpressionError(f"regex_replace(): pattern {str(pattern)!r} took longer than "
                              f"{REGEX_SECONDS:g}s on a {len(s)}-character input") from None
    except regex.error as e:
        raise ExpressionError(f"regex_replace(): bad pattern {str(pattern)!r}: {e}") from None


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
    "replace": _replace,
    "regex_replace": _regex_replace,
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
