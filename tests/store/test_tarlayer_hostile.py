"""extract_tar against hostile and broken archives: nothing is ever written outside dest.

The archives are made with Python's tarfile (an independent writer); each test checks a
sentinel directory next to dest, the host paths it aims at, and the error raised.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile

import pytest

from lamina.store.errors import CorruptContent, StoreError, UnsafeArchive
from lamina.store.tarlayer import extract_tar


def _info(name: str, kind=tarfile.REGTYPE, linkname: str = "", data: bytes = b"", mode=0o644,
          **kw) -> tuple[tarfile.TarInfo, bytes]:
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname, ti.mode = kind, linkname, mode
    ti.size = len(data) if kind == tarfile.REGTYPE else 0
    for k, v in kw.items():
        setattr(ti, k, v)
    return ti, data


def make_tar(*entries, fmt=tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for ti, data in entries:
            tf.addfile(ti, io.BytesIO(data) if ti.isreg() else None)
    return buf.getvalue()


def reg(name, data=b"pwned"):
    return _info(name, data=data)


def sym(name, target):
    return _info(name, tarfile.SYMTYPE, target, mode=0o777)


def hard(name, target):
    return _info(name, tarfile.LNKTYPE, target)


def dirent(name):
    return _info(name, tarfile.DIRTYPE, mode=0o755)


@pytest.fixture
def box(tmp_path):
    """dest plus a sentinel dir next to it that must stay exactly as it is."""
    dest = tmp_path / "dest"
    sentinel = tmp_path / "sentinel"
    dest.mkdir()
    sentinel.mkdir()
    (sentinel / "secret").write_text("secret")

    def untouched():
        assert sorted(os.listdir(sentinel)) == ["secret"]
        assert (sentinel / "secret").read_text() == "secret"
        assert os.stat(sentinel / "secret").st_nlink == 1
        assert sorted(os.listdir(tmp_path)) == ["dest", "sentinel"]
        for dirpath, dirnames, filenames in os.walk(dest):  # nothing inside links out as a hard link
            for n in filenames:
                p = os.path.join(dirpath, n)
                st = os.lstat(p)
                assert not (stat.S_ISREG(st.st_mode) and st.st_ino == os.stat(sentinel / "secret").st_ino)

    return dest, sentinel, untouched


def run(data: bytes, dest, **kw):
    extract_tar(io.BytesIO(data), dest, **kw)


@pytest.mark.parametrize("name", ["../x", "../sentinel/x", "a/../../x", "./../x", "a/b/../../../x",
                                  "..", "a/.."])
def test_dotdot_rejected(box, name):
    dest, _, untouched = box
    with pytest.raises(UnsafeArchive) as err:
        run(make_tar(reg(name)), dest)
    assert name in str(err.value)
    untouched()


def test_absolute_rejected(box):
    dest, sentinel, untouched = box
    for name in [str(sentinel / "x"), "/etc/lamina-test-x", "//x"]:
        with pytest.raises(UnsafeArchive, match="absolute"):
            run(make_tar(reg(name)), dest)
    assert not os.path.exists("/etc/lamina-test-x")
    untouched()


def test_symlink_to_root_then_through_it(box):
    dest, sentinel, untouched = box
    with pytest.raises(UnsafeArchive, match="symlink"):
        run(make_tar(sym("a", "/"), reg(f"a{sentinel}/x"), reg("a/etc/lamina-test-passwd")), dest)
    assert not os.path.exists("/etc/lamina-test-passwd")
    untouched()


def test_relative_symlink_out_then_through_it(box):
    dest, _, untouched = box
    with pytest.raises(UnsafeArchive, match="symlink"):
        run(make_tar(sym("up", "../sentinel"), reg("up/x")), dest)
    untouched()


def test_symlink_chain(box):
    dest, _, untouched = box
    with pytest.raises(UnsafeArchive):
        run(make_tar(sym("a", "b"), sym("b", "c"), sym("c", "../sentinel"), dirent("d"),
                     reg("a/secret", b"overwritten")), dest)
    untouched()


def test_symlink_in_middle_of_path(box):
    dest, _, untouched = box
    with pytest.raises(UnsafeArchive):
        run(make_tar(dirent("d"), sym("d/e", "../../sentinel"), reg("d/e/f/g")), dest)
    untouched()


def test_symlink_then_dir_of_same_name_is_not_followed(box):
    dest, sentinel, untouched = box
    run(make_tar(sym("d", str(sentinel)), dirent("d"), reg("d/x")), dest)
    assert os.path.isdir(dest / "d") and not os.path.islink(dest / "d")
    assert (dest / "d" / "x").read_bytes() == b"pwned"
    untouched()


def test_symlink_then_file_of_same_name(box):
    dest, sentinel, untouched = box
    run(make_tar(sym("f", str(sentinel / "secret")), reg("f", b"mine")), dest)
    assert not os.path.islink(dest / "f") and (dest / "f").read_bytes() == b"mine"
    run(make_tar(sym("g", "../sentinel/secret"), hard("h", "g"), reg("g", b"x")), dest)
    assert (dest / "g").read_bytes() == b"x"
    assert os.readlink(dest / "h") == "../sentinel/secret"  # hard link to the symlink itself
    untouched()


def test_hardlink_outside(box):
    dest, sentinel, untouched = box
    for target in ["../sentinel/secret", "../../etc/passwd", str(sentinel / "secret"), "/etc/passwd"]:
        with pytest.raises(UnsafeArchive):
            run(make_tar(hard("h", target)), dest)
    untouched()


def test_hardlink_through_symlink(box):
    dest, _, untouched = box
    with pytest.raises(UnsafeArchive):
        run(make_tar(sym("s", "../sentinel"), hard("h", "s/secret")), dest)
    with pytest.raises(UnsafeArchive):  # even if the path was 'seen' before as a member name
        run(make_tar(dirent("s2"), reg("s2/secret"), sym("s2", "../sentinel"), hard("h2", "s2/secret")),
            dest)
    untouched()


def test_hardlink_to_later_or_missing_member(box):
    dest, _, untouched = box
    with pytest.raises(UnsafeArchive, match="earlier"):
        run(make_tar(hard("h", "f"), reg("f")), dest)
    with pytest.raises(UnsafeArchive):
        run(make_tar(dirent("d"), hard("h", "d")), dest)
    untouched()


def test_hardlink_inside_ok(box):
    dest, _, untouched = box
    run(make_tar(dirent("a"), reg("a/f", b"shared"), hard("b/g", "./a/f")), dest)
    assert os.path.samefile(dest / "a/f", dest / "b/g")
    untouched()


def test_devices_only_when_allowed(box):
    dest, _, untouched = box
    data = make_tar(_info("null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666))
    with pytest.raises(UnsafeArchive, match="device"):
        run(data, dest, allow_devices=False)
    assert not os.path.exists(dest / "null")
    run(data, dest, allow_devices=True)
    assert os.stat(dest / "null", follow_symlinks=False).st_rdev == os.makedev(1, 3)
    with pytest.raises(UnsafeArchive, match="whiteout"):
        run(make_tar(_info("zero", tarfile.CHRTYPE, devmajor=0, devminor=0)), dest)
    untouched()


def test_overlay_xattrs_from_tar_are_dropped(box):
    dest, _, untouched = box
    ti, data = reg("f")
    ti.pax_headers = {"SCHILY.xattr.trusted.overlay.redirect": "/etc", "SCHILY.xattr.user.ok": "1"}
    run(make_tar((ti, data)), dest)
    assert os.listxattr(dest / "f") == ["user.ok"]
    untouched()


def test_long_names(box):
    dest, _, untouched = box
    deep = "/".join(["d" * 200] * 30)  # ~6000 bytes: longer than PATH_MAX, fine inside dest
    run(make_tar(reg(deep + "/f", b"deep")), dest)
    fd = os.open(dest, os.O_RDONLY)
    try:
        for comp in deep.split("/"):
            nfd = os.open(comp, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        with open(os.open("f", os.O_RDONLY, dir_fd=fd), "rb") as f:
            assert f.read() == b"deep"
    finally:
        os.close(fd)
    with pytest.raises(UnsafeArchive):
        run(make_tar(reg("a/" + "b" * 300 + "/../../../x")), dest)
    with pytest.raises(UnsafeArchive):  # GNU long name records too
        run(make_tar(reg("c" * 150 + "/../../x"), fmt=tarfile.GNU_FORMAT), dest)
    with pytest.raises(StoreError):  # a component over NAME_MAX
        run(make_tar(reg("n" * 300)), dest)
    untouched()


def test_path_max_symlink_chain(box):
    """CVE-2025-4517 shape: symlinks whose expansion passes PATH_MAX, so realpath-based
    checks give up, then a link that climbs out and a write through it."""
    dest, sentinel, untouched = box
    comp = "d" * 247
    steps = "abcdefghijklmnop"
    entries = []
    path = ""
    for step in steps:
        entries.append(dirent(os.path.join(path, comp)))
        entries.append(sym(os.path.join(path, step), comp))
        path = os.path.join(path, comp)
    linkpath = os.path.join("/".join(steps), "l" * 254)
    entries.append(sym(linkpath, "../" * len(steps)))
    entries.append(sym("escape", linkpath + "/../../sentinel"))
    entries.append(reg("escape/owned"))
    entries.append(hard("escape2", "escape/secret"))
    with pytest.raises(UnsafeArchive):
        run(make_tar(*entries[:-1]), dest)
    with pytest.raises(UnsafeArchive):
        run(make_tar(*entries[:-2], entries[-1]), dest)
    untouched()


def test_nul_and_malformed(box):
    dest, _, untouched = box
    good = make_tar(reg("f", b"x" * 1000))
    with pytest.raises(CorruptContent, match="truncated"):
        run(good[:700], dest)
    with pytest.raises(CorruptContent, match="end-of-archive"):
        run(good[:1536], dest)
    bad = bytearray(good)
    bad[0] ^= 1  # name byte: checksum no longer matches
    with pytest.raises(CorruptContent, match="checksum"):
        run(bytes(bad), dest)
    with pytest.raises(CorruptContent):
        run(b"", dest)
    ti, data = reg("p")
    ti.pax_headers = {"path": "a\x00/../../x"}
    with pytest.raises(UnsafeArchive):
        run(make_tar((ti, data)), dest)
    untouched()


def test_sparse_rejected(box):
    dest, _, untouched = box
    ti, data = reg("s")
    ti.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "s"}
    with pytest.raises(CorruptContent, match="sparse"):
        run(make_tar((ti, data)), dest)
    untouched()


def test_whiteout_names(box):
    dest, sentinel, untouched = box
    os.symlink(str(sentinel), dest / "victim")
    run(make_tar(reg(".wh.victim", b"")), dest)  # the symlink is replaced, not followed
    s = os.lstat(dest / "victim")
    assert stat.S_ISCHR(s.st_mode) and s.st_rdev == 0
    with pytest.raises(UnsafeArchive):
        run(make_tar(reg("../.wh.sentinel", b"")), dest)
    with pytest.raises(UnsafeArchive):
        run(make_tar(sym("l", "../sentinel"), reg("l/.wh.secret", b"")), dest)
    with pytest.raises(UnsafeArchive):
        run(make_tar(sym("o", "../sentinel"), reg("o/.wh..wh..opq", b"")), dest)
    assert os.listxattr(sentinel) == []
    untouched()


@pytest.mark.parametrize("name", [".wh...", "a/.wh...", ".wh..", "a/.wh.."])
def test_whiteout_of_dot_or_dotdot_rejected(box, name):
    # `.wh...` would white out "..": removing it must never reach dest's parent (or dest)
    dest, _, untouched = box
    (dest / "a").mkdir()
    (dest / "a" / "keep").write_text("keep")
    with pytest.raises(UnsafeArchive):
        run(make_tar(reg(name, b"")), dest)
    assert (dest / "a" / "keep").read_text() == "keep"
    untouched()


@pytest.mark.parametrize("field, value", [("mtime", 10**20), ("mtime", -10**20), ("uid", 10**20),
                                          ("gid", 2**32)])
def test_out_of_range_numbers_are_corrupt_content(box, field, value):
    # PAX numbers are unbounded; ones no file can hold are a clear error, not a crash
    dest, _, untouched = box
    with pytest.raises(CorruptContent, match="'f'"):
        run(make_tar(_info("f", data=b"x", **{field: value})), dest)
    untouched()
