"""Red-team: a hostile .dockerignore must not make lamina's memory grow without bound.

The incremental matcher caches each `regex` pattern's automaton states (LazyDFA), with
a budget of 65536 units (~10 MB) *per pattern*: a .dockerignore of N lines such as
`*a????????????b<i>` and a context of a few dozen files with random 250-character a/b
names (each character a new state) took ~10 MB per line - 100 lines ~1 GB, 2000 lines
exhaust a 23 GB builder, in seconds. And a state kept by the walk across a cache drop
(the root's, a directory's) was no longer in the cache but still grew: every later name
of its directory was cached in it, past any budget. Now one budget is split among the
patterns of a list, and a state from before a drop is never grown."""

from __future__ import annotations

import random
import tracemalloc

from lamina.builder.context.dockerignore import IgnoreRules


def _names(n: int, length: int, seed: int, alphabet: str = "ab") -> list[str]:
    rnd = random.Random(seed)
    return ["".join(rnd.choice(alphabet) for _ in range(length)) for _ in range(n)]


def test_many_hostile_lines_share_one_cache_budget():
    lines = [f"*a{'?' * 12}b{i}" for i in range(30)]
    rules = IgnoreRules.parse("\n".join(lines) + "\nsecret.pem\n")
    names = _names(40, 250, 1)
    root = rules.root_info()
    tracemalloc.start()
    try:
        for name in names:
            rules.match(name, root)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # ~10 MB per line before (300 MB here); the whole list now gets ~40 MB at most
    assert peak < 80 * 2**20, f"{peak / 2**20:.0f} MB to match 40 names"
    assert rules.match("secret.pem", root)[0] and not rules.match("b" * 20, root)[0]


def test_a_state_kept_across_a_cache_drop_is_not_grown():
    rules = IgnoreRules.parse("*a*b*c*d\n!*x*y*z\n")
    root = rules.root_info()
    names = sorted(set(_names(30000, 10, 2, "abefgh")))
    for name in names:
        assert not rules.match(name, root)[0]  # no c or d in the names
    for st, pattern in zip(root.states, rules.patterns):
        budget = getattr(pattern.matcher, "budget", pattern.matcher.BUDGET)
        units = sum(len(k) + 1 for k in st.after) + len(st.next)
        assert units <= budget, f"the root state holds {units} units (budget {budget})"
    # still right after the drops
    assert rules.match("abcd", root)[0] and not rules.match("abcdxyz", root)[0]
    assert rules.match("abcd/in", root)[0] and not rules.match("dir/abcd", root)[0]
