"""write_tar / extract_tar: round trip, determinism, format details, GNU tar as oracle."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lamina.store.tarextract import remove_tree
from lamina.store.tarlayer import extract_tar, write_tar
from tartrees import CAPABILITY, Node, apply_meta, build, snapshot, trees

pytestmark = pytest.mark.root  # devices, chown, trusted.* xattrs
EPOCHS = st.one_of(st.none(), st.sampled_from([0, 1_000_000_000, 1_700_000_000]))
SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def tar_bytes(src, epoch=None) -> bytes:
    buf = io.BytesIO()
    write_tar(src, buf, source_date_epoch=epoch)
    return buf.getvalue()


def members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        return tf.getmembers()


@given(tree=trees, epoch=EPOCHS)
@SETTINGS
def test_round_trip(tree, epoch):
    with tempfile.TemporaryDirectory() as tmp:
        src, dest = os.path.join(tmp, "src"), os.path.join(tmp, "dest")
        os.mkdir(src)
        os.mkdir(dest)
        build(tree, src)
        data = tar_bytes(src, epoch)
        extract_tar(io.BytesIO(data), dest)
        want, got = snapshot(src, epoch=epoch, layer=True), snapshot(dest)
        assert got == want


@given(tree=trees)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_same_tree_made_differently_gives_same_bytes(tree):
    with tempfile.TemporaryDirectory() as tmp:
        a, b = os.path.join(tmp, "a"), os.path.join(tmp, "nested", "b")
        os.mkdir(a)
        os.makedirs(b)
        build(tree, a)
        build(tree, b, reverse=True)  # other inode numbers, other creation order
        first = tar_bytes(a, 1_600_000_000)
        assert first == tar_bytes(a, 1_600_000_000)
        assert first == tar_bytes(b, 1_600_000_000)


def test_entries_overlay_to_oci(tmp_path):
    src = tmp_path / "src"
    (src / "etc" / "opq").mkdir(parents=True)
    os.setxattr(src / "etc" / "opq", "trusted.overlay.opaque", b"y")
    os.setxattr(src / "etc" / "opq", "trusted.overlay.origin", b"junk")
    (src / "etc" / "opq" / "keep").write_text("k")
    os.mknod(src / "etc" / "gone", stat.S_IFCHR | 0o644, os.makedev(0, 0))
    os.link(src / "etc" / "gone", src / "etc" / "gone2")  # overlayfs shares whiteout inodes
    (src / "etc" / "f").write_bytes(b"data")
    os.link(src / "etc" / "f", src / "etc" / "f2")
    os.setxattr(src / "etc" / "f", "security.capability", CAPABILITY)
    os.setxattr(src / "etc" / "f", "user.x", b"\x00\xffbin")
    os.mkfifo(src / "fifo")
    os.mknod(src / "sda", stat.S_IFBLK | 0o660, os.makedev(8, 0))
    os.symlink("../../nowhere", src / "link")
    data = tar_bytes(src, 1_000)
    ms = members(data)
    assert [m.name for m in ms] == [
        "etc", "etc/.wh.gone", "etc/.wh.gone2", "etc/f", "etc/f2", "etc/opq",
        "etc/opq/.wh..wh..opq", "etc/opq/keep", "fifo", "link", "sda"]
    by = {m.name: m for m in ms}
    assert by["etc/.wh.gone"].isreg() and by["etc/.wh.gone"].size == 0
    assert by["etc/.wh.gone2"].isreg()  # not a hard link to the shared whiteout inode
    assert by["etc/f2"].islnk() and by["etc/f2"].linkname == "etc/f"
    assert by["etc/f"].pax_headers["SCHILY.xattr.security.capability"].encode(
        "utf-8", "surrogateescape") == CAPABILITY
    # as docker's and BuildKit's layers: file capabilities only, no user.* or overlay xattr
    assert not any(k.startswith("SCHILY.xattr.") and k != "SCHILY.xattr.security.capability"
                   for m in ms for k in m.pax_headers)
    assert by["etc/opq/.wh..wh..opq"].isreg()
    assert by["fifo"].isfifo() and by["sda"].isblk() and (by["sda"].devmajor, by["sda"].devminor) == (8, 0)
    assert by["link"].issym() and by["link"].linkname == "../../nowhere"
    for m in ms:
        assert m.uname == "" and m.gname == "" and m.mtime == 1_000
        assert "mtime" not in m.pax_headers and "atime" not in m.pax_headers
    # the raw header: directory names end in '/', ustar magic, checksum ok
    assert data[:4] == b"etc/" and data[257:265] == b"ustar\x0000"
    assert data.endswith(bytes(1024)) and len(data) % 512 == 0


def test_header_bytes_fixed(tmp_path):
    """One file: the header equals a hand-made POSIX ustar header (from the spec)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "hello.txt").write_bytes(b"hi\n")
    os.chown(src / "hello.txt", 1000, 1001)
    os.chmod(src / "hello.txt", 0o640)
    os.utime(src / "hello.txt", (5, 1234567890.9))
    data = tar_bytes(src)
    hdr = bytearray(512)
    hdr[0:9] = b"hello.txt"
    hdr[100:108] = b"0000640\0"
    hdr[108:116] = b"0001750\0"
    hdr[116:124] = b"0001751\0"
    hdr[124:136] = b"00000000003\0"
    hdr[136:148] = b"%011o\0" % 1234567890  # fraction dropped
    hdr[148:156] = b" " * 8
    hdr[156:157] = b"0"
    hdr[257:265] = b"ustar\x0000"
    hdr[329:337] = b"0000000\0"
    hdr[337:345] = b"0000000\0"
    hdr[148:156] = b"%06o\0 " % sum(hdr)
    assert data[:512] == bytes(hdr)
    assert data[512:1024] == b"hi\n" + bytes(509)
    assert len(data) == 2048


