"""Test support for layer tars: a hypothesis strategy of random trees in overlay form,
a builder that makes them on disk (in any creation order), and a snapshot that
describes a tree by everything a layer must preserve."""

from __future__ import annotations

import hashlib
import os
import stat
import struct
from dataclasses import dataclass, field

from hypothesis import strategies as st

# a valid VFS_CAP_REVISION_2 blob: effective, permitted = CAP_NET_BIND_SERVICE
CAPABILITY = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)


@dataclass
class Node:
    kind: str  # file dir symlink fifo whiteout chr blk
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    content: bytes = b""
    target: str = ""
    rdev: tuple[int, int] = (0, 0)
    xattrs: dict[str, bytes] = field(default_factory=dict)
    opaque: bool = False
    children: dict[str, "Node"] = field(default_factory=dict)
    links: list[str] = field(default_factory=list)  # extra names (same dir) hard-linked


_name_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0")
names = st.one_of(
    st.text(_name_chars, min_size=1, max_size=12),
    st.sampled_from(["a", "b", "a b", "A", "a-b", "a.b", "é", "日本語", "x" * 120, "ü" * 100,
                     "-", "~", "a\nb", "...", ".hidden"]),
).filter(lambda n: n not in (".", "..") and not n.startswith(".wh.")
         and len(n.encode()) <= 255)

ids = st.sampled_from([0, 0, 1, 1000, 65534, 3_000_000])
mtimes = st.one_of(st.integers(0, 2_000_000_000 * 10**9), st.sampled_from([0, 10**9 + 5]))
file_modes = st.sampled_from([0o644, 0o755, 0o600, 0o4755, 0o2755, 0o6711, 0o1644, 0o000, 0o444])
dir_modes = st.sampled_from([0o755, 0o700, 0o1777, 0o2775, 0o555, 0o750])
user_xattrs = st.dictionaries(st.sampled_from(["user.a", "user.mime_type", "user.z.long"]),
                              st.binary(min_size=0, max_size=40), max_size=2)


@st.composite
def files(draw):
    xattrs = dict(draw(user_xattrs))
    if draw(st.booleans()) and draw(st.booleans()):
        xattrs["security.capability"] = CAPABILITY
    if draw(st.integers(0, 5)) == 0:
        xattrs["trusted.lamina_test"] = b"t"
    return Node("file", mode=draw(file_modes), uid=draw(ids), gid=draw(ids), mtime_ns=draw(mtimes),
                content=draw(st.one_of(st.binary(max_size=2000), st.sampled_from([b"", b"x" * 5000]))),
                xattrs=xattrs)


@st.composite
def leaves(draw):
    kind = draw(st.sampled_from(["file", "file", "file", "symlink", "symlink", "fifo",
                                 "whiteout", "chr", "blk"]))
    if kind == "file":
        return draw(files())
    common = dict(uid=draw(ids), gid=draw(ids), mtime_ns=draw(mtimes))
    if kind == "symlink":
        return Node("symlink", mode=0o777, target=draw(st.one_of(
            st.sampled_from(["/", "../..", "/etc/passwd", "a", "x" * 300, "dangling/one", "."]),
            st.text(_name_chars, min_size=1, max_size=30))), **common)
    if kind == "whiteout":
        return Node("whiteout", mode=draw(st.sampled_from([0o000, 0o644])), **common)
    if kind == "fifo":
        return Node("fifo", mode=draw(file_modes), **common)
    return Node(kind, mode=draw(st.sampled_from([0o600, 0o666])),
                rdev=(draw(st.integers(1, 300)), draw(st.integers(0, 300))), **common)


def dirs(children):
    @st.composite
    def _dir(draw):
        node = Node("dir", mode=draw(dir_modes), uid=draw(ids), gid=draw(ids),
                    mtime_ns=draw(mtimes), xattrs=dict(draw(user_xattrs)),
                    opaque=draw(st.integers(0, 4)) == 0,
                    children=draw(st.dictionaries(names, children, max_size=5)))
        # hard links: some files get extra names in the same dir
        for name, child in list(node.children.items()):
            if child.kind == "file" and draw(st.integers(0, 3)) == 0:
                extra = draw(names)
                if extra not in node.children:
                    child.links.append(extra)
                    node.children[extra] = Node("link", target=name)
        return node
    return _dir()


