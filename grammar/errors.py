"""The one exception of `grammar`: a Dockerfile that cannot be understood.

A `DockerfileError` names the file, the 1-based line and column, and renders the
offending source line with a caret under the column, so the CLI can print it as
is: no traceback, nothing else needed.
"""

from __future__ import annotations


class DockerfileError(Exception):
    """A Dockerfile (or a word in it) that BuildKit would reject.

    `line` and `column` are 1-based; either may be None when the error is not tied
    to a position (e.g. an empty file, or a word expanded outside any file).
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        column: int | None = None,
        source_line: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line
        self.column = column
        self.source_line = source_line

    def __str__(self) -> str:
        where = self.file or ""
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        head = f"{where}: {self.message}" if where else self.message
        if self.source_line is None:
            return head
        text = self.source_line.rstrip("\n")
        caret = ""
        if self.column is not None:
            # keep tabs so the caret lines up under the same character
            pad = "".join(c if c == "\t" else " " for c in text[: max(self.column - 1, 0)])
            caret = f"\n    {pad}^"
        return f"{head}\n    {text}{caret}"

    def at(self, *, file: str | None = None, line: int | None = None,
           column: int | None = None, source_line: str | None = None) -> "DockerfileError":
        """Return a copy of this error placed at a position (fields not given are kept)."""
        return DockerfileError(
            self.message,
            file=file if file is not None else self.file,
            line=line if line is not None else self.line,
            column=column if column is not None else self.column,
            source_line=source_line if source_line is not None else self.source_line,
        )
