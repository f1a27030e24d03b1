"""Red-team: a pull by digest must pin every byte it brings in. The digest the user
gives pins the index; the index pins its manifests by the digests of its entries. A
registry that writes an entry's "digest" as something that is not a sha256 digest (a
tag like `evil`, `sha512:...`) had lamina fetch `manifests/<that>` and skip the check
(only refs starting with "sha256:" were checked): the registry could then serve any
image under a digest the user pinned (and change it at will later)."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import json
import tarfile
import threading

import pytest

from lamina.store import oci
from lamina.store.errors import CorruptContent
from lamina.store.registry.pull import host as host_platform
from lamina.store.registry.pull import pull_image
from lamina.store.store import Store


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _image(content: bytes, compress=lambda tar: gzip.compress(tar, mtime=0)) -> dict[str, bytes]:
    """{name: bytes} of a one-layer image whose manifest says tar+gzip (whatever
    `compress` makes of the layer): its manifest under "manifest", blobs by digest."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        info = tarfile.TarInfo("file")
        info.size = len(content)
        t.addfile(info, io.BytesIO(content))
    tar = buf.getvalue()
    layer = compress(tar)
    me = host_platform()
    config = json.dumps({"architecture": me.architecture, "os": me.os,
                         "rootfs": {"type": "layers", "diff_ids": [_sha(tar)]}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
                           "config": {"mediaType": oci.OCI_CONFIG, "digest": _sha(config),
                                      "size": len(config)},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                       "digest": _sha(layer), "size": len(layer)}]}).encode()
    return {"manifest": manifest, _sha(config): config, _sha(layer): layer}


@pytest.fixture
def hostile_registry():
    """(host, serve) of a registry answering GET /v2/r/manifests/<ref> and
    /v2/r/blobs/<digest> from `serve` (a dict filled by the test)."""
    serve: dict[str, tuple[str, bytes]] = {}

    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_GET(self):
            if self.path == "/v2/":
                found = ("application/json", b"{}")
            else:
                found = serve.get(self.path.rpartition("/")[2])
            if found is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", found[0])
            self.send_header("Content-Length", str(len(found[1])))
            self.end_headers()
            self.wfile.write(found[1])

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{srv.server_port}", serve
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize("entry_digest", ["evil", "sha512:" + "ab" * 64, "SHA256:" + "0" * 64])
def test_index_entry_that_is_not_a_sha256_digest_is_refused(hostile_registry, tmp_path, entry_digest):
    host, serve = hostile_registry
    swapped = _image(b"what the registry serves today\n")
    for name, data in swapped.items():
        if name != "manifest":
            serve[name] = ("application/octet-stream", data)
    serve[entry_digest] = (oci.OCI_MANIFEST, swapped["manifest"])
    me = host_platform()
    index = json.dumps({"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": [
        {"mediaType": oci.OCI_MANIFEST, "digest": entry_digest, "size": len(swapped["manifest"]),
         "platform": {"os": me.os, "architecture": me.architecture}}]}).encode()
    serve[_sha(index)] = (oci.OCI_INDEX, index)
    with Store(tmp_path / "s") as store:
        with pytest.raises(CorruptContent, match="digest"):
            pull_image(store, f"{host}/r@{_sha(index)}")
        assert store.images() == []


def test_index_entry_with_a_good_digest_still_pulls(hostile_registry, tmp_path):
    """The control: the same registry and index, the entry named by its sha256."""
    host, serve = hostile_registry
    image = _image(b"pinned\n")
    for name, data in image.items():
        if name != "manifest":
            serve[name] = ("application/octet-stream", data)
    serve[_sha(image["manifest"])] = (oci.OCI_MANIFEST, image["manifest"])
    me = host_platform()
    index = json.dumps({"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": [
        {"mediaType": oci.OCI_MANIFEST, "digest": _sha(image["manifest"]),
         "size": len(image["manifest"]),
         "platform": {"os": me.os, "architecture": me.architecture}}]}).encode()
    serve[_sha(index)] = (oci.OCI_INDEX, index)
    with Store(tmp_path / "s") as store:
        pulled = pull_image(store, f"{host}/r@{_sha(index)}")
        assert pulled.image.manifest_digest == _sha(image["manifest"])


def _zstd_image_labelled_gzip(content: bytes) -> dict[str, bytes]:
    """A one-layer image whose layer blob is zstd while its manifest says tar+gzip."""
    import zstandard

    image = _image(content, zstandard.ZstdCompressor().compress)
    layer = json.loads(image["manifest"])["layers"][0]
    assert image[layer["digest"]][:4] == b"\x28\xb5\x2f\xfd"  # zstd's magic, not gzip's 1f 8b
    return image


def test_a_layer_whose_media_type_lies_about_its_compression_is_refused(hostile_registry, tmp_path):
    """A registry planting zstd bytes under a gzip media type: stored as they were
    labelled, lamina would export and push a 'gzip' layer gzip-only consumers cannot
    read (and a gzip store would pick it as its gzip blob). `load` refuses that
    mismatch; pull refuses it too, keeps nothing, and so does a pull of a blob the
    store already holds under its real type."""
    host, serve = hostile_registry
    image = _zstd_image_labelled_gzip(b"labelled gzip, compressed with zstd\n")
    for name, data in image.items():
        if name != "manifest":
            serve[name] = ("application/octet-stream", data)
    serve["1"] = (oci.OCI_MANIFEST, image["manifest"])
    layer_digest = json.loads(image["manifest"])["layers"][0]["digest"]
    with Store(tmp_path / "s") as store:
        with pytest.raises(CorruptContent, match="promises gzip but the blob is zstd"):
            pull_image(store, f"{host}/r:1")
        assert store.images() == []
        assert not store.blobs.exists(layer_digest)
        # the same bytes already stored (as what they are): the lying manifest is still refused
        assert store.blobs.put(image[layer_digest]) == layer_digest
        with pytest.raises(CorruptContent, match="promises gzip but the blob is zstd"):
            pull_image(store, f"{host}/r:1")
        assert store.images() == []
