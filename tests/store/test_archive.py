"""docker-archive and OCI archive: writing (structure, determinism), reading by name
(links, hostile names, truncation), and load/save through the Store (digests kept,
diff_ids checked, failed loads leave the store unchanged)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import subprocess
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lamina.store import oci
from lamina.store.archive import (detect_format, export_images, ingest_layer, load, read_images, save,
                           write_archive)
from lamina.store.archive_tar import ArchivedLayer, ArchiveReader, ExportImage, TarWriter
from lamina.store.blobs import BlobStore
from lamina.store.docker_archive import chain_ids, v1_ids
from lamina.store.errors import CorruptContent, StoreError
from lamina.store.layers import LayerBlob, write_layer

EPOCH = "1970-01-01T00:00:00Z"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_tree(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir(parents=True)
    for name, data in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        os.utime(p, (0, 0))
    return root


def make_image(blobs: BlobStore, tmp: Path, layer_files: list[dict[str, bytes]], *,
               compression: str = "zstd", names: tuple[str, ...] = (), cmd=("/bin/sh",)) -> ExportImage:
    """An image built with the byte layer and oci.py (independent of the archive code)."""
    tmp.mkdir(parents=True, exist_ok=True)
    layers = []
    for i, files in enumerate(layer_files):
        d = make_tree(tmp / f"l{len(list(tmp.iterdir()))}-{i}", files)
        layers.append(write_layer(blobs, d, compression=compression, source_date_epoch=0))
    cfg = oci.build_config(diff_ids=[l.diff_id for l in layers],
                           history=[{"created": EPOCH, "created_by": f"layer {i}"} for i in range(len(layers))],
                           container_config={"Cmd": list(cmd)}, created=EPOCH,
                           platform_={"architecture": "amd64", "os": "linux"})
    config = oci.encode(cfg, "config")
    config_digest = blobs.put(config)
    manifest = oci.encode(oci.build_manifest(
        oci.Descriptor(oci.OCI_CONFIG, config_digest, len(config)),
        [oci.Descriptor(l.media_type, l.digest, l.size) for l in layers]), "manifest")
    manifest_digest = blobs.put(manifest)
    return ExportImage(manifest_digest, manifest, config_digest, config, tuple(layers), names)


def archive_bytes(images, blobs, fmt) -> bytes:
    buf = io.BytesIO()
    write_archive(buf, images, blobs, fmt)
    return buf.getvalue()


def members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return {m.name: m for m in tf.getmembers()}


def member_bytes(data: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return tf.extractfile(name).read()


@pytest.fixture
def blobs(tmp_path) -> BlobStore:
    return BlobStore(tmp_path / "store")


@pytest.fixture
def image(blobs, tmp_path) -> ExportImage:
    return make_image(blobs, tmp_path / "trees", [
        {"bin/hello": b"#!/bin/sh\necho hello\n", "etc/os-release": b"ID=test\n"},
        {"etc/os-release": b"ID=changed\n"},
    ], names=("docker.io/library/app:1.0",))


# -- docker-archive writing ------------------------------------------------------

def test_docker_archive_layout(image, blobs):
    data = archive_bytes([image], blobs, "docker")
    ms = members(data)
    ids = v1_ids([l.diff_id for l in image.layers])
    cfg_name = image.config_digest.split(":")[1] + ".json"
    expected = {cfg_name, "manifest.json", "repositories"}
    for v1 in ids:
        expected |= {v1, f"{v1}/VERSION", f"{v1}/json", f"{v1}/layer.tar"}
    assert set(ms) == expected
    manifest = json.loads(member_bytes(data, "manifest.json"))
    assert manifest == [{"Config": cfg_name, "RepoTags": ["docker.io/library/app:1.0"],
                         "Layers": [f"{v1}/layer.tar" for v1 in ids]}]
    assert json.loads(member_bytes(data, "repositories")) == {"docker.io/library/app": {"1.0": ids[-1]}}
    assert member_bytes(data, cfg_name) == image.config
    # each layer.tar is the uncompressed layer: its sha256 is the diff_id from the config
    diff_ids = json.loads(image.config)["rootfs"]["diff_ids"]
    assert [sha(member_bytes(data, f"{v1}/layer.tar")) for v1 in ids] == diff_ids
    assert member_bytes(data, f"{ids[0]}/VERSION") == b"1.0"
    legacy = json.loads(member_bytes(data, f"{ids[1]}/json"))
    assert legacy["id"] == ids[1] and legacy["parent"] == ids[0]


def test_archives_have_fixed_headers_and_walk_order(image, blobs):
    for fmt in ("docker", "oci"):
        data = archive_bytes([image], blobs, fmt)
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            infos = tf.getmembers()
        for m in infos:
            assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")
            assert m.mode == (0o755 if m.isdir() else 0o644)
            assert m.isdir() or m.isreg()
        names = [m.name for m in infos]
        assert names == sorted(names, key=lambda n: n.split("/"))
        assert data[-1024:] == b"\0" * 1024


def test_gnu_tar_lists_the_archive(image, blobs, tmp_path):
    path = tmp_path / "a.tar"
    path.write_bytes(archive_bytes([image], blobs, "docker"))
    out = subprocess.run(["tar", "-tvf", str(path)], capture_output=True, text=True, check=True)
    assert "manifest.json" in out.stdout and out.stderr == ""


def test_same_image_same_bytes_from_independent_stores(tmp_path):
    files = [{"a": b"x" * 5000, "d/b": b"y"}, {"c": b"z"}]
    outs = {}
    for k in ("one", "two"):
        bs = BlobStore(tmp_path / k / "store")
        img = make_image(bs, tmp_path / k / "trees", files, names=("docker.io/library/x:1",))
        outs[k] = (archive_bytes([img], bs, "docker"), archive_bytes([img], bs, "oci"))
    assert outs["one"] == outs["two"]
    assert outs["one"][0] != outs["one"][1]


def test_chain_ids_follow_the_spec():
    # image-spec config.md: ChainID(L0|L1) = sha256(ChainID(L0) + " " + DiffID(L1))
    a, b = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    assert chain_ids([a, b]) == [a, "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()]
    # positions with the same diff_id get distinct directories
    assert len(set(v1_ids([a, a, a]))) == 3


def test_shared_base_layers_are_written_once(blobs, tmp_path):
    base = {"base": b"base layer"}
    one = make_image(blobs, tmp_path / "t", [base, {"one": b"1"}], names=("docker.io/library/one:latest",))
    two = make_image(blobs, tmp_path / "t", [base, {"two": b"2"}], names=("docker.io/library/two:latest",))
    data = archive_bytes([one, two], blobs, "docker")
    layer_members = [n for n in members(data) if n.endswith("/layer.tar")]
    assert len(layer_members) == 3
    manifest = json.loads(member_bytes(data, "manifest.json"))
    assert manifest[0]["Layers"][0] == manifest[1]["Layers"][0]
    assert [m["RepoTags"] for m in manifest] == [["docker.io/library/one:latest"], ["docker.io/library/two:latest"]]


def test_untagged_image_has_null_repotags_and_no_repositories(blobs, tmp_path):
    img = make_image(blobs, tmp_path / "t", [{"f": b"1"}])
    data = archive_bytes([img], blobs, "docker")
    assert json.loads(member_bytes(data, "manifest.json"))[0]["RepoTags"] is None
    assert "repositories" not in members(data)


def test_docker_archive_detects_corrupt_store_blob(image, blobs):
    layer = image.layers[0]
    path = blobs.path(layer.digest)
    os.chmod(path, 0o644)
    path.write_bytes(b"\x28\xb5\x2f\xfd" + b"garbage")
    with pytest.raises(StoreError):
        archive_bytes([image], blobs, "docker")


# -- OCI archive writing ---------------------------------------------------------

def test_oci_archive_layout(image, blobs):
    data = archive_bytes([image], blobs, "oci")
    ms = members(data)
    blob_names = {f"blobs/sha256/{d.split(':')[1]}" for d in
                  [image.manifest_digest, image.config_digest] + [l.digest for l in image.layers]}
    assert set(ms) == {"oci-layout", "index.json", "blobs", "blobs/sha256"} | blob_names
    assert json.loads(member_bytes(data, "oci-layout")) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(member_bytes(data, "index.json"))
    assert index["schemaVersion"] == 2
    assert index["manifests"] == [{
        "mediaType": oci.OCI_MANIFEST, "digest": image.manifest_digest, "size": len(image.manifest),
        "annotations": {"io.containerd.image.name": "docker.io/library/app:1.0",
                        "org.opencontainers.image.ref.name": "docker.io/library/app:1.0"}}]
    for name in blob_names:  # content addressed: every blob hashes to its name
        assert sha(member_bytes(data, name)) == "sha256:" + name.rsplit("/", 1)[1]


# -- reading by name ---------------------------------------------------------------

def craft_tar(path: Path, entries) -> Path:
    """entries: (name, bytes) for files, (name, '->', target) symlinks, (name, '=>', target) hard links."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            info = tarfile.TarInfo(e[0])
            if len(e) == 3:
                info.type = tarfile.SYMTYPE if e[1] == "->" else tarfile.LNKTYPE
                info.linkname = e[2]
                tf.addfile(info)
            else:
                info.size = len(e[1])
                tf.addfile(info, io.BytesIO(e[1]))
    return path


