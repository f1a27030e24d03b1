"""Red-team: build-check columns on pathological lines stay linear in the line."""

from __future__ import annotations

import time

from lamina.grammar.parser import parse


def _inst(text):
    return parse(text).instructions[-1]


def test_redteam_variable_column_long_line_of_dollars():
    from lamina.grammar.columns import variable_column

    inst = _inst("FROM scratch\nRUN echo " + "$" * 1_000_000 + " ${zz}\n")
    t = time.monotonic()
    col = variable_column(inst, "zz")
    assert time.monotonic() - t < 3  # quadratic before: ~9 s here
    assert col == len("RUN echo ") + 1_000_000 + 2  # 1-based column of the `$` of ${zz}


def test_redteam_variable_column_forms():
    from lamina.grammar.columns import variable_column

    inst = _inst("FROM scratch\nRUN echo '$a' \\$a $ab ${a:-x} $a\n")
    assert variable_column(inst, "a") == len("RUN echo '$a' \\$a $ab ") + 1
    assert variable_column(inst, "ab") == len("RUN echo '$a' \\$a ") + 1
