"""Test support: crafted images on disk, made with Python's tarfile (not lamina's tar
writer) - layer tars from member specs, OCI layout directories, OCI archives and
docker-archives around them - so that image comparisons read inputs lamina did not
write."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

T0 = 1_600_000_000
_TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
          "hardlink": tarfile.LNKTYPE, "char": tarfile.CHRTYPE, "block": tarfile.BLKTYPE,
          "fifo": tarfile.FIFOTYPE}


@dataclass
class M:
    """One tar member to craft."""

    name: str
    type: str = "file"
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = T0
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[str, str] = field(default_factory=dict)


def layer_tar(members: list[M]) -> bytes:
    """An uncompressed layer tar holding `members` in the order given."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.type = _TYPES[m.type]
            info.mode, info.uid, info.gid, info.mtime = m.mode, m.uid, m.gid, m.mtime
            info.uname = info.gname = ""
            info.linkname = m.linkname
            info.devmajor, info.devminor = m.devmajor, m.devminor
            info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in m.xattrs.items()}
            if m.type == "file":
                info.size = len(m.data)
                tf.addfile(info, io.BytesIO(m.data))
            else:
                tf.addfile(info)
    return buf.getvalue()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _compress(data: bytes, kind: str) -> tuple[bytes, str]:
    if kind == "gzip":
        return gzip.compress(data, mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip"
    if kind == "zstd":
        from lamina.store.compression import compress_stream
        out = io.BytesIO()
        with compress_stream("zstd", out) as w:
            w.write(data)
        return out.getvalue(), "application/vnd.oci.image.layer.v1.tar+zstd"
    return data, "application/vnd.oci.image.layer.v1.tar"


def image_config(layers: list[bytes], *, history: list[dict] | None = None,
                 created: str = "2020-09-13T12:26:40Z", **config) -> dict:
    if history is None:
        history = [{"created": created, "created_by": f"step {i}"} for i in range(len(layers))]
    return {"architecture": "amd64", "os": "linux", "created": created,
            "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"], **config},
            "rootfs": {"type": "layers", "diff_ids": [_digest(l) for l in layers]},
            "history": history}


@dataclass
class Crafted:
    config: bytes
    manifest: bytes
    blobs: dict[str, bytes]
    layers: list[bytes]  # uncompressed

    @property
    def config_digest(self) -> str:
        return _digest(self.config)

    @property
    def manifest_digest(self) -> str:
        return _digest(self.manifest)


def craft(layers: list[bytes], *, compression: str = "gzip", config: dict | None = None,
          annotations: dict | None = None) -> Crafted:
    cfg = config if config is not None else image_config(layers)
    cfg_bytes = json.dumps(cfg, sort_keys=True, separators=(",", ":")).encode()
    blobs = {_digest(cfg_bytes): cfg_bytes}
    descs = []
    for l in layers:
        data, media = _compress(l, compression)
        blobs[_digest(data)] = data
        descs.append({"mediaType": media, "digest": _digest(data), "size": len(data)})
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": _digest(cfg_bytes), "size": len(cfg_bytes)},
                "layers": descs}
    if annotations:
        manifest["annotations"] = annotations
    m_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    blobs[_digest(m_bytes)] = m_bytes
    return Crafted(cfg_bytes, m_bytes, blobs, list(layers))


def _index(c: Crafted, name: str) -> bytes:
    return json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": c.manifest_digest, "size": len(c.manifest),
        "annotations": {"org.opencontainers.image.ref.name": name}}]}).encode()


def write_layout(dest: Path, c: Crafted, name: str = "example.org/crafted:1") -> Path:
    """An OCI image layout directory."""
    (dest / "blobs" / "sha256").mkdir(parents=True)
    (dest / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (dest / "index.json").write_bytes(_index(c, name))
    for d, data in c.blobs.items():
        (dest / "blobs" / "sha256" / d.split(":")[1]).write_bytes(data)
    return dest


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def write_oci_archive(path: Path, c: Crafted, name: str = "example.org/crafted:1") -> Path:
    with tarfile.open(path, "w") as tf:
        _add(tf, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        _add(tf, "index.json", _index(c, name))
        for d, data in c.blobs.items():
            _add(tf, f"blobs/sha256/{d.split(':')[1]}", data)
    return path


def write_docker_archive(path: Path, c: Crafted, tag: str = "example.org/crafted:1") -> Path:
    """A docker-archive (`docker save` form): uncompressed layer.tar members."""
    with tarfile.open(path, "w") as tf:
        cfg_name = c.config_digest.split(":")[1] + ".json"
        _add(tf, cfg_name, c.config)
        names = []
        for i, l in enumerate(c.layers):
            n = f"{i:02d}/layer.tar"
            _add(tf, n, l)
            names.append(n)
        _add(tf, "manifest.json", json.dumps(
            [{"Config": cfg_name, "RepoTags": [tag], "Layers": names}]).encode())
    return path