def test_reader_follows_links_inside_the_archive(tmp_path):
    path = craft_tar(tmp_path / "a.tar", [
        ("abc.tar", b"layer"), ("id/layer.tar", "->", "../abc.tar"),
        ("hard", "=>", "abc.tar"), ("dir", "->", "id"), ("abs", "->", "/abc.tar"),
        ("up", "->", "../../../../abc.tar"),
    ])
    with ArchiveReader(path) as r:
        for name in ("abc.tar", "id/layer.tar", "./id/layer.tar", "hard", "dir/layer.tar", "abs", "up"):
            assert r.open(name).read() == b"layer", name


def test_reader_never_finds_hostile_names(tmp_path):
    path = craft_tar(tmp_path / "a.tar", [("../evil", b"x"), ("/abs", b"y"), ("ok", b"z"),
                                          ("loop1", "->", "loop2"), ("loop2", "->", "loop1")])
    with ArchiveReader(path) as r:
        assert r.names() == ["ok", "loop1", "loop2"]
        for name in ("../evil", "evil", "/abs", "abs"):
            with pytest.raises(CorruptContent, match="missing"):
                r.resolve(name)
        with pytest.raises(CorruptContent, match="too many links"):
            r.resolve("loop1")
    assert not (tmp_path.parent / "evil").exists()


