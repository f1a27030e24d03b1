"""The pattern language of docker paths, as text: Go's path cleaning and space
trimming, Go `filepath.Match` syntax (`GlobPattern`, COPY source wildcards) and the
ignore-pattern syntax of `.dockerignore`, `COPY --exclude` and `COPY --parents`
(`**`, classified exact / prefix / suffix / regex the way moby/patternmatcher does),
each translated into the tokens of builder.context.globmatch. Matching ignore lists
against paths, walking and loading `.dockerignore` files is
builder.context.dockerignore.

Written after Go's path/filepath and moby/patternmatcher (read, not copied). Pure.
Errors are `PatternError` (a builder.errors.BuildError).
"""

from __future__ import annotations

from dataclasses import dataclass

from lamina.builder.context.globmatch import Token, compile_tokens
from lamina.builder.errors import BuildError

__all__ = ["EXACT", "PREFIX", "REGEX", "SUFFIX", "GlobPattern", "PatternError", "char_class",
           "glob_tokens", "go_clean", "go_trim_space", "has_wildcards", "ignore_tokens"]


class PatternError(BuildError):
    """A malformed pattern (Go's filepath.ErrBadPattern or an illegal `!`)."""


# Go's unicode.IsSpace: Latin-1 space characters plus the White_Space property.
_GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006" \
            "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"


def go_trim_space(s: str) -> str:
    """Go's strings.TrimSpace (Python's str.strip also strips \\x1c-\\x1f, Go does not)."""
    return s.strip(_GO_SPACE)


def go_clean(p: str) -> str:
    """Go's path.Clean: collapse `//`, drop `.`, resolve `..` lexically (a rooted path
    never goes above `/`), "" -> ".", no trailing slash except for "/"."""
    if p == "":
        return "."
    rooted = p.startswith("/")
    parts: list[str] = []
    for comp in p.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not rooted:
                parts.append("..")
            continue
        parts.append(comp)
    out = "/".join(parts)
    if rooted:
        return "/" + out
    return out or "."


def has_wildcards(component: str) -> bool:
    """True when a path component holds an unescaped `*`, `?` or `[` (fsutil's
    containsWildcards: a backslash escapes the next character)."""
    i = 0
    while i < len(component):
        ch = component[i]
        if ch == "\\":
            i += 2
            continue
        if ch in "*?[":
            return True
        i += 1
    return False


def char_class(p: str, i: int) -> tuple[Token, int]:
    """Parse a Go filepath.Match character class starting after `[` at index i.
    Returns (its token, index after the closing `]`). Raises PatternError on
    Go's ErrBadPattern cases: empty class, leading `-` or `]`, dangling `\\`,
    unterminated class, range missing its upper bound."""
    negated = False
    if i < len(p) and p[i] == "^":
        negated = True
        i += 1
    ranges: list[tuple[int, int]] = []

    def get_esc(j: int) -> tuple[str, int]:
        if j >= len(p) or p[j] in "-]":
            raise PatternError("syntax error in pattern")
        if p[j] == "\\":
            j += 1
            if j >= len(p):
                raise PatternError("syntax error in pattern")
        ch = p[j]
        j += 1
        if j >= len(p):
            raise PatternError("syntax error in pattern")
        return ch, j

    while True:
        if i < len(p) and p[i] == "]" and ranges:
            i += 1
            break
        lo, i = get_esc(i)
        hi = lo
        if p[i] == "-":
            hi, i = get_esc(i + 1)
        ranges.append((ord(lo), ord(hi)))
    return ("class", negated, tuple(ranges)), i


def glob_tokens(p: str) -> list[Token]:
    """A Go filepath.Match pattern as tokens (builder.context.globmatch)."""
    out: list[Token] = []
    i = 0
    while i < len(p):
        ch = p[i]
        i += 1
        if ch == "*":
            out.append(("star",))
        elif ch == "?":
            out.append(("one",))
        elif ch == "\\":
            if i >= len(p):
                raise PatternError("syntax error in pattern")
            out.append(("lit", p[i]))
            i += 1
        elif ch == "[":
            cls, i = char_class(p, i)
            out.append(cls)
        else:
            out.append(("lit", ch))
    return out


@dataclass(frozen=True)
class GlobPattern:
    """One Go `filepath.Match` pattern. `*` and `?` do not match `/`; a `[...]` class
    may (as in Go); `**` is not special (it is `*` twice)."""

    text: str
    matcher: object  # builder.context.globmatch: linear in the name, whatever the pattern

    @classmethod
    def compile(cls, text: str) -> "GlobPattern":
        try:
            return cls(text, compile_tokens(glob_tokens(text)))
        except PatternError as e:
            raise PatternError(f"invalid pattern {text!r}: {e.message}") from None

    def match(self, name: str) -> bool:
        return self.matcher.matches(name)


# ---------------------------------------------------------------------------------
# ignore patterns (moby/patternmatcher semantics): how patternmatcher classifies one

EXACT, PREFIX, SUFFIX, REGEX = "exact", "prefix", "suffix", "regex"


def ignore_tokens(p: str) -> tuple[str, list[Token]]:
    """Translate a cleaned ignore pattern into (kind, tokens) the way
    patternmatcher classifies it: exact / prefix (`foo/**`) / suffix (`**/foo`) /
    regex. `**` followed by `/` (or at the end) matches any number of directories."""
    out: list[Token] = []
    kind = EXACT
    i = 0
    first = True
    while i < len(p):
        ch = p[i]
        at_start = first
        first = False
        i += 1
        if ch == "*":
            if i < len(p) and p[i] == "*":
                i += 1
                if i < len(p) and p[i] == "/":
                    i += 1
                if i >= len(p):
                    if kind == EXACT:
                        kind = PREFIX
                    else:
                        kind = REGEX
                    out.append(("any",))
                else:
                    out.append(("dirs",))
                    kind = REGEX
                if at_start:
                    kind = SUFFIX
            else:
                out.append(("star",))
                kind = REGEX
        elif ch == "?":
            out.append(("one",))
            kind = REGEX
        elif ch == "\\":
            if i >= len(p):
                raise PatternError("syntax error in pattern")
            out.append(("lit", p[i]))
            i += 1
            kind = REGEX
        elif ch == "[":
            cls, i = char_class(p, i)
            out.append(cls)
            kind = REGEX
        elif ch == "]":
            out.append(("lit", ch))
            kind = REGEX
        else:
            out.append(("lit", ch))
    return kind, out
