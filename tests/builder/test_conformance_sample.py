"""samples/moby-style builds (issue 14): a Dockerfile in the style of moby's own —
`RUN --mount=from=...` without a target, heredocs, a cache mount, a bind mount of a
context subdirectory — with what each stage must produce checked in the image."""

from __future__ import annotations

import shutil

import pytest

from tests.builder.buildkit import REPO, build_rootfs, busybox_binary, image_config, mode_of

pytestmark = pytest.mark.root


def test_moby_style_sample(build_store, tmp_path):
    root, _ = build_store
    ctx = tmp_path / "moby-style"
    shutil.copytree(REPO / "samples" / "moby-style", ctx,
                    ignore=shutil.ignore_patterns("busybox"))
    shutil.copy2(busybox_binary(), ctx / "busybox")
    rootfs = tmp_path / "rootfs"
    run = build_rootfs(root, ctx, rootfs, "-t", "sample-moby-style",
                       "--build-arg", "VERSION=1.2.3")
    tool = rootfs / "usr" / "local" / "bin" / "tool"
    source = (ctx / "src" / "tool.sh").read_text()
    assert tool.read_text() == source.replace("@VERSION@", "1.2.3")
    assert mode_of(tool) == 0o755
    assert (rootfs / "validated").read_text() == "ok build.sh\nok tool.sh\n"
    # the mounts were over the WORKDIRs: nothing of them is left in the image
    assert list((rootfs / "opt" / "binaries").iterdir()) == []
    assert not (rootfs / "usr" / "src").exists() and not (rootfs / "run" / "validated").exists()
    cfg = image_config(root, "sample-moby-style")["config"]
    assert cfg["Cmd"] == ["tool", "hello"] and cfg.get("WorkingDir", "/") == "/"
    compiled = [s for s in run.steps if any("build: compiled" in o for o in s.output)]
    assert len(compiled) == 1
    # a rebuild without the layer cache finds the object in the cache mount
    again = build_rootfs(root, ctx, tmp_path / "rootfs2", "--no-cache",
                         "--build-arg", "VERSION=1.2.3")
    assert any("build: reusing" in o for s in again.steps for o in s.output), again.stderr
