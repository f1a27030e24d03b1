"""grammar: Dockerfile text → AST.

Knows the Dockerfile language only (the Lark grammar, parser directives, line
continuations, heredocs, shell-word expansion); imports nothing else of lamina.

Public API:
    parse(text, *, path="Dockerfile") -> Dockerfile
    dump(dockerfile) -> str                 BuildKit parser-dump form
    expand(word, env, *, escape="\\") -> str
    split_words(word, env, *, escape="\\") -> list[str]
    DockerfileError
"""

from lamina.grammar.dump import dump
from lamina.grammar.errors import DockerfileError
from lamina.grammar.parser import parse
from lamina.grammar.shell import expand, split_words

__all__ = ["DockerfileError", "dump", "expand", "parse", "split_words"]