@pytest.mark.parametrize("cut", [100, 1536, -2000])
def test_reader_rejects_truncated_and_non_tar_files(image, blobs, tmp_path, cut):
    data = archive_bytes([image], blobs, "docker")
    path = tmp_path / "t.tar"
    path.write_bytes(data[:cut])
    with pytest.raises(CorruptContent):
        with ArchiveReader(path) as r:
            fmt, images = read_images(r)
            for img in images:
                for l in img.layers:
                    r.open(l.member).read()
    (tmp_path / "junk").write_bytes(b"this is not a tar file at all" * 50)
    with pytest.raises(StoreError):
        with ArchiveReader(tmp_path / "junk") as r:
            detect_format(r)


def test_reader_reads_gzip_compressed_archives(image, blobs, tmp_path):
    data = archive_bytes([image], blobs, "docker")
    path = tmp_path / "a.tar.gz"
    path.write_bytes(gzip.compress(data))
    with ArchiveReader(path, tmp_dir=tmp_path) as r:
        assert detect_format(r) == "docker"
        fmt, images = read_images(r)
        assert images[0].config_digest == image.config_digest
        assert images[0].names == ("docker.io/library/app:1.0",)


# -- ingesting layers --------------------------------------------------------------

def test_ingest_checks_diff_id_and_keeps_store_clean(image, blobs, tmp_path):
    data = archive_bytes([image], blobs, "oci")
    path = tmp_path / "a.tar"
    path.write_bytes(data)
    target = BlobStore(tmp_path / "target")
    with ArchiveReader(path) as r:
        _, [found] = read_images(r)
        good = found.layers[0]
        added: list[str] = []
        lb = ingest_layer(target, r, good, added)
        assert lb == image.layers[0]
        assert added == [good.digest] and target.exists(good.digest)
        bad = ArchivedLayer(good.member, found.layers[1].diff_id, good.digest, good.media_type, good.size)
        before = set(target.digests())
        with pytest.raises(CorruptContent, match="diff_id"):
            ingest_layer(target, r, bad, [])
        wrong_type = ArchivedLayer(good.member, good.diff_id, good.digest, oci.OCI_LAYER_GZIP, good.size)
        with pytest.raises(CorruptContent, match="promises gzip"):
            ingest_layer(BlobStore(tmp_path / "t2"), r, wrong_type, [])
        assert set(target.digests()) == before
    assert list((tmp_path / "target" / "tmp").iterdir()) == []


