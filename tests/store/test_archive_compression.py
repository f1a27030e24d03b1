"""OCI export compression (store.recompress through store.archive.save): zstd layers
of the store are exported as gzip by default, made once and recorded as another blob
of the layer; `compression="zstd"` exports the stored image as it is. Expected bytes
come from Python's gzip/zstandard and the OCI spec, not from the code under test."""

from __future__ import annotations

import gzip
import io
import json
import random
import tarfile

import pytest
import zstandard

from lamina.store import compression, oci, recompress
from lamina.store.archive import load, save
from lamina.store.errors import CorruptContent, StoreError
from lamina.store.store import Store
from tests.store.test_archive import committed, member_bytes, sha

LAYERS = [{"bin/tool": b"\x7fELF" + random.Random(0).randbytes(3000), "etc/motd": b"hi\n" * 200},
          {"etc/conf": b"k=v\n"}]
GZIP = oci.OCI_LAYER_GZIP
ZSTD = oci.OCI_LAYER_ZSTD


@pytest.fixture
def store(tmp_path) -> Store:
    s = Store(tmp_path / "src")
    committed(s, tmp_path / "trees", LAYERS, "app:1.0")  # zstd, the store's default
    return s


def blobs_of_layer(store: Store, diff_id: str) -> dict[str, str]:
    return {b.media_type: b.digest for b in store.layer_blobs(diff_id)}


def archive_manifest(data: bytes) -> tuple[str, dict]:
    index = json.loads(member_bytes(data, "index.json"))
    digest = index["manifests"][0]["digest"]
    return digest, json.loads(member_bytes(data, "blobs/sha256/" + digest[7:]))


def test_default_oci_export_has_gzip_layers_and_the_same_config(store, tmp_path):
    img = store.resolve("app:1.0")
    assert [l.media_type for l in img.layers] == [ZSTD, ZSTD]
    path = tmp_path / "a.tar"
    save(store, ["app:1.0"], path, fmt="oci")
    data = path.read_bytes()
    digest, manifest = archive_manifest(data)
    assert sha(member_bytes(data, "blobs/sha256/" + digest[7:])) == digest
    assert digest != img.manifest_digest  # other blobs, so another manifest
    assert manifest["config"] == img.manifest["config"]  # same image ID
    assert member_bytes(data, "blobs/sha256/" + img.config_digest[7:]) == store.blobs.read(img.config_digest)
    diff_ids = json.loads(store.blobs.read(img.config_digest))["rootfs"]["diff_ids"]
    for desc, diff_id in zip(manifest["layers"], diff_ids):
        assert set(desc) == {"mediaType", "digest", "size"} and desc["mediaType"] == GZIP
        blob = member_bytes(data, "blobs/sha256/" + desc["digest"][7:])
        assert blob[:2] == b"\x1f\x8b" and len(blob) == desc["size"] and sha(blob) == desc["digest"]
        assert sha(gzip.decompress(blob)) == diff_id
    # no zstd blob is left in the archive
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        names = {m.name for m in tf.getmembers() if m.isreg()}
    assert not any(member_bytes(data, n).startswith(compression.ZSTD_MAGIC) for n in names)
    # the rest of the manifest is the stored one
    assert {k: v for k, v in manifest.items() if k != "layers"} == \
        {k: v for k, v in img.manifest.items() if k != "layers"}


def test_gzip_export_is_deterministic_across_saves_and_stores(store, tmp_path):
    other = Store(tmp_path / "other")
    committed(other, tmp_path / "trees2", LAYERS, "app:1.0")
    outs = [tmp_path / "1.tar", tmp_path / "2.tar", tmp_path / "3.tar"]
    save(store, ["app:1.0"], outs[0], fmt="oci")   # recompresses
    save(store, ["app:1.0"], outs[1], fmt="oci")   # reuses the recorded gzip blobs
    save(other, ["app:1.0"], outs[2], fmt="oci")   # another store, same inputs
    assert outs[0].read_bytes() == outs[1].read_bytes() == outs[2].read_bytes()


def test_gzip_blob_is_recorded_once_and_reused(store, tmp_path, monkeypatch):
    img = store.resolve("app:1.0")
    save(store, ["app:1.0"], tmp_path / "1.tar", fmt="oci")
    for l in img.layers:
        kinds = blobs_of_layer(store, l.diff_id)
        assert set(kinds) == {ZSTD, GZIP}
        assert store.blobs.exists(kinds[GZIP])
        # the build engine keeps using the zstd blob
        assert store.layer(l.diff_id).digest == l.digest
    blobs_before = sorted(store.blobs.digests())
    written = []
    real_writer = store.blobs.writer
    monkeypatch.setattr(store.blobs, "writer", lambda: written.append(1) or real_writer())
    monkeypatch.setattr(compression, "compress_stream",
                        lambda *a, **k: pytest.fail("second save recompressed a layer"))
    save(store, ["app:1.0"], tmp_path / "2.tar", fmt="oci")
    assert written == []  # no blob written at all
    assert sorted(store.blobs.digests()) == blobs_before
    assert (tmp_path / "1.tar").read_bytes() == (tmp_path / "2.tar").read_bytes()