trees = st.recursive(leaves(), dirs, max_leaves=25).map(
    lambda n: n if n.kind == "dir" else Node("dir", mode=0o755, children={"only": n}))


def build(node: Node, path: str, *, reverse: bool = False) -> None:
    """Make `node` (a dir) at `path`, which must exist; children created in sorted or
    reverse-sorted order (different inode numbers and directory order)."""
    names = sorted(node.children, reverse=reverse)
    for name in names:
        child = node.children[name]
        p = os.path.join(path, name)
        k = child.kind
        if k == "link":
            continue
        if k == "dir":
            os.mkdir(p)
            build(child, p, reverse=reverse)
        elif k == "file":
            with open(p, "wb") as f:
                f.write(child.content)
        elif k == "symlink":
            os.symlink(child.target, p)
        elif k == "fifo":
            os.mkfifo(p)
        elif k == "whiteout":
            os.mknod(p, stat.S_IFCHR, os.makedev(0, 0))
        elif k in ("chr", "blk"):
            os.mknod(p, stat.S_IFCHR if k == "chr" else stat.S_IFBLK, os.makedev(*child.rdev))
        apply_meta(child, p)
    for name in names:  # links after their targets have all metadata
        child = node.children[name]
        if child.kind == "link":
            os.link(os.path.join(path, child.target), os.path.join(path, name))
    apply_meta(node, path)  # after children: the dir mtime sticks


def apply_meta(node: Node, p: str) -> None:
    os.chown(p, node.uid, node.gid, follow_symlinks=False)
    if node.kind != "symlink":
        os.chmod(p, node.mode)
    for k, v in node.xattrs.items():
        os.setxattr(p, k, v, follow_symlinks=False)
    if node.opaque:
        os.setxattr(p, "trusted.overlay.opaque", b"y")
    os.utime(p, ns=(node.mtime_ns, node.mtime_ns), follow_symlinks=False)


# the one xattr docker's and BuildKit's layer tars carry (containerd's archive
# ChangeWriter, moby's pkg/archive), and the overlay opaque marker (a `.wh..wh..opq`
# entry in the tar): a tree through a layer keeps only these
LAYER_XATTRS = ("security.capability", "trusted.overlay.opaque", "user.overlay.opaque")


def snapshot(root: str, *, epoch: int | None = None, skip_root: bool = True,
             layer: bool = False) -> dict:
    """path -> (type, mode, uid, gid, payload, xattrs, mtime seconds), plus the hard-link
    partition under key None. mtimes are expected values when `epoch` clamps; `layer`:
    the xattrs a layer tar of the tree carries (LAYER_XATTRS)."""
    out: dict = {}
    inodes: dict = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames + ([""] if not skip_root and dirpath == root else []):
            p = os.path.join(dirpath, name) if name else dirpath
            rel = os.path.relpath(p, root)
            s = os.lstat(p)
            m = s.st_mode
            if stat.S_ISREG(m):
                with open(p, "rb") as f:
                    payload = hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISLNK(m):
                payload = os.readlink(p)
            elif stat.S_ISCHR(m) or stat.S_ISBLK(m):
                payload = (os.major(s.st_rdev), os.minor(s.st_rdev))
            else:
                payload = None
            xattrs = tuple(sorted((k, os.getxattr(p, k, follow_symlinks=False))
                                  for k in os.listxattr(p, follow_symlinks=False)
                                  if not layer or k in LAYER_XATTRS))
            mtime = s.st_mtime_ns // 10**9
            if epoch is not None:
                mtime = min(mtime, epoch)
            out[rel] = (stat.S_IFMT(m), stat.S_IMODE(m), s.st_uid, s.st_gid, payload, xattrs, mtime)
            if not stat.S_ISDIR(m) and s.st_nlink > 1 and not (stat.S_ISCHR(m) and s.st_rdev == 0):
                inodes.setdefault((s.st_dev, s.st_ino), set()).add(rel)
    out[None] = sorted(sorted(v) for v in inodes.values())
    return out
