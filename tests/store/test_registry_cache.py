"""The build cache artifact of store.registry.cache without a registry: the records
document round-trips and refuses malformed input, merging keeps whole records,
the artifact manifest is an OCI v1.1 artifact whose digests are those of its
bytes, and an OCI layout written and read back gives verified layers (a cache
that lies about a layer's diff_id is refused and leaves nothing behind)."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given, settings, strategies as st

from lamina.store.errors import CorruptContent
from lamina.store.layers import LayerBlob
from lamina.store.registry.cache import (ARTIFACT_TYPE, CONFIG_TYPE, RECORDS_TYPE, CacheData, CacheRecord,
                                         artifact, decode_records, encode_records, import_layer, merge)
from lamina.store.registry.cachelayout import LayoutCacheSource, write_layout
from lamina.store.store import Store

HEX = "0123456789abcdef"
digests = st.text(HEX, min_size=64, max_size=64).map(lambda h: "sha256:" + h)
layers = st.builds(LayerBlob, diff_id=digests, digest=digests, size=st.integers(0, 1 << 40),
                   media_type=st.sampled_from(["application/vnd.oci.image.layer.v1.tar+gzip",
                                               "application/vnd.oci.image.layer.v1.tar+zstd"]),
                   uncompressed_size=st.integers(0, 1 << 40))
inputs = st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3).map(
    lambda d: json.dumps(d, sort_keys=True, ensure_ascii=False))


@st.composite
def cache_data(draw):
    table = draw(st.lists(layers, max_size=4, unique_by=lambda l: l.diff_id))
    records = draw(st.lists(st.builds(
        CacheRecord, key=st.text(HEX, min_size=64, max_size=64),
        diff_id=st.sampled_from([None] + [l.diff_id for l in table]),
        parent=st.text(max_size=20), position=st.text(max_size=20), inputs=inputs,
        created=st.integers(0, 2_000_000_000).map(float)), max_size=6, unique_by=lambda r: r.key))
    used = {r.diff_id for r in records}
    return CacheData(records=tuple(records), layers={l.diff_id: l for l in table if l.diff_id in used})


@settings(max_examples=60, deadline=None)
@given(cache_data())
def test_records_round_trip(data):
    back = decode_records(encode_records(data), "test")
    assert back.records == data.records
    assert dict(back.layers) == dict(data.layers)


@settings(max_examples=60, deadline=None)
@given(cache_data(), cache_data())
def test_merge_keeps_new_records_and_only_referenced_layers(new, old):
    merged = merge(new, old)
    assert merged.records[:len(new.records)] == new.records
    keys = [r.key for r in merged.records]
    assert len(keys) == len(set(keys))
    assert set(keys) == {r.key for r in new.records} | {r.key for r in old.records}
    assert set(merged.layers) == {r.diff_id for r in merged.records if r.diff_id}
    decode_records(encode_records(merged), "merged")  # still a valid document


def test_merge_limit_drops_the_oldest():
    new = CacheData(records=(CacheRecord("a" * 64, None, created=5.0),))
    old = CacheData(records=tuple(CacheRecord(c * 64, None, created=t)
                                  for c, t in (("b", 1.0), ("c", 3.0), ("d", 2.0))))
    assert [r.key[0] for r in merge(new, old, limit=3).records] == ["a", "c", "d"]


GOOD_LAYER = {"diffID": "sha256:" + "1" * 64, "digest": "sha256:" + "2" * 64, "size": 3,
              "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "uncompressedSize": 9}


@pytest.mark.parametrize("doc,message", [
    ({"schema": "other", "layers": [], "records": []}, "cache schema"),
    ({"schema": "lamina.cache.v1", "records": []}, "without a layer table"),
    ({"schema": "lamina.cache.v1", "layers": [], "records": {}}, "not a list"),
    ({"schema": "lamina.cache.v1", "layers": [], "records": [{"key": "A" * 64}]}, "bad key"),
    ({"schema": "lamina.cache.v1", "layers": [], "records": [{"key": "a" * 64, "layer": "sha256:x"}]},
     "bad digest"),
    ({"schema": "lamina.cache.v1", "layers": [],
      "records": [{"key": "a" * 64, "layer": GOOD_LAYER["diffID"]}]}, "is not in the cache"),
    ({"schema": "lamina.cache.v1", "layers": [], "records": [{"key": "a" * 64, "inputs": []}]},
     "inputs is not an object"),
    ({"schema": "lamina.cache.v1", "layers": [dict(GOOD_LAYER, mediaType="text/plain")], "records": []},
     "unsupported media type"),
    ({"schema": "lamina.cache.v1", "layers": [dict(GOOD_LAYER, size=-1)], "records": []}, "bad number"),
    ({"schema": "lamina.cache.v1", "layers": [], "records": [{"key": "a" * 64, "parent": 7}]},
     "not a string"),
])
def test_malformed_records_are_refused(doc, message):
    with pytest.raises(CorruptContent, match=message):
        decode_records(json.dumps(doc).encode(), "test")


def test_not_json_is_refused():
    with pytest.raises(CorruptContent, match="not valid JSON"):
        decode_records(b'{"schema":', "test")


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_artifact_manifest_is_an_oci_artifact():
    layer = LayerBlob("sha256:" + "1" * 64, "sha256:" + "2" * 64, 10,
                      "application/vnd.oci.image.layer.v1.tar+gzip", 20)
    data = CacheData(records=(CacheRecord("a" * 64, layer.diff_id, "scratch"),), layers={layer.diff_id: layer})
    config, records, manifest = artifact(data, "max")
    m = json.loads(manifest)
    assert m["schemaVersion"] == 2 and m["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert m["artifactType"] == ARTIFACT_TYPE
    assert m["config"] == {"mediaType": CONFIG_TYPE, "digest": _sha(config), "size": len(config)}
    assert json.loads(config) == {"mode": "max", "schema": "lamina.cache.v1"}
    assert m["layers"] == [{"mediaType": layer.media_type, "digest": layer.digest, "size": 10},
                           {"mediaType": RECORDS_TYPE, "digest": _sha(records), "size": len(records)}]


def _stored_layer(store: Store, tmp_path, name: str) -> LayerBlob:
    src = tmp_path / name
    src.mkdir()
    (src / "file").write_text(name)
    return store.write_layer(src, compression="gzip")


def test_layout_round_trip_and_verified_import(tmp_path):
    source = Store(tmp_path / "a")
    layer = _stored_layer(source, tmp_path, "one")
    data = CacheData(records=(CacheRecord("a" * 64, layer.diff_id, "scratch", "Dockerfile:stage-0:1",
                                          '{"instruction": "COPY"}', 1.0),
                              CacheRecord("b" * 64, None, "step:" + "a" * 64)),
                     layers={layer.diff_id: layer})
    layout = tmp_path / "layout"
    write_layout(source, layout, data, mode="min", provide=lambda l: None)
    index = json.loads((layout / "index.json").read_text())
    assert index["manifests"][0]["artifactType"] == ARTIFACT_TYPE
    for path in (layout / "blobs" / "sha256").iterdir():  # every blob is named by its sha256
        assert _sha(path.read_bytes()) == "sha256:" + path.name
    read = LayoutCacheSource(layout).load()
    assert read.records == data.records

    target = Store(tmp_path / "b")
    got = import_layer(target, LayoutCacheSource(layout), read.layers[layer.diff_id])
    assert got.diff_id == layer.diff_id and got.digest == layer.digest
    assert target.layer(layer.diff_id).digest == layer.digest


def test_a_cache_lying_about_a_diff_id_is_refused(tmp_path):
    source = Store(tmp_path / "a")
    layer = _stored_layer(source, tmp_path, "one")
    other = _stored_layer(source, tmp_path, "two")
    lie = LayerBlob(other.diff_id, layer.digest, layer.size, layer.media_type, layer.uncompressed_size)
    layout = tmp_path / "layout"
    write_layout(source, layout, CacheData(records=(CacheRecord("a" * 64, lie.diff_id),),
                                           layers={lie.diff_id: lie}), provide=lambda l: None)
    target = Store(tmp_path / "b")
    with pytest.raises(CorruptContent, match="the cache says"):
        import_layer(target, LayoutCacheSource(layout), LayoutCacheSource(layout).load().layers[lie.diff_id])
    assert not target.blobs.exists(layer.digest)


def test_mode_max_merges_the_layout_already_there(tmp_path):
    store = Store(tmp_path / "a")
    layout = tmp_path / "layout"
    first = CacheData(records=(CacheRecord("a" * 64, None, created=1.0),))
    second = CacheData(records=(CacheRecord("b" * 64, None, created=2.0),))
    write_layout(store, layout, first, mode="max", provide=lambda l: None)
    write_layout(store, layout, second, mode="max", provide=lambda l: None)
    assert [r.key[0] for r in LayoutCacheSource(layout).load().records] == ["b", "a"]
    write_layout(store, layout, first, mode="min", provide=lambda l: None)
    assert [r.key[0] for r in LayoutCacheSource(layout).load().records] == ["a"]