def test_compression_zstd_exports_the_stored_image(store, tmp_path):
    img = store.resolve("app:1.0")
    path = tmp_path / "z.tar"
    [written] = save(store, ["app:1.0"], path, fmt="oci", compression="zstd")
    data = path.read_bytes()
    digest, _ = archive_manifest(data)
    assert digest == written.manifest_digest == img.manifest_digest
    assert member_bytes(data, "blobs/sha256/" + digest[7:]) == store.blobs.read(img.manifest_digest)
    for l in img.layers:
        blob = member_bytes(data, "blobs/sha256/" + l.digest[7:])
        assert blob == store.blobs.read(l.digest)
        assert sha(zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob)).read()) == l.diff_id
        assert set(blobs_of_layer(store, l.diff_id)) == {ZSTD}  # nothing made


def test_gzip_and_plain_layers_are_exported_as_stored(tmp_path):
    s = Store(tmp_path / "s")
    img = committed(s, tmp_path / "t", LAYERS, "g:1", compression="gzip")
    [w] = save(s, ["g:1"], tmp_path / "g.tar", fmt="oci")
    assert w.manifest_digest == img.manifest_digest
    img = committed(s, tmp_path / "u", LAYERS, "u:1", compression="none")
    [w] = save(s, ["u:1"], tmp_path / "u.tar", fmt="oci")
    assert w.manifest_digest == img.manifest_digest


def test_a_layer_shared_by_two_images_is_converted_once(store, tmp_path, monkeypatch):
    base = store.resolve("app:1.0")
    cfg = oci.build_config(diff_ids=[base.layers[0].diff_id], history=[{"created_by": "x"}],
                           container_config={"Cmd": ["/bin/tool"]}, created="1970-01-01T00:00:00Z")
    store.commit_image(cfg, [base.layers[0]], ["second:1"])
    calls = []
    real = compression.compress_stream
    monkeypatch.setattr(compression, "compress_stream", lambda kind, out: calls.append(kind) or real(kind, out))
    images = save(store, ["app:1.0", "second:1"], tmp_path / "two.tar", fmt="oci")
    assert calls == ["gzip", "gzip"]  # two distinct layers, the shared one once
    assert images[0].layers[0].digest == images[1].layers[0].digest


def test_parallel_conversion_gives_the_same_blobs_as_one_thread(tmp_path):
    layers = [{f"f{i}": random.Random(i).randbytes(50_000) + b"x" * 50_000} for i in range(5)]
    made = []
    for workers in (1, 4):
        s = Store(tmp_path / f"s{workers}")
        img = committed(s, tmp_path / f"t{workers}", layers, "p:1")
        made.append(recompress.recompress_layers(s, img.layers, "gzip", workers=workers))
        assert all(s.blobs.exists(b.digest) for b in made[-1].values())
        assert {d: blobs_of_layer(s, d)[GZIP] for d in made[-1]} == {d: b.digest for d, b in made[-1].items()}
    assert made[0] == made[1] and len(made[0]) == 5


def test_store_layer_prefers_the_default_compression_so_builds_do_not_change(tmp_path):
    """A tiny layer gzips smaller than it zstds: the old 'smallest blob' rule would hand
    the build the export's gzip blob and change the rebuilt image's manifest."""
    s = Store(tmp_path / "s")
    img = committed(s, tmp_path / "t", [{"a": b"a"}], "tiny:1")
    save(s, ["tiny:1"], tmp_path / "x.tar", fmt="oci")
    [layer] = img.layers
    sizes = {b.media_type: b.size for b in s.layer_blobs(layer.diff_id)}
    assert sizes[GZIP] < sizes[ZSTD]  # the case that matters
    assert s.layer(layer.diff_id) == layer
    # "rebuild from cache": commit the same config over the layers Store.layer gives
    again = s.commit_image(img.config, [s.layer(l.diff_id) for l in img.layers], ["tiny:2"])
    assert again.manifest_digest == img.manifest_digest


