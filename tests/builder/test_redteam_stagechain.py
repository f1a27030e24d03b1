"""Red team: a Dockerfile of a few KB chaining thousands of stages.

`FROM s0 AS s1`, `FROM s1 AS s2`, ... 3000 times: the planner walked the stage graph
by recursion and died with Python's RecursionError (an "internal error" of lamina).
BuildKit walks it without a depth limit; so must the plan - and a cycle at the end of
such a chain is still the one clear error.
"""

from __future__ import annotations

import pytest

from lamina.builder.errors import BuildError
from lamina.builder.plan.plan import plan_build
from lamina.builder.plan.stageplan import plan_all
from lamina.grammar import parse

DEPTH = 3000


def _chain(first_line: str = "FROM scratch AS s0") -> str:
    lines = [first_line] + [f"FROM s{i - 1} AS s{i}" for i in range(1, DEPTH)]
    return "\n".join(lines + ["LABEL deep=yes"]) + "\n"


def test_a_deep_chain_of_stages_plans():
    plan = plan_build(parse(_chain(), path="Dockerfile"))
    assert len(plan.stages) == DEPTH
    assert plan.stage_names[plan.target] == f"s{DEPTH - 1}"
    steps = plan_all(plan, None)
    assert len(steps) == DEPTH


def test_a_cycle_through_a_deep_chain_is_still_reported():
    text = _chain().replace("FROM scratch AS s0\n",
                            f"FROM scratch AS s0\nCOPY --from=s{DEPTH - 1} / /\n")
    with pytest.raises(BuildError, match="circular dependency detected on stage"):
        plan_build(parse(text, path="Dockerfile"))
