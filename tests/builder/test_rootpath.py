"""builder.rootpath: image paths resolved inside a root like a chrooted process sees
them. The oracle for resolution is the kernel itself: a forked child chroots into the
root and stats the same path."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lamina.builder.errors import BuildError
from lamina.builder.sandbox.rootpath import (DirSpec, RootDir, RootPathError, clean_image_path, is_dir_in_root,
                              lstat_in_root, mkdir_p_in_root, read_file_in_root,
                              resolve_in_root)


@pytest.fixture
def world(tmp_path: Path) -> tuple[Path, Path]:
    """(root, sentinel): an image root and a directory next to it that must never change."""
    root = tmp_path / "root"
    sentinel = tmp_path / "sentinel"
    (root / "srv" / "app").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    sentinel.mkdir()
    (sentinel / "keep").write_text("untouched")
    os.symlink("/srv/app", root / "app")              # absolute, inside
    os.symlink("../srv", root / "etc" / "up")         # relative, inside
    os.symlink("/", root / "evil")                    # the root itself
    os.symlink("../../../../../..", root / "climb")   # tries to climb out
    os.symlink(str(sentinel), root / "hostabs")       # a host path: re-rooted
    return root, sentinel


def snapshot(d: Path) -> list[tuple[str, int, int]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(d):
        for n in sorted(dirnames + filenames):
            p = os.path.join(dirpath, n)
            s = os.lstat(p)
            out.append((os.path.relpath(p, d), s.st_mode, s.st_mtime_ns))
    return sorted(out)


def test_plain_and_missing_paths(world):
    root, _ = world
    assert resolve_in_root(root, "/srv/app") == root / "srv" / "app"
    # missing components are kept lexically (containerd fs.RootPath)
    assert resolve_in_root(root, "/srv/nope/x") == root / "srv" / "nope" / "x"
    assert resolve_in_root(root, "/srv/nope/../app") == root / "srv" / "app"
    assert resolve_in_root(root, "relative/x") == root / "relative" / "x"


def test_symlinks_resolve_inside_the_root(world):
    root, _ = world
    assert resolve_in_root(root, "/app/x") == root / "srv" / "app" / "x"
    assert resolve_in_root(root, "/etc/up/app") == root / "srv" / "app"
    assert resolve_in_root(root, "/app", follow_final=False) == root / "app"
    # '..' at the root stays at the root; absolute targets restart at the root
    assert resolve_in_root(root, "/../../etc") == root / "etc"
    assert resolve_in_root(root, "/evil/etc/passwd") == root / "etc" / "passwd"
    assert resolve_in_root(root, "/climb/etc") == root / "etc"
    with RootDir(root) as r:
        # the input is cleaned lexically first (as BuildKit cleans a dest): /climb/app/y
        assert r.resolve("/climb/srv/../app/y") == "/srv/app/y"
        assert r.resolve("/hostabs/keep") == str(world[1]) + "/keep"


def test_writes_through_hostile_links_stay_inside(world):
    root, sentinel = world
    before = snapshot(sentinel)
    for p in ["/evil/made1", "/climb/made2", "/hostabs/made3", "/climb/../../made4/x"]:
        host = mkdir_p_in_root(root, p)
        assert str(host).startswith(str(root) + "/")
        assert host.is_dir()
    assert (root / "made1").is_dir() and (root / "made2").is_dir()
    assert (root / str(sentinel).lstrip("/") / "made3").is_dir()
    assert (root / "made4" / "x").is_dir()
    assert snapshot(sentinel) == before


def test_symlink_loop_and_non_directory(world):
    root, _ = world
    os.symlink("b", root / "a")
    os.symlink("a", root / "b")
    with pytest.raises(RootPathError, match="too many levels of symbolic links"):
        resolve_in_root(root, "/a/x")
    with pytest.raises(RootPathError, match="not a directory"):
        resolve_in_root(root, "/etc/passwd/x")
    with pytest.raises(BuildError, match="not a directory"):
        mkdir_p_in_root(root, "/etc/passwd")
    assert lstat_in_root(root, "/a/x") is None
    assert not is_dir_in_root(root, "/a")


def test_lstat_and_is_dir(world):
    root, _ = world
    assert stat.S_ISLNK(lstat_in_root(root, "/app").st_mode)
    assert stat.S_ISDIR(lstat_in_root(root, "/app", follow_final=True).st_mode)
    assert is_dir_in_root(root, "/app") and is_dir_in_root(root, "/evil")
    assert not is_dir_in_root(root, "/etc/passwd")
    assert lstat_in_root(root, "/nope/x") is None


def test_open_parent(world):
    root, _ = world
    with RootDir(root) as r:
        fd, name, parent = r.open_parent("/app/new.txt")
        os.close(fd)
        assert (name, parent) == ("new.txt", "/srv/app")
        fd, name, parent = r.open_parent("/app")  # final symlink not followed
        os.close(fd)
        assert (name, parent) == ("app", "/")
        fd, name, parent = r.open_parent("/app", follow_final=True)
        os.close(fd)
        assert (name, parent) == ("app", "/srv")
        with pytest.raises(RootPathError, match="does not exist"):
            r.open_parent("/missing/dir/x")
        fd, name, parent = r.open_parent("/made/by/parent/x", create=DirSpec())
        os.close(fd)
        assert parent == "/made/by/parent" and (root / "made" / "by" / "parent").is_dir()


@pytest.mark.root
def test_mkdir_p_owner_mode_time_whatever_the_umask(world):
    root, _ = world
    old = os.umask(0o077)
    try:
        mkdir_p_in_root(root, "/app/a/b", uid=1234, gid=2345, mode=0o755, mtime_ns=10**18)
    finally:
        os.umask(old)
    for p in (root / "srv/app/a", root / "srv/app/a/b"):
        s = os.lstat(p)
        assert (s.st_uid, s.st_gid, stat.S_IMODE(s.st_mode)) == (1234, 2345, 0o755)
    # the leaf keeps the given time (a parent's moves when its child is created)
    assert os.lstat(root / "srv/app/a/b").st_mtime_ns == 10**18
    s = os.lstat(root / "srv" / "app")  # existing parents are not touched
    assert (s.st_uid, s.st_gid) == (os.getuid(), os.getgid())


@pytest.mark.root
def test_dirs_made_in_a_setgid_dir_keep_what_mkdir_gives(tmp_path):
    """BuildKit makes WORKDIR/COPY directories with a bare mkdir (chown only when a
    user is given, never chmod): the kernel's setgid inheritance stays. The oracle is
    the kernel: a plain mkdir in the same setgid directory."""
    home = tmp_path / "root" / "home" / "app"
    home.mkdir(parents=True)
    os.chown(home, 100, 101)
    os.chmod(home, 0o2750)
    os.mkdir(home / "plain", 0o755)
    kernel = os.lstat(home / "plain")
    assert kernel.st_gid == 101 and kernel.st_mode & stat.S_ISGID  # what mkdir gives
    with RootDir(tmp_path / "root") as r:
        os.close(r.open_dir("/home/app/by-root/sub", create=DirSpec(0, 0, 0o755)))
        os.close(r.open_dir("/home/app/by-user", create=DirSpec(100, 102, 0o755, chown=True)))
        os.close(r.open_dir("/elsewhere", create=DirSpec(0, 0, 0o755)))
    for p in (home / "by-root", home / "by-root" / "sub"):
        s = os.lstat(p)
        assert (s.st_uid, s.st_gid, stat.S_IMODE(s.st_mode)) == (0, kernel.st_gid, 0o2755), p
    s = os.lstat(home / "by-user")  # the asked owner, the inherited bit
    assert (s.st_uid, s.st_gid, stat.S_IMODE(s.st_mode)) == (100, 102, 0o2755)
    s = os.lstat(tmp_path / "root" / "elsewhere")  # no setgid parent: as asked
    assert (s.st_uid, s.st_gid, stat.S_IMODE(s.st_mode)) == (0, 0, 0o755)


# -- property: we resolve what the kernel resolves in a chroot -------------------------

_NAMES = st.sampled_from(["a", "b", "c", "d"])
_TARGET = st.lists(st.sampled_from(["a", "b", "c", "d", "..", "."]), min_size=0, max_size=4)


def _kernel_stat(root: Path, paths: list[str]) -> list[tuple[int, int] | None]:
    """stat() of each path by a child chrooted into root: (dev, ino) or None."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(r)
            os.chroot(root)
            os.chdir("/")
            out = []
            for p in paths:
                try:
                    s = os.stat(p)
                    out.append(f"{s.st_dev}:{s.st_ino}")
                except OSError:
                    out.append("-")
            os.write(w, "\n".join(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    res = []
    for line in data.decode().split("\n") if paths else []:
        res.append(None if line == "-" else tuple(int(x) for x in line.split(":")))
    return res


@pytest.mark.root
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layout=st.lists(st.tuples(st.lists(_NAMES, min_size=1, max_size=3), st.booleans(),
                                 st.booleans(), _TARGET), min_size=1, max_size=8),
       queries=st.lists(st.lists(st.sampled_from(["a", "b", "c", "d", ".."]), min_size=1,
                                 max_size=5), min_size=1, max_size=8))
def test_resolution_matches_the_kernel_in_a_chroot(tmp_path_factory, layout, queries):
    root = tmp_path_factory.mktemp("prop")
    for comps, is_link, absolute, target in layout:
        p = root.joinpath(*comps)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            if is_link:
                os.symlink(("/" if absolute else "") + "/".join(target), p)
            else:
                p.mkdir(exist_ok=True)
        except OSError:
            continue  # a file or link already in the way
    # inputs are cleaned lexically (as BuildKit cleans a destination); '..' inside
    # symlink targets is where the kernel's semantics must hold
    paths = [clean_image_path("/" + "/".join(q)) for q in queries]
    kernel = _kernel_stat(root, paths)
    with RootDir(root) as r:
        for p, k in zip(paths, kernel):
            mine = r.lstat(p, follow_final=True)
            assert (None if mine is None else (mine.st_dev, mine.st_ino)) == k, p


def test_read_file_stays_inside(world):
    root, sentinel = world
    os.symlink("/etc/passwd", root / "etc" / "alias")
    os.symlink(str(sentinel / "keep"), root / "etc" / "hostfile")  # re-rooted: missing
    assert read_file_in_root(root, "/etc/alias") == b"root:x:0:0::/root:/bin/sh\n"
    assert read_file_in_root(root, "/etc/hostfile") is None
    assert read_file_in_root(root, "/etc") is None
    assert read_file_in_root(root, "/nope") is None
