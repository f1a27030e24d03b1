"""Tools of the differential tests (lamina vs buildah): read an image archive, apply its
layers into a directory with an applier of our own (independent of lamina's store code),
snapshot the resulting tree and compare two snapshots / two configs.

- ``read_docker_archive(path)`` -> ``ArchiveImage`` (config dict, layer tar bytes), for the
  docker-archive format that both ``lamina save`` and ``buildah push docker-archive:`` write.
- ``apply_layers(layers, root)`` applies OCI/docker layer tars in order: whiteouts
  (``.wh.NAME``) and opaque markers (``.wh..wh..opq``) hide what lower layers hold, entries
  replace what is there, hard links are linked, owners and modes (setuid, sticky) set.
- ``snapshot(root)`` -> ``{path: Entry}`` where ``Entry`` is (type, mode, uid, gid, data):
  data is the sha256 of a regular file, the target of a symlink, "major,minor" of a
  device, None for a directory or fifo. No times: mtimes are not compared.
- ``hardlink_groups(root)``: the sets of paths sharing one inode.
- ``diff_trees(a, b)`` -> a readable list of differences (empty when equal);
  ``config_fields(config)`` -> the compared config fields, empty values made None.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, NamedTuple


class Entry(NamedTuple):
    type: str          # file | dir | symlink | char | block | fifo | socket
    mode: int          # permission bits incl. setuid/setgid/sticky
    uid: int
    gid: int
    data: str | None   # sha256 (file), target (symlink), "maj,min" (device), else None


Tree = dict[str, Entry]

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True)
class ArchiveImage:
    config: dict
    layers: tuple[bytes, ...]   # uncompressed layer tars, base first


# ------------------------------------------------------------------ archives

def _decompress(data: bytes) -> bytes:
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:4] == b"\x28\xb5\x2f\xfd":
        import zstandard
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


def read_docker_archive(path: Path) -> ArchiveImage:
    """The (single) image of a docker-archive: manifest.json -> Config + Layers."""
    with tarfile.open(path) as tar:
        def member(name: str) -> bytes:
            f = tar.extractfile(name.lstrip("./") if name.startswith("./") else name)
            assert f is not None, name
            return f.read()
        manifest = json.loads(member("manifest.json"))
        assert len(manifest) == 1, manifest
        config = json.loads(member(manifest[0]["Config"]))
        layers = tuple(_decompress(member(l)) for l in manifest[0]["Layers"])
    return ArchiveImage(config, layers)


def diff_ids(image: ArchiveImage) -> list[str]:
    return ["sha256:" + hashlib.sha256(l).hexdigest() for l in image.layers]


# ------------------------------------------------------------------ layer applier

def _norm(name: str) -> str:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    assert ".." not in parts, f"layer entry escapes the root: {name!r}"
    return "/".join(parts)


def _inside(root: Path, rel: str) -> Path:
    """root/rel, asserting that no parent component is a symlink (an image layer never
    writes through one)."""
    path = root
    parts = rel.split("/")
    for part in parts[:-1]:
        path = path / part
        assert not path.is_symlink(), f"layer writes through a symlink: {rel}"
    return root / rel if rel else root


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        for child in path.iterdir():
            _remove(child)
        path.rmdir()
    elif path.exists() or path.is_symlink():
        path.unlink()


def apply_layer(data: bytes, root: Path) -> None:
    """Apply one uncompressed layer tar onto `root` (OCI image-spec layer semantics)."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
        # whiteouts apply to the lower layers only: do them first
        for m in members:
            rel = _norm(m.name)
            base = rel.rsplit("/", 1)[-1]
            if not base.startswith(".wh."):
                continue
            parent = rel.rsplit("/", 1)[0] if "/" in rel else ""
            if base == ".wh..wh..opq":
                d = _inside(root, parent)
                if d.is_dir() and not d.is_symlink():
                    for child in d.iterdir():
                        _remove(child)
            else:
                name = base[len(".wh."):]
                _remove(_inside(root, f"{parent}/{name}" if parent else name))
        dirs: list[tuple[Path, tarfile.TarInfo]] = []
        for m in members:
            rel = _norm(m.name)
            if rel.rsplit("/", 1)[-1].startswith(".wh."):
                continue
            path = _inside(root, rel)
            exists = path.exists() or path.is_symlink()
            if m.isdir():
                if exists and not (path.is_dir() and not path.is_symlink()):
                    _remove(path)
                    exists = False
                if not exists:
                    path.mkdir()
                dirs.append((path, m))
                continue
            if exists:
                _remove(path)
            if m.isreg():
                f = tar.extractfile(m)
                assert f is not None
                path.write_bytes(f.read())
            elif m.issym():
                os.symlink(m.linkname, path)
            elif m.islnk():
                os.link(_inside(root, _norm(m.linkname)), path)
                continue  # metadata belongs to the inode, set by its first entry
            elif m.ischr() or m.isblk():
                kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
                os.mknod(path, kind | 0o600, os.makedev(m.devmajor, m.devminor))
            elif m.isfifo():
                os.mkfifo(path)
            else:
                raise AssertionError(f"unexpected tar entry type {m.type!r}: {m.name}")
            os.lchown(path, m.uid, m.gid)
            if not m.issym():
                os.chmod(path, m.mode & 0o7777)
        for path, m in dirs:
            os.lchown(path, m.uid, m.gid)
            os.chmod(path, m.mode & 0o7777)


