"""docker-archive: the `docker save` / `docker load` tar format, both ways.

Written layout (the one `docker save` of docker 1.10-24 writes, which `docker load`
of every version since 1.10, `podman load` and skopeo's `docker-archive:` all read):

    <config hex>.json            the image config, byte for byte (its sha256 = image ID)
    <v1 id>/                     one directory per layer position (chain)
    <v1 id>/VERSION              "1.0"
    <v1 id>/json                 legacy v1 metadata: id, parent, created (epoch)
    <v1 id>/layer.tar            the layer, uncompressed (its sha256 = the diff_id)
    manifest.json                [{"Config", "RepoTags", "Layers"}] per image
    repositories                 {"repo": {"tag": "<top v1 id>"}} when tags exist

Podman and skopeo write `<diff_id hex>.tar` at the top with `<id>/layer.tar`
symlinks instead; docker >= 25 writes an OCI layout plus manifest.json. Readers
follow `manifest.json` only, so all of these load here (archives that also carry
an OCI layout are read as OCI by store.archive, keeping their manifests).

A v1 id is sha256 of the canonical JSON {"layer_id": <chain id>, "parent": <parent
v1 id>} - deterministic, shared by images with a common base (written once), and
independent of the image config. Everything else is deterministic too: entries in
walk order, fixed header fields (store.archive_tar).

RepoTags and repositories hold canonical names (`docker.io/library/app:1.0`, as
skopeo writes them) rather than docker's short `app:1.0`: docker normalises both
to the same name, while podman would read a short name as `localhost/app:1.0`.
"""

from __future__ import annotations

import hashlib
import json
from typing import BinaryIO, Iterator, Sequence

from lamina.store import compression, oci, refs
from lamina.store.archive_tar import (CHUNK, ArchivedImage, ArchivedLayer, ArchiveReader, ExportImage,
                               LayerLike, TarWriter, sort_key)
from lamina.store.blobs import BlobStore, check_digest
from lamina.store.errors import CorruptContent, StoreError

MANIFEST_JSON = "manifest.json"
REPOSITORIES = "repositories"
LEGACY_VERSION = b"1.0"
EPOCH = "1970-01-01T00:00:00Z"


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """OCI ChainIDs: chain[0] = diff_id[0]; chain[i] = sha256(chain[i-1] + " " + diff_id[i])."""
    out: list[str] = []
    for d in diff_ids:
        out.append(d if not out else "sha256:" + hashlib.sha256(f"{out[-1]} {d}".encode()).hexdigest())
    return out


def v1_ids(diff_ids: Sequence[str]) -> list[str]:
    """The hex directory names of the layers of an image (see the module docstring)."""
    out: list[str] = []
    parent: str | None = None
    for chain in chain_ids(diff_ids):
        doc = {"layer_id": chain}
        if parent is not None:
            doc["parent"] = "sha256:" + parent
        parent = hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        out.append(parent)
    return out


def _legacy_json(v1_id: str, parent: str | None) -> bytes:
    doc = {"id": v1_id}
    if parent is not None:
        doc["parent"] = parent
    doc["created"] = EPOCH
    return json.dumps(doc, separators=(",", ":")).encode()


def _repo_tag(name: str) -> tuple[str, str]:
    """('docker.io/library/app', 'latest') for a canonical reference."""
    r = refs.parse(name)
    return r.name, r.tag or refs.DEFAULT_TAG


def _uncompressed_chunks(blobs: BlobStore, layer: LayerLike) -> Iterator[bytes]:
    """The uncompressed bytes of a stored layer, checked against its diff_id as they go."""
    h = hashlib.sha256()
    with blobs.open(layer.digest) as f:
        src = compression.open_decompressed(f)
        while True:
            chunk = src.read(CHUNK)
            if not chunk:
                break
            h.update(chunk)
            yield chunk
    if "sha256:" + h.hexdigest() != layer.diff_id:
        raise CorruptContent(f"stored layer {layer.digest} does not decompress to its diff_id "
                             f"{layer.diff_id} (run lamina fsck)", digest=layer.digest)


def _uncompressed_size(blobs: BlobStore, layer: LayerLike) -> int:
    if layer.uncompressed_size:  # 0 or None: not recorded (a layer tar is never empty)
        return layer.uncompressed_size
    return sum(len(c) for c in _uncompressed_chunks(blobs, layer))  # count it once


