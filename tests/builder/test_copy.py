"""COPY mechanics (builder.steps.copy) against real directories: destination rules,
symlinks of the image, ownership, --chmod, heredocs, hard links, conflicts.

Expected values come from the Dockerfile reference / BuildKit behaviour (cited per
test) and, for symbolic --chmod, from GNU chmod(1) run on the same modes."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from lamina.builder.context.context import BuildContext, SourceTree
from lamina.builder.context.statcache import StatCache
from lamina.builder.context.copysrc import select_sources
from lamina.builder.context.dockerignore import IgnoreRules
from lamina.builder.errors import BuildError
from lamina.builder.steps.chmod import parse_chmod
from lamina.builder.steps.copyentry import HeredocSource
from lamina.builder.steps.copyinto import copy_selection
from lamina.builder.sandbox.users import UserLookupError, resolve_user


def ctx_tree(d: Path) -> BuildContext:
    return BuildContext(d, IgnoreRules(), StatCache())


def copy(root: Path, ctx: Path, sources: list[str], dest: str, **kw):
    tree = kw.pop("tree", None) or ctx_tree(ctx)
    return copy_selection(root, select_sources(tree, sources), dest, **kw)


def owner(p: Path) -> tuple[int, int]:
    s = os.lstat(p)
    return s.st_uid, s.st_gid


def mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def snapshot(d: Path) -> list[tuple[str, int, int]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(d):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            s = os.lstat(p)
            out.append((os.path.relpath(p, d), s.st_mode, s.st_mtime_ns))
    return sorted(out)


@pytest.fixture
def env(tmp_path: Path):
    ctx = tmp_path / "ctx"
    root = tmp_path / "root"
    sentinel = tmp_path / "sentinel"
    for d in (ctx / "dir" / "sub", root / "srv" / "app", root / "etc", sentinel):
        d.mkdir(parents=True)
    (ctx / "a.txt").write_text("A")
    (ctx / "b.txt").write_text("B")
    (ctx / "dir" / "one").write_text("1")
    (ctx / "dir" / "sub" / "two").write_text("22")
    os.chmod(ctx / "dir" / "sub" / "two", 0o750)
    os.utime(ctx / "a.txt", ns=(1_500_000_000_123_456_789,) * 2)
    (sentinel / "keep").write_text("keep")
    os.symlink("/srv/app", root / "app")
    return ctx, root, sentinel


# -- destination rules (Dockerfile reference, "COPY": dest, trailing slash, WORKDIR) --

def test_file_to_file_dir_and_existing_dir(env):
    ctx, root, _ = env
    copy(root, ctx, ["a.txt"], "/x/renamed")            # no slash: the file itself
    assert (root / "x" / "renamed").read_text() == "A"
    copy(root, ctx, ["a.txt"], "/y/")                   # slash: into the directory
    assert (root / "y" / "a.txt").read_text() == "A"
    copy(root, ctx, ["a.txt"], "/etc")                  # existing directory, no slash
    assert (root / "etc" / "a.txt").read_text() == "A"
    copy(root, ctx, ["b.txt"], "rel.txt", workdir="/w")  # relative to WORKDIR
    assert (root / "w" / "rel.txt").read_text() == "B"
    copy(root, ctx, ["a.txt", "b.txt"], "/multi/")
    assert sorted(os.listdir(root / "multi")) == ["a.txt", "b.txt"]
    # no trailing slash: each source in turn onto /notdir, as BuildKit (docker 20.10
    # checked): the last file is what stays
    copy(root, ctx, ["a.txt", "b.txt"], "/notdir")
    assert (root / "notdir").read_text() == "B"


def test_directory_source_copies_its_content_and_merges(env):
    ctx, root, _ = env
    (root / "dst").mkdir(mode=0o700)
    (root / "dst" / "old").write_text("old")
    copy(root, ctx, ["dir"], "/dst")
    assert (root / "dst" / "one").read_text() == "1"
    assert (root / "dst" / "sub" / "two").read_text() == "22"
    assert (root / "dst" / "old").read_text() == "old"  # merged, not replaced
    assert not (root / "dst" / "dir").exists()
    assert mode(root / "dst") == 0o700                  # top-level dest keeps its metadata
    copy(root, ctx, ["dir"], "/fresh/nested")           # created 0755
    assert mode(root / "fresh" / "nested") == 0o755
    assert (root / "fresh" / "nested" / "sub" / "two").read_text() == "22"


def test_metadata_from_the_source(env):
    ctx, root, _ = env
    os.chmod(ctx / "dir" / "sub", 0o711)
    os.utime(ctx / "dir" / "sub", ns=(1_400_000_000_000_000_001,) * 2)
    copy(root, ctx, ["a.txt", "dir"], "/m/")
    assert os.lstat(root / "m" / "a.txt").st_mtime_ns == 1_500_000_000_123_456_789
    assert os.lstat(root / "m" / "sub").st_mtime_ns == 1_400_000_000_000_000_001
    assert mode(root / "m" / "sub") == 0o711
    assert mode(root / "m" / "sub" / "two") == 0o750
    # docker: "All new files and directories are created with a UID and GID of 0"
    assert owner(root / "m" / "a.txt") == (0, 0)


def test_nested_existing_directory_takes_source_metadata(env):
    ctx, root, _ = env
    (root / "t" / "sub").mkdir(parents=True, mode=0o700)
    os.chmod(ctx / "dir" / "sub", 0o755)
    copy(root, ctx, ["dir"], "/t")
    assert mode(root / "t" / "sub") == 0o755  # fsutil: overwriteTargetMetadata


def test_symlinks_copied_as_symlinks_and_hardlinks_kept(env):
    ctx, root, _ = env
    os.symlink("../a.txt", ctx / "dir" / "link")
    os.symlink("/nonexistent/abs", ctx / "dir" / "dangling")
    os.link(ctx / "dir" / "one", ctx / "dir" / "sub" / "one-again")
    copy(root, ctx, ["dir"], "/h")
    assert os.readlink(root / "h" / "link") == "../a.txt"
    assert os.readlink(root / "h" / "dangling") == "/nonexistent/abs"
    a, b = os.lstat(root / "h" / "one"), os.lstat(root / "h" / "sub" / "one-again")
    assert (a.st_ino, a.st_nlink) == (b.st_ino, 2)


def test_existing_file_replaced_and_type_conflicts(env):
    ctx, root, _ = env
    (root / "etc" / "a.txt").write_text("old")
    os.chmod(root / "etc" / "a.txt", 0o600)
    copy(root, ctx, ["a.txt"], "/etc/")
    assert (root / "etc" / "a.txt").read_text() == "A"
    # a source file onto a directory of the image (BuildKit: "cannot replace to directory")
    (root / "c1" / "one").mkdir(parents=True)
    with pytest.raises(BuildError, match="cannot replace directory /c1/one with a file"):
        copy(root, ctx, ["dir"], "/c1")
    # a source directory onto a file / a symlink (BuildKit: "cannot copy to non-directory")
    (root / "c2").mkdir()
    (root / "c2" / "sub").write_text("file")
    with pytest.raises(BuildError, match="cannot copy to non-directory: /c2/sub"):
        copy(root, ctx, ["dir"], "/c2")
    (root / "c3").mkdir()
    os.symlink("/srv", root / "c3" / "sub")
    with pytest.raises(BuildError, match="cannot copy to non-directory: /c3/sub"):
        copy(root, ctx, ["dir"], "/c3")
    with pytest.raises(BuildError, match="not a directory"):
        copy(root, ctx, ["dir"], "/etc/a.txt")


# -- the merged view: symlinks of lower layers ------------------------------------------

def test_symlinked_destination_directory_inside_the_root(env):
    ctx, root, _ = env
    copy(root, ctx, ["a.txt"], "/app/")
    copy(root, ctx, ["dir"], "/app/d")
    assert (root / "srv" / "app" / "a.txt").read_text() == "A"
    assert (root / "srv" / "app" / "d" / "sub" / "two").read_text() == "22"
    assert os.readlink(root / "app") == "/srv/app"  # still a symlink
    copy(root, ctx, ["b.txt"], "/app")              # a symlink to a dir is a dir
    assert (root / "srv" / "app" / "b.txt").read_text() == "B"


def test_final_symlink_of_a_file_destination_is_followed(env):
    ctx, root, _ = env
    (root / "etc" / "real.conf").write_text("old")
    os.symlink("real.conf", root / "etc" / "link.conf")
    copy(root, ctx, ["a.txt"], "/etc/link.conf")   # fsutil resolves the whole dest
    assert os.readlink(root / "etc" / "link.conf") == "real.conf"
    assert (root / "etc" / "real.conf").read_text() == "A"


def test_symlinks_pointing_out_of_the_root_never_lead_outside(env):
    ctx, root, sentinel = env
    before = snapshot(sentinel)
    os.symlink("/", root / "evil")
    os.symlink("../../../../../../..", root / "climb")
    os.symlink(str(sentinel), root / "hostabs")
    os.symlink(str(sentinel / "keep"), root / "etc" / "hostfile")
    os.symlink("../../../../../../../" + str(sentinel).lstrip("/") + "/keep", root / "etc" / "rel")
    copy(root, ctx, ["a.txt"], "/evil/")
    copy(root, ctx, ["dir"], "/climb/sub/")
    copy(root, ctx, ["b.txt"], "/hostabs/")
    copy(root, ctx, ["a.txt"], "/etc/hostfile")
    copy(root, ctx, ["b.txt"], "/etc/rel")
    assert (root / "a.txt").read_text() == "A"
    assert (root / "sub" / "sub" / "two").read_text() == "22"
    inner = root / str(sentinel).lstrip("/")
    assert (inner / "b.txt").read_text() == "B"
    assert (inner / "keep").read_text() == "B"  # the re-rooted link target, written last
    assert snapshot(sentinel) == before
    assert (sentinel / "keep").read_text() == "keep"


# -- ownership ---------------------------------------------------------------------------

@pytest.mark.root
def test_chown_by_number_and_by_name(env):
    ctx, root, _ = env
    (root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\napp:x:1234:2345::/home/app:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\nstaff:x:50:\n")

    def lookup(path: str) -> bytes | None:
        p = root / path.lstrip("/")
        return p.read_bytes() if p.exists() else None

    u = resolve_user(lookup, "app")
    copy(root, ctx, ["dir"], "/srv/app/new/deeper", chown=(u.uid, u.gid))
    for p in ("srv/app/new", "srv/app/new/deeper", "srv/app/new/deeper/one",
              "srv/app/new/deeper/sub/two"):
        assert owner(root / p) == (1234, 2345), p   # created parents too (fsutil MkdirAll)
    assert owner(root / "srv" / "app") == owner(root / "srv")  # existing: untouched
    g = resolve_user(lookup, "app:staff")
    copy(root, ctx, ["a.txt"], "/g.txt", chown=(g.uid, g.gid))
    assert owner(root / "g.txt") == (1234, 50)
    copy(root, ctx, ["b.txt"], "/n.txt", chown=(7, 8))
    assert owner(root / "n.txt") == (7, 8)
    with pytest.raises(BuildError, match="unable to find user nobody"):
        resolve_user(lookup, "nobody")
    assert issubclass(UserLookupError, BuildError)


@pytest.mark.root
def test_stage_sources_keep_their_owner(env, tmp_path):
    _, root, _ = env
    stage = tmp_path / "stage"
    (stage / "opt").mkdir(parents=True)
    (stage / "opt" / "f").write_text("f")
    os.chown(stage / "opt" / "f", 1000, 1001)
    os.chown(stage / "opt", 1002, 1003)
    tree = SourceTree(stage)
    assert tree.preserves_ownership
    copy(root, stage, ["/opt"], "/o", tree=tree)
    assert owner(root / "o" / "f") == (1000, 1001)
    copy(root, stage, ["/opt/f"], "/f2", tree=SourceTree(stage), chown=(5, 5))
    assert owner(root / "f2") == (5, 5)


# -- --chmod -----------------------------------------------------------------------------

def test_chmod_octal_applies_to_files_and_directories(env):
    ctx, root, _ = env
    copy(root, ctx, ["dir"], "/c", chmod="0640")
    assert mode(root / "c" / "one") == 0o640
    assert mode(root / "c" / "sub") == 0o640       # BuildKit applies --chmod to dirs too
    assert mode(root / "c") == 0o640               # and the created destination (BuildKit >= 0.21)
    copy(root, ctx, ["a.txt"], "/s", chmod="4755")
    assert mode(root / "s") == 0o4755
    with pytest.raises(BuildError, match="it should be octal string and between 0 and 07777"):
        parse_chmod("10000")
    with pytest.raises(BuildError, match="it should be octal string"):
        parse_chmod("0789")
    with pytest.raises(BuildError, match="invalid chmod parameter"):
        parse_chmod("u+q")


SYMBOLIC = ["u+x", "go-w", "u=rw,g=r,o=r", "a+X", "go=u-w", "+x", "-w", "=r", "u+s",
            "g+s,o-rwx", "+t", "o=u", "u-x,g+w", "a-r,u+r", "ug+rw", "g=u,o=", "a+rX"]


@pytest.mark.parametrize("spec", SYMBOLIC)
def test_chmod_symbolic_matches_gnu_chmod(spec, tmp_path):
    """Oracle: GNU chmod(1) with umask 022 (the umask BuildKit's buildkitd runs with)."""
    results = {}
    for kind, start in (("file", 0o644), ("exe", 0o750), ("dir", 0o755), ("odd", 0o4701)):
        p = tmp_path / kind
        if kind == "dir":
            p.mkdir()
        else:
            p.write_text("")
        os.chmod(p, start)
        subprocess.run(["sh", "-c", f"umask 022 && chmod {spec} {p}"], check=True)
        results[kind] = (start, mode(p))
    for kind, (start, expected) in results.items():
        assert parse_chmod(spec).apply(start, kind == "dir") == expected, (kind, oct(start))


@pytest.mark.parametrize("spec,start,is_dir,expected", [
    # BuildKit parses with a port of BSD setmode(3): 'X' only counts with '+', and is
    # judged on the mode before the change (GNU chmod differs on exactly these)
    ("a=rX", 0o750, False, 0o444),
    ("a=rX", 0o755, True, 0o444),
    ("=rw,+X", 0o750, False, 0o755),
    ("=rw,+X", 0o644, False, 0o644),
    ("a+X", 0o700, True, 0o711),
    ("a+X", 0o644, False, 0o644),
])
def test_chmod_symbolic_bsd_x_rules(spec, start, is_dir, expected):
    assert parse_chmod(spec).apply(start, is_dir) == expected


# -- heredocs ------------------------------------------------------------------------------

def test_heredoc_files(env):
    ctx, root, _ = env
    empty = select_sources(ctx_tree(ctx), [])
    copy_selection(root, empty, "/app/", heredocs=[HeredocSource("EOF", b"hello\n")])
    p = root / "srv" / "app" / "EOF"
    assert p.read_bytes() == b"hello\n" and mode(p) == 0o644 and owner(p) == (0, 0)
    copy_selection(root, empty, "/usr/local/bin/run.sh",
                   heredocs=[HeredocSource("SCRIPT", b"#!/bin/sh\n")], chmod="755",
                   source_date_epoch=1_700_000_000)
    p = root / "usr" / "local" / "bin" / "run.sh"
    assert p.read_bytes() == b"#!/bin/sh\n" and mode(p) == 0o755
    assert os.lstat(p).st_mtime_ns == 1_700_000_000 * 10**9
    # a source and a heredoc onto a non-directory: in turn, the heredoc last (BuildKit's
    # dispatchCopy adds SourceContents after SourcePaths, each a copy onto dest)
    copy_selection(root, select_sources(ctx_tree(ctx), ["a.txt"]), "/one",
                   heredocs=[HeredocSource("EOF", b"x")])
    assert (root / "one").read_bytes() == b"x"
    copy_selection(root, select_sources(ctx_tree(ctx), ["a.txt"]), "/two/",
                   heredocs=[HeredocSource("EOF", b"x")])
    assert sorted(os.listdir(root / "two")) == ["EOF", "a.txt"]


# -- sources that change, special files, xattrs ---------------------------------------------

def test_source_changed_after_selection_is_refused(env):
    ctx, root, _ = env
    sel = select_sources(ctx_tree(ctx), ["a.txt"])
    (ctx / "a.txt").write_text("Changed!")
    with pytest.raises(BuildError, match="changed during the build"):
        copy_selection(root, sel, "/z")


def test_fifo_copied_socketless(env):
    ctx, root, _ = env
    os.mkfifo(ctx / "dir" / "pipe", 0o640)
    copy(root, ctx, ["dir"], "/f")
    assert stat.S_ISFIFO(os.lstat(root / "f" / "pipe").st_mode)
    assert mode(root / "f" / "pipe") == 0o640


def test_socket_of_the_context_is_an_empty_file_of_a_stage_skipped(env, tmp_path):
    # BuildKit's context transfer clears the socket bit (fsutil mkstat) and sends no data:
    # `docker build` makes an empty file of the socket's mode; a stage's socket is not
    # in a layer (containerd's tar writer skips sockets)
    import socket
    ctx, root, _ = env
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(ctx / "dir" / "sock"))
    os.chmod(ctx / "dir" / "sock", 0o750)
    copy(root, ctx, ["dir"], "/f")
    st = os.lstat(root / "f" / "sock")
    assert stat.S_ISREG(st.st_mode) and st.st_size == 0 and mode(root / "f" / "sock") == 0o750
    copy(root, ctx, ["dir/sock"], "/one", chmod=parse_chmod("600"))
    assert stat.S_ISREG(os.lstat(root / "one").st_mode) and mode(root / "one") == 0o600
    stage = tmp_path / "stage"
    stage.mkdir()
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stage / "sock"))
    (stage / "f").write_text("f")
    copy(root, stage, ["/"], "/from-stage/", tree=SourceTree(stage))
    assert sorted(os.listdir(root / "from-stage")) == ["f"]


