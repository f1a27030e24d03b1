"""BuildKit's parser dump form of a parsed Dockerfile (`dump`), and Go's strconv.Quote.

Owns the text form BuildKit's `parser.Node.Dump` prints (its parser testfiles'
`result`): one `(keyword ["--flags"] "arg" ...)` line per instruction, the
keyword lower-cased, flags as Go's `%q` of a string slice, every argument
Go-quoted; ONBUILD's trigger nested as `(onbuild (run "x"))`. Comments,
directives and heredoc bodies are not part of it.
"""

from __future__ import annotations

from lamina.grammar import ast
from lamina.grammar.goquote import go_quote



def dump_instruction(instruction: ast.Instruction) -> str:
    """One instruction in dump form, without the surrounding parentheses."""
    parts = [instruction.keyword.lower()]
    if instruction.flags:
        parts.append("[" + " ".join(go_quote(f.render()) for f in instruction.flags) + "]")
    if isinstance(instruction, ast.Onbuild):
        parts.append("(" + dump_instruction(instruction.instruction) + ")")
    else:
        parts.extend(go_quote(w) for w in instruction.words)
    return " ".join(parts)


def dump(dockerfile: ast.Dockerfile) -> str:
    """The whole Dockerfile in BuildKit's dump form, one line per instruction."""
    return "".join(f"({dump_instruction(i)})\n" for i in dockerfile.instructions)