# -- through the Store -------------------------------------------------------------

from lamina.store.store import Store  # noqa: E402


def store_state(store: Store) -> tuple:
    """Everything a load may change: blobs, tags, images."""
    tags = [tuple(r) for r in store.db.query("SELECT name, manifest_digest FROM tags ORDER BY name")]
    images = [r[0] for r in store.db.query("SELECT manifest_digest FROM images ORDER BY 1")]
    return sorted(store.blobs.digests()), tags, images


def committed(store: Store, tmp: Path, layer_files, tag: str, compression: str = "zstd"):
    tmp.mkdir(parents=True, exist_ok=True)
    layers = []
    for i, files in enumerate(layer_files):
        d = make_tree(tmp / f"{tag.replace(':', '_').replace('/', '_')}-{i}", files)
        layers.append(store.write_layer(d, compression=compression, source_date_epoch=0))
    cfg = oci.build_config(diff_ids=[l.diff_id for l in layers],
                           history=[{"created": EPOCH, "created_by": f"step {i}"} for i in range(len(layers))],
                           container_config={"Cmd": ["/bin/sh"]}, created=EPOCH)
    return store.commit_image(cfg, layers, [tag])


@pytest.fixture
def src_store(tmp_path) -> Store:
    s = Store(tmp_path / "src")
    committed(s, tmp_path / "trees", [{"bin/tool": b"\x7fELF" + random.Random(0).randbytes(3000)}, {"etc/conf": b"k=v\n"}],
              "app:1.0")
    return s


@pytest.mark.parametrize("fmt,comp", [("docker", None), ("oci", "zstd"), ("oci", None)])
def test_save_load_round_trip_keeps_digests(src_store, tmp_path, fmt, comp):
    img = src_store.resolve("app:1.0")
    path = tmp_path / f"app-{fmt}.tar"
    [written] = save(src_store, ["app:1.0"], path, fmt=fmt, compression=comp)
    dst = Store(tmp_path / f"dst-{fmt}")
    [loaded] = load(dst, path)
    assert loaded.names == ("docker.io/library/app:1.0",)
    got = dst.resolve("app:1.0")
    assert got.config_digest == img.config_digest
    assert [l.diff_id for l in got.layers] == [l.diff_id for l in img.layers]
    if fmt == "oci" and comp == "zstd":  # the stored image, as it is
        assert got.manifest_digest == img.manifest_digest
        assert got.layers == img.layers
    elif fmt == "oci":  # default: the zstd layers as gzip, under a manifest naming them
        assert got.manifest_digest == written.manifest_digest != img.manifest_digest
        assert [l.media_type for l in got.layers] == [oci.OCI_LAYER_GZIP] * 2
        assert [sha(gzip.decompress(dst.blobs.read(l.digest))) for l in got.layers] == \
            [l.diff_id for l in img.layers]  # Python's gzip reads them
    else:  # docker-archive holds uncompressed layers and no manifest
        assert all(l.media_type == oci.OCI_LAYER and l.digest == l.diff_id for l in got.layers)
        assert got.manifest["config"]["digest"] == img.config_digest
    # saving the loaded image again gives the same archive bytes
    again = tmp_path / f"again-{fmt}.tar"
    save(dst, ["app:1.0"], again, fmt=fmt, compression=comp)
    assert again.read_bytes() == path.read_bytes()


