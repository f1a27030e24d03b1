"""Red-team: a hostile .dockerignore character class must not stall the context walk.

Every .dockerignore pattern of the `regex` kind runs on the resumable automaton
(globmatch.LazyDFA); it tested a character against a class by scanning all of the
class's ranges, once per (state, character) it had not seen. A 30 KB line
`*[<10000 CJK characters>]*` and a context of 500 files with 40-character CJK names
took 3 s (Python's re, used before for such a pattern, takes milliseconds); a few
such lines and a context with more distinct characters stall a build for hours. The
ranges are now sorted, merged and bisected."""

from __future__ import annotations

import random
import signal
import time

import pytest

from lamina.builder.context.dockerignore import IgnoreRules


class _Hang(Exception):
    pass


@pytest.fixture()
def deadline():
    def alarm(*_):
        raise _Hang("matching against a huge character class did not end")
    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def test_a_huge_character_class_costs_log_ranges(deadline):
    members = [chr(0x4E00 + 2 * i) for i in range(20000)]  # every other CJK point
    rules = IgnoreRules.parse("*[" + "".join(members) + "]*\n!keep\n")
    rnd = random.Random(0)
    names = ["".join(chr(rnd.randrange(0x4E00, 0x9FFF)) for _ in range(40)) for _ in range(1500)]
    root = rules.root_info()
    start = time.monotonic()
    got = [rules.match(n, root)[0] for n in names]
    elapsed = time.monotonic() - start
    # Go's regexp (and Python's re) answer: a name holding any member is excluded
    member = set(members)
    assert got == [any(ch in member for ch in n) for n in names]
    assert not rules.match("\u4e01\u4e03", root)[0] and rules.match("\u4e01\u4e02", root)[0]
    assert elapsed < 4, f"{elapsed:.1f} s for 1500 names"


def test_overlapping_and_reversed_ranges_keep_go_answers():
    rules = IgnoreRules.parse("*[c-ea-dz-y]x\n*[^b-ca-a]y\n")
    root = rules.root_info()
    # [c-ea-d]: a..e (z-y is empty); [^b-ca-a]: not a..c
    assert [rules.match(n, root)[0] for n in ("ax", "ex", "fx", "zx", "yx")] == [True, True, False, False, False]
    assert [rules.match(n, root)[0] for n in ("ay", "cy", "dy", "/y")] == [False, False, True, True]
