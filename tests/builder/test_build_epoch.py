"""SOURCE_DATE_EPOCH is not in any cache key: builds for two epochs (two commits of a
CI) share every unchanged step, and each image still carries its own epoch's clamped
times, equal to a fresh build's. Also where the epoch comes from: --timestamp,
--build-arg SOURCE_DATE_EPOCH, the environment, `git`."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from lamina.store.decompress import open_decompressed
from lamina.store.store import Store
from tests.builder.buildkit import build, image_config, make_context

pytestmark = pytest.mark.root

X, Y = 1_600_000_000, 1_650_000_000
OLD = 1_500_000_000  # older than both epochs: kept as it is
DOCKERFILE = """\
FROM bb
COPY f /app/f
COPY <<EOF /app/heredoc
made by a heredoc
EOF
RUN echo run > /app/run.txt
WORKDIR /srv/www
"""


def _rfc3339(t: int) -> str:
    import datetime as dt
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _layer_times(root, ref: str, skip: int) -> dict[str, int]:
    """name -> mtime of every member of the image's layers after the first `skip`, read
    with Python's tarfile (an independent reader)."""
    out = {}
    with Store(root) as store:
        image = store.resolve(ref)
        for layer in image.layers[skip:]:
            with store.blobs.open(layer.digest) as f:
                data = open_decompressed(f).read()
            with tarfile.open(fileobj=io.BytesIO(data)) as tf:
                out.update({m.name.rstrip("/"): m.mtime for m in tf.getmembers()})
    return out


@pytest.fixture()
def ctx(tmp_path):
    c = make_context(tmp_path / "ctx", DOCKERFILE, {"f": "from the context\n"})
    os.utime(c / "f", (OLD, OLD))
    return c


def test_two_epochs_share_every_step_and_keep_their_own_times(build_store, ctx, monkeypatch):
    root, base_id = build_store
    base_layers = len(image_config(root, "bb")["rootfs"]["diff_ids"])
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(X))
    first = build(root, ctx, "-t", "epoch:x").check()
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(Y))
    second = build(root, ctx, "-t", "epoch:y").check()
    assert [s.cached for s in second.steps] == [True] * 4, second.stderr
    assert second.image_id != first.image_id

    for ref, epoch in (("epoch:x", X), ("epoch:y", Y)):
        times = _layer_times(root, ref, base_layers)
        assert times["app/f"] == OLD  # the context file's own time, older than the epoch
        assert times["app/heredoc"] == epoch
        assert times["app/run.txt"] == epoch  # written now, clamped
        assert times["srv/www"] == epoch
        cfg = image_config(root, ref)
        assert cfg["created"] == _rfc3339(epoch)
        assert {h["created"] for h in cfg["history"][-4:]} == {_rfc3339(epoch)}

    # epoch X again, after Y: every step cached, the image of the first build
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(X))
    again = build(root, ctx).check()
    assert all(s.cached for s in again.steps)
    assert again.image_id == first.image_id
    # and a build that runs everything anew for X gives the same image
    fresh = build(root, ctx, "--no-cache").check()
    assert not any(s.cached for s in fresh.steps)
    assert fresh.image_id == first.image_id


def test_timestamp_flag_and_build_arg(build_store, ctx, monkeypatch):
    root, _ = build_store
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(Y))
    by_flag = build(root, ctx, "--timestamp", str(X), "-t", "epoch:flag").check()
    assert image_config(root, "epoch:flag")["created"] == _rfc3339(X)  # the flag wins
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    by_arg = build(root, ctx, "--build-arg", f"SOURCE_DATE_EPOCH={X}").check()
    assert by_arg.image_id == by_flag.image_id
    default = build(root, ctx, "-t", "epoch:default").check()
    assert image_config(root, "epoch:default")["created"] == "1970-01-01T00:00:00Z"
    assert default.image_id != by_flag.image_id


def test_a_run_declaring_the_arg_sees_the_epoch(build_store, tmp_path):
    root, _ = build_store
    ctx = make_context(tmp_path / "c", "FROM bb\nARG SOURCE_DATE_EPOCH\n"
                                        "RUN echo \"epoch=$SOURCE_DATE_EPOCH\"\n")
    run = build(root, ctx, "--timestamp", str(X)).check()
    assert f"epoch={X}" in run.step("RUN echo").output


def _git(ctx, *args, date=None):
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.org",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.org")
    if date is not None:
        env.update(GIT_AUTHOR_DATE=f"@{date} +0000", GIT_COMMITTER_DATE=f"@{date} +0000")
    subprocess.run(["git", "-C", str(ctx), *args], check=True, env=env, capture_output=True)


def test_timestamp_git_takes_the_commit_time(build_store, ctx, monkeypatch):
    root, _ = build_store
    commit_time = 1_234_567_890
    _git(ctx, "init", "-q")
    _git(ctx, "add", "-A")
    _git(ctx, "commit", "-q", "-m", "c", date=commit_time)
    build(root, ctx, "--timestamp", "git", "-t", "epoch:git").check()
    assert image_config(root, "epoch:git")["created"] == _rfc3339(commit_time)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "git")  # the environment may say it too
    build(root, ctx, "-t", "epoch:git-env").check()
    assert image_config(root, "epoch:git-env")["created"] == _rfc3339(commit_time)


def test_timestamp_git_outside_a_work_tree_is_one_clear_error(build_store, ctx):
    root, _ = build_store
    run = build(root, ctx, "--timestamp", "git")
    assert run.code == 1
    assert "not in a git work tree" in run.stderr and "Traceback" not in run.stderr
    bad = build(root, ctx, "--timestamp", "yesterday")
    assert bad.code == 1 and "whole number of seconds" in bad.stderr


@pytest.mark.parametrize("value, epoch", [(" ", None), ("", None), (" 86400\n", 86400)])
def test_blank_source_date_epoch_is_unset_as_the_build_cli_reads_it(monkeypatch, value, epoch):
    from lamina.builder.context.sourcedate import resolve_source_date
    from lamina.store.epoch import source_date_epoch

    monkeypatch.setenv("SOURCE_DATE_EPOCH", value)
    assert source_date_epoch() == epoch
    assert resolve_source_date(None, {}, {"SOURCE_DATE_EPOCH": value}, Path(".")) == epoch
