"""Red-team: a build context's own `.git` is hostile input. lamina runs git in it (as
root) for the provenance and for SOURCE_DATE_EPOCH=git; commands the repository's
config names (core.fsmonitor, a filter driver, gpg.program under log.showSignature)
used to run on the host, and a token in the origin URL went into the attestation."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.builder.buildkit import build, lamina, make_context

pytestmark = pytest.mark.root


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.email=a@b", "-c", "user.name=a", "-C", str(repo),
                           *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def hostile_repo(tmp_path):
    """A context that is a git work tree whose config runs a marker-writing command
    from every hook git offers here; returns (context, marker, commit)."""
    marker = tmp_path / "ran-on-the-host"
    evil = tmp_path / "evil.sh"
    evil.write_text(f"#!/bin/sh\necho \"$0 $*\" >> {marker}\ncat\n")
    evil.chmod(0o755)
    ctx = make_context(tmp_path / "ctx", "FROM bb\nRUN echo built\n",
                       {"data.txt": "v1\n", ".gitattributes": "*.txt filter=x=y\n"})
    git(ctx, "init", "-q")
    git(ctx, "add", "-A")
    git(ctx, "commit", "-qm", "one")
    commit = git(ctx, "rev-parse", "HEAD")
    git(ctx, "remote", "add", "origin", "https://ci-bot:TOKEN-s3cr3t@git.example.com/team/app.git")
    with open(ctx / ".git" / "config", "a") as f:
        f.write(f'[core]\n\tfsmonitor = {evil}\n'
                f'[filter "x=y"]\n\tclean = {evil}\n\trequired = true\n'
                f'[log]\n\tshowSignature = true\n[gpg]\n\tprogram = {evil}\n')
    (ctx / "data.txt").write_text("v2, changed after the commit\n")  # status must hash it
    for dirpath, dirnames, filenames in os.walk(ctx):  # another user's checkout
        for name in [*dirnames, *filenames, ""]:
            os.lchown(os.path.join(dirpath, name), 1000, 1000)
    return ctx, marker, commit


def test_provenance_runs_nothing_the_repository_config_names(build_store, hostile_repo):
    root, _ = build_store
    ctx, marker, commit = hostile_repo
    run = build(root, ctx, "-t", "redteam-git:1", "--provenance", "mode=max")
    assert run.code == 0, run.stderr
    assert not marker.exists(), marker.read_text()
    shown = lamina(root, "inspect", "--provenance", "redteam-git:1")
    assert shown.code == 0, shown.stderr
    assert "TOKEN-s3cr3t" not in shown.stdout and "ci-bot" not in shown.stdout
    text = json.dumps(json.loads(shown.stdout))
    assert "git.example.com/team/app.git" in text          # the origin, without its token
    assert commit in text                                   # git did answer


def test_source_date_epoch_git_runs_nothing_the_repository_config_names(build_store, tmp_path):
    """`git log` of a signed HEAD with log.showSignature runs gpg.program."""
    root, _ = build_store
    marker = tmp_path / "ran-on-the-host"
    evil = tmp_path / "evil-gpg"
    evil.write_text(f"#!/bin/sh\necho \"$0 $*\" >> {marker}\n")
    evil.chmod(0o755)
    ctx = make_context(tmp_path / "ctx", "FROM bb\nRUN echo built\n")
    git(ctx, "init", "-q")
    git(ctx, "add", "-A")
    tree = git(ctx, "write-tree")
    signed = (f"tree {tree}\nauthor a <a@b> 1700000000 +0000\ncommitter a <a@b> 1700000000 +0000\n"
              "gpgsig -----BEGIN PGP SIGNATURE-----\n \n -----END PGP SIGNATURE-----\n\nsigned\n")
    commit = subprocess.run(["git", "-C", str(ctx), "hash-object", "-t", "commit", "-w", "--stdin"],
                            input=signed, check=True, capture_output=True, text=True).stdout.strip()
    git(ctx, "update-ref", "HEAD", commit)
    git(ctx, "config", "log.showSignature", "true")
    git(ctx, "config", "gpg.program", str(evil))
    run = build(root, ctx, "--timestamp", "git", "--no-cache", "--iidfile", str(tmp_path / "iid"))
    assert run.code == 0, run.stderr
    assert not marker.exists(), marker.read_text()
    from tests.builder.buildkit import image_config
    assert image_config(root, (tmp_path / "iid").read_text())["created"].startswith("2023-11-14")
