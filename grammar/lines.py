"""The line scanner: physical lines → logical instruction lines.

Owns what BuildKit's parser does before it looks at an instruction: the UTF-8
BOM, line endings (only "\\n" ends a line; trailing "\\r" is trimmed), parser
directives (via DirectiveParser, which may change the escape character),
comments, blank lines, line continuations with the escape character (comment
and blank lines inside a continuation are skipped, a continuation may run into
the end of the file), and reading heredoc bodies once the parser has decided
that an instruction opens heredocs.

Every logical line remembers where each of its pieces came from, so that a
position in the logical line maps back to (line, column) in the file.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field

from lamina.grammar.directives import DirectiveParser
from lamina.grammar.errors import DockerfileError
from lamina.grammar.words import trim_left_space


@dataclass
class LogicalLine:
    """One instruction's text with continuations joined, and its origin."""

    text: str
    start: int                      # first physical line (1-based)
    end: int                        # last physical line (heredocs included once read)
    # (offset in text, physical line, 0-based column in that line), by offset
    pieces: list[tuple[int, int, int]] = field(default_factory=list)
    comments: tuple[str, ...] = ()  # comment lines before it (BuildKit's PrevComment)
    empty_continuations: list[int] = field(default_factory=list)  # blank continued lines

    def position(self, offset: int) -> tuple[int, int]:
        """(line, 1-based column) in the file of `text[offset]`."""
        offsets = [p[0] for p in self.pieces]
        i = max(bisect_right(offsets, offset) - 1, 0)
        base, line, col = self.pieces[i]
        return line, col + (offset - base) + 1


def _trim_newline(line: str) -> str:
    return line.rstrip("\r\n")


def _is_comment(raw: str) -> bool:
    return trim_left_space(_trim_newline(raw)).startswith("#")


class LineScanner:
    """Iterates over the logical lines of a Dockerfile text."""

    def __init__(self, text: str, path: str) -> None:
        if text.startswith("\ufeff"):
            text = text[1:]
        raw = text.split("\n")
        ends_with_newline = raw[-1] == ""
        if ends_with_newline:
            raw.pop()
        # physical lines with their line ending (as BuildKit's scanLines keeps it)
        self.lines = [line + "\n" for line in raw]
        if self.lines and not ends_with_newline:
            self.lines[-1] = self.lines[-1][:-1]
        self.path = path
        self.pos = 0  # index of the next physical line to read
        self.directives = DirectiveParser()
        self.found_directives: list[tuple[str, str, int]] = []
        self.comments: list[str] = []  # comments since the last instruction

    @property
    def escape(self) -> str:
        return self.directives.escape

    def source_line(self, line_no: int) -> str:
        if 1 <= line_no <= len(self.lines):
            return _trim_newline(self.lines[line_no - 1])
        return ""

    def error(self, message: str, line: int | None, column: int | None = None) -> DockerfileError:
        return DockerfileError(message, file=self.path, line=line, column=column,
                               source_line=self.source_line(line) if line else None)

    def _directive(self, token: str, line_no: int) -> None:
        try:
            found = self.directives.feed(token, line_no)
        except DockerfileError as err:
            raise err.at(file=self.path)
        if found is not None:
            self.found_directives.append((found[0], found[1], line_no))

    def _comment(self, token: str, is_directive: bool) -> None:
        """Remember a comment line for the next instruction (a bare `#` forgets the
        ones before it; a parser directive is not a comment)."""
        if is_directive:
            return
        text = token[1:].strip()
        if text == "":
            self.comments = []
        else:
            self.comments.append(text)

    def _continued(self, token: str) -> tuple[str, bool]:
        """Strip a trailing escape (line continuation); True if the line continues."""
        esc = self.directives.escape
        stripped = token.rstrip(" \t")
        if stripped.endswith(esc) and (len(stripped) == 1 or stripped[-2] != esc):
            return stripped[:-1], True
        return token, False

    def next_line(self) -> LogicalLine | None:
        """The next logical line, or None at the end of the file."""
        lines = self.lines
        n = len(lines)
        while self.pos < n:
            raw = lines[self.pos]
            self.pos += 1
            line_no = self.pos
            token = _trim_newline(raw)
            stripped = trim_left_space(token)
            col = len(token) - len(stripped)
            directives_before = len(self.found_directives)
            self._directive(stripped, line_no)
            if stripped.startswith("#"):
                self._comment(token, len(self.found_directives) > directives_before)
            if stripped.startswith("#"):
                stripped = ""
            text, continued = self._continued(stripped)
            if not continued and text == "":
                continue
            logical = LogicalLine(text=text, start=line_no, end=line_no, pieces=[(0, line_no, col)])
            parts = [text]
            length = len(text)
            while continued and self.pos < n:
                raw = lines[self.pos]
                self.pos += 1
                token = _trim_newline(raw)
                self._directive(token, self.pos)
                if _is_comment(raw):
                    continue
                if trim_left_space(token) == "":
                    logical.empty_continuations.append(self.pos)
                    continue  # empty continuation line (BuildKit only warns)
                token, continued = self._continued(token)
                logical.pieces.append((length, self.pos, 0))
                parts.append(token)
                length += len(token)
            logical.text = "".join(parts)
            logical.end = self.pos
            logical.comments = tuple(self.comments)
            self.comments = []
            return logical
        return None

    def read_heredoc(self, delimiter: str, strip_tabs: bool) -> str | None:
        """Read one heredoc body up to its terminator line; None if the file ends first."""
        lines = self.lines
        body: list[str] = []
        while self.pos < len(lines):
            raw = lines[self.pos]
            self.pos += 1
            candidate = _trim_newline(raw)
            if strip_tabs:
                candidate = candidate.lstrip("\t")
            if candidate == delimiter:
                return "".join(body)
            body.append(raw)
        return None
