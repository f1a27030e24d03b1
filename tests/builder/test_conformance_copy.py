"""BuildKit's own COPY --chown/--chmod integration tests (frontend/dockerfile/
dockerfile_copy_test.go: testCopyChownExistingDir, testCopyChownCreateDest,
testCopyChown, testCopyChmod) rebuilt as lamina builds on the busybox base, with
their expectations."""

from __future__ import annotations

import pytest

from tests.builder.buildkit import build_rootfs, make_context

pytestmark = pytest.mark.root


def _check(e: str, p: str) -> str:
    return (f'e="{e}"; p="{p}"; a=`stat -c "%u:%g" "$p"`; if [ "$a" != "$e" ]; then '
            f'echo "incorrect ownership on $p. expected $e, got $a"; exit 1; fi')


def _checks(pairs) -> str:
    return "RUN " + " \\\n && ".join(_check(e, p) for e, p in pairs) + "\n"


SOURCE = """\
FROM bb AS source
RUN touch /file && chown 100:200 /file \\
 && mkdir -p /dir/subdir \\
 && touch /dir/subdir/nestedfile \\
 && chown 100:200 /dir \\
 && chown 101:201 /dir/subdir \\
 && chown 102:202 /dir/subdir/nestedfile
FROM bb AS test_base
RUN mkdir -p /existingdir/existingsubdir \\
 && touch /existingdir/existingfile \\
 && chown 500:600 /existingdir \\
 && chown 501:601 /existingdir/existingsubdir \\
 && chown 501:601 /existingdir/existingfile
"""

EXISTING = [("500:600", "/existingdir"), ("501:601", "/existingdir/existingsubdir"),
            ("501:601", "/existingdir/existingfile")]


def test_copy_chown_existing_dir(build_store, tmp_path):
    df = SOURCE + """\
FROM test_base AS copy_from
COPY --from=source /file .
COPY --from=source /dir /dir
COPY --from=source /dir/. /existingdir
""" + _checks([("100:200", "/file"), ("0:0", "/dir"), ("101:201", "/dir/subdir"),
               ("102:202", "/dir/subdir/nestedfile"), *EXISTING,
               ("101:201", "/existingdir/subdir"),
               ("102:202", "/existingdir/subdir/nestedfile")]) + """\
FROM test_base AS copy_from_chowned
COPY --from=source --chown=300:400 /file .
COPY --from=source --chown=300:400 /dir /dir
COPY --from=source --chown=300:400 /dir/. /existingdir
""" + _checks([("300:400", "/file"), ("300:400", "/dir"), ("300:400", "/dir/subdir"),
               ("300:400", "/dir/subdir/nestedfile"), *EXISTING,
               ("300:400", "/existingdir/subdir"),
               ("300:400", "/existingdir/subdir/nestedfile")])
    ctx = make_context(tmp_path / "ctx", df)
    build_rootfs(build_store[0], ctx, tmp_path / "out1", "--target", "copy_from")
    build_rootfs(build_store[0], ctx, tmp_path / "out2", "--target", "copy_from_chowned")


def test_copy_chown_create_dest(build_store, tmp_path):
    # (busybox-static has no adduser: the two users `adduser -D` makes, written directly)
    ctx = make_context(tmp_path / "ctx", """\
FROM bb
ARG group
ENV owner user01
RUN echo 'user:x:3000:3000::/home/user:/bin/sh' >> /etc/passwd && echo 'user:x:3000:' >> /etc/group
RUN echo 'user01:x:3001:3001::/home/user01:/bin/sh' >> /etc/passwd && echo 'user01:x:3001:' >> /etc/group
COPY --chown=user:user . /dest
COPY --chown=${owner}:${group} . /dest01
RUN [ "$(stat -c "%U %G" /dest)" == "user user" ]
RUN [ "$(stat -c "%U %G" /dest01)" == "user01 user" ]
""", {"x": "x"})
    build_rootfs(build_store[0], ctx, tmp_path / "out", "--build-arg", "group=user")


def test_copy_chown(build_store, tmp_path):
    ctx = make_context(tmp_path / "ctx", """\
FROM bb AS base
ENV owner 1000
RUN mkdir -m 0777 /out
COPY --chown=daemon foo /
COPY --chown=1000:nogroup bar /baz
ARG group
COPY --chown=${owner}:${group} foo /foobis
RUN stat -c "%U %G" /foo  > /out/fooowner
RUN stat -c "%u %G" /baz/sub  > /out/subowner
RUN stat -c "%u %G" /foobis  > /out/foobisowner
FROM scratch
COPY --from=base /out /
""", {"foo": "foo-contents", "bar/sub": "sub"})
    out = tmp_path / "out"
    build_rootfs(build_store[0], ctx, out, "--build-arg", "group=nogroup")
    assert (out / "fooowner").read_text() == "daemon daemon\n"
    assert (out / "subowner").read_text() == "1000 nogroup\n"
    assert (out / "foobisowner").read_text() == "1000 nogroup\n"


def test_copy_chmod(build_store, tmp_path):
    ctx = make_context(tmp_path / "ctx", """\
FROM bb AS base
RUN mkdir -m 0777 /out
COPY --chmod=0644 foo /
COPY --chmod=777 bar /baz
COPY --chmod=0 foo /foobis
COPY --chmod=777 foo /parent/foo
COPY --chmod=770 foo /parent/sub/foo
ARG mode
COPY --chmod=${mode} foo /footer
RUN stat -c "%04a" /foo  > /out/fooperm
RUN stat -c "%04a" /baz  > /out/barperm
RUN stat -c "%04a" /foobis  > /out/foobisperm
RUN stat -c "%04a" /parent  > /out/parentperm
RUN stat -c "%04a" /parent/sub  > /out/subparentperm
RUN stat -c "%04a" /footer  > /out/footerperm
FROM scratch
COPY --from=base /out /
""", {"foo": "foo-contents", "bar/sub": "sub"})
    out = tmp_path / "out"
    build_rootfs(build_store[0], ctx, out, "--build-arg", "mode=755")
    got = {n: (out / f"{n}perm").read_text() for n in
           ("foo", "bar", "foobis", "parent", "subparent", "footer")}
    assert got == {"foo": "0644\n", "bar": "0777\n", "foobis": "0000\n", "parent": "0777\n",
                   "subparent": "0770\n", "footer": "0755\n"}
