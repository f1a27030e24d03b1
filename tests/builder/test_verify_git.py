"""`lamina verify REF <git URL>[#COMMIT]` (builder.attest.verify.clone_context): the
context given as a git repository - a file:// URL or a plain path, no network - is
cloned at the commit the provenance records (the origin has moved on since), or at
the commit after `#`, which must be the recorded one: another commit is refused with
a message naming both, before anything is rebuilt."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.builder.buildkit import build, lamina, make_base, make_context

pytestmark = pytest.mark.root

FILES = {"app/main.sh": ("#!/bin/sh\necho main\n", 0o755), "conf/app.conf": ("x=1\n", 0o644)}
DOCKERFILE = "FROM bb\nCOPY app/ /app/\nCOPY conf/app.conf /etc/app.conf\nRUN cat /etc/app.conf > /app/conf\n"


def git(cwd, *args):
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@e", "GIT_CONFIG_NOSYSTEM": "1"}
    return subprocess.run(["git", "-c", "init.defaultBranch=main", *args], cwd=cwd, env=env, check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A store with `fromgit:1` built from a work tree at commit `release`, whose origin
    (a bare repository) has since received a later commit `later` on main."""
    base = tmp_path_factory.mktemp("verify-git")
    root = base / "store"
    make_base(root, base / "base")
    ctx = make_context(base / "work", DOCKERFILE, FILES)
    bare = base / "origin.git"
    git(base, "init", "-q", "--bare", str(bare))
    git(ctx, "init", "-q")
    git(ctx, "add", ".")
    git(ctx, "commit", "-qm", "release")
    release = git(ctx, "rev-parse", "HEAD")
    git(ctx, "remote", "add", "origin", str(bare))
    git(ctx, "push", "-q", "origin", "main")
    run = build(root, ctx, "-t", "fromgit:1").check()
    (ctx / "conf" / "app.conf").write_text("x=2\n")
    git(ctx, "commit", "-qam", "later")
    later = git(ctx, "rev-parse", "HEAD")
    git(ctx, "push", "-q", "origin", "main")
    assert git(bare, "rev-parse", "main") == later != release
    return {"root": root, "bare": bare, "release": release, "later": later, "image_id": run.image_id}


@pytest.mark.parametrize("form", ["file-url", "path#short-commit", "file-url#commit"])
def test_git_url_context_verifies(released, form):
    bare, release = released["bare"], released["release"]
    context = {"file-url": f"file://{bare}", "path#short-commit": f"{bare}#{release[:12]}",
               "file-url#commit": f"file://{bare}#{release}"}[form]
    result = lamina(released["root"], "verify", "fromgit:1", context)
    assert result.code == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("verified: fromgit:1 rebuilds identically: image ID "
                                                   + released["image_id"]), result.stdout


def test_another_commit_is_refused(released):
    bare, release, later = released["bare"], released["release"], released["later"]
    result = lamina(released["root"], "verify", "fromgit:1", f"file://{bare}#{later}")
    assert result.code != 0
    assert f"the context is commit {later}, the provenance records {release}" in result.stderr
    assert "verified" not in result.stdout and "Traceback" not in result.stderr
    # a name the repository does not have
    missing = lamina(released["root"], "verify", "fromgit:1", f"{bare}#no-such-branch")
    assert missing.code != 0, missing.stdout
    assert f"the git repository {bare} has no commit, tag or branch 'no-such-branch'" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_a_branch_names_its_commit(released):
    """`#main` is the origin's main, now the later commit: refused as another commit."""
    result = lamina(released["root"], "verify", "fromgit:1", f"file://{released['bare']}#main")
    assert result.code != 0
    assert f"the context is commit {released['later']}, the provenance records" in result.stderr
