"""Independent stages are built at the same time (Build.build_stages): two stages that
can only finish together (each waits for the other's mark in a shared cache mount)
both succeed; the image is the one a build of the stages one after another makes; a
failing stage fails the build once its wave has ended; SIGTERM during a wave stops
every stage's running step at once and leaves no process and no temp dir behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.builder.buildkit import build, lamina_argv, make_base, make_context, python_env

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]


def _waits_for(mine: str, theirs: str) -> str:
    return (f"RUN --mount=type=cache,target=/c,id=rendezvous sh -c 'touch /c/{mine}; i=0; "
            f"while [ ! -e /c/{theirs} ]; do sleep 0.1; i=$((i+1)); "
            f"if [ $i -gt 150 ]; then exit 3; fi; done; echo {mine} > /{mine}'")


RENDEZVOUS = f"""\
FROM bb AS one
{_waits_for("one", "two")}

FROM bb AS two
{_waits_for("two", "one")}

FROM bb
COPY --from=one /one /one
COPY --from=two /two /two
"""


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    base = tmp_path_factory.mktemp("parallel")
    make_base(base / "store", base / "base-ctx")
    return base / "store"


def test_independent_stages_run_at_the_same_time(root, tmp_path):
    ctx = make_context(tmp_path / "ctx", RENDEZVOUS)
    run = build(root, ctx, "--no-cache", "-t", "par:1").check()
    assert all(s.done for s in run.steps if "RUN" in s.title), run.stderr
    out = tmp_path / "out"
    build(root, ctx, "--output", f"type=local,dest={out}").check()
    assert (out / "one").read_text() == "one\n" and (out / "two").read_text() == "two\n"


def test_the_image_is_the_sequential_one(root, tmp_path):
    stages = """\
FROM bb AS one
RUN echo one > /one && sleep 0.3

FROM bb AS two
RUN echo two > /two

FROM bb
COPY --from=one /one /one
COPY --from=two /two /two
"""
    sequential = """\
FROM bb AS one
RUN echo one > /one && sleep 0.3

FROM one AS two
RUN echo two > /two

FROM bb
COPY --from=one /one /one
COPY --from=two /two /two
"""
    par = build(root, make_context(tmp_path / "a", stages), "--no-cache").check().image_id
    # the same final stage over the same files, its inputs built in a chain instead
    seq = build(root, make_context(tmp_path / "b", sequential), "--no-cache").check()
    assert seq.image_id == par


def test_a_failing_stage_fails_the_build_after_its_wave(root, tmp_path):
    ctx = make_context(tmp_path / "ctx", """\
FROM bb AS one
RUN sleep 0.2 && false

FROM bb AS two
RUN sleep 1 && echo two > /two

FROM bb
COPY --from=one /etc/passwd /one
COPY --from=two /two /two
""")
    run = build(root, ctx, "--no-cache")
    assert run.code == 1 and "did not complete successfully: exit code: 1" in run.stderr
    assert run.step("sleep 1").done  # the other stage of the wave ended normally
    assert not list((root / "tmp").glob("*.upper-*"))


def test_sigterm_stops_every_stage_of_a_wave(root, tmp_path):
    ctx = make_context(tmp_path / "ctx", """\
FROM bb AS one
RUN sleep 60

FROM bb AS two
RUN sleep 61

FROM bb
COPY --from=one /etc/passwd /one
COPY --from=two /etc/passwd /two
""")
    proc = subprocess.Popen(lamina_argv(root, "build", "--no-cache", "--progress", "plain", str(ctx)),
                            cwd=REPO, env=python_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(_sleeps()) < 2:  # the stages start apart
        time.sleep(0.2)
    assert len(_sleeps()) == 2, "both stages' RUN steps should be running"
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert time.monotonic() - t0 < 10
    assert _sleeps() == []
    # nothing left of the interrupted lamina in the store's temp dir (its files are
    # named after its pid)
    assert not [p for p in (root / "tmp").iterdir() if p.name.startswith(f"p{proc.pid}-")]
    assert not [m for m in Path("/proc/self/mounts").read_text().splitlines() if str(root) in m]


def _sleeps() -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if cmd in (b"sleep\x0060\x00", b"sleep\x0061\x00"):
                found.append(int(entry))
    return found