def test_mtime_clamped_only_downwards(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "old").write_text("o")
    (src / "new").write_text("n")
    os.utime(src / "old", (0, 100))
    os.utime(src / "new", (0, 5_000))
    by = {m.name: m.mtime for m in members(tar_bytes(src, 1_000))}
    assert by == {"new": 1_000, "old": 100}


def test_long_names_and_big_ids_use_pax(tmp_path):
    src = tmp_path / "src"
    deep = src / ("d" * 90) / ("e" * 90)
    deep.mkdir(parents=True)
    (deep / "ß.txt").write_text("x")
    os.symlink("t" * 200, src / "s")
    os.chown(src / "s", 3_000_000, 4_000_000, follow_symlinks=False)
    data = tar_bytes(src)
    by = {m.name: m for m in members(data)}
    assert f"{'d' * 90}/{'e' * 90}/ß.txt" in by
    assert by["s"].linkname == "t" * 200 and (by["s"].uid, by["s"].gid) == (3_000_000, 4_000_000)
    assert b"././@PaxHeader" in data
    assert b"GNU" not in data and b"././@LongLink" not in data


def test_non_ascii_name_in_pax(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "café").write_text("x")
    data = tar_bytes(src)
    assert "path=café\n".encode() in data


def test_sockets_skipped_and_wh_names_refused(tmp_path):
    import socket
    src = tmp_path / "src"
    src.mkdir()
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(src / "sock"))
    s.close()
    (src / "f").write_text("x")
    assert [m.name for m in members(tar_bytes(src))] == ["f"]
    (src / ".wh.sneaky").write_text("x")
    from lamina.store.errors import StoreError
    with pytest.raises(StoreError, match=r"\.wh\.sneaky"):
        tar_bytes(src)


def test_streaming_large_file(tmp_path):
    import tracemalloc
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "big", "wb") as f:
        f.truncate(64 << 20)  # sparse, 64 MiB of zeros

    class Sink:
        n = 0

        def write(self, b):
            self.n += len(b)

    sink = Sink()
    tracemalloc.start()
    write_tar(src, sink)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert sink.n == 512 + (64 << 20) + 1024
    assert peak < 8 << 20


