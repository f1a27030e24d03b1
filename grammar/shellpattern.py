r"""Shell patterns of `${v#p}`, `${v%p}` and `${v/p/r}`, matched the way BuildKit does.

BuildKit turns a pattern into a Go regexp: `*` is any run of characters (shortest
or longest), `?` is one character, `\` escapes `*`, `?` and `\` (and is dropped
before `}` and `/`, which it only protected from the `${...}` syntax); every other
character, `[` and `]` included, is literal: there are no bracket expressions.
Neither wildcard matches a newline (Go's `.`). Suffixes are trimmed by reversing
pattern and value, and `//` replaces like Go's Regexp.ReplaceAllString (an empty
match right after a match is skipped; the replacement is a template in which
`$0`/`${0}` is the match, `$$` a dollar, and any other `$name` empty).

    trim_prefix(pattern, value, longest) -> str
    trim_suffix(pattern, value, longest) -> str
    replace(pattern, value, replacement, replace_all) -> str

Each raises PatternError with BuildKit's message for a malformed pattern.
"""

from __future__ import annotations

import re

__all__ = ["PatternError", "trim_prefix", "trim_suffix", "replace"]

_BOM = "\ufeff"
_BAD_RUNE = "\ufffd"  # what Go prints for the EOF rune


class PatternError(ValueError):
    """A pattern BuildKit cannot convert; str() is BuildKit's message."""


def _is_name_char(ch: str) -> bool:
    return ch.isalpha() or ch.isdecimal() or ch == "_"


def _compile_pattern(pattern: str, *, greedy: bool, anchored: bool) -> re.Pattern[str]:
    """A shell pattern as a regular expression, the way BuildKit converts it."""
    out = ["^"] if anchored else []
    star = ".*" if greedy else ".*?"
    i = 1 if pattern.startswith(_BOM) else 0  # text/scanner again
    n = len(pattern)
    while i < n:
        ch = pattern[i]
        i += 1
        if ch == "*":
            out.append(star)
        elif ch == "?":
            out.append(".")
        elif ch == "\\":
            follower = pattern[i] if i < n else ""
            if follower in ("}", "/") and follower:
                continue  # the escape only served the ${...} syntax
            if not follower or follower not in ("*", "?", "\\"):
                raise PatternError(
                    f"invalid pattern ({pattern}) in substitution: "
                    f"invalid escape '\\{follower or _BAD_RUNE}'")
            i += 1
            out.append(re.escape(follower))
        else:
            out.append(re.escape(ch))
    try:
        return re.compile("".join(out))
    except re.error as exc:  # pragma: no cover - every literal is escaped
        raise PatternError(f"invalid pattern ({pattern}) in substitution: {exc}") from None


def trim_prefix(pattern: str, value: str, longest: bool) -> str:
    """`value` without its shortest (or longest) prefix matching `pattern`."""
    match = _compile_pattern(pattern, greedy=longest, anchored=True).search(value)
    return value[match.end():] if match else value


def _reverse_pattern(pattern: str) -> str:
    """Reverse a pattern, keeping each `\\x` pair in order (a\\*c -> c\\*a)."""
    pieces: list[str] = []
    i, last = 0, len(pattern) - 1
    while i <= last:
        if pattern[i] == "\\" and i != last:
            pieces.append(pattern[i:i + 2])
            i += 2
        else:
            pieces.append(pattern[i])
            i += 1
    return "".join(reversed(pieces))


def trim_suffix(pattern: str, value: str, longest: bool) -> str:
    """`value` without its shortest (or longest) suffix matching `pattern`."""
    # A regexp finds leftmost matches only: reverse pattern and value instead.
    return trim_prefix(_reverse_pattern(pattern), value[::-1], longest)[::-1]


def _go_template(template: str, match: str) -> str:
    """Expand a Go regexp replacement template for a match with no groups."""
    out: list[str] = []
    i, n = 0, len(template)
    while i < n:
        dollar = template.find("$", i)
        if dollar < 0:
            break
        out.append(template[i:dollar])
        i = dollar + 1
        if i < n and template[i] == "$":
            out.append("$")
            i += 1
            continue
        j = i
        brace = j < n and template[j] == "{"
        if brace:
            j += 1
        start = j
        while j < n and _is_name_char(template[j]):
            j += 1
        name = template[start:j]
        if not name or (brace and (j >= n or template[j] != "}")):
            out.append("$")  # malformed: the '$' is plain text
            continue
        if brace:
            j += 1
        i = j
        if name == "0":  # group 0 is the whole match ("00" is no number for Go)
            out.append(match)
        # every other number or name refers to a group that does not exist
    out.append(template[i:])
    return "".join(out)


def _go_replace_all(regex: re.Pattern[str], value: str, template: str) -> str:
    """Go's Regexp.ReplaceAllString: an empty match right after a match is skipped."""
    out: list[str] = []
    last_end = 0
    pos = 0
    end = len(value)
    while pos <= end:
        match = regex.search(value, pos)
        if match is None:
            break
        start, stop = match.span()
        out.append(value[last_end:start])
        if stop > last_end or start == 0:
            out.append(_go_template(template, match.group(0)))
        last_end = stop
        width = 1 if pos < end else 0
        if pos + width > stop:
            pos += width
        elif pos + 1 > stop:
            pos += 1
        else:
            pos = stop
    out.append(value[last_end:])
    return "".join(out)


def replace(pattern: str, value: str, replacement: str, replace_all: bool) -> str:
    """`${value/pattern/replacement}`, or `${value//pattern/replacement}` if replace_all."""
    regex = _compile_pattern(pattern, greedy=True, anchored=False)
    if replace_all:
        return _go_replace_all(regex, value, replacement)
    match = regex.search(value)
    if match is None:
        return value
    return value[:match.start()] + replacement + value[match.end():]
