"""`lamina commit`'s copy of a running container's upper dir: exact (types, modes,
owners, hard links, xattrs, times) and never tricked into reading host files by a
container that swaps a directory for a symlink while the copy runs."""

from __future__ import annotations

import os
import stat
import threading
import time

import pytest

from lamina.builder.containers.commit import CommitRace, copy_tree
from tests.conftest import IN_CI


def _tree(path) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, path)
            out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                        st.st_nlink, st.st_mtime_ns if not stat.S_ISDIR(st.st_mode) else None,
                        os.readlink(p) if stat.S_ISLNK(st.st_mode) else
                        open(p, "rb").read() if stat.S_ISREG(st.st_mode) else None)
    return out


def test_copy_is_exact(tmp_path):
    src = tmp_path / "upper"
    (src / "d" / "e").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"x" * 70000)
    os.chmod(src / "d" / "f", 0o4751)
    os.link(src / "d" / "f", src / "d" / "e" / "hard")
    os.symlink("/etc/passwd", src / "abs-link")
    os.mkfifo(src / "fifo", 0o640)
    if os.geteuid() == 0:
        os.chown(src / "d" / "e", 1234, 567)
        os.mknod(src / "wh", stat.S_IFCHR | 0o000, os.makedev(0, 0))
    os.setxattr(src / "d" / "f", "user.note", b"kept")
    os.utime(src / "d" / "f", ns=(1, 5_000_000_000))
    dst = tmp_path / "copy"
    copy_tree(src, dst)
    assert _tree(dst) == _tree(src)
    assert os.getxattr(dst / "d" / "f", "user.note") == b"kept"
    assert os.lstat(dst / "d" / "f").st_ino == os.lstat(dst / "d" / "e" / "hard").st_ino


def test_a_directory_swapped_for_a_host_symlink_is_never_followed(tmp_path):
    """The container renames a directory away and puts a symlink to a host directory in
    its place, over and over, while commit copies: no host file may enter the copy."""
    host = tmp_path / "host-secrets"
    host.mkdir()
    for i in range(50):
        (host / f"f{i:03}").write_text("HOST SECRET\n")
    src = tmp_path / "upper"
    (src / "a").mkdir(parents=True)
    for i in range(50):
        (src / "a" / f"f{i:03}").write_text("container\n")
    (src / "a-link").symlink_to(host)
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            os.rename(src / "a", src / "a-dir")
            os.rename(src / "a-link", src / "a")
            os.rename(src / "a", src / "a-link")
            os.rename(src / "a-dir", src / "a")

    swapper = threading.Thread(target=swap)
    swapper.start()
    leaked, copies, deadline = [], 0, time.monotonic() + 3
    try:
        while time.monotonic() < deadline and copies < 300:
            dst = tmp_path / f"copy{copies}"
            try:
                copy_tree(src, dst)
            except CommitRace:
                pass  # an entry vanished or changed kind mid-copy: refused, not followed
            copies += 1
            for dirpath, _, filenames in os.walk(dst):
                for name in filenames:
                    p = os.path.join(dirpath, name)
                    if not os.path.islink(p) and b"HOST" in open(p, "rb").read():
                        leaked.append(p)
    finally:
        stop.set()
        swapper.join()
    assert copies > 10
    assert not leaked, leaked[:3]


def test_a_failed_copy_leaves_no_descriptor_open(tmp_path, monkeypatch):
    from lamina.builder.containers import commit as commit_mod

    src = tmp_path / "upper"
    (src / "a" / "b" / "c").mkdir(parents=True)
    (src / "a" / "b" / "f").write_text("x")
    real = commit_mod._meta

    def failing(path, st, xattrs):
        if path.endswith("/b"):
            raise OSError(28, "No space left on device")
        return real(path, st, xattrs)

    monkeypatch.setattr(commit_mod, "_meta", failing)
    before = sorted(os.listdir("/proc/self/fd"))
    with pytest.raises(OSError):
        copy_tree(src, tmp_path / "copy")
    assert sorted(os.listdir("/proc/self/fd")) == before


def test_a_symlinks_own_target_and_xattrs_are_copied(tmp_path):
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("CI runs as root: trusted.* xattrs on a symlink need it")
        pytest.skip("trusted.* xattrs on a symlink need root")
    src = tmp_path / "upper"
    src.mkdir()
    (src / "target").write_text("t")
    os.symlink("target", src / "link")
    os.setxattr(src / "link", "trusted.mark", b"on-the-link", follow_symlinks=False)
    copy_tree(src, tmp_path / "copy")
    assert os.readlink(tmp_path / "copy" / "link") == "target"
    assert os.getxattr(tmp_path / "copy" / "link", "trusted.mark", follow_symlinks=False) == b"on-the-link"
    assert "trusted.mark" not in os.listxattr(tmp_path / "copy" / "target")
