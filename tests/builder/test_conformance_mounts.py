"""BuildKit's own RUN --mount integration tests (frontend/dockerfile/
dockerfile_mount_test.go), rebuilt as minimal lamina builds on the busybox base:
same Dockerfile lines, same expectations."""

from __future__ import annotations

import pytest

from tests.builder.buildkit import build, build_rootfs, make_context

pytestmark = pytest.mark.root


def _ok(root, tmp_path, dockerfile, files=None, *args):
    ctx = make_context(tmp_path / "ctx", dockerfile, files)
    return build_rootfs(root, ctx, tmp_path / "out", "--no-cache", *args)


def test_mount_context(build_store, tmp_path):  # testMountContext
    _ok(build_store[0], tmp_path, 'FROM bb\nRUN --mount=target=/context '
        '[ "$(cat /context/testfile)" == "contents0" ]\n', {"testfile": "contents0"})


def test_cache_mount_user(build_store, tmp_path):  # testCacheMountUser
    _ok(build_store[0], tmp_path, "FROM bb\nRUN --mount=type=cache,target=/mycache-i14u,"
        'uid=1001,gid=1002,mode=0751 [ "$(stat -c "%u %g %f" /mycache-i14u)" == '
        '"1001 1002 41e9" ]\n')


def test_cache_mount_default_id(build_store, tmp_path):  # testCacheMountDefaultID
    _ok(build_store[0], tmp_path, """\
FROM bb
RUN --mount=type=cache,target=/i14cache touch /i14cache/foo
RUN --mount=type=cache,target=/i14cache2 [ ! -f /i14cache2/foo ]
RUN --mount=type=cache,target=/i14cache [ -f /i14cache/foo ]
""")


def test_mount_env_var_arg_and_across_stages(build_store, tmp_path):
    # testMountEnvVar, testMountArg, testMountEnvAcrossStages, testMountMetaArg
    _ok(build_store[0], tmp_path, """\
ARG META_PATH=/tmp/i14meta
FROM bb AS stage1
ENV SOME_PATH=/i14envcache
RUN --mount=type=cache,target=/i14envcache touch /i14envcache/foo
RUN --mount=type=cache,target=$SOME_PATH [ -f $SOME_PATH/foo ]
ARG MNT_TYPE=cache
RUN --mount=type=$MNT_TYPE,target=/i14mycache2 touch /i14mycache2/foo
RUN --mount=type=cache,target=/i14mycache2 [ -f /i14mycache2/foo ]
ENV MNT_ID=i14mycache
ENV MNT_TYPE2=cache
RUN --mount=type=cache,id=i14mycache,target=/abcabc touch /abcabc/foo
RUN --mount=type=$MNT_TYPE2,id=$MNT_ID,target=/cbacba [ -f /cbacba/foo ]
FROM stage1
RUN --mount=type=$MNT_TYPE2,id=$MNT_ID,target=/whatever [ -f /whatever/foo ]
ARG META_PATH
RUN --mount=type=cache,id=i14meta,target=/tmp/i14meta touch /tmp/i14meta/foo
RUN --mount=type=cache,id=i14meta,target=$META_PATH [ -f /tmp/i14meta/foo ]
""")


def test_mount_from_with_variable_is_an_error(build_store, tmp_path):  # testMountFromError
    ctx = make_context(tmp_path / "ctx", "FROM bb AS test\nRUN touch /tmp/test\nFROM bb\n"
                       "ARG ttt=test\nRUN --mount=from=$ttt,type=cache,target=/tmp ls\n")
    run = build(build_store[0], ctx)
    assert run.code != 0
    assert "'from' doesn't support variable expansion, define alias stage instead" in run.stderr


def test_mount_tmpfs_size(build_store, tmp_path):  # testMountTmpfsSize
    _ok(build_store[0], tmp_path, "FROM bb\nRUN --mount=type=tmpfs,target=/dev/shm,size=128m "
        "mount | grep /dev/shm > /tmpfssize\n")
    assert "size=131072k" in (tmp_path / "out" / "tmpfssize").read_text()


