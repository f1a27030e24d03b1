"""Multi-stage builds: only the stages the target needs are built (an unused stage that
would fail never runs), `--target`, stages built on stages, `COPY --from` a stage by
name or index and from an image, and the multistage sample."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.builder.buildkit import (
    REPO, build, build_rootfs, busybox_binary, has_image, image_config, make_context,
)

pytestmark = pytest.mark.root

STAGES = """\
FROM bb AS base
RUN echo base > /base.txt

FROM base AS builder
ARG VERSION=1
RUN mkdir /out && echo "artifact $VERSION" > /out/app && echo side > /side

FROM bb AS broken
RUN echo must-not-run > /marker && exit 1

FROM scratch AS final
COPY --from=builder /out/app /app
COPY --from=bb /bin/busybox /bin/busybox
ENTRYPOINT ["/bin/busybox"]

FROM final AS extended
COPY --from=1 /side /side
"""


@pytest.fixture(scope="module")
def stages_ctx(tmp_path_factory):
    return make_context(tmp_path_factory.mktemp("stages") / "ctx", STAGES)


def _files(top: Path) -> set[str]:
    return {str(p.relative_to(top)) for p in top.rglob("*") if not p.is_dir()}


def test_default_target_is_the_last_stage_and_unused_stages_do_not_run(build_store, stages_ctx,
                                                                       tmp_path):
    root, _ = build_store
    rootfs = tmp_path / "rootfs"
    run = build_rootfs(root, stages_ctx, rootfs, "-t", "stages:ext")
    assert _files(rootfs) == {"app", "bin/busybox", "side"}
    assert (rootfs / "app").read_text() == "artifact 1\n"
    assert (rootfs / "side").read_text() == "side\n"
    assert not any("must-not-run" in s.title for s in run.steps)  # broken never ran
    # the stage built on `final` inherits its config and layers
    cfg = image_config(root, "stages:ext")
    assert cfg["config"]["Entrypoint"] == ["/bin/busybox"]
    assert len(cfg["rootfs"]["diff_ids"]) == 3


def test_target_stops_at_the_named_stage(build_store, stages_ctx, tmp_path):
    root, _ = build_store
    rootfs = tmp_path / "rootfs"
    run = build_rootfs(root, stages_ctx, rootfs, "--target", "final", "-t", "stages:final")
    assert _files(rootfs) == {"app", "bin/busybox"}
    assert not any("COPY --from=1" in s.title for s in run.steps)
    # a stage built on a stage sees its files
    rootfs2 = tmp_path / "rootfs2"
    run2 = build_rootfs(root, stages_ctx, rootfs2, "--target", "builder")
    assert (rootfs2 / "base.txt").read_text() == "base\n"
    assert (rootfs2 / "out" / "app").read_text() == "artifact 1\n"
    assert not any("COPY" in s.title for s in run2.steps)  # nothing of `final` ran


def test_target_on_the_failing_stage_fails(build_store, stages_ctx):
    root, _ = build_store
    run = build(root, stages_ctx, "--target", "broken", "-t", "stages:broken")
    assert run.code != 0 and "exit code: 1" in run.stderr
    assert not has_image(root, "stages:broken")


def test_build_arg_reaches_the_stage_that_declares_it(build_store, stages_ctx, tmp_path):
    root, _ = build_store
    rootfs = tmp_path / "rootfs"
    run = build_rootfs(root, stages_ctx, rootfs, "--target", "final", "--build-arg", "VERSION=2")
    assert (rootfs / "app").read_text() == "artifact 2\n"
    assert run.step("echo base").cached  # the base stage does not see VERSION


def test_stage_names_are_case_insensitive_and_from_previous_image(build_store, tmp_path):
    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", """\
FROM bb AS First
RUN echo one > /one
FROM first
RUN cat /one > /copy
""")
    rootfs = tmp_path / "rootfs"
    build_rootfs(root, ctx, rootfs)
    assert (rootfs / "copy").read_text() == "one\n"


def test_multistage_sample(build_store, tmp_path):
    root, _ = build_store
    ctx = tmp_path / "multistage"
    shutil.copytree(REPO / "samples" / "multistage", ctx,
                    ignore=shutil.ignore_patterns("busybox"))
    shutil.copy2(busybox_binary(), ctx / "busybox")
    rootfs = tmp_path / "rootfs"
    run = build_rootfs(root, ctx, rootfs, "-t", "sample-multistage", "--build-arg", "VERSION=3.1")
    words = (ctx / "src" / "words.txt").read_text()
    report = (rootfs / "srv" / "report.txt").read_text().splitlines()
    assert report[0] == "report version 3.1"
    assert report[1] == f"{len(words.split())} words"
    import hashlib
    assert report[2].split()[0] == hashlib.sha256(words.encode()).hexdigest()
    assert _files(rootfs) == {"bin/busybox", "srv/report.txt"}
    assert not any("must not run" in s.title for s in run.steps)
    cfg = image_config(root, "sample-multistage")["config"]
    assert cfg["Entrypoint"] == ["/bin/busybox", "cat"] and cfg["Cmd"] == ["/srv/report.txt"]


def test_hello_sample(build_store, tmp_path):
    root, _ = build_store
    ctx = tmp_path / "hello"
    shutil.copytree(REPO / "samples" / "hello", ctx, ignore=shutil.ignore_patterns("busybox"))
    shutil.copy2(busybox_binary(), ctx / "busybox")
    rootfs = tmp_path / "rootfs"
    build_rootfs(root, ctx, rootfs, "-t", "sample-hello", "--build-arg", "GREETING=hi")
    assert (rootfs / "var" / "log" / "hello" / "build.txt").read_text() == "built with greeting hi\n"
    assert (rootfs / "app" / "hello.sh").stat().st_mode & 0o777 == 0o755
    cfg = image_config(root, "sample-hello")["config"]
    assert cfg["User"] == "1000:1000" and cfg["WorkingDir"] == "/app"
    assert "GREETING=hi" in cfg["Env"] and cfg["Cmd"] == ["/app/hello.sh"]
    assert cfg["Labels"] == {"org.opencontainers.image.title": "hello"}
