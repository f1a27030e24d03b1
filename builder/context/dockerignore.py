"""Ignore lists: `.dockerignore` files and the patterns of `COPY --exclude` and
`COPY --parents`, compiled and matched against context paths. The pattern syntax
itself (Go path cleaning, `filepath.Match`, `**`) is builder.context.patterns.

Owns, written after moby/patternmatcher + patternmatcher/ignorefile (read, not copied):

- `IgnoreRules`: an ordered list of ignore patterns (`**` any number of directories,
  `!` exceptions, last matching pattern wins, a pattern that matches a directory
  matches everything below it), with `excluded(path)`, incremental `match` for
  walkers (`MatchInfo`, `WalkMatcher`) and a sound pruning test `may_include_under(dir)`.
- `load_ignore_rules(context_dir, dockerfile_path)`: `<Dockerfile>.dockerignore` next to
  the Dockerfile wins over `<context>/.dockerignore`.

Pure except for `load_ignore_rules`. Errors are `builder.errors.BuildError`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from lamina.builder.context.globmatch import LazyDFA, compile_tokens
from lamina.builder.context.patterns import (EXACT, PREFIX, REGEX, SUFFIX, PatternError, glob_tokens,
                                             go_clean, go_trim_space, ignore_tokens)
from lamina.builder.errors import BuildError

__all__ = ["IgnorePattern", "IgnoreRules", "MatchInfo", "WalkMatcher", "ensure_patterns",
           "load_ignore_rules"]


@dataclass(frozen=True)
class IgnorePattern:
    """One cleaned pattern of an ignore list; `exception` for `!` lines."""

    text: str
    exception: bool
    kind: str
    matcher: LazyDFA  # the whole pattern (used by `regex` kind): linear, resumable
    components: tuple | None  # per-component matchers, when no `**`/`[`

    @classmethod
    def compile(cls, raw: str) -> "IgnorePattern":
        exception = False
        p = raw
        if p.startswith("!"):
            if len(p) == 1:
                raise PatternError('illegal exclusion pattern: "!"')
            exception = True
            p = p[1:]
        try:
            kind, tokens = ignore_tokens(p)
            comps = None
            if "**" not in p and "[" not in p and "\\" not in p:
                comps = tuple(compile_tokens(glob_tokens(c)) for c in p.split("/"))
        except PatternError as e:
            raise PatternError(f"invalid pattern {raw!r}: {e.message}") from None
        return cls(p, exception, kind, LazyDFA(tokens), comps)

    @property
    def fixed(self) -> str:
        """The fixed text of an exact, prefix (without `**`) or suffix (without `**`) pattern."""
        if self.kind == EXACT:
            return self.text
        if self.kind == PREFIX:
            return self.text[:-2]
        return self.text[2:]

    def matches(self, path: str) -> bool:
        """Does this pattern match `path` itself (no parent matching)?"""
        if self.kind == EXACT:
            return path == self.text
        if self.kind == PREFIX:
            return path.startswith(self.text[:-2])
        if self.kind == SUFFIX:
            suffix = self.text[2:]
            if path.endswith(suffix):
                return True
            return suffix.startswith("/") and path == suffix[1:]
        return self.matcher.matches(path)

    def may_match_below(self, directory: str, depth: int | None = None) -> bool:
        """Could this pattern match some path strictly below `directory`? Sound
        (never False when a match exists), precise for patterns without `**`/`[`.
        `depth`: the number of components of `directory`, when the caller knows it
        (a walk does: `MatchInfo.depth`), so a deep directory costs nothing."""
        if self.components is None:
            return True
        if depth is not None and len(self.components) <= depth:
            return False
        dirs = directory.split("/", len(self.components))
        if len(self.components) <= len(dirs):
            return False
        return all(m.matches(d) for m, d in zip(self.components, dirs))


class MatchInfo:
    """What an ignore list knows of a path, for matching the paths below it without
    reading it again: per pattern True (it matches the path or a parent), None (it
    cannot match anything below), or the state to resume from (a `DState` for a
    `regex` pattern, False for the others); `length` of the path, its `depth` in
    components (0: the root), and whether it is `excluded`."""

    __slots__ = ("length", "depth", "states", "excluded")

    def __init__(self, length: int, depth: int, states: tuple, excluded: bool) -> None:
        self.length = length
        self.depth = depth
        self.states = states
        self.excluded = excluded

    def __repr__(self) -> str:
        return f"MatchInfo(length={self.length}, depth={self.depth}, excluded={self.excluded})"


def _alive_below(fixed: str, path: str, end: int) -> bool:
    """Can some path below path[:end] start with `fixed` (an exact or prefix pattern's
    text, which path[:end] itself did not match)?"""
    return end < len(fixed) and fixed[end] == "/" and path.startswith(fixed[:end])


@dataclass(frozen=True)
class IgnoreRules:
    """An ordered ignore list. A path is excluded when the last pattern that matches
    it, or one of its parent directories, is not a `!` exception.

    Matching is incremental: `match(path, info_of_its_directory)` reads only the part
    of `path` after that directory (exact, prefix and suffix patterns compare their
    fixed text, the others resume their automaton), so a walk costs the total length
    of the names it lists, however deep the tree."""

    patterns: tuple[IgnorePattern, ...] = ()
    source: str | None = None  # the file the rules came from, for messages

    #: automaton cache (LazyDFA units, ~150 bytes each) shared by all the `regex`
    #: patterns of one list: a hostile list of thousands of lines gets no more
    MATCH_CACHE_BUDGET = 1 << 18
    #: the least a pattern gets (smaller only drops its cache more often: still linear)
    MATCH_CACHE_MIN = 64

    def __post_init__(self) -> None:
        dfas = [p.matcher for p in self.patterns if p.kind == REGEX]
        if dfas:
            share = max(self.MATCH_CACHE_MIN, self.MATCH_CACHE_BUDGET // len(dfas))
            for dfa in dfas:
                dfa.budget = min(dfa.budget, share)

    # -- construction -------------------------------------------------------------

    @classmethod
    def parse(cls, text: str | bytes, *, source: str | None = None) -> "IgnoreRules":
        """Parse `.dockerignore` text: UTF-8 BOM dropped, lines starting with `#` are
        comments (before trimming), lines trimmed, blank lines skipped, `!` then
        trimmed again, each pattern cleaned (path.Clean) with a leading `/` removed."""
        if isinstance(text, bytes):
            text = text.decode("utf-8", "surrogateescape")
        if text.startswith("\ufeff"):
            text = text[1:]
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        raw: list[str] = []
        for line in lines:
            if line.endswith("\r"):
                line = line[:-1]
            if line.startswith("#"):
                continue
            pattern = go_trim_space(line)
            if not pattern:
                continue
            invert = pattern.startswith("!")
            if invert:
                pattern = go_trim_space(pattern[1:])
            if pattern:
                pattern = go_clean(pattern)
                if len(pattern) > 1 and pattern.startswith("/"):
                    pattern = pattern[1:]
            raw.append("!" + pattern if invert else pattern)
        try:
            return cls.from_patterns(raw, source=source)
        except PatternError as e:
            where = f"{source}: " if source else ""
            raise PatternError(f"{where}{e.message}") from None

    @classmethod
    def from_patterns(cls, patterns: Iterable[str], *, source: str | None = None) -> "IgnoreRules":
        """Patterns as given to patternmatcher.New (COPY --exclude, --parents):
        trimmed, empty ones skipped, cleaned with path.Clean, `!` for exceptions."""
        compiled = []
        for p in patterns:
            p = go_trim_space(p)
            if not p:
                continue
            compiled.append(IgnorePattern.compile(go_clean(p)))
        return cls(tuple(compiled), source)

    # -- queries ------------------------------------------------------------------

    def __bool__(self) -> bool:
        return bool(self.patterns)

    @property
    def has_exceptions(self) -> bool:
        return any(p.exception for p in self.patterns)

    @cached_property
    def _plan(self) -> tuple:
        """Per pattern: (kind, exception, fixed text, automaton, suffix's path form)."""
        out = []
        for p in self.patterns:
            fixed = p.fixed if p.kind != REGEX else ""
            bare = fixed[1:] if p.kind == SUFFIX and fixed.startswith("/") else None
            out.append((p.kind, p.exception, fixed, p.matcher, bare))
        return tuple(out)

    @cached_property
    def _root(self) -> MatchInfo:
        states = tuple((None if p.matcher.start.dead else p.matcher.start) if p.kind == REGEX
                       else False for p in self.patterns)
        return MatchInfo(0, 0, states, False)

    def root_info(self) -> MatchInfo:
        return self._root

    def _node(self, parent: MatchInfo, path: str, end: int) -> MatchInfo:
        """The info of path[:end], a path one component below `parent`'s (whose
        characters path[:parent.length] it starts with)."""
        segment = path[parent.length:end]
        whole = end == len(path)
        states = []
        excluded = False
        for (kind, exception, fixed, dfa, bare), st in zip(self._plan, parent.states):
            if st is True:
                excluded = not exception
                states.append(True)
                continue
            if st is None:
                states.append(None)
                continue
            if kind is REGEX:
                st = dfa.feed(st, segment)
                hit = st.accept
                if not hit and st.dead:
                    st = None
            elif kind is EXACT:
                hit = end == len(fixed) and path.startswith(fixed)
                if not hit and not _alive_below(fixed, path, end):
                    st = None
            elif kind is PREFIX:
                hit = path.startswith(fixed, 0, end)
                if not hit and not _alive_below(fixed, path, end):
                    st = None
            else:
                hit = (path.endswith(fixed) if whole else path.endswith(fixed, 0, end)) or (
                    bare is not None and end == len(bare) and path.startswith(bare))
            if hit:
                excluded = not exception
                states.append(True)
            else:
                states.append(st)
        depth = parent.depth + (1 if parent.depth == 0 else path.count("/", parent.length, end))
        return MatchInfo(end, depth, tuple(states), excluded)

    def match(self, rel_path: str, parent: MatchInfo | None = None) -> tuple[bool, MatchInfo]:
        """(excluded, info) for `rel_path`, given the info of its parent directory (or
        of any ancestor; None: the root, and then a leading "/" makes "" an ancestor
        too, as the path's own split gives it). Walkers pass each directory's info
        down, so each path costs the length of its own name."""
        for info in self._chain(rel_path, parent):
            pass
        return info.excluded, info

    def _chain(self, rel_path: str, parent: MatchInfo | None) -> Iterator[MatchInfo]:
        """The infos of the ancestors of `rel_path` below `parent`, then its own."""
        first = 1
        if parent is None:
            parent, first = self._root, 0
        info = parent
        cut = rel_path.find("/", parent.length + first)
        while cut >= 0:
            info = self._node(info, rel_path, cut)
            yield info
            cut = rel_path.find("/", cut + 1)
        yield self._node(info, rel_path, len(rel_path))

    def excluded(self, rel_path: str, is_dir: bool = False) -> bool:
        """Is `rel_path` (relative to the context, `/`-separated) excluded? Docker's
        patterns do not distinguish files from directories; `is_dir` is accepted
        for callers' clarity and does not change the answer."""
        del is_dir
        if not self.patterns:
            return False
        rel = go_clean(rel_path)
        if rel in (".", "/"):
            return False  # the context root itself is never excluded
        rel = rel.lstrip("/")
        return self.match(rel)[0]

    def may_include_under(self, directory: str, info: MatchInfo | None = None) -> bool:
        """Could any path strictly below `directory` be re-included by an exception?
        When False a walker may skip an excluded directory entirely. A walker passes
        the directory's `info` (its path then clean): no cost for its depth."""
        if info is None:
            d = go_clean(directory).lstrip("/")
            return any(p.exception and p.may_match_below(d) for p in self.patterns)
        return any(p.exception and p.may_match_below(directory, info.depth) for p in self.patterns)

    def walk_matcher(self) -> "WalkMatcher":
        return WalkMatcher(self)


class WalkMatcher:
    """`IgnoreRules.match` for paths asked about in walk order (a directory before
    the paths below it, as `SourceTree.walk` lists them): each path resumes from the
    deepest ancestor asked about before it. Any order is answered correctly; walk
    order makes the total cost that of the names rather than of the whole paths."""

    def __init__(self, rules: IgnoreRules) -> None:
        self.rules = rules
        self._stack: list[tuple[str, MatchInfo]] = []

    def info(self, rel: str) -> MatchInfo:
        stack = self._stack
        while stack:
            top = stack[-1][0]
            n = len(top)
            if len(rel) > n and rel[n] == "/" and rel.startswith(top):
                break
            stack.pop()
        for info in self.rules._chain(rel, stack[-1][1] if stack else None):
            stack.append((rel[:info.length], info))  # ancestors too: the next path resumes there
        return info

    def excluded(self, rel: str) -> bool:
        return self.info(rel).excluded


def load_ignore_rules(context_dir: str | os.PathLike, dockerfile_path: str | os.PathLike | None) -> IgnoreRules:
    """The ignore rules of a build: `<dockerfile_path>.dockerignore` when that file
    exists (even empty), else `<context_dir>/.dockerignore`, else no rules."""
    candidates = []
    if dockerfile_path is not None:
        candidates.append(Path(os.fspath(dockerfile_path) + ".dockerignore"))
    candidates.append(Path(context_dir) / ".dockerignore")
    from lamina.builder.context.contextfile import read_context_file

    for path in candidates:
        try:  # symlinks resolved inside its directory: never a host file (hostile context)
            data = read_context_file(path, "the ignore file")
        except FileNotFoundError:
            continue
        except OSError as e:
            raise BuildError(f"cannot read {path}: {e.strerror}") from None
        return IgnoreRules.parse(data, source=str(path))
    return IgnoreRules()


def ensure_patterns(patterns: Sequence[str] | IgnoreRules | None) -> IgnoreRules:
    """Accept either ready rules or raw patterns (COPY --exclude values)."""
    if patterns is None:
        return IgnoreRules()
    if isinstance(patterns, IgnoreRules):
        return patterns
    return IgnoreRules.from_patterns(patterns)
