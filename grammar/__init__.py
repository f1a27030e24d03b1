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

from grammar.errors import DockerfileError

__all__ = ["DockerfileError"]

try:  # filled in as the modules land
    from grammar.shell import expand, split_words  # noqa: F401
    __all__ += ["expand", "split_words"]
except ImportError:  # pragma: no cover
    pass
try:
    from grammar.parser import parse  # noqa: F401
    from grammar.dump import dump  # noqa: F401
    __all__ += ["parse", "dump"]
except ImportError:  # pragma: no cover
    pass
