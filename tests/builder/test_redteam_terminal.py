"""Red-team: a RUN's output must not drive the user's terminal. The tty progress and a
failed step's error message used to write the step's bytes as they came: its escape
sequences could clear the screen, rewrite lines above (fake a success) or set the
clipboard (OSC 52). Control characters are now shown in caret form (ESC as ^[)."""

from __future__ import annotations

import pytest

from lamina.builder.steplog import OutputTail, terminal_safe
from tests.builder.buildkit import build, make_context

OSC52 = "\x1b]52;c;ZWNobyBwd25lZA==\x07"
CLEAR = "\x1b[2J\x1b[H"


def test_terminal_safe_shows_controls_in_caret_form():
    assert terminal_safe(f"a{OSC52}b") == "a^[]52;c;ZWNobyBwd25lZA==^Gb"
    assert terminal_safe("tab\tkept, DEL\x7f, CSI\x9b2J") == "tab\tkept, DEL^?, CSI" + "M-^[2J"
    assert terminal_safe(" 10%\r 55%\r100%") == "100%"  # a progress bar: its last state
    tail = OutputTail(3)
    tail.feed(f"x{CLEAR}y\n".encode())
    assert tail.text() == "x^[[2J^[[Hy"


@pytest.mark.root
@pytest.mark.parametrize("progress", ["tty", "plain"])
def test_run_output_escapes_never_reach_the_terminal(build_store, tmp_path, progress):
    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", "FROM bb\n"
                       "RUN printf 'start\\033[2J\\033[H\\033]52;c;ZWNobyBwd25lZA==\\007end\\n'; exit 3\n")
    run = build(root, ctx, "--no-cache", progress=progress)
    assert run.code == 1
    error = run.stderr[run.stderr.rindex("lamina: "):]  # the failed step's message
    assert "\x1b" not in error and "start^[[2J^[[H^[]52;c;" in error
    if progress == "tty":  # the live view: lamina's own cursor moves only
        assert "\x1b]52" not in run.stderr and "\x1b[2J" not in run.stderr
