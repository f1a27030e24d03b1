"""Red-team: the Dockerfile's own text must not drive the user's terminal either.

The earlier fix (test_redteam_terminal) showed a RUN's *output* in caret form, but the
instruction text itself - the step title of the tty view, the failed step's message,
the offending line a parse error quotes, any error a registry or an image sends back -
was written as it came: `RUN true <OSC 52>` set the user's clipboard and `<ESC>[2J`
cleared the screen from a `lamina build` of a cloned repository. The tty view and every
`lamina: ...` error line now show control characters in caret form (ESC as ^[), newlines
kept. (`--progress plain` stays raw, as BuildKit's plain output and as a RUN's output
there.)"""

from __future__ import annotations

import re

import pytest

from lamina.builder.steplog import controls_shown
from tests.builder.buildkit import build, make_context

OSC52 = "\x1b]52;c;ZXZpbA==\x07"
CLEAR = "\x1b[2J"
# lamina's own tty view moves the cursor with exactly these: "ESC[nF" and "ESC[J"
OWN_CURSOR = re.compile(r"\x1b\[\d+F|\x1b\[J")


def test_controls_shown_keeps_newlines_and_tabs_only():
    assert controls_shown(f"a{OSC52}\tb\nc{CLEAR}\rd\x9b") == "a^[]52;c;ZXZpbA==^G\tb\nc^[[2J^Md" + "M-^["


def _foreign_escapes(text: str) -> str:
    return OWN_CURSOR.sub("", text)


@pytest.mark.root
def test_a_failing_steps_own_text_never_reaches_the_terminal(build_store, tmp_path):
    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", f"FROM bb\nRUN exit 3 # {OSC52} {CLEAR}\n")
    run = build(root, ctx, "--no-cache", progress="tty")
    assert run.code == 1
    assert "\x1b" not in _foreign_escapes(run.stderr)
    error = run.stderr[run.stderr.rindex("lamina: "):]
    assert "exit 3 # ^[]52;c;ZXZpbA==^G ^[[2J" in error


def test_a_parse_error_quotes_the_line_in_caret_form(tmp_path):
    from lamina.builder.cli import main

    ctx = make_context(tmp_path / "ctx", f"FROM scratch\nFROBNICATE {OSC52}x\n")
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["--root", str(tmp_path / "store"), "build", "--progress", "plain", str(ctx)])
    assert code == 1
    text = err.getvalue()
    assert "unknown instruction" in text and "\x1b" not in text
    assert "FROBNICATE ^[]52;c;ZXZpbA==^Gx" in text