def test_extract_replaces_and_dir_metadata_after_children(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        d = tarfile.TarInfo("d")
        d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o555, 77
        tf.addfile(d)
        f = tarfile.TarInfo("d/f")
        f.size, f.mtime = 3, 88
        tf.addfile(f, io.BytesIO(b"one"))
        f2 = tarfile.TarInfo("d/f")  # a later member replaces an earlier one
        f2.type, f2.linkname = tarfile.SYMTYPE, "elsewhere"
        tf.addfile(f2)
        x = tarfile.TarInfo("x")
        x.type = tarfile.DIRTYPE
        tf.addfile(x)
        x2 = tarfile.TarInfo("x")  # a file replaces a dir
        x2.size = 1
        tf.addfile(x2, io.BytesIO(b"!"))
    dest = tmp_path / "dest"
    dest.mkdir()
    buf.seek(0)
    extract_tar(buf, dest)
    assert os.readlink(dest / "d" / "f") == "elsewhere"
    st_d = os.stat(dest / "d")
    assert stat.S_IMODE(st_d.st_mode) == 0o555 and st_d.st_mtime == 77
    assert (dest / "x").read_bytes() == b"!"


def test_extract_drop_setid_clears_only_setuid_and_setgid(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, mode, kind in (("d", 0o3775, tarfile.DIRTYPE), ("d/su", 0o4755, tarfile.REGTYPE),
                                 ("d/sg", 0o2711, tarfile.REGTYPE), ("t", 0o1777, tarfile.DIRTYPE)):
            info = tarfile.TarInfo(name)
            info.type, info.mode = kind, mode
            tf.addfile(info, io.BytesIO(b"") if kind == tarfile.REGTYPE else None)
    modes = {}
    for drop in (False, True):
        dest = tmp_path / f"dest{drop}"
        dest.mkdir()
        buf.seek(0)
        extract_tar(buf, dest, drop_setid=drop)
        modes[drop] = {n: stat.S_IMODE(os.lstat(dest / n).st_mode) for n in ("d", "d/su", "d/sg", "t")}
    assert modes[False] == {"d": 0o3775, "d/su": 0o4755, "d/sg": 0o2711, "t": 0o1777}
    assert modes[True] == {"d": 0o1775, "d/su": 0o755, "d/sg": 0o711, "t": 0o1777}


def test_extract_whiteout_replaces_existing(tmp_path):
    dest = tmp_path / "dest"
    (dest / "victim").mkdir(parents=True)
    (dest / "victim" / "child").write_text("c")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        tf.addfile(tarfile.TarInfo(".wh.victim"))
        tf.addfile(tarfile.TarInfo("./dir/.wh..wh..opq"))
        tf.addfile(tarfile.TarInfo(".wh..wh.plnk"))  # AUFS leftovers are skipped
    buf.seek(0)
    extract_tar(buf, dest)
    s = os.lstat(dest / "victim")
    assert stat.S_ISCHR(s.st_mode) and s.st_rdev == 0
    assert os.getxattr(dest / "dir", "trusted.overlay.opaque") == b"y"
    assert sorted(os.listdir(dest)) == ["dir", "victim"]


# --- GNU tar as the oracle --------------------------------------------------------

def _plain_tree(root: str) -> None:
    """A tree without overlay specials (GNU tar knows nothing of whiteouts)."""
    tree = Node("dir", mode=0o755, children={
        "bin": Node("dir", mode=0o755, children={
            "sh": Node("file", mode=0o4755, content=b"#!" * 3000, uid=0, gid=0, mtime_ns=10**18),
            "ping": Node("file", mode=0o755, content=b"ping", xattrs={"security.capability": CAPABILITY}),
            "sh-link": Node("link", target="sh"),
        }),
        "a b": Node("file", mode=0o600, content=b"space", uid=1000, gid=1000),
        "a-b": Node("symlink", target="/etc/hostname"),
        "dev": Node("dir", mode=0o755, children={
            "null": Node("chr", mode=0o666, rdev=(1, 3)),
            "loop0": Node("blk", mode=0o660, rdev=(7, 0)),
            "fifo": Node("fifo", mode=0o640),
        }),
        "tmp": Node("dir", mode=0o1777, xattrs={"user.k": b"v"}),
        "ünï": Node("dir", mode=0o2750, uid=5, gid=6, children={
            "n" * 150: Node("file", content=b"long", mtime_ns=123 * 10**9 + 999_999_999)}),
    })
    build(tree, root)


def test_gnu_tar_extracts_our_tar_to_the_same_tree(tmp_path):
    from tests.conftest import require_tool
    tar = require_tool("tar")
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    dest.mkdir()
    _plain_tree(str(src))
    (tmp_path / "layer.tar").write_bytes(tar_bytes(src, 2_000_000_000))
    subprocess.run([tar, "-x", "-f", str(tmp_path / "layer.tar"), "-C", str(dest), "--xattrs",
                    "--xattrs-include=*", "--same-owner", "--preserve-permissions",
                    "--numeric-owner"], check=True)
    assert snapshot(str(dest)) == snapshot(str(src), epoch=2_000_000_000, layer=True)


def test_we_extract_gnu_tar_archive_to_the_same_tree(tmp_path):
    from tests.conftest import require_tool
    tar = require_tool("tar")
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    dest.mkdir()
    _plain_tree(str(src))
    for fmt in ("posix", "gnu"):
        out = subprocess.run([tar, "-c", "-f", "-", "-C", str(src), f"--format={fmt}", "--xattrs",
                              "--xattrs-include=*", "--numeric-owner", "."], check=True,
                             capture_output=True).stdout
        shutil.rmtree(dest)
        dest.mkdir()
        extract_tar(io.BytesIO(out), dest)
        want = snapshot(str(src))
        if fmt == "gnu":  # GNU format keeps no xattrs
            want = {k: v[:5] + ((),) + v[6:] if k else v for k, v in want.items()}
            got = {k: v[:5] + ((),) + v[6:] if k else v for k, v in snapshot(str(dest)).items()}
        else:
            got = snapshot(str(dest))
        assert got == want, fmt


def test_order_matches_gnu_tar_sort_name(tmp_path):
    from tests.conftest import require_tool
    tar = require_tool("tar")
    src = tmp_path / "src"
    for p in ["a/b/c", "a-b/x", "a b/y", "a.b/z", "A/q", "é/w", "a/b-c/d", "ab/e"]:
        (src / p).parent.mkdir(parents=True, exist_ok=True)
        (src / p).write_text(p)
    ours = [m.name for m in members(tar_bytes(src))]
    gnu = subprocess.run([tar, "-c", "-f", "-", "-C", str(src), "--sort=name", "."],
                         check=True, capture_output=True).stdout
    theirs = [m.name.removeprefix("./") for m in members(gnu) if m.name != "."]
    assert ours == theirs


def test_gnu_tar_lists_our_entries(tmp_path):
    from tests.conftest import require_tool
    tar = require_tool("tar")
    src = tmp_path / "src"
    src.mkdir()
    _plain_tree(str(src))
    (tmp_path / "l.tar").write_bytes(tar_bytes(src, 0))
    out = subprocess.run([tar, "-tvf", str(tmp_path / "l.tar"), "--numeric-owner"],
                         check=True, capture_output=True, text=True)
    assert "warning" not in out.stderr.lower()
    lines = out.stdout.splitlines()
    assert any(line.startswith("-rwsr-xr-x 0/0") and line.endswith(" bin/sh") for line in lines)
    assert any(line.startswith("hrwsr-xr-x") and "bin/sh-link link to bin/sh" in line for line in lines)
    assert any(line.startswith("crw-rw-rw- 0/0") and "1,3" in line for line in lines)
    assert any(line.startswith("drwxrwxrwt") and line.endswith(" tmp/") for line in lines)
    assert all("1970-01-01 00:00" in line for line in lines)


def test_very_deep_tree_round_trip(tmp_path):
    """Deeper than PATH_MAX and than Python's recursion limit: both directions walk with
    dir fds, not paths. (Cleans up itself: pytest's rmtree recurses and would fail.)"""
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    dest.mkdir()
    top = os.open(tmp_path, os.O_RDONLY)
    try:
        _deep_round_trip(src, dest)
        assert os.listdir(tmp_path) == ["dest"] and os.path.isfile(dest / ("d" * 20))
    finally:
        for name in ("src", "dest"):
            if os.path.isdir(tmp_path / name):
                remove_tree(top, name)
        os.close(top)


def _deep_round_trip(src, dest, depth=1100, comp="d" * 20):  # ~23 KB of path
    fd = os.open(src, os.O_RDONLY)
    for _ in range(depth):
        os.mkdir(comp, dir_fd=fd)
        nfd = os.open(comp, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    with open(os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as f:
        f.write(b"bottom")
    os.close(fd)
    data = tar_bytes(src, 0)
    extract_tar(io.BytesIO(data), dest)
    fd = os.open(dest, os.O_RDONLY)
    for _ in range(depth):
        nfd = os.open(comp, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=fd)
        os.close(fd)
        fd = nfd
    with open(os.open("leaf", os.O_RDONLY, dir_fd=fd), "rb") as f:
        assert f.read() == b"bottom"
    os.close(fd)
    assert tar_bytes(dest, 0) == data
    # a file member replacing the deep dir removes it (iteratively)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        tf.addfile(tarfile.TarInfo(comp))
    extract_tar(io.BytesIO(buf.getvalue()), dest)
    parent = os.open(src.parent, os.O_RDONLY)
    try:
        remove_tree(parent, "src")
    finally:
        os.close(parent)


def test_we_read_gnu_base256_negative_times(tmp_path):
    # GNU format stores a pre-1970 mtime in base-256 (two's complement); the source
    # file's own mtime is the expected value
    from tests.conftest import require_tool
    tar = require_tool("tar")
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    dest.mkdir()
    (src / "old").write_bytes(b"x")
    os.utime(src / "old", (-315619200, -315619200))  # 1960-01-01
    out = subprocess.run([tar, "-c", "-f", "-", "-C", str(src), "--format=gnu", "old"],
                         check=True, capture_output=True).stdout
    assert out[136] & 0x80  # really base-256
    extract_tar(io.BytesIO(out), dest)
    assert os.stat(dest / "old").st_mtime == -315619200
