"""A small explanation of why two images differ, for `lamina verify` while the full
file-level `lamina diff` (builder.imagediff) is not there: config fields, then the
first layers whose diff_ids differ, the Dockerfile step that made each (from the
config history), and per file what changed (content, mode, owner, link target,
device, mtime, type, added, removed).

Layers are read from the blob store as tar streams (any compression), one at a
time; file contents are hashed, never held.
"""

from __future__ import annotations

import hashlib
import tarfile
from dataclasses import dataclass
from typing import Any, Mapping

MAX_FILES_SHOWN = 20


@dataclass(frozen=True)
class FileEntry:
    type: str
    mode: int
    uid: int
    gid: int
    size: int
    mtime: int
    link: str
    device: tuple[int, int]
    digest: str


_TYPES = {tarfile.REGTYPE: "file", tarfile.AREGTYPE: "file", tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink",
          tarfile.LNKTYPE: "hardlink", tarfile.CHRTYPE: "chardev", tarfile.BLKTYPE: "blockdev",
          tarfile.FIFOTYPE: "fifo"}


def layer_entries(blobs, digest: str) -> dict[str, FileEntry]:
    """path -> FileEntry of the layer blob `digest` (a tar, any compression)."""
    from lamina.store.decompress import open_decompressed

    out: dict[str, FileEntry] = {}
    with blobs.open(digest) as raw:
        stream = open_decompressed(raw)
        with tarfile.open(fileobj=stream, mode="r|") as tf:
            for m in tf:
                h = hashlib.sha256()
                if m.isreg():
                    f = tf.extractfile(m)
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
                name = m.name.rstrip("/")
                name = "/" + name.lstrip("./") if not name.startswith("/") else name
                out[name] = FileEntry(_TYPES.get(m.type, "other"), m.mode & 0o7777, m.uid, m.gid,
                                      m.size if m.isreg() else 0, int(m.mtime), m.linkname or "",
                                      (m.devmajor, m.devminor) if m.ischr() or m.isblk() else (0, 0),
                                      "sha256:" + h.hexdigest() if m.isreg() else "")
    return out


def file_differences(a: Mapping[str, FileEntry], b: Mapping[str, FileEntry]) -> list[str]:
    """One line per differing path (a: the recorded image's layer, b: the rebuild's)."""
    lines = []
    for path in sorted(set(a) | set(b)):
        x, y = a.get(path), b.get(path)
        if x == y:
            continue
        if x is None:
            lines.append(f"{path}: only in the rebuild")
            continue
        if y is None:
            lines.append(f"{path}: only in the original")
            continue
        what = []
        if x.type != y.type:
            what.append(f"type {x.type} -> {y.type}")
        if x.digest != y.digest:
            what.append(f"content {x.digest[:19]} ({x.size} bytes) -> {y.digest[:19]} ({y.size} bytes)")
        if x.mode != y.mode:
            what.append(f"mode {x.mode:04o} -> {y.mode:04o}")
        if (x.uid, x.gid) != (y.uid, y.gid):
            what.append(f"owner {x.uid}:{x.gid} -> {y.uid}:{y.gid}")
        if x.link != y.link:
            what.append(f"link {x.link!r} -> {y.link!r}")
        if x.device != y.device:
            what.append(f"device {x.device} -> {y.device}")
        if x.mtime != y.mtime:
            what.append(f"mtime {x.mtime} -> {y.mtime}")
        lines.append(f"{path}: " + ", ".join(what))
    return lines


def layer_steps(config: Mapping[str, Any]) -> list[str]:
    """For each layer of an image (by index), the history's created_by of the step
    that made it ("" when the history does not say)."""
    out = []
    for h in config.get("history") or []:
        if not h.get("empty_layer"):
            out.append(h.get("created_by", ""))
    return out


def config_differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    lines = []
    for key in sorted(set(a) | set(b)):
        if key == "rootfs":
            continue
        if a.get(key) != b.get(key):
            if key == "history":
                for i, (x, y) in enumerate(zip(a.get(key) or [], b.get(key) or [])):
                    if x != y:
                        lines.append(f"config history[{i}]: {x} -> {y}")
                if len(a.get(key) or []) != len(b.get(key) or []):
                    lines.append(f"config history: {len(a.get(key) or [])} -> {len(b.get(key) or [])} entries")
            elif isinstance(a.get(key), dict) and isinstance(b.get(key), dict):
                for sub in sorted(set(a[key]) | set(b[key])):
                    if a[key].get(sub) != b[key].get(sub):
                        lines.append(f"config {key}.{sub}: {a[key].get(sub)!r} -> {b[key].get(sub)!r}")
            else:
                lines.append(f"config {key}: {a.get(key)!r} -> {b.get(key)!r}")
    return lines


def explain(blobs_a, image_a, blobs_b, image_b) -> list[str]:
    """Lines explaining how image_b (the rebuild) differs from image_a (the original).
    Images are store Image objects; `blobs_*` the blob stores holding their layers."""
    lines = config_differences(image_a.config, image_b.config)
    la, lb = list(image_a.layers), list(image_b.layers)
    if len(la) != len(lb):
        lines.append(f"layer count: {len(la)} -> {len(lb)}")
    steps = layer_steps(image_b.config) or layer_steps(image_a.config)
    for i, (x, y) in enumerate(zip(la, lb)):
        if x.diff_id == y.diff_id:
            continue
        step = steps[i] if i < len(steps) else ""
        lines.append(f"layer {i + 1} differs ({x.diff_id[:19]} -> {y.diff_id[:19]})"
                     + (f", made by step: {step}" if step else ""))
        diffs = file_differences(layer_entries(blobs_a, x.digest), layer_entries(blobs_b, y.digest))
        for d in diffs[:MAX_FILES_SHOWN]:
            lines.append(f"  {d}")
        if len(diffs) > MAX_FILES_SHOWN:
            lines.append(f"  ... and {len(diffs) - MAX_FILES_SHOWN} more")
    return lines


def compression_only(image_a, image_b) -> list[str]:
    """When two images share their config (image ID) but not their manifest: which
    layer blobs differ although the layer content (diff_id) is the same."""
    lines = []
    for i, (x, y) in enumerate(zip(image_a.layers, image_b.layers)):
        if x.digest != y.digest:
            lines.append(f"layer {i + 1}: same content {x.diff_id[:19]}, other compressed bytes "
                         f"({x.media_type.rsplit('+', 1)[-1]} {x.digest[:19]} -> "
                         f"{y.media_type.rsplit('+', 1)[-1]} {y.digest[:19]})")
    return lines


