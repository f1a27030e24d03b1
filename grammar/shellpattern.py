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


__all__ = ["PatternError", "trim_prefix", "trim_suffix", "replace"]

_BOM = "\ufeff"
_BAD_RUNE = "\ufffd"  # what Go prints for the EOF rune


class PatternError(ValueError):
    """A pattern BuildKit cannot convert; str() is BuildKit's message."""


# The longest text one substitution may produce (lamina's limit; BuildKit has none):
# `ARG a1=${a0}${a0}` repeated doubles a value per line, and `${v//?/$0$0$0}` multiplies
# one, so a Dockerfile of a few lines asked for terabytes (MemoryError, or the host's
# OOM killer). No real Dockerfile comes near it: Linux refuses a single environment
# string past 128 KiB to any RUN anyway.
MAX_EXPANSION = 1 << 20


class ExpansionTooLong(PatternError):
    """A substitution's result would pass MAX_EXPANSION characters."""

    def __init__(self) -> None:
        super().__init__(f"the expansion is longer than {MAX_EXPANSION} characters "
                         "(lamina's limit)")


def _is_name_char(ch: str) -> bool:
    return ch.isalpha() or ch.isdecimal() or ch == "_"


class _Match:
    """Where a pattern matched: `span()`, `start()`, `end()`, `group(0)` as re's."""

    __slots__ = ("value", "_start", "_end")

    def __init__(self, value: str, start: int, end: int) -> None:
        self.value, self._start, self._end = value, start, end

    def span(self) -> tuple[int, int]:
        return self._start, self._end

    def start(self) -> int:
        return self._start

    def end(self) -> int:
        return self._end

    def group(self, _index: int = 0) -> str:
        return self.value[self._start:self._end]


_LIT, _ANY, _STAR = 0, 1, 2


class _Program:
    """A shell pattern as tokens (a literal character, `?`, `*`), matched with Go's
    leftmost-first preference by a Pike VM: one pass over the value holding at most
    one thread per token, so a match costs O(len(value) * len(pattern)) — never the
    exponential backtracking Python's `re` does on `^.*?a.*?a.*?a...b` (a hostile
    Dockerfile's `${v#*a*a*a*a*a*a*b}` hung the build; Go's RE2 answers at once)."""

    __slots__ = ("tokens", "greedy", "anchored")

    def __init__(self, tokens: list[tuple[int, str]], greedy: bool, anchored: bool) -> None:
        self.tokens = tokens
        self.greedy = greedy
        self.anchored = anchored

    def _add(self, threads: list[tuple[int, int]], seen: set[int], j: int, start: int) -> None:
        """Thread at token `j` with the ones it reaches without reading, by priority."""
        tokens = self.tokens
        while True:
            if j in seen:
                return
            seen.add(j)
            if j == len(tokens) or tokens[j][0] != _STAR:
                threads.append((j, start))
                return
            # a star: read one more character, or go on (greedy prefers reading);
            # stars never follow each other (collapsed), so this recursion is one deep
            if self.greedy:
                threads.append((j, start))
                j += 1
            else:
                self._add(threads, seen, j + 1, start)
                threads.append((j, start))
                return

    def search(self, value: str, pos: int = 0) -> _Match | None:
        tokens = self.tokens
        m = len(tokens)
        n = len(value)
        found: tuple[int, int] | None = None
        current: list[tuple[int, int]] = []
        seen: set[int] = set()
        self._add(current, seen, 0, pos)
        i = pos
        while True:
            if found is None and not self.anchored and i > pos:
                self._add(current, seen, 0, i)  # a later start: the lowest priority
            if not current:
                break
            ch = value[i] if i < n else None
            following: list[tuple[int, int]] = []
            next_seen: set[int] = set()
            for j, start in current:
                if j == m:
                    found = (start, i)
                    break  # the threads after this one are preferred less: dropped
                if ch is None:
                    continue
                kind, want = tokens[j]
                if kind == _LIT:
                    if ch == want:
                        self._add(following, next_seen, j + 1, start)
                elif ch != "\n":  # `?` and `*` are Go's `.`: no newline
                    self._add(following, next_seen, j + 1 if kind == _ANY else j, start)
            if ch is None:
                break
            current, seen = following, next_seen
            i += 1
            if found is None and self.anchored and not current:
                break
        return None if found is None else _Match(value, found[0], found[1])


def _compile_pattern(pattern: str, *, greedy: bool, anchored: bool) -> _Program:
    """A shell pattern as a program, the way BuildKit converts it to a regexp."""
    tokens: list[tuple[int, str]] = []
    i = 1 if pattern.startswith(_BOM) else 0  # text/scanner again
    n = len(pattern)
    while i < n:
        ch = pattern[i]
        i += 1
        if ch == "*":
            if not tokens or tokens[-1][0] != _STAR:  # `.*.*` matches as `.*`
                tokens.append((_STAR, ""))
        elif ch == "?":
            tokens.append((_ANY, ""))
        elif ch == "\\":
            follower = pattern[i] if i < n else ""
            if follower in ("}", "/") and follower:
                continue  # the escape only served the ${...} syntax
            if not follower or follower not in ("*", "?", "\\"):
                raise PatternError(
                    f"invalid pattern ({pattern}) in substitution: "
                    f"invalid escape '\\{follower or _BAD_RUNE}'")
            i += 1
            tokens.append((_LIT, follower))
        else:
            tokens.append((_LIT, ch))
    return _Program(tokens, greedy, anchored)


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


def _go_template(template: str, match: str, room: int = MAX_EXPANSION) -> str:
    """Expand a Go regexp replacement template for a match with no groups (at most
    `room` characters of it, else ExpansionTooLong)."""
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
            room -= len(match)
            if room < 0:
                raise ExpansionTooLong()
        # every other number or name refers to a group that does not exist
    out.append(template[i:])
    return "".join(out)


def _go_replace_all(regex: _Program, value: str, template: str) -> str:
    """Go's Regexp.ReplaceAllString: an empty match right after a match is skipped."""
    out: list[str] = []
    last_end = 0
    pos = 0
    end = len(value)
    size = 0
    while pos <= end:
        match = regex.search(value, pos)
        if match is None:
            break
        start, stop = match.span()
        out.append(value[last_end:start])
        size += start - last_end
        if stop > last_end or start == 0:
            out.append(_go_template(template, match.group(0), MAX_EXPANSION - size))
            size += len(out[-1])
        if size > MAX_EXPANSION:
            raise ExpansionTooLong()
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
