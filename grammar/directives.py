"""Parser directives: `# syntax=…`, `# escape=…`, `# check=…` at the top of a file.

Owns BuildKit's directive rules: a directive is a comment line of the form
`# name = value` (name case-insensitive, one of syntax/escape/check); directives
are only recognised before the first line that is not one (any other comment, a
blank line or an instruction ends them); each may appear once; `escape` must be
a backslash or a backtick.
"""

from __future__ import annotations

import re

from lamina.grammar.errors import DockerfileError
from lamina.grammar.words import trim_left_space

VALID_DIRECTIVES = ("syntax", "escape", "check")
# Go's \s is [\t\n\f\r ]
_DIRECTIVE = re.compile(r"([a-zA-Z][a-zA-Z0-9]*)[\t\n\f\r ]*=[\t\n\f\r ]*(.+?)[\t\n\f\r ]*\Z")


class DirectiveParser:
    """Line-by-line directive recognition with BuildKit's state (done, seen)."""

    def __init__(self) -> None:
        self.done = False
        self.seen: dict[str, tuple[str, int]] = {}
        self.escape = "\\"

    def feed(self, line: str, line_no: int) -> tuple[str, str] | None:
        """Look at one (newline-trimmed) line; return (name, value) if it is a directive.

        Raises DockerfileError (without file) for a repeated directive or a bad
        escape character.
        """
        if self.done:
            return None
        if not line.startswith("#"):
            self.done = True
            return None
        match = _DIRECTIVE.match(trim_left_space(line[1:]))
        if match is None:
            self.done = True
            return None
        name = match.group(1).lower()
        if name not in VALID_DIRECTIVES:
            self.done = True
            return None
        value = match.group(2)
        if name in self.seen:
            raise DockerfileError(f"only one {name} parser directive can be used",
                                  line=line_no, column=1, source_line=line)
        if name == "escape":
            if value not in ("\\", "`"):
                raise DockerfileError(
                    f"invalid escape token '{value}' does not match ` or \\",
                    line=line_no, column=line.find(value, line.index("=")) + 1, source_line=line)
            self.escape = value
        self.seen[name] = (value, line_no)
        return name, value