def write_docker_archive(out: BinaryIO, images: Sequence[ExportImage], blobs: BlobStore) -> None:
    """Write `images` (distinct configs; names merged by the caller) as a docker-archive."""
    files: dict[str, object] = {}  # member name -> bytes | LayerLike (streamed)
    dirs: set[str] = set()
    manifest: list[dict] = []
    repositories: dict[str, dict[str, str]] = {}
    for img in images:
        config_name = check_digest(img.config_digest) + ".json"
        files[config_name] = img.config
        diffs = [l.diff_id for l in img.layers]
        ids = v1_ids(diffs)
        parent: str | None = None
        for layer, v1 in zip(img.layers, ids):
            dirs.add(v1)
            files[f"{v1}/VERSION"] = LEGACY_VERSION
            files[f"{v1}/json"] = _legacy_json(v1, parent)
            files[f"{v1}/layer.tar"] = layer
            parent = v1
        tags = [f"{repo}:{tag}" for repo, tag in map(_repo_tag, img.names)]
        for repo, tag in map(_repo_tag, img.names):
            if ids:
                repositories.setdefault(repo, {})[tag] = ids[-1]
        manifest.append({"Config": config_name, "RepoTags": tags or None,
                         "Layers": [f"{v1}/layer.tar" for v1 in ids]})
    files[MANIFEST_JSON] = json.dumps(manifest, separators=(",", ":")).encode()
    if repositories:
        files[REPOSITORIES] = json.dumps(repositories, sort_keys=True, separators=(",", ":")).encode()

    tar = TarWriter(out)
    for name in sorted(list(files) + [d + "/" for d in dirs], key=sort_key):
        if name.endswith("/"):
            tar.add_dir(name)
            continue
        content = files[name]
        if isinstance(content, bytes):
            tar.add_bytes(name, content)
        else:
            tar.add_stream(name, _uncompressed_size(blobs, content), _uncompressed_chunks(blobs, content))
    tar.close()


# -- reading -----------------------------------------------------------------------

def _tags(repo_tags, where: str) -> tuple[str, ...]:
    if repo_tags is None:
        return ()
    if not isinstance(repo_tags, list) or not all(isinstance(t, str) for t in repo_tags):
        raise CorruptContent(f"{where}: RepoTags is not a list of strings")
    out: list[str] = []
    for t in repo_tags:
        try:
            name = str(refs.parse_tag(t))
        except StoreError as e:
            raise CorruptContent(f"{where}: bad RepoTags entry {t!r}: {e}") from None
        if name not in out:
            out.append(name)
    return tuple(out)


def read_docker_archive(reader: ArchiveReader) -> list[ArchivedImage]:
    """The images a docker-archive's manifest.json lists, with their configs read and
    checked; layer members are located (and sized) but not read."""
    where = f"{reader.path}: {MANIFEST_JSON}"
    try:
        entries = json.loads(reader.read(MANIFEST_JSON))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptContent(f"{where} is not valid JSON: {e}", path=reader.path) from None
    if not isinstance(entries, list) or not entries:
        raise CorruptContent(f"{where}: expected a non-empty list of images", path=reader.path)
    # A hostile manifest.json (32 MiB) can list one big config 100 000 times, under
    # names or links that all lead to the same member: each config member is read and
    # checked once, and entries of an image already listed (same config = same image
    # ID) only add their names, so the work stays proportional to the archive.
    images: list[ArchivedImage] = []
    by_member: dict[int, str] = {}       # resolved config member -> config digest
    by_config: dict[str, int] = {}       # config digest -> index in images
    for i, e in enumerate(entries):
        w = f"{where}: image {i}"
        if not isinstance(e, dict) or not isinstance(e.get("Config"), str) \
                or not isinstance(e.get("Layers"), list) \
                or not all(isinstance(l, str) for l in e["Layers"]):
            raise CorruptContent(f"{w}: needs Config (a path) and Layers (a list of paths)",
                                 path=reader.path)
        known = by_config.get(by_member.get(reader.resolve(e["Config"]).offset_data, ""))
        if known is not None:
            prev = images[known]
            names = _tags(e.get("RepoTags"), w)
            images[known] = ArchivedImage(prev.config, prev.config_digest, prev.layers,
                                          prev.names + tuple(n for n in names if n not in prev.names))
            continue
        config = reader.read(e["Config"])
        config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
        cfg = oci.decode(config, f"{reader.path}: image config {e['Config']}")
        oci.check_config(cfg, f"{reader.path}: image config {e['Config']}")
        diffs = oci.diff_ids(cfg)
        if len(diffs) != len(e["Layers"]):
            raise CorruptContent(f"{w}: lists {len(e['Layers'])} layers but its config has "
                                 f"{len(diffs)} diff_ids", path=reader.path)
        layers = tuple(ArchivedLayer(member=path, diff_id=d, size=reader.size(path))
                       for path, d in zip(e["Layers"], diffs))
        image = ArchivedImage(config=config, config_digest=config_digest, layers=layers,
                              names=_tags(e.get("RepoTags"), w))
        by_member[reader.resolve(e["Config"]).offset_data] = config_digest
        if config_digest in by_config:  # the same config in another member
            prev = images[by_config[config_digest]]
            images[by_config[config_digest]] = ArchivedImage(
                prev.config, prev.config_digest, prev.layers,
                prev.names + tuple(n for n in image.names if n not in prev.names))
            continue
        by_config[config_digest] = len(images)
        images.append(image)
    return images
