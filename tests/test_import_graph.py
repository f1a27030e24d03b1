"""The import graph of lamina: no circles, and imports go one way (DESIGN.md):
builder -> grammar, builder -> store; grammar and store import nothing of each other
nor of builder.

Every .py under grammar/, store/ and builder/ is parsed (never imported) and every
import statement counted, wherever it is: at the top, inside a function, under
`if TYPE_CHECKING:` (a type-only import is still a dependency of the module's
meaning, and the circles the issue named were partly type-only). Absolute
`lamina.x.y` and relative imports are resolved to modules; `from pkg import name`
counts `pkg.name` when that is a module, else `pkg`.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = {"grammar": "lamina.grammar", "store": "lamina.store", "builder": "lamina.builder"}


def lamina_modules() -> dict[str, Path]:
    """lamina module name -> source file, for the three packages and `lamina` itself."""
    mods: dict[str, Path] = {}
    for folder, dotted in PACKAGES.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = list(path.relative_to(REPO / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join([dotted, *parts])] = path
    for path in sorted((REPO / "lamina").glob("*.py")):
        name = "lamina" if path.stem == "__init__" else f"lamina.{path.stem}"
        mods[name] = path
    return mods


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The lamina modules that module `name` (at `path`) imports."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    out: set[str] = set()

    def nearest(mod: str) -> str | None:
        while mod and mod not in known:
            mod = mod.rpartition(".")[0]
        return mod or None

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("lamina"):
                    target = nearest(alias.name)
                    if target:
                        out.add(target)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                if node.level > 1:
                    base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("lamina"):
                continue
            for alias in node.names:
                sub = f"{mod}.{alias.name}"
                target = sub if sub in known else nearest(mod)
                if target:
                    out.add(target)
    out.discard(name)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = lamina_modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each
    sorted, as readable lists: every import circle lies inside one of them."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in graph:
                    continue
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return sorted(out)


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "lamina"


# -- the walker itself ------------------------------------------------------------------

def test_walker_resolves_relative_and_nested_imports(tmp_path):
    pkg = tmp_path / "p"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from lamina.store import b\n")
    (pkg / "sub" / "__init__.py").write_text("from .. import a\nfrom ..a import f\n")
    (pkg / "sub" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                      "    from . import d\nimport lamina.store.b.x\n")
    known = {"lamina.store", "lamina.store.a", "lamina.store.b", "lamina.store.sub",
             "lamina.store.sub.c", "lamina.store.sub.d"}
    assert imports_of("lamina.store.a", pkg / "a.py", known) == {"lamina.store.b"}
    assert imports_of("lamina.store.sub", pkg / "sub" / "__init__.py", known) == {"lamina.store.a"}
    assert imports_of("lamina.store.sub.c", pkg / "sub" / "c.py", known) == {
        "lamina.store.sub.d", "lamina.store.b"}


def test_cycle_finder():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}, "f": set()}
    assert cycles(g) == [["a", "b", "c"]]
    assert cycles({"x": {"y"}, "y": set()}) == []


# -- lamina's graph ---------------------------------------------------------------------

def test_graph_sees_the_known_edges():
    """The walk finds real imports (a broken walker would pass every check below)."""
    g = import_graph()
    assert "lamina.store.errors" in g["lamina.store.blobs"]
    assert "lamina.grammar.errors" in g["lamina.grammar"] or any(
        m.startswith("lamina.grammar.") for m in g["lamina.grammar"])
    assert any(m.startswith("lamina.store") for m in g["lamina.builder.executor"])
    assert len(g) > 60


def _report(found: list[list[str]]) -> str:
    return "import circles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_import_circles_in_store_and_grammar():
    found = [c for c in cycles(import_graph()) if package_of(c[0]) in ("store", "grammar")]
    assert found == [], _report(found)


def test_no_import_circles_in_builder():
    """Every circle in builder/ is reported (the store/grammar ones above too)."""
    found = cycles(import_graph())
    assert found == [], _report(found)


def test_imports_go_one_way():
    """grammar and store import nothing of builder; grammar nothing of store and
    store nothing of grammar."""
    forbidden = {"grammar": {"store", "builder"}, "store": {"grammar", "builder"}}
    bad = []
    for mod, deps in sorted(import_graph().items()):
        banned = forbidden.get(package_of(mod), set())
        bad += [f"{mod} -> {d}" for d in sorted(deps) if package_of(d) in banned]
    assert bad == []


# -- no import fallbacks ----------------------------------------------------------------

def import_fallbacks(source: str, filename: str = "<module>") -> list[int]:
    """Lines of the `except` clauses that catch ImportError or ModuleNotFoundError
    (alone, in a tuple, as `builtins.X`): the "filled in as the modules land" fallbacks
    issue 12 removed, which hide a broken import behind a stand-in."""
    names = {"ImportError", "ModuleNotFoundError"}
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.ExceptHandler) or node.type is None:
            continue
        caught = node.type.elts if isinstance(node.type, ast.Tuple) else [node.type]
        if any((isinstance(c, ast.Name) and c.id in names)
               or (isinstance(c, ast.Attribute) and c.attr in names) for c in caught):
            found.append(node.lineno)
    return found


def test_fallback_finder():
    src = ("try:\n    import x\nexcept ImportError:\n    x = None\n"
           "try:\n    import y\nexcept (OSError, ModuleNotFoundError) as e:\n    pass\n"
           "try:\n    pass\nexcept builtins.ImportError:\n    pass\n"
           "try:\n    pass\nexcept OSError:\n    pass\nexcept:\n    pass\n")
    assert import_fallbacks(src) == [3, 7, 11]


def test_no_import_fallbacks_in_packages():
    """No module of lamina catches ImportError: every import it needs is a dependency
    (pyproject.toml) or its own module, and a missing one fails loudly."""
    bad = [f"{path.relative_to(REPO)}:{line}" for path in lamina_modules().values()
           for line in import_fallbacks(path.read_text(), str(path))]
    assert bad == []
