"""Go-faithful word helpers of the Dockerfile parser.

Owns the small lexical rules BuildKit's parser applies after a line has been
split into keyword, flags and argument text: Go's notion of white space,
`parseWords` (quote-aware words that keep their quotes, for ENV/LABEL/ARG),
whitespace-delimited lists (FROM, EXPOSE, COPY/ADD/VOLUME shell form), flag-word
unquoting, and the decoding of JSON string tokens with encoding/json's rules.
Pure functions, no state.
"""

from __future__ import annotations

import re

# unicode.IsSpace in Go (Python's str.isspace also counts \x1c-\x1f, Go does not)
GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
_GO_SPACE_SET = frozenset(GO_SPACE)

# BuildKit's reWhitespace / tokenWhitespace
_WS_SPLIT = re.compile(r"[\t\v\f\r ]+")


def is_space(ch: str) -> bool:
    return ch in _GO_SPACE_SET


def trim_space(s: str) -> str:
    """strings.TrimSpace."""
    return s.strip(GO_SPACE)


def trim_left_space(s: str) -> str:
    """bytes.TrimLeftFunc(s, unicode.IsSpace)."""
    return s.lstrip(GO_SPACE)


def split_whitespace(rest: str) -> list[str]:
    """parseStringsWhitespaceDelimited: split on runs of [\\t\\v\\f\\r ]."""
    if rest == "":
        return []
    return _WS_SPLIT.split(rest)


def split_legacy(rest: str) -> list[str]:
    """reWhitespace.Split(rest, 2): the `ENV key value` form."""
    return _WS_SPLIT.split(rest, maxsplit=1)


_SPACES, _WORD, _QUOTE = 0, 1, 2


def parse_words(rest: str, escape: str) -> list[str]:
    """BuildKit's parseWords: words split on white space outside quotes.

    Quotes and escape characters are kept in the words (they are removed later,
    at expansion time); an escape character at the very end is dropped.
    """
    words: list[str] = []
    phase = _SPACES
    quote = ""
    blank_ok = False
    buf: list[str] = []
    n = len(rest)
    pos = 0
    ch = ""
    while True:
        if pos < n:
            ch = rest[pos]
        if phase == _SPACES:
            if pos == n:
                break
            if ch in _GO_SPACE_SET:
                pos += 1
                continue
            phase = _WORD
        if pos == n:  # phase is _WORD or _QUOTE
            if blank_ok or buf:
                words.append("".join(buf))
            break
        if phase == _WORD:
            if ch in _GO_SPACE_SET:
                phase = _SPACES
                if blank_ok or buf:
                    words.append("".join(buf))
                buf = []
                blank_ok = False
                pos += 1
                continue
            if ch == "'" or ch == '"':
                quote = ch
                blank_ok = True
                phase = _QUOTE
            if ch == escape:
                if pos + 1 == n:
                    pos += 1
                    continue  # an escape at the very end is dropped
                buf.append(ch)
                pos += 1
                ch = rest[pos]
            buf.append(ch)
            pos += 1
            continue
        # _QUOTE
        if ch == quote:
            phase = _WORD
        if ch == escape and quote != "'":
            if pos + 1 == n:
                phase = _WORD
                pos += 1
                continue
            pos += 1
            buf.append(ch)
            ch = rest[pos]
        buf.append(ch)
        pos += 1
    return words


def unquote_flag(raw: str) -> str:
    """The value BuildKit's extractBuilderFlags makes of one flag word.

    Quotes are removed and a backslash escapes the next character (inside quotes
    too, and whatever the escape directive says); a trailing backslash is dropped.
    """
    out: list[str] = []
    quote = ""
    i = 0
    n = len(raw)
    while i < n:
        ch = raw[i]
        if not quote:
            if ch == "'" or ch == '"':
                quote = ch
                i += 1
                continue
        elif ch == quote:
            quote = ""
            i += 1
            continue
        if ch == "\\":
            if i + 1 == n:
                break
            i += 1
            ch = raw[i]
        out.append(ch)
        i += 1
    return "".join(out)


_JSON_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def _u4(s: str, i: int) -> int:
    """The code unit of a `\\uXXXX` escape at s[i], or -1."""
    if s.startswith("\\u", i) and len(s) >= i + 6:
        try:
            return int(s[i + 2:i + 6], 16)
        except ValueError:
            return -1
    return -1


def decode_json_string(token: str) -> str:
    """Decode a JSON string token (quotes included) as Go's encoding/json does.

    A valid surrogate pair of `\\u` escapes becomes one character; a lone
    surrogate becomes U+FFFD (Python's json would keep it).
    """
    s = token[1:-1]
    if "\\" not in s:
        return s
    out: list[str] = []
    i = 0
    n = len(s)
    while i < n:
        ch = s[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        esc = s[i + 1]
        if esc != "u":
            out.append(_JSON_ESCAPES[esc])
            i += 2
            continue
        r = _u4(s, i)
        i += 6
        if 0xD800 <= r <= 0xDFFF:
            r2 = _u4(s, i)
            if 0xD800 <= r < 0xDC00 and 0xDC00 <= r2 <= 0xDFFF:
                out.append(chr(0x10000 + ((r - 0xD800) << 10) + (r2 - 0xDC00)))
                i += 6
                continue
            r = 0xFFFD
        out.append(chr(r))
    return "".join(out)


def json_number_fits(token: str) -> bool:
    """Whether Go can hold a JSON number in a float64 (else Unmarshal fails)."""
    value = float(token)
    return value not in (float("inf"), float("-inf"))
