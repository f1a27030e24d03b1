"""Red-team: `lamina load` of a hostile archive whose JSON names the same member
over and over. The documents are capped (32 MiB) and every member is found inside
the archive only (test_archive covers '../' and absolute names, links, duplicates),
but the work done per *mention* was not bounded: a manifest.json listing one 256 KiB
config 2 000 times (or a layer through 200 links, or index.json one nested index
2 000 times) made load read, hash and decode it every time - with 32 MiB documents
and big members, hours of work and gigabytes of memory from a small file. Now each
member is read once: the bytes read from the archive stay proportional to its size.

The archives are written here with Python's tarfile, not with lamina."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile

import pytest

from lamina.store import archive_tar, oci
from lamina.store.archive import load
from lamina.store.store import Store


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(size: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("data")
        info.size = size
        tf.addfile(info, io.BytesIO(bytes(range(256)) * (size // 256)))
    return buf.getvalue()


def config(diff_ids: list[str], pad: int = 0) -> bytes:
    host = oci.host_platform()
    doc = {"architecture": host["architecture"], "os": host["os"],
           "config": {"Labels": {"pad": "x" * pad}},
           "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    return json.dumps(doc).encode()


def write_tar(path, files: dict[str, bytes], links: dict[str, str] = {}) -> None:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in links.items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tf.addfile(info)


@pytest.fixture
def bytes_read(monkeypatch):
    total = [0]
    real = archive_tar._BoundedReader.read

    def counting(self, n=-1):
        data = real(self, n)
        total[0] += len(data)
        return data

    monkeypatch.setattr(archive_tar._BoundedReader, "read", counting)
    return total


def test_one_config_listed_thousands_of_times_is_read_once(tmp_path, bytes_read):
    layer = layer_tar(4096)
    cfg = config([sha(layer)], pad=256 << 10)
    links = {f"alias{i}.json": "c.json" for i in range(10)}
    entries = [{"Config": "c.json" if i % 2 else f"alias{i % 10}.json", "Layers": ["l.tar"],
                "RepoTags": [f"app:{i % 3}"]} for i in range(2000)]
    path = tmp_path / "a.tar"
    write_tar(path, {"c.json": cfg, "l.tar": layer,
                     "manifest.json": json.dumps(entries).encode()}, links)
    loaded = load(Store(tmp_path / "store"), path)
    assert [l.config_digest for l in loaded] == [sha(cfg)]
    assert sorted(loaded[0].names) == [f"docker.io/library/app:{i}" for i in range(3)]
    assert bytes_read[0] < 3 * path.stat().st_size


def test_one_layer_named_through_many_links_is_read_once(tmp_path, bytes_read):
    layer = layer_tar(1 << 20)
    links = {f"s{i}/layer.tar": "../real/layer.tar" for i in range(200)}
    cfg = config([sha(layer)] * 200)
    manifest = [{"Config": "c.json", "Layers": list(links), "RepoTags": ["app:1"]}]
    path = tmp_path / "a.tar"
    write_tar(path, {"real/layer.tar": layer, "c.json": cfg,
                     "manifest.json": json.dumps(manifest).encode()}, links)
    loaded = load(Store(tmp_path / "store"), path)
    assert len(loaded[0].image.layers) == 200
    assert {l.diff_id for l in loaded[0].image.layers} == {sha(layer)}
    assert bytes_read[0] < 3 * path.stat().st_size


def test_one_nested_index_listed_thousands_of_times_is_read_once(tmp_path, bytes_read):
    layer = layer_tar(4096)
    cfg = config([sha(layer)])
    manifest = json.dumps({"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
                           "config": {"mediaType": oci.OCI_CONFIG, "digest": sha(cfg), "size": len(cfg)},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                       "digest": sha(layer), "size": len(layer)}]}).encode()
    host = oci.host_platform()
    nested = json.dumps({"schemaVersion": 2, "mediaType": oci.OCI_INDEX,
                         "annotations": {"pad": "x" * (256 << 10)},
                         "manifests": [{"mediaType": oci.OCI_MANIFEST, "digest": sha(manifest),
                                        "size": len(manifest),
                                        "platform": {"os": host["os"],
                                                     "architecture": host["architecture"]}}]}).encode()
    top = json.dumps({"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": [
        {"mediaType": oci.OCI_INDEX, "digest": sha(nested), "size": len(nested)}] * 2000}).encode()
    blobs = {f"blobs/sha256/{sha(b)[7:]}": b for b in (layer, cfg, manifest, nested)}
    path = tmp_path / "a.tar"
    write_tar(path, {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}', "index.json": top, **blobs})
    loaded = load(Store(tmp_path / "store"), path)
    assert [l.manifest_digest for l in loaded] == [sha(manifest)]
    assert bytes_read[0] < 3 * path.stat().st_size


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_compressed_zeros_after_the_archive_are_not_copied_to_disk(tmp_path, kind):
    # a tiny archive, then 256 MiB of zeros that compress to almost nothing: only the
    # tar up to its end-of-archive marker is decompressed into the temp file
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("manifest.json")
        info.size = 2
        tf.addfile(info, io.BytesIO(b"[]"))
    path = tmp_path / "bomb.tar.z"
    zeros = b"\0" * (1 << 20)
    if kind == "gzip":
        import gzip
        with gzip.open(path, "wb", compresslevel=1) as g:
            g.write(buf.getvalue())
            for _ in range(256):
                g.write(zeros)
    else:
        import zstandard
        with open(path, "wb") as raw, zstandard.ZstdCompressor().stream_writer(raw) as z:
            z.write(buf.getvalue())
            for _ in range(256):
                z.write(zeros)
    assert path.stat().st_size < 2 << 20
    with archive_tar.ArchiveReader(path, tmp_dir=tmp_path) as reader:
        assert reader.read("manifest.json") == b"[]"
        assert os.fstat(reader._file.fileno()).st_size < 1 << 20
