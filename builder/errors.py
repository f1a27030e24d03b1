"""The exception hierarchy of `builder`: a build that cannot go on. Each error
carries the Dockerfile position (file, line, the line itself) when it has one."""

from __future__ import annotations


class BuildError(Exception):
    """A build failure a user can act on; `str()` is the message the CLI prints."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 source_line: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line
        self.source_line = source_line

    def __str__(self) -> str:
        head = self.message
        if self.file is not None and self.line is not None:
            head = f"{self.file}:{self.line}: {self.message}"
        if self.source_line:
            return f"{head}\n    {self.source_line.rstrip()}"
        return head


class SandboxError(BuildError):
    """The namespace sandbox could not be set up (mounts, namespaces, pivot_root)."""