def test_mount_duplicate_context_sources(build_store, tmp_path):  # testMountDuplicate
    df = ("FROM bb\nRUN --mount=source=.,target=/tmp/test \\\n"
          "  --mount=source=b.txt,target=/tmp/b.txt \\\n"
          "  cat /tmp/test/a.txt /tmp/b.txt > /combined.txt\n")
    for text in ("foo\n", "updated\n"):
        ctx = make_context(tmp_path / "ctx", df, {"a.txt": text, "b.txt": "bar\n"})
        build_rootfs(build_store[0], ctx, tmp_path / "out")
        assert (tmp_path / "out" / "combined.txt").read_text() == text + "bar\n"


def test_nested_cache_mounts(build_store, tmp_path):  # testCacheMountParallel
    _ok(build_store[0], tmp_path, """\
FROM bb AS b1
RUN --mount=type=cache,target=/i14foo/bar --mount=type=cache,target=/i14foo/bar/baz echo 1
FROM bb AS b2
RUN --mount=type=cache,target=/i14foo/bar --mount=type=cache,target=/i14foo/bar/baz echo 2
FROM scratch
COPY --from=b1 /etc/passwd p1
COPY --from=b2 /etc/passwd p2
""")
    assert (tmp_path / "out" / "p1").read_text() == (tmp_path / "out" / "p2").read_text()


def test_cache_mount_source_subdir(build_store, tmp_path):
    """`source=` of a cache without `from=` mounts that subdirectory of the cache
    (BuildKit: llb.SourcePath on the cache mount)."""
    _ok(build_store[0], tmp_path, """\
FROM bb
RUN --mount=type=cache,id=i14src,target=/cache mkdir -p /cache/sel && echo benign > /cache/sel/benign.txt
RUN --mount=type=cache,id=i14src,source=sel,target=/sel cat /sel/benign.txt > /seen
""")
    assert (tmp_path / "out" / "seen").read_text() == "benign\n"


def test_cache_mount_source_escape_fails(build_store, tmp_path):  # testCacheMountSourceEscape
    ctx = make_context(tmp_path / "ctx", """\
FROM bb AS init
RUN --mount=type=cache,id=i14escape,target=/cache mkdir -p /cache/sel && echo benign > /cache/sel/benign.txt
FROM init AS link
RUN --mount=type=cache,id=i14escape,target=/cache rm -rf /cache/sel && ln -s /etc /cache/sel
FROM link AS victim
RUN --mount=type=cache,id=i14escape,source=sel,target=/victim cat /victim/hostname
FROM scratch
COPY --from=victim /etc/hostname /hostname
""")
    run = build(build_store[0], ctx, "--no-cache")
    assert run.code != 0, "a cache source= through a link outside the cache must fail"
    assert "does not exist in the cache" in run.stderr, run.stderr  # /etc inside the cache


def test_mount_point_made_meanwhile_by_another_step_is_used(tmp_path):
    """Two steps sharing a cache mount (parallel stages, or two builds) may both create
    the mount point of a nested mount in it: the one that finds it made is not an error
    (BuildKit's testCacheMountParallel races exactly so)."""
    import os

    from lamina.builder.sandbox.mountpoints import StubRecorder

    root = tmp_path / "root"
    (root / "cache").mkdir(parents=True)
    rec = StubRecorder(str(root))
    real_mkdir = os.mkdir

    def racing_mkdir(name, mode=0o777, *, dir_fd=None):
        real_mkdir(name, mode, dir_fd=dir_fd)  # "the other step" was first
        raise FileExistsError(17, "File exists", name)

    os.mkdir = racing_mkdir
    try:
        fd = rec.ensure_fd("/cache/baz", "dir")
    finally:
        os.mkdir = real_mkdir
    os.close(fd)
    assert (root / "cache" / "baz").is_dir()
    assert ["cache/baz", "dir"] not in rec.created  # not ours: never removed as a stub