def test_docker_archive_load_synthesises_the_same_manifest_every_time(src_store, tmp_path):
    path = tmp_path / "a.tar"
    save(src_store, ["app:1.0"], path)
    digests = {load(Store(tmp_path / f"s{i}"), path)[0].manifest_digest for i in range(2)}
    assert len(digests) == 1


def test_loading_twice_is_idempotent(src_store, tmp_path):
    path = tmp_path / "a.tar"
    save(src_store, ["app:1.0"], path, fmt="oci")
    dst = Store(tmp_path / "dst")
    load(dst, path)
    state = store_state(dst)
    load(dst, path)
    assert store_state(dst) == state


def test_save_several_refs_and_ids(src_store, tmp_path):
    img = src_store.resolve("app:1.0")
    src_store.tag("app:other", "app:1.0")
    committed(src_store, tmp_path / "t2", [{"x": b"x"}], "second:latest")
    path = tmp_path / "multi.tar"
    save(src_store, ["app:1.0", "app:other", "second", img.config_digest], path)
    entries = json.loads(member_bytes(path.read_bytes(), "manifest.json"))
    assert [e["RepoTags"] for e in entries] == [["docker.io/library/app:1.0", "docker.io/library/app:other"],
                                                ["docker.io/library/second:latest"]]
    opath = tmp_path / "multi-oci.tar"
    save(src_store, ["app:1.0", "app:other", "second"], opath, fmt="oci")
    index = json.loads(member_bytes(opath.read_bytes(), "index.json"))
    assert [d["annotations"]["org.opencontainers.image.ref.name"] for d in index["manifests"]] == [
        "docker.io/library/app:1.0", "docker.io/library/app:other", "docker.io/library/second:latest"]
    dst = Store(tmp_path / "dst")
    loaded = load(dst, opath)
    assert [l.names for l in loaded] == [("docker.io/library/app:1.0", "docker.io/library/app:other"),
                                         ("docker.io/library/second:latest",)]
    assert dst.resolve("app:other").config_digest == img.config_digest


def test_save_unknown_ref_writes_nothing(src_store, tmp_path):
    with pytest.raises(StoreError, match="no such image"):
        save(src_store, ["app:1.0", "nope:1"], tmp_path / "x.tar")
    assert list(tmp_path.glob("*x.tar*")) == []


