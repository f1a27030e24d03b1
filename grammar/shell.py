r"""Shell-word processing: variable substitution, quote removal and escapes.

Owns the behaviour of BuildKit's `frontend/dockerfile/shell` lexer (ProcessWord /
ProcessWords), re-implemented from its documented and observed semantics:

    expand(word, env, *, escape="\\")        -> str        (ProcessWord)
    split_words(word, env, *, escape="\\")   -> list[str]  (ProcessWords)
    referenced_names(word, escape="\\")      -> frozenset[str]

What a word may contain:

* `$name`, `${name}` and the modifiers `${n:-w} ${n-w} ${n:+w} ${n+w} ${n:?m}
  ${n?m} ${n#p} ${n##p} ${n%p} ${n%%p} ${n/p/r} ${n//p/r}`; the word part may
  itself hold quotes and expansions (all of them are evaluated, whatever the
  variable's value). A name is letters, digits and `_`, or a run of digits, or
  one special parameter (`@ * # ? - $ ! 0`). `$` followed by anything else is a
  literal `$`.
* Patterns (`#`, `%`, `/`) use `*` and `?` and `\\`-escapes of `* ? \\ } /`; like
  BuildKit, bracket expressions are *not* supported: `[` and `]` are literal.
  Prefix/suffix trimming is shortest (`#`, `%`) or longest (`##`, `%%`);
  replacement is leftmost with a greedy `*`; in `//` the replacement is a Go
  regexp template (`$0`/`${0}` = the match, `$$` = `$`, any other `$name` = "").
* `'...'` keeps everything literally; `"..."` expands `$` and lets the escape
  token escape only `"`, `$` and the escape token itself; outside quotes the
  escape token escapes any character (and is dropped at the end of the word).
  The escape token is `\\` or, after `# escape=\``, a backtick.
* `<<` followed by blanks is kept together with the next word when splitting
  (BuildKit does this so that `RUN <<  EOF` still names a heredoc).

Pattern matching lives in grammar.shellpattern. Errors are `DockerfileError`s
whose message is BuildKit's, e.g.
`failed to process "${v:?}": v: is not allowed to be unset`.

Flags for the other uses BuildKit makes of this lexer (all default off):
`raw_quotes` keeps quote characters, `raw_escapes` keeps escape tokens,
`skip_unset` leaves references to unset variables as written, and
`process_quotes=False` treats quotes as ordinary characters (heredoc bodies).

Known differences from BuildKit (v0.13+):
* In ProcessWords BuildKit shares one word buffer with the nested pass over a
  modifier's word, so the text before `${v:-w}` (and the like) in the same word
  is lost (`a${v:-b}c` -> ["bc"]); here it is kept (["abc"]), as older BuildKit did.
* Nesting deeper than Python's recursion allows (hundreds of `${v:-${...}}`
  levels) is a DockerfileError instead of working.
* Letters, digits and blanks follow Python's Unicode tables, which may be a
  different Unicode version than Go's.
* Environment names are case-sensitive (BuildKit folds case on Windows only).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from lamina.grammar import shellpattern
from lamina.grammar.errors import DockerfileError
from lamina.grammar.goquote import go_quote as _go_quote

__all__ = ["expand", "split_words", "referenced_names"]

_EOF = ""
# What Go's %c / string(rune) print for the EOF rune (-1).
_BAD_RUNE = "\ufffd"
# Go's unicode.IsSpace (Python's str.isspace also accepts U+001C..U+001F).
_GO_SPACE = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
# Blanks that BuildKit lets stand between `<<` and a heredoc word.
_HEREDOC_BLANK = frozenset("\t\r ")
# POSIX special parameters, accepted as one-character names.
_SPECIAL_PARAMS = frozenset("@*#?-$!0")
_MODIFIERS = frozenset("+-?#%")
_BOM = "\ufeff"


class _ShellError(Exception):
    """Internal: a BuildKit error message, wrapped into a DockerfileError at the top."""


def _is_digit(ch: str) -> bool:
    return ch.isdecimal()  # Go unicode.IsDigit: general category Nd


def _is_name_char(ch: str) -> bool:
    return ch.isalpha() or ch.isdecimal() or ch == "_"


# --------------------------------------------------------------------------- words


class _Words:
    """Word splitting as the lexer goes: unquoted blanks end a word."""

    __slots__ = ("buf", "words", "in_word")

    def __init__(self) -> None:
        self.buf = ""
        self.words: list[str] = []
        self.in_word = False

    def add_char(self, ch: str) -> None:
        if ch in _GO_SPACE:
            if self.in_word and self.buf:
                self.words.append(self.buf)
                self.buf = ""
                self.in_word = False
        else:
            self.buf += ch
            self.in_word = True

    def add_string(self, text: str) -> None:
        for ch in text:
            self.add_char(ch)

    def add_raw(self, text: str) -> None:
        self.buf += text
        self.in_word = True

    def result(self) -> list[str]:
        if self.buf:
            self.words.append(self.buf)
            self.buf = ""
            self.in_word = False
        return self.words


# --------------------------------------------------------------------------- lexer


class _Lexer:
    """One pass over one word. `lookup(name)` returns the value, or None if unset."""

    __slots__ = ("src", "pos", "lookup", "escape", "raw_quotes", "raw_escapes",
                 "process_quotes", "skip_unset", "names")

    def __init__(self, src: str, lookup: Callable[[str], str | None], escape: str, *,
                 raw_quotes: bool, raw_escapes: bool, process_quotes: bool,
                 skip_unset: bool) -> None:
        # Go's text/scanner ignores a byte order mark at the very start.
        self.src = src
        self.pos = 1 if src.startswith(_BOM) else 0
        self.lookup = lookup
        self.escape = escape
        self.raw_quotes = raw_quotes
        self.raw_escapes = raw_escapes
        self.process_quotes = process_quotes
        self.skip_unset = skip_unset
        self.names: set[str] = set()

    # scanner -----------------------------------------------------------------

    def peek(self) -> str:
        return self.src[self.pos] if self.pos < len(self.src) else _EOF

    def next(self) -> str:
        if self.pos < len(self.src):
            ch = self.src[self.pos]
            self.pos += 1
            return ch
        return _EOF

    def get(self, name: str) -> str | None:
        self.names.add(name)
        return self.lookup(name)

    def grown(self, size: int, text: str) -> int:
        """`size` plus the substituted `text`; past shellpattern.MAX_EXPANSION (beyond
        what the word's own characters give) the word is refused, before the joined
        result is built: `ARG a1=${a0}${a0}` repeated asks for 2^n bytes."""
        size += len(text)
        if size > shellpattern.MAX_EXPANSION + len(self.src):
            raise _ShellError(str(shellpattern.ExpansionTooLong()))
        return size

    # the grammar ---------------------------------------------------------------

    def run(self, words: _Words | None) -> str:
        return self.stop_on(_EOF, self.raw_escapes, words)

    def stop_on(self, stop: str, raw_escapes: bool, words: _Words | None = None) -> str:
        """Process up to (and consuming) `stop`, or to the end when stop is EOF."""
        saved = self.raw_escapes
        self.raw_escapes = raw_escapes
        try:
            out: list[str] = []
            size = 0
            while True:
                ch = self.peek()
                if ch == _EOF:
                    break
                if stop and ch == stop:
                    self.next()
                    return "".join(out)
                if ch == "$":
                    text = self.dollar()
                    out.append(text)
                    size = self.grown(size, text)
                    if words is not None:
                        words.add_string(text)  # expansions are split on blanks
                    continue
                if ch == "<" or (self.process_quotes and ch in "'\""):
                    if ch == "<":
                        text = self.possible_heredoc()
                    elif ch == "'":
                        text = self.single_quote()
                    else:
                        text = self.double_quote()
                    out.append(text)
                    size = self.grown(size, text)
                    if words is not None:
                        words.add_raw(text)  # quoted text is never split
                    continue
                ch = self.next()
                if ch == self.escape:
                    if self.raw_escapes:
                        out.append(ch)
                        if words is not None:
                            words.add_raw(ch)
                    ch = self.next()
                    if ch == _EOF:
                        break  # an escape at the end of the word is dropped
                    if words is not None:
                        words.add_raw(ch)
                elif words is not None:
                    words.add_char(ch)
                out.append(ch)
            if stop:
                raise _ShellError(
                    f"unexpected end of statement while looking for matching {stop}")
            return "".join(out)
        finally:
            self.raw_escapes = saved

    def single_quote(self) -> str:
        out: list[str] = []
        quote = self.next()
        if self.raw_quotes:
            out.append(quote)
        while True:
            ch = self.next()
            if ch == _EOF:
                raise _ShellError(
                    "unexpected end of statement while looking for matching single-quote")
            if ch == "'":
                if self.raw_quotes:
                    out.append(ch)
                return "".join(out)
            out.append(ch)

    def double_quote(self) -> str:
        out: list[str] = []
        size = 0
        quote = self.next()
        if self.raw_quotes:
            out.append(quote)
        while True:
            ch = self.peek()
            if ch == _EOF:
                raise _ShellError(
                    "unexpected end of statement while looking for matching double-quote")
            if ch == '"':
                self.next()
                if self.raw_quotes:
                    out.append(ch)
                return "".join(out)
            if ch == "$":
                out.append(self.dollar())
                size = self.grown(size, out[-1])
                continue
            ch = self.next()
            if ch == self.escape:
                if self.raw_escapes:
                    out.append(ch)
                follower = self.peek()
                if follower == _EOF:
                    continue  # the unterminated quote is reported on the next turn
                if follower in ('"', "$", self.escape):
                    ch = self.next()
                # any other escape stays literal inside double quotes
            out.append(ch)

    def possible_heredoc(self) -> str:
        self.next()
        if self.peek() != "<":
            return "<"
        self.next()
        blanks: list[str] = []
        while self.peek() in _HEREDOC_BLANK:
            blanks.append(self.next())
        return "<<" + "".join(blanks)

    def name(self) -> str:
        chars: list[str] = []
        while True:
            ch = self.peek()
            if ch == _EOF:
                break
            if not chars and _is_digit(ch):
                while self.peek() != _EOF and _is_digit(self.peek()):
                    chars.append(self.next())
                return "".join(chars)
            if not chars and ch in _SPECIAL_PARAMS:
                return self.next()
            if not _is_name_char(ch):
                break
            chars.append(self.next())
        return "".join(chars)

    def dollar(self) -> str:
        self.next()  # the '$'
        if self.peek() != "{":
            name = self.name()
            if not name:
                return "$"
            value = self.get(name)
            if value is None:
                return "$" + name if self.skip_unset else ""
            return value

        self.next()  # the '{'
        ch = self.peek()
        if ch == _EOF:
            raise _ShellError("syntax error: missing '}'")
        if ch in "{}:":
            raise _ShellError("syntax error: bad substitution")
        name = self.name()
        ch = self.next()
        mods = ch or _BAD_RUNE

        if ch == "}":
            value = self.get(name)
            if value is None:
                return "${" + name + "}" if self.skip_unset else ""
            return value

        null_is_unset = False
        if ch == ":":
            null_is_unset = True
            ch = self.next()
            mods += ch or _BAD_RUNE
        elif ch == "/":
            return self.replace(name)
        elif ch not in _MODIFIERS or ch == _EOF:
            raise _ShellError(f"unsupported modifier ({mods}) in substitution")

        pattern_like = ch in ("#", "%") and ch != _EOF
        if null_is_unset and pattern_like:
            raise _ShellError(f"unsupported modifier ({mods}) in substitution")
        try:
            word = self.stop_on("}", pattern_like)
        except _ShellError:
            if self.peek() == _EOF:
                raise _ShellError("syntax error: missing '}'") from None
            raise

        value = self.get(name)
        if value is None and self.skip_unset:
            return "${" + name + mods + word + "}"
        is_set = value is not None
        value = value or ""
        empty_or_unset = not is_set or (null_is_unset and value == "")

        if ch == "-":
            return word if empty_or_unset else value
        if ch == "+":
            return "" if empty_or_unset else word
        if ch == "?":
            if not is_set:
                raise _ShellError(f"{name}: {word or 'is not allowed to be unset'}")
            if null_is_unset and value == "":
                raise _ShellError(f"{name}: {word or 'is not allowed to be empty'}")
            return value
        if pattern_like:
            longest = word[:1] == ch
            if longest:
                word = word[1:]
            trim = shellpattern.trim_suffix if ch == "%" else shellpattern.trim_prefix
            try:
                return trim(word, value, longest)
            except shellpattern.PatternError as exc:
                raise _ShellError(str(exc)) from None
        raise _ShellError(f"unsupported modifier ({mods}) in substitution")

    def replace(self, name: str) -> str:
        replace_all = self.peek() == "/"
        if replace_all:
            self.next()
        try:
            pattern = self.stop_on("/", True)
        except _ShellError:
            if self.peek() == _EOF:
                raise _ShellError("syntax error: missing '/' in ${}") from None
            raise
        try:
            replacement = self.stop_on("}", True)
        except _ShellError:
            if self.peek() == _EOF:
                raise _ShellError("syntax error: missing '}'") from None
            raise

        value = self.get(name)
        if value is None and self.skip_unset:
            return "${" + name + "/" + pattern + "/" + replacement + "}"
        try:
            return shellpattern.replace(pattern, value or "", replacement, replace_all)
        except shellpattern.PatternError as exc:
            raise _ShellError(str(exc)) from None


# --------------------------------------------------------------------------- API


def _check_escape(escape: str) -> None:
    if len(escape) != 1:
        raise ValueError(f"escape token must be one character, not {escape!r}")


def _lookup_in(env: Mapping[str, str] | None) -> Callable[[str], str | None]:
    if env is None:
        return lambda name: None
    return lambda name: env[name] if name in env else None


def _process(word: str, lookup: Callable[[str], str | None], escape: str,
             words: _Words | None, *, raw_quotes: bool, raw_escapes: bool,
             process_quotes: bool, skip_unset: bool) -> tuple[str, _Lexer]:
    _check_escape(escape)
    lexer = _Lexer(word, lookup, escape, raw_quotes=raw_quotes, raw_escapes=raw_escapes,
                   process_quotes=process_quotes, skip_unset=skip_unset)
    try:
        return lexer.run(words), lexer
    except _ShellError as exc:
        raise DockerfileError(f"failed to process {_go_quote(word)}: {exc}") from None
    except RecursionError:
        raise DockerfileError(
            f"failed to process {_go_quote(word)}: substitutions nested too deeply") from None


def _plain(word: str, escape: str, process_quotes: bool) -> bool:
    """True when the word holds nothing the lexer would change."""
    if "$" in word or "<" in word or escape in word or word.startswith(_BOM):
        return False
    return not process_quotes or ("'" not in word and '"' not in word)


def expand(word: str, env: Mapping[str, str] | None, *, escape: str = "\\",
           raw_quotes: bool = False, raw_escapes: bool = False,
           skip_unset: bool = False, process_quotes: bool = True) -> str:
    """One word after substitution, quote removal and escapes (BuildKit ProcessWord)."""
    if _plain(word, escape, process_quotes):
        _check_escape(escape)
        return word
    result, _ = _process(word, _lookup_in(env), escape, None, raw_quotes=raw_quotes,
                         raw_escapes=raw_escapes, process_quotes=process_quotes,
                         skip_unset=skip_unset)
    return result


def split_words(word: str, env: Mapping[str, str] | None, *, escape: str = "\\",
                raw_quotes: bool = False, raw_escapes: bool = False,
                skip_unset: bool = False, process_quotes: bool = True) -> list[str]:
    """The words of a text after expansion (BuildKit ProcessWords).

    Unquoted, unescaped blanks separate words, and so do blanks inside the value
    of an unquoted expansion; quoted text never splits. Empty words are dropped
    (so `""` alone yields no word at all).
    """
    words = _Words()
    _process(word, _lookup_in(env), escape, words, raw_quotes=raw_quotes,
             raw_escapes=raw_escapes, process_quotes=process_quotes,
             skip_unset=skip_unset)
    return words.result()


def referenced_names(word: str, escape: str = "\\", *,
                     process_quotes: bool = True) -> frozenset[str]:
    """The variable names whose values can change what `expand(word, ...)` yields.

    BuildKit evaluates every expansion in a word, including the ones nested in a
    modifier's word part, so this set does not depend on the environment. Raises
    DockerfileError for a word that is malformed in every environment.
    """
    if _plain(word, escape, process_quotes):
        _check_escape(escape)
        return frozenset()
    # Every variable set and non-empty: no `?` modifier fails, and only the
    # word's own syntax can raise.
    _, lexer = _process(word, lambda name: "x", escape, None, raw_quotes=False,
                        raw_escapes=False, process_quotes=process_quotes,
                        skip_unset=False)
    return frozenset(lexer.names)
