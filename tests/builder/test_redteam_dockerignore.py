"""Red-team: a hostile build context must not stall the build through its .dockerignore.

A context of ~900 nested directories alternating short and 250-character names has
paths of ~110k characters. Matched from their first character, every path re-read all
of its parents: `**/a/**/b` took 12 s (Python's re) and `**/a/**/b*` 36 s (the
automaton) for one pattern, and a few dozen such lines stalled the build for minutes.
The walk now resumes each pattern's state from the directory's (linear in the names).
Expected visibility follows docker's rules (last matching pattern wins, `!` re-includes,
a matched directory matches everything below it), computed here from the shape."""

from __future__ import annotations

import os
import signal

import pytest

from lamina.builder.context.context import SourceTree
from lamina.builder.context.copysrc import select_sources
from lamina.builder.context.dockerignore import IgnoreRules

DEPTH = 900
LONG = "x" * 250


class _Hang(Exception):
    pass


@pytest.fixture()
def deadline():
    """Fail (not hang the suite) past 20 s; the linear matcher needs well under 2 s."""
    def alarm(*_):
        raise _Hang("matching the deep context did not end")
    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _names() -> list[str]:
    return ["a" if i % 2 == 0 else LONG for i in range(DEPTH)]


@pytest.fixture(scope="module")
def deep_context(tmp_path_factory):
    """DEPTH nested directories (beyond PATH_MAX: made through descriptors), a file `f`
    in each, and `b`, `bz`, `c` at the bottom. Removed the same way afterwards."""
    root = tmp_path_factory.mktemp("deep") / "ctx"
    os.mkdir(root)
    fds = [os.open(root, os.O_RDONLY | os.O_DIRECTORY)]
    for name in _names():
        os.close(os.open("f", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fds[-1]))
        os.mkdir(name, dir_fd=fds[-1])
        fds.append(os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fds[-1]))
    for leaf in ("b", "bz", "c"):
        os.close(os.open(leaf, os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fds[-1]))
    yield root
    for leaf in ("b", "bz", "c"):
        os.unlink(leaf, dir_fd=fds[-1])
    os.close(fds.pop())
    for name in reversed(_names()):
        os.rmdir(name, dir_fd=fds[-1])
        os.unlink("f", dir_fd=fds[-1])
        os.close(fds.pop())
    os.rmdir(root)


def _dirs() -> list[str]:
    out, path = [], ""
    for name in _names():
        path = f"{path}/{name}" if path else name
        out.append(path)
    return out


def test_deep_context_with_hostile_patterns_walks_in_linear_time(deep_context, deadline):
    # 40 lines of the two shapes measured, then an exception for bz
    lines = [f"**/a/**/b{i}" for i in range(20)] + [f"**/a/**/b{i}*" for i in range(19)]
    lines += ["**/a/**/b", "**/a/**/b*", "!**/a/**/bz"]
    rules = IgnoreRules.parse("\n".join(lines) + "\n")
    got = [e.path for e in SourceTree(deep_context, rules).entries(hash_files=False)]
    dirs = _dirs()
    bottom = dirs[-1]
    assert len(bottom) > 100_000
    want = {"f"} | set(dirs) | {f"{d}/f" for d in dirs[:-1]} | {f"{bottom}/bz", f"{bottom}/c"}
    assert set(got) == want  # b is excluded; bz re-included by the exception
    assert len(got) == len(want)


def test_deep_excluded_directories_with_an_exception_below(deep_context, deadline):
    """Every long directory is excluded (`**/x*`, and so all below it); `!**/c` brings
    back the bottom `c` and the directories that hold it, nothing else. The pruning
    test (`may_include_under`) runs at every level."""
    rules = IgnoreRules.parse("**/x*\n**/a/**/b*\n!**/c\n")
    got = {e.path for e in SourceTree(deep_context, rules).entries(hash_files=False)}
    dirs = _dirs()
    assert got == {"f", "a/f"} | set(dirs) | {f"{dirs[-1]}/c"}


def test_deep_copy_exclude_is_linear_too(deep_context, deadline):
    """COPY --exclude patterns (from the Dockerfile, hostile too) filter the same walk."""
    sel = select_sources(SourceTree(deep_context), ["."],
                         excludes=["**/a/**/b", "**/a/**/b*", "**/a/**/c*"] * 10 + ["!**/a/**/bz"])
    (src,) = sel.sources
    got = {e.rel for e in src.entries}
    dirs = _dirs()
    assert got == {"f"} | set(dirs) | {f"{d}/f" for d in dirs[:-1]} | {f"{dirs[-1]}/bz"}
