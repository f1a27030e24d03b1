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

from lamina.grammar.errors import DockerfileError

__all__ = ["DockerfileError", "dump", "expand", "parse", "split_words"]

# The parser (Lark, the AST's dataclasses) loads on first use: a command that only
# needs DockerfileError (every command's error handler) does not pay for it.
_LAZY = {"dump": "lamina.grammar.dump", "parse": "lamina.grammar.parser",
         "expand": "lamina.grammar.shell", "split_words": "lamina.grammar.shell"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
