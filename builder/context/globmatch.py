"""Matching a parsed docker path pattern against a path in time linear in the path,
whatever the pattern.

builder.context.patterns parses `.dockerignore`, `COPY` source and `--exclude`
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

`LazyDFA` is the same automaton made deterministic on demand, for `.dockerignore`
patterns matched against every path of a context: a walk visits a directory before
its entries, so each entry resumes from its directory's state (`feed(state, "/name")`)
instead of re-reading the whole path - a context walk costs the sum of the names'
lengths, not of the paths' (a 900-deep context of 250-character names has paths of
~110k characters: matched from their first character, one pattern took minutes).
States (sets of automaton positions) and their transitions are cached, within a
budget per pattern (past it the cache is dropped and rebuilt: still linear). A state
from before a drop (a walk's directories keep theirs) is looked up again in the new
cache before it is used, so the cache never grows through it; `IgnoreRules` splits one
budget among its patterns, so a hostile `.dockerignore` of thousands of lines gets no
more memory than a short one.
"""

from __future__ import annotations

import re
from bisect import bisect_right
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


def _merged(ranges: Sequence[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """Non-empty ranges sorted and merged: (starts, ends), both ascending."""
    starts: list[int] = []
    ends: list[int] = []
    for lo, hi in sorted(r for r in ranges if r[0] <= r[1]):
        if ends and lo <= ends[-1] + 1:
            ends[-1] = max(ends[-1], hi)
        else:
            starts.append(lo)
            ends.append(hi)
    return starts, ends


class _Automaton:
    """The tokens as a nondeterministic automaton, run on every state at once. A state
    is (token index, inside a `dirs` run); index len(tokens) accepts."""

    def __init__(self, tokens: Sequence[Token]) -> None:
        self._t = tuple(tokens)
        # a class's ranges sorted and merged, searched by bisection: a hostile class of
        # thousands of ranges costs log(ranges) per character, not ranges
        self._cls = {k: _merged(t[2]) for k, t in enumerate(self._t) if t[0] == "class"}

    def closure(self, states: set) -> set:
        todo = list(states)
        while todo:
            k, inside = todo.pop()
            if not inside and k < len(self._t) and self._t[k][0] in UNBOUNDED:
                nxt = (k + 1, False)  # an unbounded token may match nothing
                if nxt not in states:
                    states.add(nxt)
                    todo.append(nxt)
        return states

    _closure = closure

    def step(self, current, c: str) -> set:
        """The states after reading `c` from `current` (before closure)."""
        t, end = self._t, len(self._t)
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
                starts, ends = self._cls[k]
                i = bisect_right(starts, o) - 1
                if (i >= 0 and o <= ends[i]) != tok[1]:
                    nxt.add((k + 1, False))
            elif kind == "star":
                if c != "/":
                    nxt.add((k, False))
            elif kind == "any":
                if c != "\n":
                    nxt.add((k, False))
        return nxt

    def matches(self, text: str) -> bool:
        end = len(self._t)
        current = self.closure({(0, False)})
        for c in text:
            nxt = self.step(current, c)
            if not nxt:
                return False
            current = self.closure(nxt)
        return (end, False) in current


class DState:
    """A state of a `LazyDFA`: the set of automaton states reached by some text.
    `accept`: the text so far matches; `dead`: no continuation of it can match."""

    __slots__ = ("nfa", "accept", "dead", "next", "after", "gen")

    def __init__(self, nfa: frozenset, accept: bool, gen: int = 0) -> None:
        self.nfa = nfa
        self.gen = gen  # the cache generation (LazyDFA._gen) it belongs to
        self.accept = accept
        self.dead = not nfa
        self.next: dict[str, DState] = {}    # one character -> state
        self.after: dict[str, DState] = {}   # a short segment ("/name") -> state


class LazyDFA:
    """The automaton of some tokens, determinised on demand and resumable: `feed(state,
    text)` continues a match where `state` left it, in time linear in `text`."""

    #: cache size (states' automaton sets + transitions + cached segment characters)
    #: past which the cache is dropped and rebuilt
    BUDGET = 1 << 16
    #: segments longer than this are not cached whole (their characters' steps are)
    SEGMENT_CACHE_MAX = 64

    def __init__(self, tokens: Sequence[Token]) -> None:
        self.budget = self.BUDGET  # IgnoreRules lowers it: one budget for all its patterns
        self._gen = 0
        self._nfa = _Automaton(tokens)
        self._end = len(tokens)
        # a class of only empty ranges matches nothing: no state before it can accept
        last_impossible = -1
        for i, t in enumerate(tokens):
            if t[0] == "class" and not t[1] and all(lo > hi for lo, hi in t[2]):
                last_impossible = i
        self._min_live = last_impossible + 1
        self._states: dict[frozenset, DState] = {}
        self._used = 0
        self.start = self._intern(self._nfa.closure({(0, False)}))

    def _intern(self, nfa: set) -> DState:
        key = frozenset(s for s in nfa if s[0] >= self._min_live)
        ds = self._states.get(key)
        if ds is None:
            if self._used + len(key) + 1 > self.budget:
                self._forget()
            ds = DState(key, (self._end, False) in key, self._gen)
            self._states[key] = ds
            self._used += len(key) + 1
        return ds

    def _forget(self) -> None:
        for ds in list(self._states.values()):
            ds.next.clear()
            ds.after.clear()
        self._states.clear()
        self._used = 0
        self._gen += 1  # states kept by callers are now outside the cache: never grown

    def _current(self, ds: DState) -> DState:
        """`ds`, or its twin in the cache when it is from before the last drop."""
        return ds if ds.gen == self._gen else self._intern(ds.nfa)

    def _advance(self, ds: DState, c: str) -> DState:
        n = self._intern(self._nfa.closure(self._nfa.step(ds.nfa, c)))
        if self._used >= self.budget:
            self._forget()
        if ds.gen == self._gen and n.gen == self._gen:
            ds.next[c] = n
            self._used += 1
        return n

    def run(self, ds: DState, text: str) -> DState:
        """The state after reading `text` from `ds` (no whole-text caching)."""
        ds = self._current(ds)
        for c in text:
            n = ds.next.get(c)
            if n is None:
                n = self._advance(ds, c)
            ds = n
            if ds.dead:
                break
        return ds

    def feed(self, ds: DState, segment: str) -> DState:
        """`run`, with short segments (a walk's "/name") cached per state."""
        ds = self._current(ds)
        n = ds.after.get(segment)
        if n is not None:
            return n
        n = self.run(ds, segment)
        if len(segment) <= self.SEGMENT_CACHE_MAX:
            if self._used + len(segment) >= self.budget:
                self._forget()
            if ds.gen == self._gen and n.gen == self._gen:
                ds.after[segment] = n
                self._used += len(segment) + 1
        return n

    def matches(self, text: str) -> bool:
        return self.run(self.start, text).accept


def compile_tokens(tokens: Sequence[Token]):
    """A matcher (`.matches(text) -> bool`, whole text) for the tokens: `re` where it
    cannot blow up, the automaton otherwise (see the module docstring)."""
    unbounded = sum(1 for t in tokens if t[0] in UNBOUNDED)
    if unbounded <= MAX_BACKTRACKING_TOKENS:
        return _Regex(tokens)
    return _Automaton(tokens)
