"""A COPY whose sources changed in a few files reuses the previous result for the
rest (builder.steps.reuse): the unchanged files of the new layer are the previous
layer's inodes moved over (that layer's dir is taken from the store, its blob stays
and is extracted again when needed), with one link each (a RUN's `ls -l` sees what a
fresh build gives), and the image is the one a --no-cache build in a fresh store
makes - also when a file changed only its mode, a file was removed or added, when a
flag of the COPY changed (then nothing is reused), and when the change is reverted
(the old layer comes back from its blob)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.builder.buildkit import build, build_rootfs, make_base, make_context

pytestmark = pytest.mark.root

DOCKERFILE = """\
FROM bb
COPY src/ /app/src/
RUN ls -l /app/src/pkg > /listing
"""

CHOWN_DOCKERFILE = """\
FROM bb
COPY --chown=7:8 src/ /app/src/
RUN ls -l /app/src/pkg > /listing
"""


def _files(n: int = 40) -> dict:
    return {f"src/pkg/keep{i:02d}.txt": f"file {i}\n" * (i + 1) for i in range(n)}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    base = tmp_path_factory.mktemp("reuse")
    roots = base / "store", base / "fresh"
    for i, root in enumerate(roots):
        make_base(root, base / f"base-ctx{i}")
    return roots


def _layer_files(root: Path, rel: str) -> list[os.stat_result]:
    """The stat of `rel` in every layer dir of the store that has it."""
    found = []
    for d in (root / "layers").iterdir():
        p = d / rel
        if p.is_file():
            found.append(os.lstat(p))
    return found


def _fresh_id(fresh: Path, ctx: Path, name: str) -> str:
    """The image ID a --no-cache build of `ctx` gives in another store."""
    return build(fresh, ctx, "--no-cache", "-t", name).check().image_id


def test_one_changed_file_links_the_rest(stores, tmp_path):
    root, fresh = stores
    ctx = make_context(tmp_path / "ctx", DOCKERFILE, _files())
    first = build(root, ctx, "-t", "reuse:1").check()
    before = _layer_files(root, "app/src/pkg/keep03.txt")
    assert len(before) == 1
    original = (ctx / "src/pkg/keep07.txt").read_text()
    (ctx / "src/pkg/keep07.txt").write_text("changed\n")
    run = build(root, ctx, "-t", "reuse:2").check()
    assert run.step("COPY src/").miss and "keep07.txt" in run.step("COPY src/").miss
    # an unchanged file: the previous layer's inode, moved into the new layer
    kept = _layer_files(root, "app/src/pkg/keep03.txt")
    assert [(s.st_ino, s.st_nlink) for s in kept] == [(before[0].st_ino, 1)]
    assert [s.st_nlink for s in _layer_files(root, "app/src/pkg/keep07.txt")] == [1]
    # `RUN ls -l` (link counts, sizes, modes) saw what a fresh build sees
    assert run.image_id == _fresh_id(fresh, ctx, "reuse:fresh")
    build_rootfs(root, ctx, tmp_path / "out")
    assert (tmp_path / "out/app/src/pkg/keep07.txt").read_text() == "changed\n"
    assert (tmp_path / "out/app/src/pkg/keep03.txt").read_text() == "file 3\n" * 4
    # reverted: the first build's COPY is a cache hit again; its layer dir is made
    # again from its blob for the RUN above it (which is a hit too)
    (ctx / "src/pkg/keep07.txt").write_text(original)
    (ctx / "Dockerfile").write_text(DOCKERFILE + "RUN cat /listing > /again\n")
    again = build(root, ctx, "-t", "reuse:3").check()
    assert again.step("COPY src/").cached and again.step("RUN ls").cached
    assert again.step("RUN cat").done
    build_rootfs(root, ctx, tmp_path / "out2")
    assert (tmp_path / "out2/again").read_text() == (tmp_path / "out2/listing").read_text()
    assert first.image_id != again.image_id


def test_mode_change_removal_and_addition(stores, tmp_path):
    root, fresh = stores
    ctx = make_context(tmp_path / "ctx", DOCKERFILE, _files())
    build(root, ctx, "-t", "reuse:4").check()
    (ctx / "src/pkg/keep05.txt").chmod(0o600)  # same content, other mode
    (ctx / "src/pkg/keep06.txt").unlink()
    (ctx / "src/pkg/new.txt").write_text("new\n")
    run = build(root, ctx, "-t", "reuse:4").check()
    assert run.image_id == _fresh_id(fresh, ctx, "reuse:fresh2")
    out = tmp_path / "out"
    build_rootfs(root, ctx, out)
    assert stat.S_IMODE(os.lstat(out / "app/src/pkg/keep05.txt").st_mode) == 0o600
    assert not (out / "app/src/pkg/keep06.txt").exists()
    assert (out / "app/src/pkg/new.txt").read_text() == "new\n"
    assert (out / "app/src/pkg/keep04.txt").read_text() == "file 4\n" * 5
    # the file whose mode changed was written anew; every layer's file has one link
    found = _layer_files(root, "app/src/pkg/keep05.txt")
    assert 0o600 in {stat.S_IMODE(s.st_mode) for s in found}
    assert {s.st_nlink for s in found} == {1}


def test_changed_flag_reuses_nothing(stores, tmp_path):
    root, fresh = stores
    ctx = make_context(tmp_path / "ctx", DOCKERFILE, _files(10))
    build(root, ctx, "-t", "reuse:5").check()
    (ctx / "Dockerfile").write_text(CHOWN_DOCKERFILE)
    (ctx / "src/pkg/keep01.txt").write_text("changed\n")
    run = build(root, ctx, "-f", str(ctx / "Dockerfile"), "-t", "reuse:6").check()
    assert run.image_id == _fresh_id(fresh, ctx, "reuse:fresh3")
    out = tmp_path / "out"
    build_rootfs(root, ctx, out)
    assert (os.lstat(out / "app/src/pkg/keep02.txt").st_uid,
            os.lstat(out / "app/src/pkg/keep02.txt").st_gid) == (7, 8)