def _rewrite(src: Path, dst: Path, change) -> Path:
    """Copy an archive member by member, letting change(name, data) return new bytes
    (or None to drop the member)."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w", format=tarfile.PAX_FORMAT) as tout:
        for m in tin.getmembers():
            data = tin.extractfile(m).read() if m.isreg() else None
            if data is not None:
                data = change(m.name, data)
                if data is None:
                    continue
                m.size = len(data)
                tout.addfile(m, io.BytesIO(data))
            else:
                tout.addfile(m)
    return dst


def _flip_layer_byte(name: str, data: bytes):
    if name.endswith("layer.tar"):
        return data[:600] + bytes([data[600] ^ 1]) + data[601:]
    return data


@pytest.mark.parametrize("fmt,change,match", [
    ("docker", _flip_layer_byte, "diff_id.*bad checksum"),  # refused as a tar, naming the layer
    ("docker", lambda n, d: None if n.endswith("layer.tar") else d, "missing"),
    ("oci", lambda n, d: d + b"x" if len(d) > 2000 else d, "bytes"),
    ("oci", lambda n, d: d.replace(b"docker.io/library/app", b"BAD name") if n == "index.json" else d, None),
    ("docker", lambda n, d: b"[{" if n == "manifest.json" else d, "JSON"),
])
def test_corrupt_archives_are_rejected_and_store_unchanged(src_store, tmp_path, fmt, change, match):
    good = tmp_path / "good.tar"
    save(src_store, ["app:1.0"], good, fmt=fmt)
    dst = Store(tmp_path / "dst")
    committed(dst, tmp_path / "own", [{"mine": b"mine"}], "mine:1")
    before = store_state(dst)
    bad = _rewrite(good, tmp_path / "bad.tar", change)
    if match is None:  # a bad name in index.json only drops the name: still loads
        [loaded] = load(dst, bad)
        assert loaded.names == ()
        return
    with pytest.raises(StoreError, match=match):
        load(dst, bad)
    assert store_state(dst) == before
    assert [p.name for p in (tmp_path / "dst" / "tmp").iterdir() if p.name.startswith("blob-")] == []


def test_corrupt_second_layer_leaves_no_first_layer_blob(src_store, tmp_path):
    good = tmp_path / "good.tar"
    save(src_store, ["app:1.0"], good)
    img = src_store.resolve("app:1.0")
    last_dir = json.loads(member_bytes(good.read_bytes(), "manifest.json"))[0]["Layers"][-1]
    bad = _rewrite(good, tmp_path / "bad.tar",
                   lambda n, d: _flip_layer_byte(n, d) if n == last_dir else d)
    dst = Store(tmp_path / "dst")
    before = store_state(dst)
    with pytest.raises(CorruptContent, match=img.layers[-1].diff_id):
        load(dst, bad)
    assert store_state(dst) == before


def test_hostile_member_names_are_not_followed(src_store, tmp_path):
    good = tmp_path / "good.tar"
    save(src_store, ["app:1.0"], good)
    evil = tmp_path / "evil.tar"
    manifest = json.loads(member_bytes(good.read_bytes(), "manifest.json"))
    manifest[0]["Layers"][0] = "../../../../etc/passwd"
    _rewrite(good, evil, lambda n, d: json.dumps(manifest).encode() if n == "manifest.json" else d)
    with tarfile.open(evil, "a") as tf:  # plus a member that would land outside any root
        info = tarfile.TarInfo("../../escaped")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    dst = Store(tmp_path / "deep" / "dst")
    with pytest.raises(StoreError, match="missing"):
        load(dst, evil)
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "deep" / "escaped").exists()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layers=st.lists(st.dictionaries(st.sampled_from(["a", "b", "d/c", "d/e/f"]), st.binary(max_size=3000),
                                       min_size=1, max_size=3), min_size=1, max_size=3),
       fmt=st.sampled_from(["docker", "oci", "oci+zstd"]), comp=st.sampled_from(["zstd", "gzip", "none"]))
def test_round_trip_property(tmp_path_factory, layers, fmt, comp):
    tmp = tmp_path_factory.mktemp("prop")
    src = Store(tmp / "src")
    img = committed(src, tmp / "trees", layers, "p:1", compression=comp)
    path = tmp / "a.tar"
    fmt, _, export = fmt.partition("+")
    save(src, ["p:1"], path, fmt=fmt, compression=export or None)
    got = load(Store(tmp / "dst"), path)[0].image
    assert got.config_digest == img.config_digest
    assert got.config == img.config
    if fmt == "oci" and (export == "zstd" or comp != "zstd"):  # nothing to recompress
        assert got.manifest_digest == img.manifest_digest
    elif fmt == "oci":
        assert got.manifest_digest != img.manifest_digest
        assert {l.media_type for l in got.layers} == {oci.OCI_LAYER_GZIP}


def _archive_from(members_: dict[str, bytes], path: Path) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members_.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _all_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isreg()}


def test_docker25_style_archive_loads_as_oci_or_via_manifest_json(src_store, tmp_path):
    """docker >= 25 saves an OCI layout plus a manifest.json pointing into blobs/;
    buildkit-style index entries carry the name in io.containerd.image.name and a
    bare tag in ref.name."""
    img = src_store.resolve("app:1.0")
    oci_path = tmp_path / "o.tar"
    save(src_store, ["app:1.0"], oci_path, fmt="oci", compression="zstd")
    ms = _all_members(oci_path)
    index = json.loads(ms["index.json"])
    index["manifests"][0]["annotations"] = {"io.containerd.image.name": "docker.io/library/app:1.0",
                                            "org.opencontainers.image.ref.name": "1.0"}
    ms["index.json"] = json.dumps(index).encode()
    # docker 25 stores docker-archive layers uncompressed: point manifest.json at a tar blob
    layer_tars = []
    for l in img.layers:
        with src_store.blobs.open(l.digest) as f:
            from lamina.store.compression import open_decompressed
            data = open_decompressed(f).read()
        ms["blobs/sha256/" + sha(data).split(":")[1]] = data
        layer_tars.append("blobs/sha256/" + sha(data).split(":")[1])
    ms["manifest.json"] = json.dumps([{"Config": "blobs/sha256/" + img.config_digest.split(":")[1],
                                       "RepoTags": ["app:1.0"], "Layers": layer_tars}]).encode()
    both = _archive_from(ms, tmp_path / "docker25.tar")
    [loaded] = load(Store(tmp_path / "a"), both)
    assert (loaded.manifest_digest, loaded.names) == (img.manifest_digest, ("docker.io/library/app:1.0",))
    only_docker = _archive_from({k: v for k, v in ms.items() if k not in ("index.json", "oci-layout")},
                                tmp_path / "docker-only.tar")
    [loaded] = load(Store(tmp_path / "b"), only_docker)
    assert loaded.config_digest == img.config_digest
    assert loaded.names == ("docker.io/library/app:1.0",)


def test_multi_platform_index_resolves_to_the_host_platform(src_store, tmp_path):
    img = src_store.resolve("app:1.0")
    oci_path = tmp_path / "o.tar"
    save(src_store, ["app:1.0"], oci_path, fmt="oci", compression="zstd")
    ms = _all_members(oci_path)
    host = oci.host_platform()
    other = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":' \
            b'{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:' + b"0" * 64 + \
            b'","size":2},"layers":[]}'
    nested = oci.encode(oci.build_index([
        oci.Descriptor(oci.OCI_MANIFEST, sha(other), len(other), platform={"architecture": "s390x", "os": "linux"}),
        oci.Descriptor(oci.OCI_MANIFEST, img.manifest_digest, len(ms["blobs/sha256/" + img.manifest_digest[7:]]),
                       platform=host),
    ]), "index")
    ms["blobs/sha256/" + sha(other)[7:]] = other
    ms["blobs/sha256/" + sha(nested)[7:]] = nested
    ms["index.json"] = oci.encode(oci.build_index([oci.Descriptor(
        oci.OCI_INDEX, sha(nested), len(nested), {"org.opencontainers.image.ref.name": "app:multi"})]), "index")
    [loaded] = load(Store(tmp_path / "dst"), _archive_from(ms, tmp_path / "multi.tar"))
    assert loaded.manifest_digest == img.manifest_digest
    assert loaded.names == ("docker.io/library/app:multi",)


def test_docker_archive_counts_unrecorded_uncompressed_sizes(image, blobs):
    from dataclasses import replace
    unknown = replace(image, layers=tuple(replace(l, uncompressed_size=0) for l in image.layers))
    assert archive_bytes([unknown], blobs, "docker") == archive_bytes([image], blobs, "docker")


def test_memory_does_not_grow_with_layer_size(tmp_path):
    """A 24 MB layer is saved and loaded (both formats) with a bounded Python heap."""
    import tracemalloc

    src = Store(tmp_path / "src")
    committed(src, tmp_path / "trees", [{"big": random.Random(1).randbytes(24 << 20)}], "big:1",
              compression="gzip")
    for fmt in ("docker", "oci"):
        path = tmp_path / f"big-{fmt}.tar"
        tracemalloc.start()
        try:
            save(src, ["big:1"], path, fmt=fmt)
            load(Store(tmp_path / f"dst-{fmt}"), path)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert path.stat().st_size > 24 << 20
        assert peak < 12 << 20, f"{fmt}: peak Python heap {peak} bytes"
