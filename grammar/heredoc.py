"""Heredoc markers: finding `<<EOF` words in an instruction line.

Owns BuildKit's rules for which words of a RUN/COPY/ADD line open a heredoc
(`[fd]<<[-]WORD`), the delimiter's quote removal and whether the body is
expanded (no quotes anywhere in the delimiter). Reading the bodies is the line
scanner's job (grammar/lines.py). Pure functions.
"""

from __future__ import annotations

from dataclasses import dataclass
import re

from lamina.grammar.words import GO_SPACE

_SPACE = frozenset(GO_SPACE)
# BuildKit's reHeredoc; Go's \d is ASCII only
_HEREDOC = re.compile(r"([0-9]*)<<(-?)([^<]*)\Z")
_MAX_FD = 2**64 - 1


@dataclass(frozen=True)
class HeredocMarker:
    """A `<<` word: delimiter (quotes removed), expand, strip_tabs, fd."""

    delimiter: str
    expand: bool
    strip_tabs: bool
    fd: int | None


def shell_words(text: str, *, raw: bool) -> list[str] | None:
    """Split `text` into shell words the way BuildKit's shell lexer does for heredocs.

    With `raw`, quotes and backslash escapes stay in the words (RawQuotes and
    RawEscapes); without, they are removed. Variables are never expanded (no
    environment, unset variables kept). An unterminated quote gives None, as the
    lexer's error does.
    """
    words: list[str] = []
    buf: list[str] = []
    started = False
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch in _SPACE:
            if started:
                words.append("".join(buf))
                buf = []
                started = False
            i += 1
            continue
        started = True
        if ch == "\\":
            if i + 1 < n:
                if raw:
                    buf.append(ch)
                buf.append(text[i + 1])
            i += 2
            continue
        if ch == "'":
            end = text.find("'", i + 1)
            if end < 0:
                return None
            buf.append(text[i:end + 1] if raw else text[i + 1:end])
            i = end + 1
            continue
        if ch == '"':
            i += 1
            if raw:
                buf.append('"')
            while True:
                if i >= n:
                    return None
                c = text[i]
                if c == '"':
                    if raw:
                        buf.append('"')
                    i += 1
                    break
                if c == "\\" and i + 1 < n:
                    nxt = text[i + 1]
                    if raw or nxt not in '"\\$':
                        buf.append(c)
                    buf.append(nxt)
                    i += 2
                    continue
                buf.append(c)
                i += 1
            continue
        if ch == "$" and text.startswith("${", i):
            end = text.find("}", i)
            end = n - 1 if end < 0 else end
            buf.append(text[i:end + 1])
            i = end + 1
            continue
        buf.append(ch)
        i += 1
    if started:
        words.append("".join(buf))
    return words


def parse_heredoc_word(word: str) -> HeredocMarker | None:
    """The heredoc a single (raw) word opens, or None (BuildKit's ParseHeredoc)."""
    match = _HEREDOC.match(word)
    if match is None:
        return None
    fd_text, dash, rest = match.groups()
    if rest == "":
        return None
    words = shell_words(rest, raw=False)
    if words is None or len(words) != 1:
        return None
    raw_words = shell_words(rest, raw=True)
    if raw_words is None or len(raw_words) != 1:
        return None
    name = words[0]
    quotes = name.count("'") + name.count('"')
    raw_quotes = raw_words[0].count("'") + raw_words[0].count('"')
    fd: int | None = None
    if fd_text:
        fd = int(fd_text)
        if fd > _MAX_FD:
            fd = 0  # strconv.ParseUint fails, BuildKit keeps 0
    return HeredocMarker(delimiter=name, expand=quotes == raw_quotes, strip_tabs=dash == "-", fd=fd)


def heredocs_in_line(line: str) -> list[tuple[int, HeredocMarker]]:
    """The heredocs a (logical) line opens, in order, with each word's offset in the line."""
    if "<<" not in line:
        return []
    words = shell_words(line, raw=True)
    if not words:
        return []
    found: list[tuple[int, HeredocMarker]] = []
    search_from = 0
    for word in words:
        at = line.find(word, search_from)
        if at < 0:
            at = search_from
        else:
            search_from = at + len(word)
        marker = parse_heredoc_word(word)
        if marker is not None:
            found.append((at, marker))
    return found