def test_gc_keeps_and_fsck_checks_the_export_blob(store, tmp_path):
    img = store.resolve("app:1.0")
    save(store, ["app:1.0"], tmp_path / "a.tar", fmt="oci")
    gz = [blobs_of_layer(store, l.diff_id)[GZIP] for l in img.layers]
    store.gc()
    assert all(store.blobs.exists(d) for d in gz)
    assert store.fsck(deep=True).ok
    # a damaged export blob is a problem fsck names
    path = store.blobs.path(gz[0])
    path.chmod(0o644)
    path.write_bytes(path.read_bytes()[:-3] + b"xyz")
    rep = store.fsck(deep=True)
    assert not rep.ok and any(gz[0] in p for p in rep.problems)
    path.unlink()
    # once its image is gone, gc removes it with the layer's other blobs
    store.remove_image("app:1.0")
    store.gc()
    assert not any(store.blobs.exists(d) for d in gz[1:] + [l.digest for l in img.layers])
    assert store.db.query("SELECT * FROM layer_blobs") == []


def test_a_missing_recorded_gzip_blob_is_made_again(store, tmp_path):
    img = store.resolve("app:1.0")
    save(store, ["app:1.0"], tmp_path / "1.tar", fmt="oci")
    gz = blobs_of_layer(store, img.layers[0].diff_id)[GZIP]
    store.blobs.delete(gz)
    save(store, ["app:1.0"], tmp_path / "2.tar", fmt="oci")
    assert store.blobs.exists(gz)
    assert (tmp_path / "1.tar").read_bytes() == (tmp_path / "2.tar").read_bytes()


@pytest.mark.parametrize("damage", ["flip", "cut"])
def test_corrupt_stored_layer_fails_the_export_and_records_nothing(store, tmp_path, damage):
    img = store.resolve("app:1.0")
    layer = img.layers[0]
    path = store.blobs.path(layer.digest)
    raw = path.read_bytes()
    path.chmod(0o644)
    path.write_bytes(raw[:-20] if damage == "cut" else raw[:40] + bytes([raw[40] ^ 1]) + raw[41:])
    with pytest.raises(CorruptContent, match=layer.diff_id):
        save(store, ["app:1.0"], tmp_path / "x.tar", fmt="oci")
    assert not list(tmp_path.glob("*x.tar*"))
    assert set(blobs_of_layer(store, layer.diff_id)) == {ZSTD}
    assert [n for n in (store.root / "tmp").iterdir() if n.name.startswith("blob-")] == []


def test_compression_is_checked(store, tmp_path):
    with pytest.raises(StoreError, match="oci format only"):
        save(store, ["app:1.0"], tmp_path / "d.tar", fmt="docker", compression="gzip")
    with pytest.raises(StoreError, match="unknown export compression"):
        save(store, ["app:1.0"], tmp_path / "d.tar", fmt="oci", compression="xz")
    assert not list(tmp_path.glob("*d.tar*"))


def test_docker_manifest_gets_docker_gzip_layer_types():
    layer = recompress.LayerBlob(diff_id="sha256:" + "1" * 64, digest="sha256:" + "2" * 64, size=7,
                                 media_type=GZIP, uncompressed_size=9)
    docker = json.dumps({"schemaVersion": 2, "mediaType": oci.DOCKER_MANIFEST,
                         "config": {"mediaType": oci.DOCKER_CONFIG, "digest": "sha256:" + "3" * 64, "size": 2},
                         "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.zstd",
                                     "digest": "sha256:" + "4" * 64, "size": 5,
                                     "annotations": {"io.github.containers.zstd-chunked.manifest-position": "1"}},
                                    {"mediaType": oci.DOCKER_LAYER_GZIP, "digest": "sha256:" + "5" * 64,
                                     "size": 6}]}).encode()
    out = json.loads(recompress.rewrite_manifest(docker, [layer, None]))
    assert out["layers"] == [{"mediaType": oci.DOCKER_LAYER_GZIP, "digest": layer.digest, "size": 7},
                             json.loads(docker)["layers"][1]]
    assert out["mediaType"] == oci.DOCKER_MANIFEST and out["config"] == json.loads(docker)["config"]


def test_gzip_export_of_a_large_layer_keeps_memory_bounded(tmp_path):
    import tracemalloc

    s = Store(tmp_path / "s")
    committed(s, tmp_path / "t", [{"big": random.Random(2).randbytes(16 << 20)}], "big:1")
    tracemalloc.start()
    try:
        save(s, ["big:1"], tmp_path / "big.tar", fmt="oci")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (tmp_path / "big.tar").stat().st_size > 16 << 20
    assert peak < 12 << 20, f"peak Python heap {peak} bytes"
    [loaded] = load(Store(tmp_path / "d"), tmp_path / "big.tar")
    assert loaded.config_digest == s.resolve("big:1").config_digest
