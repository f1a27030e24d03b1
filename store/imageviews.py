"""docker's views of a stored image: the rows of `docker history` and the object
`docker image inspect` prints (field names and shapes as docker's API)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from lamina.store import oci, repodigests
from lamina.store.images import Image
from lamina.store.root import StoreRoot


@dataclass(frozen=True)
class HistoryEntry:
    image_id: str | None  # the image ID on the newest entry, None ("<missing>") below
    created: str | None
    created_by: str
    size: int
    comment: str
    empty_layer: bool


def history(img: Image) -> list[HistoryEntry]:
    """The config's history, newest first, with each layer's size (docker history)."""
    hist = img.config.get("history") or []
    sizes = [l.uncompressed_size for l in img.layers]
    out: list[HistoryEntry] = []
    li = 0
    for h in hist:
        empty = bool(h.get("empty_layer"))
        size = 0
        if not empty and li < len(sizes):
            size = sizes[li]
            li += 1
        out.append(HistoryEntry(None, h.get("created"), h.get("created_by", ""), size,
                                h.get("comment", ""), empty))
    if not hist:  # images without history: one row per layer
        out = [HistoryEntry(None, img.config.get("created"), "", s, "", False) for s in sizes]
    out.reverse()
    if out:
        top = out[0]
        out[0] = HistoryEntry(img.id, top.created, top.created_by, top.size, top.comment, top.empty_layer)
    return out


def inspect(root: StoreRoot, img: Image) -> dict[str, Any]:
    """What `docker image inspect` prints for one image (one object)."""
    row = root.db.query_one("SELECT * FROM images WHERE manifest_digest=?", (img.manifest_digest,))
    last_tag = root.db.query_one("SELECT max(tagged) AS t FROM tags WHERE manifest_digest=?",
                                 (img.manifest_digest,))
    cfg = img.config
    out: dict[str, Any] = {
        "Id": img.id,
        "RepoTags": list(img.tags),
        "RepoDigests": repodigests.for_image(root, img.config_digest),
        "Parent": "",
        "Comment": _last_comment(cfg),
        "Created": cfg.get("created", ""),
        "Author": cfg.get("author", ""),
        "Config": _config_view(cfg.get("config") or {}),
        "Architecture": cfg.get("architecture", ""),
    }
    if cfg.get("variant"):
        out["Variant"] = cfg["variant"]
    out.update({
        "Os": cfg.get("os", ""),
        "Size": img.size,
        "RootFS": {"Type": cfg.get("rootfs", {}).get("type", "layers"),
                   "Layers": list(cfg.get("rootfs", {}).get("diff_ids", []))},
        "Metadata": {"LastTagTime": oci.format_time(last_tag["t"]) if last_tag and last_tag["t"]
                     else "0001-01-01T00:00:00Z"},
        "Descriptor": {"mediaType": row["media_type"], "digest": img.manifest_digest,
                       "size": row["manifest_size"]},
    })
    return out


_MAP_FIELDS = ("ExposedPorts", "Volumes", "Labels")


def _config_view(config: Mapping[str, Any]) -> dict[str, Any]:
    """The container config with its map fields' keys sorted, as Go marshals maps."""
    out = dict(config)
    for k in _MAP_FIELDS:
        if isinstance(out.get(k), Mapping):
            out[k] = {key: out[k][key] for key in sorted(out[k])}
    return out


def _last_comment(cfg: Mapping[str, Any]) -> str:
    hist = cfg.get("history") or []
    return hist[-1].get("comment", "") if hist else ""
