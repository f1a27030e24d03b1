"""Matching a parsed docker path pattern against a path in time linear in the path,
whatever the pattern.

builder.context.dockerignore parses `.dockerignore`, `COPY` source and `--exclude`
patterns into tokens (below). Go matches them with its regexp package (RE2: linear
time); Python's `re` backtracks, and a hostile repository's pattern such as
`*a*a*a*a*a*a*a*a*a*a*a*a*b`, or `**/` ten times, takes minutes on one long name.
So a pattern with at most two unbounded tokens (`*`, `**`; the common `*.pyc`,
`**/*.pyc`, `src/*/test`) is matched by `re` (at worst quadratic), and any other
by simulating its automaton (`_Automaton`: every token position at once, one pass
over the path: O(len(path) x len(tokens))).

Tokens, each one character of the path unless said otherwise:

    ("lit", c)               the character c
    ("one",)                 any character but "/"                    (`?`)
    ("class", neg, ranges)   one in the ranges (or not, if neg); "/" too, as Go
    ("star",)                any run of characters without "/"         (`*`)
    ("any",)                 any run of characters                     (`**` last)
    ("dirs",)                nothing, or any run that ends with "/"    (`**/`)

("any" and "dirs" runs hold no newline: `.` of Go's regexp, which patternmatcher
compiles `**` to.)
"""

from __future__ import annotations

import re
from typing import Sequence

Token = tuple
UNBOUNDED = frozenset({"star", "any", "dirs"})
MAX_BACKTRACKING_TOKENS = 2


def _class_regex(neg: bool, ranges: Sequence[tuple[int, int]]) -> str:
    parts = "".join(f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in ranges if lo <= hi)
    if not parts:  # only empty ranges (lo > hi): Go matches nothing (or anything if negated)
        return "[\\s\\S]" if neg else "(?!)"
    return f"[^{parts}]" if neg else f"[{parts}]"


def regex_of(tokens: Sequence[Token]) -> str:
    """The tokens as a Python regex body (for fullmatch)."""
    out = []
    for t in tokens:
        kind = t[0]
        if kind == "lit":
            out.append(re.escape(t[1]))
        elif kind == "one":
            out.append("[^/]")
        elif kind == "class":
            out.append(_class_regex(t[1], t[2]))
        elif kind == "star":
            out.append("[^/]*")
        elif kind == "any":
            out.append(".*")
        elif kind == "dirs":
            out.append("(?:.*/)?")
        else:  # pragma: no cover - the parser makes only the kinds above
            raise ValueError(f"unknown token {t!r}")
    return "".join(out)


class _Regex:
    def __init__(self, tokens: Sequence[Token]) -> None:
        self._rx = re.compile(regex_of(tokens))

    def matches(self, text: str) -> bool:
        return self._rx.fullmatch(text) is not None


class _Automaton:
    """The tokens as a nondeterministic automaton, run on every state at once. A state
    is (token index, inside a `dirs` run); index len(tokens) accepts."""

    def __init__(self, tokens: Sequence[Token]) -> None:
        self._t = tuple(tokens)

    def _closure(self, states: set) -> set:
        todo = list(states)
        while todo:
            k, inside = todo.pop()
            if not inside and k < len(self._t) and self._t[k][0] in UNBOUNDED:
                nxt = (k + 1, False)  # an unbounded token may match nothing
                if nxt not in states:
                    states.add(nxt)
                    todo.append(nxt)
        return states

    def matches(self, text: str) -> bool:
        t, end = self._t, len(self._t)
        current = self._closure({(0, False)})
        for c in text:
            nxt = set()
            for k, inside in current:
                if k == end:
                    continue
                tok = t[k]
                kind = tok[0]
                if inside or kind == "dirs":  # `dirs`: any run, left after a "/"
                    if c == "\n":
                        continue  # `.` of Go's regexp (and Python's) is not a newline
                    nxt.add((k, True))
                    if c == "/":
                        nxt.add((k + 1, False))
                elif kind == "lit":
                    if c == tok[1]:
                        nxt.add((k + 1, False))
                elif kind == "one":
                    if c != "/":
                        nxt.add((k + 1, False))
                elif kind == "class":
                    o = ord(c)
                    if any(lo <= o <= hi for lo, hi in tok[2]) != tok[1]:
                        nxt.add((k + 1, False))
                elif kind == "star":
                    if c != "/":
                        nxt.add((k, False))
                elif kind == "any":
                    if c != "\n":
                        nxt.add((k, False))
            if not nxt:
                return False
            current = self._closure(nxt)
        return (end, False) in current


def compile_tokens(tokens: Sequence[Token]):
    """A matcher (`.matches(text) -> bool`, whole text) for the tokens: `re` where it
    cannot blow up, the automaton otherwise (see the module docstring)."""
    unbounded = sum(1 for t in tokens if t[0] in UNBOUNDED)
    if unbounded <= MAX_BACKTRACKING_TOKENS:
        return _Regex(tokens)
    return _Automaton(tokens)
