"""`lamina build` user errors: a failing RUN (step, line, exit code, output tail, nothing
tagged) and every other user mistake as one clear message naming the file and line,
with a non-zero exit and never a Python traceback."""

from __future__ import annotations

import pytest

from tests.builder.buildkit import build, has_image, lamina, make_context

pytestmark = pytest.mark.root


def _fails(run, *needles: str) -> str:
    assert run.code != 0, run.stderr
    assert "Traceback" not in run.stderr and "Traceback" not in run.stdout, run.stderr
    for needle in needles:
        assert needle in run.stderr, f"{needle!r} not in:\n{run.stderr}"
    assert not any(l.startswith("sha256:") for l in run.stdout.splitlines())
    return run.stderr


def test_failing_run_reports_line_exit_code_and_output_tail(build_store, tmp_path):
    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", """\
FROM bb
RUN echo first-step > /f
RUN for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25; do \\
      echo "out line $i"; done; echo "to stderr" >&2; exit 7
RUN echo never > /never
""")
    iid = tmp_path / "iid"
    run = build(root, ctx, "-t", "failing:1", "--iidfile", str(iid))
    err = _fails(run, "Dockerfile:3", "exit code: 7", "to stderr", "out line 25")
    # the tail only: the first lines of a long output are not repeated in the message
    message = err[err.index("lamina:"):]
    assert "out line 25" in message and "out line 1\n" not in message
    assert not has_image(root, "failing:1")
    assert not iid.exists()
    # the failing step is marked, the next one never started
    failed = run.step("for i in 1 2 3")
    assert failed.error is not None and "exit code: 7" in failed.error
    assert not any("echo never" in s.title for s in run.steps)


def test_killed_run_names_the_signal(build_store, tmp_path):
    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", "FROM bb\nRUN kill -9 $$\n")
    _fails(build(root, ctx), "Dockerfile:2", "SIGKILL")


def test_missing_copy_source(build_store, tmp_path):
    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", "FROM bb\nCOPY present.txt nothere.txt /d/\n",
                       {"present.txt": "x"})
    err = _fails(build(root, ctx, "-t", "missing-src"), "Dockerfile:2", "nothere.txt")
    assert "COPY present.txt nothere.txt /d/" in err  # the line itself is shown
    assert not has_image(root, "missing-src")


def test_wildcard_matching_nothing_is_not_an_error(build_store, tmp_path):
    # BuildKit copies with AllowEmptyWildcard (unlike the legacy builder)
    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", "FROM bb\nCOPY *.nomatch present /d/\n", {"present": "p"})
    build(root, ctx).check()


def test_a_directory_source_after_a_file_onto_one_destination(build_store, tmp_path):
    """Several sources onto a destination without a slash are copied in turn, as
    BuildKit does; a directory after a file cannot go onto that file."""
    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", "FROM bb\nCOPY a d /notadir\n", {"a": "a", "d/x": "x"})
    _fails(build(root, ctx), "Dockerfile:2")


def test_source_outside_the_context(build_store, tmp_path):
    root, _ = build_store
    (tmp_path / "outside.txt").write_text("host file")
    ctx = make_context(tmp_path / "ctx", "FROM bb\nCOPY ../outside.txt /o\n")
    run = build(root, ctx)
    # docker resolves ../ inside the context: it names a file that does not exist there
    _fails(run, "Dockerfile:2")


def test_syntax_error_names_file_line_and_shows_it(build_store, tmp_path):
    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", "FROM bb\nRUN echo ok\nBOGUS instruction here\n")
    err = _fails(build(root, ctx), "Dockerfile:3", "BOGUS instruction here")
    assert "#1" not in err  # nothing ran


def test_unknown_user(build_store, tmp_path):
    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", "FROM bb\nUSER nosuchuser\nRUN true\n")
    _fails(build(root, ctx), "nosuchuser", "Dockerfile:3")


def test_chown_id_out_of_range(build_store, tmp_path):
    root, _ = build_store  # (an unknown name is 0, as BuildKit: test_conformance_issue14)
    ctx = make_context(tmp_path / "ctx", "FROM bb\nCOPY --chown=4294967296 f /f\n", {"f": "x"})
    _fails(build(root, ctx), "out of range", "Dockerfile:2")


def test_unknown_stage_and_target(build_store, tmp_path):
    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", "FROM bb AS one\nRUN true\n")
    _fails(build(root, ctx, "--target", "nope"), "nope")
    ctx2 = make_context(tmp_path / "ctx2", "FROM bb\nCOPY --from=nostage /x /x\n")
    _fails(build(root, ctx2), "nostage")


def test_base_image_not_in_store(build_store, tmp_path):
    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", "FROM not-in-store:9\nRUN true\n")
    _fails(build(root, ctx), "not-in-store:9", "Dockerfile:1")


def test_other_platform_is_a_clear_error(build_store, tmp_path):
    root, _ = build_store
    other = "linux/s390x" if not __import__("platform").machine() == "s390x" else "linux/amd64"
    ctx = make_context(tmp_path / "ctx", f"FROM --platform={other} bb\nRUN true\n")
    _fails(build(root, ctx), "Dockerfile:1", other)


def test_required_ssh_mount_without_ssh_flag(build_store, tmp_path):
    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", "FROM bb\nRUN --mount=type=ssh,required true\n")
    _fails(build(root, ctx), "Dockerfile:2", 'no SSH key "default" forwarded')


def test_missing_required_secret(build_store, tmp_path):
    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", "FROM bb\nRUN --mount=type=secret,id=x,required cat /run/secrets/x\n")
    _fails(build(root, ctx), "Dockerfile:2", "secret")


@pytest.mark.parametrize("args, needle", [
    (("--output", "type=bogus,dest=/tmp/x"), "--output"),
    (("--secret", "id=s,src=/nonexistent/file"), "/nonexistent/file"),
    (("--build-arg", "=v"), "--build-arg"),
    (("-f", "/nonexistent/Dockerfile"), "/nonexistent/Dockerfile"),
])
def test_bad_flags(build_store, tmp_path, args, needle):
    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", "FROM bb\n")
    _fails(build(root, ctx, *args), needle)


def test_missing_context_dir(build_store, tmp_path):
    root, _ = build_store
    run = lamina(root, "build", str(tmp_path / "no-such-dir"))
    assert run.code != 0 and "Traceback" not in run.stderr


def test_bind_mount_missing_source_in_stage(build_store, tmp_path):
    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", "FROM bb AS s\nRUN true\nFROM bb\n"
                       "RUN --mount=type=bind,from=s,source=/nope,target=/m true\n")
    _fails(build(root, ctx), "Dockerfile:4", "/nope")


def test_a_file_a_layer_cannot_hold_names_the_step(build_store, tmp_path):
    # '.wh.' names are whiteouts in an OCI layer: a RUN that makes one cannot be stored,
    # and the error says which step of which Dockerfile line did it
    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", "FROM bb\nRUN touch /.wh.evil\n")
    err = _fails(build(root, ctx, "--no-cache"), "Dockerfile:2", ".wh.evil", "reserved for whiteouts")
    assert "RUN touch /.wh.evil" in err
