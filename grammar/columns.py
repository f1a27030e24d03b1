"""Where a build-check finding points: 1-based columns on an instruction's first line.

BuildKit locates a finding by its instruction's lines only; lamina adds a column
that points at the word a rule is about (lamina.grammar.checks says which word for
each rule). Pure functions of an instruction's source text: the keyword's column,
a whole word's column, a variable reference's `$`; each falls back to the keyword's
column when the word is not on the first line (it is on a continuation line).
"""

from __future__ import annotations

from lamina.grammar import ast


def keyword_column(inst: ast.Instruction) -> int:
    """1-based column of the instruction's keyword on its first line."""
    first = inst.source.split("\n", 1)[0]
    return len(first) - len(first.lstrip(" \t")) + 1


def _first_line(inst: ast.Instruction) -> tuple[str, int]:
    """The instruction's first source line and the index just past its keyword."""
    first = inst.source.split("\n", 1)[0]
    return first, keyword_column(inst) - 1 + len(inst.keyword_text or inst.keyword)


def word_column(inst: ast.Instruction, word: str, *, key: bool = False, after: int = 0) -> int:
    """1-based column of `word` as a whole word on the instruction's first line after
    its keyword (and from column `after` on): preceded by a blank (or `[`/`"` of a JSON
    form) and followed by a blank, the line's end or `"`/`,`/`]` - with `key`, also `=`
    (an ENV/ARG/LABEL key, a `--flag=`). The keyword's column when it is not there
    (on a continuation line)."""
    first, start = _first_line(inst)
    start = max(start, after - 1)
    ends = ' \t",]' + ("=" if key else "")
    at = first.find(word, start) if word else -1
    while at >= 0:
        before = first[at - 1] if at > 0 else " "
        after = first[at + len(word)] if at + len(word) < len(first) else " "
        if before in ' \t["' and after in ends:
            return at + 1
        at = first.find(word, at + 1)
    return keyword_column(inst)


def _name_char(c: str) -> bool:
    return c.isalnum() or c == "_"


def variable_column(inst: ast.Instruction, name: str, escape: str = "\\", *,
                    quotes: bool = True) -> int:
    """1-based column of the `$` of the first reference to `name` (`$name`, `${name}`,
    `${name:-...}`, ...) on the instruction's first line after its keyword: not an
    escaped `$`, not inside single quotes (with `quotes`, as the words are expanded).
    The keyword's column when the reference is on a later line."""
    first, i = _first_line(inst)
    single = double = False
    while i < len(first):
        c = first[i]
        if c == escape and not single:
            i += 2
            continue
        if quotes and c == "'" and not double:
            single = not single
        elif quotes and c == '"' and not single:
            double = not double
        elif c == "$" and not single:
            # offsets, not slices: a copy of the rest of the line per `$` is quadratic
            j = i + 2 if first.startswith("{", i + 1) else i + 1
            if first.startswith(name, j) and not _name_char(first[j + len(name):j + len(name) + 1] or " "):
                return i + 1
        i += 1
    return keyword_column(inst)


__all__ = ["keyword_column", "variable_column", "word_column"]