def layer_xattrs(layers: Iterable[bytes]) -> dict[str, dict[str, bytes]]:
    """The extended attributes (PAX ``SCHILY.xattr.*`` records) of every path of the
    image the layers make, by path: what the applier above does not set on disk."""
    found: dict[str, dict[str, bytes]] = {}

    def drop(prefix: str, itself: bool) -> None:
        for p in [p for p in found if p.startswith(prefix + "/") or (itself and p == prefix)]:
            del found[p]

    for data in layers:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            members = tar.getmembers()
            for m in members:
                rel = _norm(m.name)
                parent, _, base = rel.rpartition("/")
                if base == ".wh..wh..opq":
                    drop(parent, False)
                elif base.startswith(".wh."):
                    drop(f"{parent}/{base[4:]}" if parent else base[4:], True)
            for m in members:
                rel = _norm(m.name)
                if rel.rpartition("/")[2].startswith(".wh.") or m.islnk():
                    continue
                if not m.isdir():
                    drop(rel, False)
                xattrs = {k[len("SCHILY.xattr."):]: v.encode("utf-8", "surrogateescape")
                          for k, v in m.pax_headers.items() if k.startswith("SCHILY.xattr.")}
                if xattrs:
                    found[rel] = xattrs
                else:
                    found.pop(rel, None)
    return found


def apply_layers(layers: Iterable[bytes], root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for layer in layers:
        apply_layer(layer, root)
    return root


# ------------------------------------------------------------------ snapshots

_TYPES = ((stat.S_ISREG, "file"), (stat.S_ISDIR, "dir"), (stat.S_ISLNK, "symlink"),
          (stat.S_ISCHR, "char"), (stat.S_ISBLK, "block"), (stat.S_ISFIFO, "fifo"),
          (stat.S_ISSOCK, "socket"))


def _entry(path: Path) -> Entry:
    st = os.lstat(path)
    kind = next(name for test, name in _TYPES if test(st.st_mode))
    data: str | None = None
    if kind == "file":
        data = hashlib.sha256(path.read_bytes()).hexdigest()
    elif kind == "symlink":
        data = os.readlink(path)
    elif kind in ("char", "block"):
        data = f"{os.major(st.st_rdev)},{os.minor(st.st_rdev)}"
    return Entry(kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, data)


def snapshot(root: Path) -> Tree:
    """Every path under `root` (relative, '/'-separated, root itself excluded)."""
    tree: Tree = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            tree[str(path.relative_to(root))] = _entry(path)
    return tree


def hardlink_groups(root: Path) -> set[frozenset[str]]:
    by_inode: dict[tuple[int, int], set[str]] = {}
    for dirpath, _dirs, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath) / name
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                by_inode.setdefault((st.st_dev, st.st_ino), set()).add(str(path.relative_to(root)))
    return {frozenset(g) for g in by_inode.values() if len(g) > 1}


def without(tree: Mapping[str, Entry], paths: Iterable[str]) -> Tree:
    """`tree` minus `paths` and everything under them."""
    drop = tuple(paths)
    return {p: e for p, e in tree.items()
            if not any(p == d or p.startswith(d + "/") for d in drop)}


def only(tree: Mapping[str, Entry], prefixes: Iterable[str]) -> Tree:
    keep = tuple(prefixes)
    return {p: e for p, e in tree.items()
            if any(p == k or p.startswith(k + "/") for k in keep)}


def _fmt(e: Entry | None) -> str:
    if e is None:
        return "(absent)"
    return f"{e.type} {e.mode:04o} {e.uid}:{e.gid} {e.data or ''}".rstrip()


def diff_trees(ours: Mapping[str, Entry], theirs: Mapping[str, Entry]) -> list[str]:
    """One line per differing path: 'path: ours=... theirs=...'."""
    out = []
    for path in sorted(set(ours) | set(theirs)):
        a, b = ours.get(path), theirs.get(path)
        if a != b:
            out.append(f"{path}: lamina={_fmt(a)} buildah={_fmt(b)}")
    return out


# ------------------------------------------------------------------ configs

CONFIG_FIELDS = ("Env", "Cmd", "Entrypoint", "WorkingDir", "User", "ExposedPorts", "Volumes",
                 "Labels", "StopSignal", "Healthcheck", "OnBuild", "Shell")


def config_fields(config: Mapping) -> dict:
    """The compared fields of an image config, absent/empty/None made equal (docker
    writes null, {} or omits an empty field depending on the writer)."""
    inner = config.get("config") or {}
    return {k: inner.get(k) or None for k in CONFIG_FIELDS}
