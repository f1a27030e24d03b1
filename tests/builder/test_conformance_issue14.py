"""Conformance with BuildKit on what real Dockerfiles use (issue 14), end to end:
`RUN --mount` without `target=` (the working directory), bare RUN/CMD/ENTRYPOINT,
`COPY --chown` forms, `COPY --chmod` on created parents (BuildKit >= 0.21), and
`RUN --mount=type=cache,from=...` seeded from a stage.

Expected values come from BuildKit's sources (dockerfile2llb convert_runmount.go,
instructions/parse.go, client/llb fileop.go WithUser, solver ops readUser, fsutil's
copy MkdirAll) and the Dockerfile reference, never from lamina's output."""

from __future__ import annotations

import os

import pytest

from tests.builder.buildkit import build, build_rootfs, image_config, make_context, mode_of

pytestmark = pytest.mark.root


def _out(run, text: str) -> list[str]:
    return run.step(text).output


# --- RUN --mount without target= ---------------------------------------------------------

def test_mounts_without_target_land_on_the_working_directory(build_store, tmp_path):
    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", """\
FROM bb AS binaries
RUN mkdir -p /out && echo built > /out/tool

FROM bb
WORKDIR /src
RUN --mount=from=binaries,src=/out cat tool > /seen-from
RUN --mount=ro cat hello.txt > /seen-ro
RUN --mount=type=bind <<EOF
cat hello.txt > /seen-heredoc
EOF
RUN --mount=type=bind,src=sub ls > /seen-src
RUN --mount=from=binaries,src=/out,rw touch new && ls > /seen-rw
RUN --mount=type=cache echo cached > c && cat c > /seen-cache
RUN --mount=type=tmpfs touch t && ls > /seen-tmpfs
RUN ls -A /src > /src-after
""", {"hello.txt": "hello\n", "sub/inner.txt": "x"})
    out = tmp_path / "rootfs"
    build_rootfs(root, ctx, out)
    assert (out / "seen-from").read_text() == "built\n"
    assert (out / "seen-ro").read_text() == "hello\n"
    assert (out / "seen-heredoc").read_text() == "hello\n"
    assert (out / "seen-src").read_text() == "inner.txt\n"
    assert (out / "seen-rw").read_text().split() == ["new", "tool"]
    assert (out / "seen-cache").read_text() == "cached\n"
    assert (out / "seen-tmpfs").read_text() == "t\n"
    # every mount was over /src: nothing of them stays in the image's /src
    assert (out / "src-after").read_text() == ""


def test_mount_without_target_at_root_is_an_error(build_store, tmp_path):
    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", "FROM bb\nRUN --mount=type=bind ls\n")
    run = build(root, ctx)
    assert run.code != 0
    assert 'invalid mount target "/"' in run.stderr


def test_cache_mount_without_target_keeps_its_content_between_builds(build_store, tmp_path):
    """BuildKit's cache id for a target-less cache is path.Clean("") = "."; the same
    id in another Dockerfile (another WORKDIR) finds the same cache."""
    root, _ = build_store
    a = make_context(tmp_path / "a", "FROM bb\nWORKDIR /w1\n"
                     "RUN --mount=type=cache,sharing=locked echo one > mark-issue14\n")
    build(root, a).check()
    b = make_context(tmp_path / "b", "FROM bb\nWORKDIR /w2\n"
                     "RUN --mount=type=cache,id=.,sharing=locked cat mark-issue14 > /seen\n")
    out = tmp_path / "rootfs"
    build_rootfs(root, b, out)
    assert (out / "seen").read_text() == "one\n"


# --- bare RUN / CMD / ENTRYPOINT -----------------------------------------------------------

def test_bare_run_cmd_entrypoint(build_store, tmp_path):
    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", "FROM bb\nRUN\nCMD\n")
    build(root, ctx, "-t", "issue14-bare-cmd").check()
    cfg = image_config(root, "issue14-bare-cmd")["config"]
    assert cfg["Cmd"] == ["/bin/sh", "-c", ""]  # BuildKit's withShell(img, [])
    ctx = make_context(tmp_path / "ctx2", "FROM bb\nCMD [\"x\"]\nENTRYPOINT\n")
    build(root, ctx, "-t", "issue14-bare-ep").check()
    cfg = image_config(root, "issue14-bare-ep")["config"]
    assert cfg["Entrypoint"] == ["/bin/sh", "-c", ""]
    assert cfg["Cmd"] == ["x"]  # a CMD set in the same stage survives (d.cmd.IsSet)


def test_bare_entrypoint_clears_an_inherited_cmd(build_store, tmp_path):
    """BuildKit's dispatchEntrypoint: Cmd = nil unless CMD was set in this stage
    (d.cmd.IsSet is per stage), so a CMD from the base image - or from a base stage -
    goes; the bare ENTRYPOINT itself is withShell(img, nil) = /bin/sh -c ""."""
    root, _ = build_store
    base = make_context(tmp_path / "base", 'FROM bb\nCMD ["from-image"]\n')
    build(root, base, "-t", "issue14-cmd-base").check()
    assert image_config(root, "issue14-cmd-base")["config"]["Cmd"] == ["from-image"]
    ctx = make_context(tmp_path / "ctx", 'FROM issue14-cmd-base AS img\nENTRYPOINT\n\n'
                       'FROM bb AS withcmd\nCMD ["from-stage"]\nFROM withcmd\nENTRYPOINT\n')
    for target in ("img", ""):
        tag = f"issue14-ep-{target or 'stage'}"
        build(root, ctx, "-t", tag, *(("--target", target) if target else ())).check()
        cfg = image_config(root, tag)["config"]
        assert cfg["Entrypoint"] == ["/bin/sh", "-c", ""]
        assert cfg.get("Cmd") is None, target


# --- COPY --chown ----------------------------------------------------------------------------

CHOWN = """\
FROM bb
ARG U=carol
ARG G=staff
RUN echo 'carol:x:2000:50:Carol:/home/carol:/bin/sh' >> /etc/passwd
COPY --chown=4242 f /o/uid
COPY --chown=2000 f /o/uid-in-passwd
COPY --chown=carol f /o/name
COPY --chown=carol:wheel f /o/name-group
COPY --chown=carol:77 f /o/name-gid
COPY --chown=4242:wheel f /o/uid-group
COPY --chown=4242:77 f /o/uid-gid
COPY --chown=root f /o/root
COPY --chown=root:staff f /o/root-group
COPY --chown=${U}:${G} f /o/args
COPY --chown=:staff f /o/group-only
ADD --chown=carol f /o/add-name
COPY --chown=4242 d /o/newdir/deep/
USER 4242
WORKDIR /o/workdir
"""

# (uid, gid) by BuildKit's rules: a number is uid = gid = that number (the reference:
# "a UID without GID will use the same numeric UID as the GID"), even for a uid that
# /etc/passwd lists with another group; a name takes uid and primary gid from
# /etc/passwd; "root" is 0; a group name comes from /etc/group; an empty user is 0.
CHOWN_EXPECTED = {
    "uid": (4242, 4242), "uid-in-passwd": (2000, 2000), "name": (2000, 50),
    "name-group": (2000, 10), "name-gid": (2000, 77), "uid-group": (4242, 10),
    "uid-gid": (4242, 77), "root": (0, 0), "root-group": (0, 50), "args": (2000, 50),
    "group-only": (0, 50), "add-name": (2000, 50),
    # created parent dirs and the copied tree take the --chown owner too
    "newdir": (4242, 4242), "newdir/deep": (4242, 4242), "newdir/deep/x": (4242, 4242),
    # WORKDIR makes its dir with the USER, by the same rules (llb.WithUser)
    "workdir": (4242, 4242),
}


def test_copy_chown_forms(build_store, tmp_path):
    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", CHOWN, {"f": "data\n", "d/x": "x"})
    out = tmp_path / "rootfs"
    build_rootfs(root, ctx, out)
    got = {}
    for name in CHOWN_EXPECTED:
        st = os.lstat(out / "o" / name)
        got[name] = (st.st_uid, st.st_gid)
    assert got == CHOWN_EXPECTED


def test_copy_chown_unknown_names_build_as_docker_does(build_store, tmp_path):
    """docker 20.10 builds `COPY --chown=nosuch:nogroup` (0:65534) and current BuildKit's
    readUser leaves an unknown name at 0 (the user) or the user's gid (the group); so
    does a WORKDIR under an unknown USER (0:0)."""
    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", "FROM bb\nCOPY --chown=nosuch f /f\n"
                       "COPY --chown=nosuch:nosuchgrp f /g\nUSER nosuch\nWORKDIR /made\n",
                       {"f": "x"})
    run = build(root, ctx, "-o", f"type=local,dest={tmp_path / 'out'}")
    assert run.code == 0, run.stderr
    for p in ("f", "g", "made"):
        st = os.lstat(tmp_path / "out" / p)
        assert (st.st_uid, st.st_gid) == (0, 0), p


# --- COPY --chmod onto missing parents -------------------------------------------------------

def test_copy_chmod_creates_missing_parents_with_the_mode(build_store, tmp_path):
    """BuildKit >= 0.21 (fsutil MkdirAll with the copy's mode, issue 5943): every dir
    the COPY creates gets the octal --chmod; existing dirs keep theirs; a symbolic
    --chmod creates them 0755."""
    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", """\
FROM bb
COPY --chmod=640 f /new/path/f
COPY --chmod=750 d /dir1/dir2/
COPY --chmod=600 *.txt /wild/card/
COPY --chmod=u+x f /sym/a/f
COPY --chmod=600 f /tmp/kept
COPY --chmod=640 <<EOT /heredoc/dir/file
inline
EOT
""", {"f": "data\n", "d/x": "x", "d/sub/y": "y", "a.txt": "a", "b.txt": "b"})
    out = tmp_path / "rootfs"
    build_rootfs(root, ctx, out)
    expected = {
        "new": 0o640, "new/path": 0o640, "new/path/f": 0o640,
        "dir1": 0o750, "dir1/dir2": 0o750, "dir1/dir2/x": 0o750, "dir1/dir2/sub": 0o750,
        "dir1/dir2/sub/y": 0o750,
        "wild": 0o600, "wild/card": 0o600, "wild/card/a.txt": 0o600, "wild/card/b.txt": 0o600,
        "sym": 0o755, "sym/a": 0o755,
        "tmp": 0o1777, "tmp/kept": 0o600,
        # a heredoc source is copied the same way (llb.Copy with the copy's Mode)
        "heredoc": 0o640, "heredoc/dir": 0o640, "heredoc/dir/file": 0o640,
    }
    assert {p: mode_of(out / p) for p in expected} == expected


# --- RUN --mount=type=cache,from= ------------------------------------------------------------

def test_cache_mount_seeded_from_a_stage_and_an_image(build_store, tmp_path):
    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", """\
FROM bb AS seed
RUN mkdir -p /seed/sub && echo seeded > /seed/sub/a && chown -R 1000:50 /seed/sub

FROM bb
RUN --mount=type=cache,id=issue14-seed,from=seed,source=/seed,target=/cache,sharing=locked \\
    cat /cache/sub/a > /first && stat -c '%u:%g' /cache/sub > /owner && echo more > /cache/b
RUN --mount=type=cache,id=issue14-seed,from=seed,source=/seed,target=/cache,sharing=locked \\
    ls /cache > /second
RUN --mount=type=cache,id=issue14-seed,target=/cache,sharing=locked ls -A /cache > /unseeded
RUN --mount=type=cache,id=issue14-img,from=bb,source=/etc,target=/c2,sharing=locked \\
    grep -c alice /c2/passwd > /from-image
RUN ls -A /cache /c2 > /left 2>&1 || true
""")
    out = tmp_path / "rootfs"
    build_rootfs(root, ctx, out, "--no-cache")
    assert (out / "first").read_text() == "seeded\n"
    assert (out / "owner").read_text() == "1000:50\n"
    assert (out / "second").read_text().split() == ["b", "sub"]  # written by the RUN before
    assert "sub" not in (out / "unseeded").read_text()  # the id alone is another cache
    assert (out / "from-image").read_text() == "1\n"


def test_cache_mount_from_a_missing_source_fails(build_store, tmp_path):
    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", "FROM bb\nRUN --mount=type=cache,from=bb,"
                       "source=/no/such,target=/c true\n")
    run = build(root, ctx)
    assert run.code != 0 and "/no/such" in run.stderr and "does not exist" in run.stderr
