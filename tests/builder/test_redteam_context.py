"""Red-team: a hostile build context must not make lamina read host files for itself.

The Dockerfile and the .dockerignore files are read with symlinks interpreted inside
their own directory, as BuildKit's fsutil FollowPaths does: `Dockerfile -> /etc/shadow`
used to read the host's file, and the parse error printed its first line."""

from __future__ import annotations

import os
import uuid

import pytest

from tests.builder.buildkit import build, make_context

pytestmark = pytest.mark.root


@pytest.fixture
def host_file(tmp_path_factory):
    """A root-only host file outside the context, with a line that must never show."""
    marker = f"HOSTONLY-{uuid.uuid4().hex}"
    path = tmp_path_factory.mktemp("host") / "secret"
    path.write_text(marker + "\n")
    path.chmod(0o600)
    return path, marker


@pytest.mark.parametrize("link", ["abs", "rel"])
def test_symlinked_dockerfile_never_reads_a_host_file(build_store, tmp_path, host_file, link):
    root, _ = build_store
    path, marker = host_file
    ctx = make_context(tmp_path / "ctx", None)
    target = str(path) if link == "abs" else os.path.relpath(path, ctx)
    os.symlink(target, ctx / "Dockerfile")
    run = build(root, ctx)
    assert run.code == 1
    assert marker not in run.stdout + run.stderr
    assert "no such file" in run.stderr


def test_symlinked_dockerfile_resolves_inside_its_directory(build_store, tmp_path):
    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", None, {
        "docker/real.Dockerfile": "FROM bb\nRUN echo from-the-context\n"})
    os.symlink("/docker/real.Dockerfile", ctx / "Dockerfile")  # / is the context
    run = build(root, ctx, "--no-cache")
    assert run.code == 0, run.stderr
    assert run.step("RUN echo from-the-context").output == ["from-the-context"]


def test_symlinked_dockerignore_never_reads_a_host_file(build_store, tmp_path, host_file):
    root, _ = build_store
    path, marker = host_file
    path.write_text("f\n")  # were it read, f would be excluded and the COPY would fail
    ctx = make_context(tmp_path / "ctx", "FROM bb\nCOPY f /f\nRUN cat /f\n", {
        "f": "kept\n", "ignore.real": "Dockerfile\n"})
    os.symlink(str(path), ctx / ".dockerignore")
    run = build(root, ctx, "--no-cache")
    assert run.code == 0, run.stderr
    assert run.step("RUN cat /f").output == ["kept"]
    # the same link form names the context's own file when it exists there
    ctx2 = make_context(tmp_path / "ctx2", "FROM bb\nCOPY f /f\n", {"f": "x", "ignore": "f\n"})
    os.symlink("/ignore", ctx2 / ".dockerignore")
    run = build(root, ctx2, "--no-cache")
    assert run.code == 1 and "excluded by .dockerignore" in run.stderr
