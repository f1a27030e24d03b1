"""Extracted layer directories (ROOT/layers/<name>) and file-level dedup.

A layer's directory holds its content in overlay lower-dir form (whiteouts as 0/0
char devices, opaque dirs marked with trusted.overlay.opaque=y) and serves directly
as an overlay lowerdir. Names are short (the first 12 hex digits of the diff_id,
longer only on a collision) because an overlay mount's options must fit in one
page.

A directory is made under ROOT/tmp (extracted from the layer blob, or adopted from
a build's upper dir), deduplicated, flushed to disk, and renamed into place; only
then is it recorded in the database. Readers therefore only ever see complete
directories. ROOT/locks/<name>.lock serialises the making of one name.

Dedup (only when the Store is made with file_dedup=True; see Store): every regular file (non-empty) gets a key = sha256 of its content digest,
mode, uid, gid, mtime and xattrs. The `content` table maps a key to one canonical
path in some layer dir; a file with a known key is replaced by a hard link to that
path. The mtime is part of the key because a lower dir's file times are visible to
RUN steps (and carried into later layers by `COPY --from`); two files differing only
in mtime stay separate. Directory times are restored after the relinking.

INVARIANT: files in ROOT/layers are never modified in place. Overlay lower dirs are
read-only (overlayfs copies a file up before writing it), and nothing else in
lamina writes there; a hard-linked file changed in place would change every layer
sharing it.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from lamina.store.db import Database
from lamina.store.errors import CorruptContent, StoreError
from lamina.store.layers import extract_layer
from lamina.store.locks import flocked, remove_tree

if TYPE_CHECKING:
    from lamina.store.root import StoreRoot

HASH_CHUNK = 1 << 20
NAME_LENGTHS = (12, 16, 24, 32, 64)


def candidate_names(diff_id: str) -> list[str]:
    hex_ = diff_id.split(":", 1)[1]
    return [hex_[:n] for n in NAME_LENGTHS]


@dataclass(frozen=True)
class DedupResult:
    files: int            # regular files looked at
    linked: int           # replaced by a link to an existing copy
    saved_bytes: int      # their apparent size
    new_keys: tuple[tuple[str, str], ...]   # (key, relpath) to record as canonical copies


def _content_key(path: str, st: os.stat_result) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while True:
            chunk = f.read(HASH_CHUNK)
            if not chunk:
                break
            h.update(chunk)
    meta = hashlib.sha256()
    meta.update(f"{h.hexdigest()}\0{stat.S_IMODE(st.st_mode):o}\0{st.st_uid}\0{st.st_gid}\0"
                f"{st.st_mtime_ns}\0".encode())
    try:
        names = sorted(os.listxattr(path, follow_symlinks=False))
    except OSError:
        names = []
    for name in names:
        try:
            value = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
        meta.update(name.encode() + b"\0" + len(value).to_bytes(8, "big") + value)
    return meta.hexdigest()


def _same_meta(a: os.stat_result, b: os.stat_result) -> bool:
    return (stat.S_ISREG(b.st_mode) and a.st_size == b.st_size and a.st_mode == b.st_mode
            and a.st_uid == b.st_uid and a.st_gid == b.st_gid and a.st_mtime_ns == b.st_mtime_ns)


def walk(top: Path | str) -> Iterator[tuple[str, list[str], list[str]]]:
    """os.walk(top, followlinks=False), top-down, without recursion: Python 3.11's
    os.walk recurses once per level and fails on a tree nested ~1000 deep (which a
    hostile layer may be). Symlinks are listed with the files; unreadable dirs skipped."""
    stack = [os.fspath(top)]
    while stack:
        path = stack.pop()
        dirnames: list[str] = []
        filenames: list[str] = []
        try:
            with os.scandir(path) as it:
                for entry in it:
                    (dirnames if entry.is_dir(follow_symlinks=False) else filenames).append(entry.name)
        except OSError:
            continue
        yield path, dirnames, filenames
        stack.extend(os.path.join(path, n) for n in reversed(dirnames))


def _regular_files(tree: Path) -> Iterator[tuple[str, os.stat_result]]:
    for dirpath, dirnames, filenames in walk(tree):
        dirnames.sort()
        for name in sorted(filenames):
            p = os.path.join(dirpath, name)
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                yield p, st


def dedup_tree(db: Database, layers_root: Path, tree: Path) -> DedupResult:
    """Replace files of `tree` by hard links to identical files already recorded in
    the content index. `tree` is not yet in ROOT/layers; the returned new_keys are
    recorded by the caller once it is."""
    by_inode: dict[tuple[int, int], list[str]] = {}
    first_stat: dict[tuple[int, int], os.stat_result] = {}
    for p, st in _regular_files(tree):
        ino = (st.st_dev, st.st_ino)
        by_inode.setdefault(ino, []).append(p)
        first_stat.setdefault(ino, st)
    files = linked = saved = 0
    new_keys: list[tuple[str, str]] = []
    touched_dirs: dict[str, os.stat_result] = {}
    for ino, paths in by_inode.items():
        st = first_stat[ino]
        files += len(paths)
        if st.st_size == 0:
            continue
        key = _content_key(paths[0], st)
        row = db.query_one("SELECT dir, relpath FROM content WHERE key=?", (key,))
        canonical = None
        if row is not None:
            cand = layers_root / row["dir"] / row["relpath"]
            try:
                cst = os.lstat(cand)
            except OSError:
                cst = None
            if cst is not None and _same_meta(st, cst) and (cst.st_dev, cst.st_ino) != ino:
                canonical = cand
        if canonical is None:
            new_keys.append((key, os.path.relpath(paths[0], tree)))
            continue
        done = 0
        for p in paths:
            parent = os.path.dirname(p)
            if parent not in touched_dirs:
                touched_dirs[parent] = os.lstat(parent)
            tmp = os.path.join(parent, f".lamina-link-{os.getpid()}-{done}")
            try:
                os.link(canonical, tmp)
            except OSError as e:
                if e.errno == errno.EMLINK:  # the canonical copy has too many links
                    break
                raise
            os.rename(tmp, p)
            done += 1
        if done < len(paths):
            new_keys.append((key, os.path.relpath(paths[done], tree)))
        linked += done
        saved += st.st_size * (1 if done == len(paths) else 0)
    # linking changed the directories' times: put back what the layer said
    for d, dst in touched_dirs.items():
        os.utime(d, ns=(dst.st_atime_ns, dst.st_mtime_ns), follow_symlinks=False)
    return DedupResult(files, linked, saved, tuple(new_keys))


def record_keys(c, dir_name: str, keys: tuple[tuple[str, str], ...]) -> None:
    c.executemany("INSERT OR IGNORE INTO content(key, dir, relpath) VALUES (?,?,?)",
                  [(k, dir_name, rel) for k, rel in keys])


_libc = None


def sync_tree(path: Path) -> None:
    """Flush the filesystem holding `path` (one syncfs instead of fsync per file)."""
    global _libc
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        if _libc.syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def place(tmp: Path, target: Path) -> None:
    """Rename a finished directory into ROOT/layers; StoreError if it cannot."""
    try:
        os.rename(tmp, target)
    except OSError as e:
        if e.errno == errno.EXDEV:
            raise StoreError(f"cannot move {tmp} into the store at {target}: not on the same "
                             f"filesystem", path=str(tmp)) from None
        raise
    fsync_dir(target.parent)


def dir_usage(path: Path, seen: set[tuple[int, int]] | None,
              on_file: Callable[[os.stat_result], None] | None = None) -> tuple[int, int, int]:
    """(logical bytes of regular files, apparent bytes of inodes not in `seen`,
    allocated bytes of inodes not in `seen`) of a tree; adds inodes to `seen`."""
    logical = unique = blocks = 0
    for dirpath, dirnames, filenames in walk(path):
        for name in filenames + dirnames:
            p = os.path.join(dirpath, name)
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                logical += st.st_size
            ino = (st.st_dev, st.st_ino)
            if seen is not None:
                if ino in seen:
                    continue
                seen.add(ino)
            if stat.S_ISREG(st.st_mode):
                unique += st.st_size
            blocks += st.st_blocks * 512
    return logical, unique, blocks


# -- making a layer's directory ---------------------------------------------------------

def _layer_dir_name(store: "StoreRoot", diff_id: str) -> str | None:
    row = store.db.query_one("SELECT dir FROM layers WHERE diff_id=?", (diff_id,))
    if row is None:
        raise StoreError(f"layer {diff_id} is not in the store", digest=diff_id)
    return row["dir"]


def make_layer_dir(store: "StoreRoot", diff_id: str, src_dir: Path | None) -> Path:
    """The directory of layer `diff_id`: extracted from its blob (src_dir None) or
    adopted from `src_dir` (renamed; removed if the layer already has one). Holds the
    gc lock shared and the lock of the candidate name while it works."""
    layers_root = store.layers_root
    with store.writing():
        for name in candidate_names(diff_id):
            with flocked(store.locks_dir / f"{name}.lock"):
                current = _layer_dir_name(store, diff_id)
                if current:
                    if current != name:
                        if (layers_root / current).is_dir():
                            return _drop_src(src_dir, layers_root / current)
                        continue  # recorded under another name, now missing: re-make it there
                    if (layers_root / name).is_dir():
                        return _drop_src(src_dir, layers_root / name)
                elif store.db.query_one("SELECT 1 FROM layers WHERE dir=?", (name,)) is not None:
                    continue  # a prefix collision with another layer: try a longer name
                target = layers_root / name
                if os.path.lexists(target):  # left by a crash before it was recorded
                    trash = store.temp_path("trash")
                    os.rename(target, trash)
                    remove_tree(trash)
                return _fill(store, diff_id, name, target, src_dir)
    raise StoreError(f"no directory name available for layer {diff_id}", digest=diff_id)


def _drop_src(src_dir: Path | None, result: Path) -> Path:
    if src_dir is not None:
        remove_tree(src_dir)
    return result


def _fill(store: "StoreRoot", diff_id: str, name: str, target: Path, src_dir: Path | None) -> Path:
    if src_dir is None:
        tried: list[str] = []
        while True:
            blob = store.db.query_one(  # a stored blob before one still to be fetched
                "SELECT digest, digest IN (SELECT digest FROM remote_blobs) AS remote "
                "FROM layer_blobs WHERE diff_id=? AND digest NOT IN "
                f"({','.join('?' * len(tried))}) ORDER BY remote, size LIMIT 1",
                (diff_id, *tried))
            if blob is None:
                raise StoreError(f"layer {diff_id} has no stored blob to extract", digest=diff_id)
            work = store.temp_path("extract")
            work.mkdir()
            try:
                extract_layer(store.blobs, blob["digest"], work, expected_diff_id=diff_id)
                break
            except CorruptContent:
                remove_tree(work)
                if not blob["remote"]:
                    raise
                tried.append(blob["digest"])  # a claim its bytes refuted: another blob may hold it
            except BaseException:
                remove_tree(work)
                raise
    else:
        work = src_dir
    try:
        result = (dedup_tree(store.db, store.layers_root, work) if store.file_dedup
                  else DedupResult(files=0, linked=0, saved_bytes=0, new_keys=()))
        sync_tree(work)
        place(work, target)
    except BaseException:
        if src_dir is None:
            remove_tree(work)
        raise
    with store.db.write() as c:
        c.execute("UPDATE layers SET dir=? WHERE diff_id=?", (name, diff_id))
        record_keys(c, name, result.new_keys)
    return target
