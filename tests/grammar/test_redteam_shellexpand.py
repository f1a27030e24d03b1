"""Red team: variable substitution as a hostile Dockerfile uses it for denial of service.

- `${v#*a*a*a*a*a*a*b}` was matched with Python's backtracking `re` (`^.*?a.*?a...b`):
  exponential in the number of stars, a 200-character value hung the build for ever
  (BuildKit's Go regexp is linear). The matcher must be linear and still give the
  answers of a leftmost-first regexp engine (Python's `re` is the oracle, on inputs
  small enough for it).
- `ARG a1=${a0}${a0}` repeated doubles a value per line (30 lines: gigabytes, a
  MemoryError reported as an internal error), `${v//?/$0$0$0}` multiplies one: one
  expansion is capped (grammar.shellpattern.MAX_EXPANSION), a DockerfileError.
"""

from __future__ import annotations

import re
import signal
from contextlib import contextmanager

import pytest
from hypothesis import given, settings, strategies as st

from lamina.grammar.errors import DockerfileError
from lamina.grammar.shell import expand
from lamina.grammar.shellpattern import MAX_EXPANSION, replace, trim_prefix, trim_suffix


@contextmanager
def deadline(seconds: int):
    def expired(signum, frame):
        raise TimeoutError(f"took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("word", [
    "${v#*a*a*a*a*a*a*a*b}", "${v##*a*a*a*a*a*a*a*b}", "${v%b*a*a*a*a*a*a*a*}",
    "${v%%b*a*a*a*a*a*a*a*}", "${v/*a*a*a*a*a*a*a*b/x}", "${v//*a*a*a*a*a*a*a*b/x}",
])
def test_many_stars_against_a_long_value_are_linear(word):
    value = "a" * 3000
    with deadline(10):
        assert expand(word, {"v": value}) == value  # no `b`: nothing matches


def test_a_long_value_still_matches():
    value = "a" * 20000 + "b" + "a" * 5
    with deadline(10):
        assert expand("${v#*a*a*a*b}", {"v": value}) == "a" * 5
        assert expand("${v%a*a*b*}", {"v": value}) == "a" * 19998
        assert expand("${v//a*b/X}", {"v": value}) == "X" + "a" * 5


def _oracle(pattern: str, greedy: bool, anchored: bool) -> re.Pattern[str]:
    """BuildKit's conversion of a shell pattern to a regexp, for Python's re."""
    out = ["^"] if anchored else []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        i += 1
        if ch == "*":
            out.append(".*" if greedy else ".*?")
        elif ch == "?":
            out.append(".")
        elif ch == "\\":
            out.append(re.escape(pattern[i]))
            i += 1
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out))


def _reverse(pattern: str) -> str:
    pieces, i = [], 0
    while i < len(pattern):
        step = 2 if pattern[i] == "\\" else 1
        pieces.append(pattern[i:i + step])
        i += step
    return "".join(reversed(pieces))


_patterns = st.lists(st.sampled_from(["a", "b", "\n", "*", "?", "\\*", "\\?", "\\\\"]),
                     max_size=7).map("".join)
_values = st.text(alphabet="ab\n*?\\", max_size=14)


@settings(max_examples=400, deadline=None)
@given(_patterns, _values, st.booleans())
def test_trimming_agrees_with_a_regexp_engine(pattern, value, longest):
    m = _oracle(pattern, longest, True).search(value)
    assert trim_prefix(pattern, value, longest) == (value[m.end():] if m else value)
    m = _oracle(_reverse(pattern), longest, True).search(value[::-1])
    assert trim_suffix(pattern, value, longest) == (value[::-1][m.end():][::-1] if m else value)


@settings(max_examples=400, deadline=None)
@given(_patterns, _values, st.booleans())
def test_replacing_agrees_with_a_regexp_engine(pattern, value, replace_all):
    regex = _oracle(pattern, True, False)
    if not replace_all:
        m = regex.search(value)
        want = value[:m.start()] + "R" + value[m.end():] if m else value
    else:  # Go's ReplaceAllString: an empty match right after a match is skipped
        out, last, pos = [], 0, 0
        while pos <= len(value):
            m = regex.search(value, pos)
            if m is None:
                break
            out.append(value[last:m.start()])
            if m.end() > last or m.start() == 0:
                out.append("R")
            last = m.end()
            pos = max(pos + 1, m.end()) if m.end() > pos else pos + 1
        out.append(value[last:])
        want = "".join(out)
    assert replace(pattern, value, "R", replace_all) == want


def test_doubling_args_stop_at_the_limit():
    env = {"a": "x" * 8}
    with pytest.raises(DockerfileError, match="longer than"):
        for _ in range(40):
            env["a"] = expand("${a}${a}", env)
    assert MAX_EXPANSION // 2 < len(env["a"]) <= MAX_EXPANSION


def test_a_multiplying_replacement_stops_at_the_limit():
    with pytest.raises(DockerfileError, match="longer than"):
        # the replacement is a Go template: `$0` in a variable's value is the match
        expand("${v//?/${t}}", {"v": "y" * (MAX_EXPANSION // 4), "t": "$0" * 10})
    with pytest.raises(DockerfileError, match="longer than"):
        expand("${v//*/${t}}", {"v": "y" * 5000, "t": "$0" * 500})
    with pytest.raises(DockerfileError, match="longer than"):
        expand("${v//y/${v}}", {"v": "y" * 2000})


def test_values_up_to_the_limit_still_expand():
    big = "z" * MAX_EXPANSION
    assert expand("pre-${v}-post", {"v": big}) == "pre-" + big + "-post"
    assert expand('"${v}"', {"v": big}) == big
