"""A RUN's output is clipped as BuildKit clips a step's log: up to the limit (2 MiB by
default, LAMINA_STEP_LOG_MAX_SIZE, -1 = none), then one `[output clipped, log limit
2MiB reached]` line, the rest drained and discarded while the command runs on; and
handling the output costs time and memory linear in what is kept, not quadratic in
the length of a line."""

from __future__ import annotations

import json
import os
import tracemalloc

import pytest
from hypothesis import given, settings, strategies as st

from lamina.builder.progress import _split_lines
from lamina.builder.steplog import (DEFAULT_MAX_SIZE, OutputTail, StepLog, human_size,
                                    max_size_from_env)
from lamina.builder.errors import BuildError
from tests.builder.buildkit import build, make_context

MiB = 1024 * 1024
BUILDKIT_CLIPPED_2MIB = "[output clipped, log limit 2MiB reached]"  # BuildKit's own text


def _chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


# --- the filters, in-process ---------------------------------------------------------

def test_default_limit_and_message_are_buildkits():
    assert DEFAULT_MAX_SIZE == 2 * MiB
    assert max_size_from_env({}) == 2 * MiB
    out: list[bytes] = []
    log = StepLog(out.append, max_size_from_env({}))
    log.feed(b"x" * (3 * MiB))
    assert b"".join(out) == b"x" * (2 * MiB) + b"\n" + BUILDKIT_CLIPPED_2MIB.encode() + b"\n"
    assert human_size(1000) == "1000B" and human_size(1536) == "1.5KiB"


def test_env_values():
    assert max_size_from_env({"LAMINA_STEP_LOG_MAX_SIZE": "-1"}) is None
    assert max_size_from_env({"LAMINA_STEP_LOG_MAX_SIZE": "4096"}) == 4096
    for bad in ("2MiB", "-2", "x"):
        with pytest.raises(BuildError, match="LAMINA_STEP_LOG_MAX_SIZE"):
            max_size_from_env({"LAMINA_STEP_LOG_MAX_SIZE": bad})


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 200), st.lists(st.integers(0, 400), max_size=8))
def test_clipping_does_not_depend_on_how_output_is_chunked(data, limit, cuts):
    out: list[bytes] = []
    log = StepLog(out.append, limit)
    for chunk in _chunked(data, cuts):
        log.feed(chunk)
    got = b"".join(out)
    if len(data) <= limit:
        assert got == data
    else:
        kept = data[:limit]
        sep = b"" if kept == b"" or kept.endswith(b"\n") else b"\n"
        assert got == kept + sep + f"[output clipped, log limit {human_size(limit)} reached]\n".encode()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([b"a", b"b\n", b"\n", b"\r\n", b"\xff", b"cc"]), max_size=60),
       st.lists(st.integers(0, 200), max_size=8))
def test_line_splitting_and_tail_match_a_plain_split(pieces, cuts):
    data = b"".join(pieces)
    *complete, last = data.split(b"\n")
    expected = [c.rstrip(b"\r").decode("utf-8", "replace") for c in complete]
    buffer, lines, tail = bytearray(), [], OutputTail(lines=5)
    for chunk in _chunked(data, cuts):
        lines += _split_lines(buffer, chunk)
        tail.feed(chunk)
    assert lines == expected and bytes(buffer) == last
    shown = expected[-5:] + ([last.decode("utf-8", "replace")] if last else [])
    assert tail.text() == "\n".join(shown)


def test_tail_of_a_huge_line_stays_small():
    tail = OutputTail(lines=3, line_max=100)
    for _ in range(512):
        tail.feed(b"z" * 65536)
    assert tail.text() == "z" * 100 + "…"
    assert len(tail.partial) == 100


# --- real RUN steps -------------------------------------------------------------------

def _output_lines(run, text: str) -> list[str]:
    return run.step(text).output


@pytest.mark.root
def test_32mib_line_without_newline_is_clipped_cheaply_and_the_command_runs_on(
        build_store, tmp_path, monkeypatch):
    monkeypatch.delenv("LAMINA_STEP_LOG_MAX_SIZE", raising=False)
    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", (
        "FROM bb\n"
        "RUN head -c 33554432 /dev/zero | tr '\\0' a; echo AFTER-$((40+2)); "
        "echo ran-to-the-end > /after\n"))
    out = tmp_path / "out"
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        run = build(root, ctx, "--no-cache", "--output", f"type=local,dest={out}")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    run.check()
    lines = _output_lines(run, "RUN head")
    assert lines[-1] == BUILDKIT_CLIPPED_2MIB
    assert lines[:-1] == ["a" * (2 * MiB)]
    assert "AFTER-42" not in run.stderr
    assert (out / "after").read_text() == "ran-to-the-end\n"
    # 32 MiB went through: holding it (or copying a growing line) would cost more than this
    assert peak < 24 * MiB, f"peak traced memory {peak / MiB:.1f} MiB"


@pytest.mark.root
def test_configured_limit_json_progress_and_exit_status(build_store, tmp_path, monkeypatch):
    monkeypatch.setenv("LAMINA_STEP_LOG_MAX_SIZE", "1000")
    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", (
        "FROM bb\n"
        "RUN head -c 3000000 /dev/zero | tr '\\0' b; echo; echo AFTER-$((40+2)); exit 3\n"))
    run = build(root, ctx, "--no-cache", progress="json")
    assert run.code == 1
    events = [json.loads(l) for l in run.stderr.splitlines() if l.startswith("{")]
    output = [e["line"] for e in events if e["event"] == "output"]
    assert output == ["b" * 1000, "[output clipped, log limit 1000B reached]"]
    assert "AFTER-42" not in run.stderr
    errors = [e for e in events if e["event"] == "error"]
    assert errors and "exit code: 3" in errors[0]["message"]


@pytest.mark.root
def test_unlimited_keeps_everything(build_store, tmp_path, monkeypatch):
    monkeypatch.setenv("LAMINA_STEP_LOG_MAX_SIZE", "-1")
    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", (
        "FROM bb\n"
        "RUN yes 0123456789abcde | head -c 3145728; echo AFTER-$((40+2))\n"))
    run = build(root, ctx, "--no-cache").check()
    lines = _output_lines(run, "RUN yes")
    assert lines[-1] == "AFTER-42"
    assert lines[:-1] == ["0123456789abcde"] * (3 * MiB // 16)
    assert "output clipped" not in run.stderr


@pytest.mark.root
def test_a_bad_limit_is_one_clear_error(build_store, tmp_path, monkeypatch):
    monkeypatch.setenv("LAMINA_STEP_LOG_MAX_SIZE", "lots")
    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", "FROM bb\nRUN true\n")
    run = build(root, ctx, "--no-cache")
    assert run.code == 1
    assert "LAMINA_STEP_LOG_MAX_SIZE='lots' is not a byte count" in run.stderr
    assert "Traceback" not in run.stderr
