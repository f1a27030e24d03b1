"""builder.context.globmatch: the automaton (and its lazily determinised, resumable
form) agrees with a backtracking regex engine (Python's re, the oracle on inputs small
enough for it), and hostile patterns from a repository's .dockerignore or Dockerfile
match in linear time instead of hanging."""

from __future__ import annotations

import re
import signal

import pytest
from hypothesis import given, settings, strategies as st

from lamina.builder.context.dockerignore import IgnoreRules
from lamina.builder.context.patterns import GlobPattern
from lamina.builder.context.globmatch import LazyDFA, _Automaton, compile_tokens, regex_of

_TOKEN = st.one_of(
    st.sampled_from([("lit", "a"), ("lit", "b"), ("lit", "/"), ("lit", "\n"), ("one",), ("star",),
                     ("any",), ("dirs",)]),
    st.builds(lambda neg, lo, hi: ("class", neg, ((ord(lo), ord(hi)),)),
              st.booleans(), st.sampled_from("a/b"), st.sampled_from("a/b")))


@settings(max_examples=400, deadline=None)
@given(st.lists(_TOKEN, max_size=7), st.text(alphabet="ab/\n", max_size=12))
def test_the_automaton_matches_what_the_regex_matches(tokens, text):
    want = re.fullmatch(regex_of(tokens), text) is not None
    assert _Automaton(tokens).matches(text) == want
    assert compile_tokens(tokens).matches(text) == want
    assert LazyDFA(tokens).matches(text) == want


class _SmallDFA(LazyDFA):
    BUDGET = 8  # the cache is dropped every few steps: answers must not change
    SEGMENT_CACHE_MAX = 3


@settings(max_examples=400, deadline=None)
@given(st.lists(_TOKEN, max_size=7), st.lists(st.text(alphabet="ab/\n", max_size=5), max_size=5),
       st.booleans())
def test_the_resumed_automaton_matches_what_the_regex_matches(tokens, pieces, small):
    """Fed piece by piece, resuming from the state the previous pieces left (as a walk
    resumes from a directory's state), every prefix gets the regex's answer."""
    rx = re.compile(regex_of(tokens))
    dfa = (_SmallDFA if small else LazyDFA)(tokens)
    state, text = dfa.start, ""
    for piece in pieces * 2:  # twice: the second round reads through the caches
        state = dfa.feed(state, piece)
        text += piece
        assert state.accept == (rx.fullmatch(text) is not None), (tokens, text)
        if state.dead:  # dead: no continuation matches
            assert not any(rx.fullmatch(text + tail) for tail in ("", "a", "b", "/", "ab/b", "/a/"))


class _Hang(Exception):
    pass


@pytest.fixture()
def deadline():
    """Fail (not hang the suite) when a match does not end within 20 s; a linear
    matcher takes milliseconds here, the backtracking one minutes to hours."""
    def alarm(*_):
        raise _Hang("pattern matching did not end")
    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def test_hostile_dockerignore_patterns_do_not_hang(deadline):
    rules = IgnoreRules.parse("*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b\n" + "**/" * 14 + "x\n")
    assert not rules.excluded("a" * 60)
    assert not rules.excluded("/".join(["d"] * 40) + "/y")
    assert rules.excluded("/".join(["d"] * 40) + "/x")
    assert rules.excluded("a" * 20 + "b")


def test_hostile_copy_source_patterns_do_not_hang(deadline):
    pattern = GlobPattern.compile("*a" * 16 + "*b")
    assert not pattern.match("a" * 80)
    assert pattern.match("a" * 40 + "b")