@pytest.mark.root
def test_whiteout_device_refused_and_devices_copied(env, tmp_path):
    _, root, _ = env
    stage = tmp_path / "stage"
    stage.mkdir()
    os.mknod(stage / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    copy(root, stage, ["/null"], "/dev/", tree=SourceTree(stage))
    assert os.lstat(root / "dev" / "null").st_rdev == os.makedev(1, 3)
    os.mknod(stage / "wh", stat.S_IFCHR | 0o000, os.makedev(0, 0))
    with pytest.raises(BuildError, match="whiteout"):
        copy(root, stage, ["/wh"], "/x", tree=SourceTree(stage))


@pytest.mark.root
def test_xattrs_of_a_stage_copied_capability_survives_chown(env, tmp_path):
    _, root, _ = env
    stage = tmp_path / "stage"
    stage.mkdir()
    f = stage / "a.txt"
    f.write_text("A")
    os.setxattr(f, "user.note", b"kept")
    capability = b"\x01\x00\x00\x02\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
    os.setxattr(f, "security.capability", capability)  # cap_net_bind_service+ep
    copy(root, stage, ["/a.txt"], "/cap", chown=(1000, 1000), tree=SourceTree(stage))
    assert os.getxattr(root / "cap", "user.note") == b"kept"
    assert os.getxattr(root / "cap", "security.capability") == capability
    assert owner(root / "cap") == (1000, 1000)


@pytest.mark.root
def test_xattrs_of_the_context_not_copied(env):
    """docker 20.10's BuildKit gives none of them (case copy-onto of
    test_differential_buildkit.py): its context receiver clears the capability by its
    chown, its layer tars carry no other xattr."""
    ctx, root, _ = env
    os.setxattr(ctx / "a.txt", "user.note", b"dropped")
    os.setxattr(ctx / "dir" / "sub", "user.note", b"dropped")
    os.setxattr(ctx / "a.txt", "security.capability",
                b"\x01\x00\x00\x02\x00\x04" + bytes(14))
    copy(root, ctx, ["a.txt"], "/cap")
    copy(root, ctx, ["dir"], "/d/")
    assert os.listxattr(root / "cap") == []
    assert os.listxattr(root / "d" / "sub") == []


def test_parents_keeps_the_path_below_the_pivot(env):
    ctx, root, _ = env
    sel = select_sources(ctx_tree(ctx), ["dir/sub/two", "a.txt"], parents=True)
    copy_selection(root, sel, "/p/")
    assert (root / "p" / "dir" / "sub" / "two").read_text() == "22"
    assert (root / "p" / "a.txt").read_text() == "A"
    assert not (root / "p" / "dir" / "one").exists()


@pytest.mark.root
def test_copy_through_an_overlay_mount_writes_exactly_the_diff(tmp_path):
    """The DESIGN pitfall "COPY must see the merged view": a destination under a
    symlinked directory of a lower layer, and a lower file replaced by a directory."""
    import io
    import tarfile

    from lamina.builder.sandbox import linux
    from lamina.builder.sandbox.overlay import mount_overlay
    from lamina.builder.steps.add import extract_archive

    lower, upper, work, merged, ctx = (tmp_path / n for n in ("lower", "upper", "work",
                                                              "merged", "ctx"))
    for d in (lower / "srv" / "app", upper, work, merged, ctx / "conf"):
        d.mkdir(parents=True)
    os.symlink("/srv/app", lower / "app")
    (lower / "srv" / "app" / "old").write_text("old")
    (lower / "etc").mkdir()
    (lower / "etc" / "conf").write_text("a file in the lower layer")
    (ctx / "x").write_text("x")
    (ctx / "conf" / "c").write_text("c")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.close(r)
            linux.unshare(linux.CLONE_NEWNS)
            linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
            mount_overlay([lower], upper, work, merged, tmp_path / "scratch")
            copy(merged, ctx, ["x"], "/app/")
            try:  # a directory onto a lower file: BuildKit's MkdirAll fails, so do we
                copy(merged, ctx, ["conf"], "/etc/conf/")
                raise AssertionError("COPY dir onto a lower file did not fail")
            except BuildError as e:
                assert "not a directory" in e.message, e.message
            # ADD of an archive replaces it (applyRootArchive removes what is in the way)
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as t:
                info = tarfile.TarInfo("etc/conf")
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                t.addfile(info)
                info = tarfile.TarInfo("etc/conf/c")
                info.size = 1
                t.addfile(info, io.BytesIO(b"c"))
            (tmp_path / "a.tar").write_bytes(buf.getvalue())
            extract_archive(merged, tmp_path / "a.tar", "/")
            status = 0
        except BaseException as e:  # report to the parent
            os.write(w, repr(e).encode())
        finally:
            os._exit(status)
    os.close(w)
    err = os.read(r, 65536).decode()
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert status == 0, err
    assert (upper / "srv" / "app" / "x").read_text() == "x"
    assert not (upper / "app").exists()                       # the symlink stays in the lower
    assert not (upper / "srv" / "app" / "old").exists()       # untouched: not copied up
    # the lower file replaced by a directory: an opaque directory in the upper dir
    assert (upper / "etc" / "conf" / "c").read_text() == "c"
    assert os.getxattr(upper / "etc" / "conf", "trusted.overlay.opaque") == b"y"
