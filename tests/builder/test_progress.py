"""The progress renderers: plain keeps every output line with its step prefix, json
is one parseable object per event, tty redraws and keeps only the tail."""

from __future__ import annotations

import io
import json
import time

from lamina.builder.progress import JsonProgress, PlainProgress, StepLabel, TtyProgress, make_progress, TAIL_LINES

STEP = StepLabel(number=3, stage="build", index=2, total=5, text="RUN make")


def test_plain_prefixes_every_line_and_flushes_partial_output():
    out = io.StringIO()
    p = PlainProgress(out)
    p.started(STEP)
    p.output(STEP, b"first li")
    p.output(STEP, b"ne\nsecond\nthird-without-newline")
    p.done(STEP, 1.25)
    lines = out.getvalue().splitlines()
    assert lines[0] == "#3 [build 2/5] RUN make"
    assert lines[1].startswith("#3 ") and lines[1].endswith(" first line")
    assert lines[2].endswith(" second")
    assert lines[3] == "#3 third-without-newline"
    assert lines[4] == "#3 DONE 1.2s" or lines[4] == "#3 DONE 1.3s"


def test_plain_never_clips_long_lines():
    out = io.StringIO()
    p = PlainProgress(out)
    p.started(STEP)
    long_line = "x" * 5000
    p.output(STEP, long_line.encode() + b"\n")
    assert long_line in out.getvalue()


def test_plain_cached_and_miss_and_error():
    out = io.StringIO()
    p = PlainProgress(out)
    p.cached(STEP)
    p.missed(STEP, 'ARG GREETING changed: "hello" -> "hi"')
    p.failed(STEP, "exit code 2")
    text = out.getvalue()
    assert "#3 CACHED" in text
    assert '#3 cache miss: ARG GREETING changed: "hello" -> "hi"' in text
    assert "#3 ERROR: exit code 2" in text


def test_json_one_object_per_event():
    out = io.StringIO()
    p = JsonProgress(out)
    p.started(STEP)
    p.output(STEP, b"a\nb\n")
    p.missed(STEP, "instruction text changed")
    p.done(STEP, 0.5)
    p.finished("sha256:" + "a" * 64, ("app:latest",), 2.0)
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["event"] for e in events] == ["started", "output", "output", "miss", "done", "finished"]
    assert [e["line"] for e in events if e["event"] == "output"] == ["a", "b"]
    assert events[0]["step"] == 3 and events[0]["instruction"] == "RUN make"
    assert events[-1]["tags"] == ["app:latest"]


def test_tty_keeps_only_the_tail_and_erases_on_close():
    out = io.StringIO()
    p = TtyProgress(out, width=40, tick=0)
    p.started(STEP)
    for i in range(20):
        p.output(STEP, f"line {i}\n".encode())
    row = p.running[3]
    assert list(row.tail) == [f"line {i}" for i in range(20 - TAIL_LINES, 20)]
    p.done(STEP, 2.0)
    p.close()
    text = out.getvalue()
    assert "\x1b[" in text                    # redrawn in place
    assert text.rstrip().endswith("=> [build 2/5] RUN make 2.0s")
    assert p.running == {}


def test_auto_is_plain_when_not_a_terminal():
    assert isinstance(make_progress("auto", io.StringIO()), PlainProgress)
    assert isinstance(make_progress("json", io.StringIO()), JsonProgress)


def test_tty_redraws_a_silent_running_step():
    out = io.StringIO()
    p = TtyProgress(out, tick=0.01)
    p.started(STEP)
    before = out.getvalue().count("RUN make")
    deadline = time.monotonic() + 5
    while out.getvalue().count("RUN make") < before + 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    p.close()
    assert out.getvalue().count("RUN make") >= before + 3   # the timer moved without events
    assert p._ticker is not None and not p._ticker.is_alive()


def test_tty_says_why_a_step_missed_the_cache():
    out = io.StringIO()
    p = TtyProgress(out, width=100, tick=0)
    p.started(STEP)
    p.missed(STEP, "file src/b.py changed")
    p.done(STEP, 1.0)
    p.close()
    text = out.getvalue()
    assert "=> [build 2/5] RUN make 1.0s" in text
    assert "cache miss: file src/b.py changed" in text
