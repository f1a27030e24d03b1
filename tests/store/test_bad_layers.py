"""A layer that is not a valid tar is refused where it enters the store — `load`
and `pull` — with one error naming the layer, and nothing of that image is kept:
truncated data, a header whose checksum does not match, a size field (octal or
base-256) larger than the data that follows. The bytes are made here by hand, with
a config whose diff_id matches them, so only the tar check can catch them."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pytest

from lamina.store.archive import load
from lamina.store.errors import CorruptContent, StoreError
from lamina.store.store import Store


def _good_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        data = b"hello world\n" * 100
        info = tarfile.TarInfo("greeting")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _checksum(block: bytearray) -> bytearray:
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return block


def truncated() -> bytes:
    return _good_tar()[:512 + 300]  # header and part of the data


def bad_checksum() -> bytes:
    data = bytearray(_good_tar())
    data[0] ^= 0x01  # name changed, checksum not
    return bytes(data)


def size_too_large_octal() -> bytes:
    data = bytearray(_good_tar())
    head = bytearray(data[:512])
    head[124:136] = b"%011o\0" % (1 << 20)
    return bytes(_checksum(head)) + bytes(data[512:])


def size_too_large_base256() -> bytes:
    data = bytearray(_good_tar())
    head = bytearray(data[:512])
    head[124:136] = bytes([0x80]) + (1 << 33).to_bytes(11, "big")
    return bytes(_checksum(head)) + bytes(data[512:])


BAD = {"truncated": truncated, "checksum": bad_checksum, "size-octal": size_too_large_octal,
       "size-base256": size_too_large_base256}


def _docker_archive(layer: bytes) -> bytes:
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    manifest = json.dumps([{"Config": "config.json", "RepoTags": ["bad:1"],
                            "Layers": ["l1/layer.tar"]}]).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, data in (("config.json", config), ("l1/layer.tar", layer), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _state(store: Store):
    return sorted(store.blobs.digests()), [i.id for i in store.images()]


def test_the_good_tar_loads(tmp_path):
    archive = tmp_path / "good.tar"
    archive.write_bytes(_docker_archive(_good_tar()))
    with Store(tmp_path / "s") as store:
        (loaded,) = load(store, archive)
        assert loaded.names


@pytest.mark.parametrize("kind", sorted(BAD))
def test_load_refuses_a_layer_that_is_not_a_tar(tmp_path, kind):
    archive = tmp_path / "bad.tar"
    archive.write_bytes(_docker_archive(BAD[kind]()))
    with Store(tmp_path / "s") as store:
        before = _state(store)
        with pytest.raises(CorruptContent, match="l1/layer.tar"):
            load(store, archive)
        assert _state(store) == before


@pytest.mark.root
@pytest.mark.parametrize("kind", sorted(BAD))
def test_pull_refuses_a_layer_that_is_not_a_tar(tmp_path, kind):
    from lamina.store import oci
    from lamina.store.registry.pull import pull_image
    from lamina.store.registry.session import RegistrySession
    from tests.store.registryfix import registry

    layer = BAD[kind]()
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    with registry(tmp_path / "reg") as host, RegistrySession(host) as s:
        scope = "repository:bad/img:pull,push"
        for blob in (layer, config):
            digest = "sha256:" + hashlib.sha256(blob).hexdigest()
            with s.request("POST", "/v2/bad/img/blobs/uploads/", scope=scope, ok=(202,)) as r:
                loc = r.headers["location"]
            sep = "&" if "?" in loc else "?"
            with s.request("PUT", f"{loc}{sep}digest={digest}", scope=scope, body=blob, ok=(201,)):
                pass
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
            "config": {"mediaType": oci.OCI_CONFIG, "size": len(config),
                       "digest": "sha256:" + hashlib.sha256(config).hexdigest()},
            "layers": [{"mediaType": oci.OCI_LAYER, "size": len(layer), "digest": diff_id}]}).encode()
        with s.request("PUT", "/v2/bad/img/manifests/1", scope=scope, body=manifest,
                       headers={"Content-Type": oci.OCI_MANIFEST}, ok=(201,)):
            pass
        with Store(tmp_path / "s") as store:
            before = _state(store)
            with pytest.raises(StoreError) as err:
                pull_image(store, f"{host}/bad/img:1")
            assert "tar" in str(err.value) and diff_id in str(err.value)  # names the layer
            assert _state(store) == before
