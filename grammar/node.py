"""`Node`: one instruction as BuildKit's parser sees it, before validation - what
grammar/parser.py produces and grammar/instructions.py turns into an AST node. Its
own module so that both depend on it and neither on the other."""

from __future__ import annotations

from dataclasses import dataclass, field

from lamina.grammar import ast


@dataclass
class Node:
    """One instruction as BuildKit's parser sees it, before validation."""

    keyword: str                     # upper-case
    word: str                        # the keyword as written
    offset: int                      # offset of the keyword in the logical line
    flags: list[tuple[str, int]]     # processed flag words and their offsets
    rest: str                        # argument text (trimmed)
    rest_offset: int
    is_json: bool = False
    command: ast.ShellForm | ast.ExecForm | None = None
    words: tuple[str, ...] = ()
    pairs: tuple[ast.KeyValue, ...] = ()
    child: "Node | None" = None
    heredocs: list[ast.Heredoc] = field(default_factory=list)
