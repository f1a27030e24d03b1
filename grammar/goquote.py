"""Go's strconv.Quote, shared by the parser dump, error messages and history text
(BuildKit prints words with Go's %q)."""

from __future__ import annotations

_SIMPLE_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
                   "\t": "\\t", "\v": "\\v", "\\": "\\\\", '"': '\\"'}


def go_quote(s: str) -> str:
    """Go's strconv.Quote: a double-quoted Go string literal for `s`.

    Printable characters (unicode.IsPrint: letters, marks, numbers, punctuation,
    symbols, ASCII space) stay as they are; \\a \\b \\f \\n \\r \\t \\v, `\\\\` and `\\"`
    are escaped; other characters below 0x20 and 0x7f become \\xNN; other
    non-printable characters \\uXXXX or \\UXXXXXXXX (lower-case hex); a lone
    surrogate (not a valid rune) becomes \\ufffd.
    """
    if s.isascii() and s.isprintable() and '"' not in s and "\\" not in s:
        return f'"{s}"'
    out = ['"']
    for ch in s:
        esc = _SIMPLE_ESCAPES.get(ch)
        if esc is not None:
            out.append(esc)
            continue
        code = ord(ch)
        if ch.isprintable():
            if 0xD800 <= code <= 0xDFFF:  # pragma: no cover - surrogates are not printable
                out.append("\\ufffd")
            else:
                out.append(ch)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append("\\ufffd")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)
