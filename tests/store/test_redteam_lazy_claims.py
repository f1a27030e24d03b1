"""Red-team: a lazily pulled image's layers are *claims* (manifest digest -> config
diff_id) until their bytes arrive. A hostile registry's claim must not shadow what
another image's layers really are:

- the first claim for a blob digest won (`layer_blobs` keyed by digest, INSERT OR
  IGNORE): a registry that named a popular layer blob D with a made-up diff_id made
  every later image with D unbuildable in that store ("layer ... has no stored blob to
  extract"), whether that image came lazily (FROM) or by `lamina pull`;
- a false claim for a real layer's diff_id X (another, small blob) was tried first
  when X was extracted and its failure failed the build: no other blob of X was tried.

The bytes decide: a blob whose fetched content is another layer than claimed is
recorded as what it is, and the claim that lied is the one that fails."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import json
import os
import tarfile
import threading

import pytest

from lamina.store import oci
from lamina.store.errors import StoreError
from lamina.store.registry.pull import host as host_platform
from lamina.store.registry.pull import pull_image
from lamina.store.store import Store


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _layer(content: bytes) -> tuple[bytes, str]:
    """(gzip blob, diff_id) of a tar holding one file `file`."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        info = tarfile.TarInfo("file")
        info.size = len(content)
        t.addfile(info, io.BytesIO(content))
    tar = buf.getvalue()
    return gzip.compress(tar, mtime=0), _sha(tar)


def _publish(serve: dict, tag: str, blob: bytes, diff_id: str) -> None:
    """Serve under `tag` an image of layer `blob` whose config claims `diff_id`."""
    me = host_platform()
    config = json.dumps({"architecture": me.architecture, "os": me.os, "tag": tag,
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
                           "config": {"mediaType": oci.OCI_CONFIG, "digest": _sha(config),
                                      "size": len(config)},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                       "digest": _sha(blob), "size": len(blob)}]}).encode()
    serve[tag] = (oci.OCI_MANIFEST, manifest)
    serve[_sha(config)] = ("application/octet-stream", config)
    serve[_sha(blob)] = ("application/octet-stream", blob)


@pytest.fixture
def hostile_registry():
    serve: dict[str, tuple[str, bytes]] = {}

    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_GET(self):
            found = ("application/json", b"{}") if self.path == "/v2/" else \
                serve.get(self.path.rpartition("/")[2])
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

        do_HEAD = do_GET

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{srv.server_port}", serve
    finally:
        srv.shutdown()
        srv.server_close()


LEGIT = b"the real layer\n"
MADE_UP = "sha256:" + "ab" * 32


def _content(store: Store, diff_id: str) -> bytes:
    return (store.layer_dir(diff_id) / "file").read_bytes()


@pytest.mark.parametrize("legit_lazy", [True, False], ids=["FROM", "pull"])
def test_a_false_claim_first_does_not_shadow_the_real_layer(hostile_registry, tmp_path, legit_lazy):
    host, serve = hostile_registry
    blob, diff_id = _layer(LEGIT)
    _publish(serve, "evil", blob, MADE_UP)      # the legit blob, claimed as another layer
    _publish(serve, "legit", blob, diff_id)
    with Store(tmp_path / "s") as store:
        try:
            pull_image(store, f"{host}/r:evil", lazy=True)
        except StoreError:
            pass  # refusing the lying image now is as good
        pull_image(store, f"{host}/r:legit", lazy=legit_lazy)
        assert _content(store, diff_id) == LEGIT
        with pytest.raises(StoreError):
            store.layer_dir(MADE_UP)  # the lie never becomes a layer


def test_a_false_claim_second_is_refused_and_harmless(hostile_registry, tmp_path):
    host, serve = hostile_registry
    blob, diff_id = _layer(LEGIT)
    _publish(serve, "legit", blob, diff_id)
    _publish(serve, "evil", blob, MADE_UP)
    with Store(tmp_path / "s") as store:
        pull_image(store, f"{host}/r:legit", lazy=True)
        try:
            pull_image(store, f"{host}/r:evil", lazy=True)
        except StoreError:
            pass
        assert _content(store, diff_id) == LEGIT
        with pytest.raises(StoreError):
            store.layer_dir(MADE_UP)


def test_a_false_smaller_blob_for_a_real_diff_id_does_not_fail_it(hostile_registry, tmp_path):
    """The hostile image names its own small blob as the real layer's diff_id."""
    host, serve = hostile_registry
    legit_bytes = os.urandom(64 << 10)  # incompressible: the real blob is the larger one
    blob, diff_id = _layer(legit_bytes)
    small, _ = _layer(b"x\n")
    assert len(small) < len(blob)
    _publish(serve, "legit", blob, diff_id)
    _publish(serve, "evil", small, diff_id)
    with Store(tmp_path / "s") as store:
        pull_image(store, f"{host}/r:legit", lazy=True)
        pull_image(store, f"{host}/r:evil", lazy=True)
        assert _content(store, diff_id) == legit_bytes


def test_a_descriptor_size_past_any_blob_is_refused_cleanly():
    """A manifest layer of size 2**63 died in SQLite (OverflowError) during a lazy pull;
    now it is a CorruptContent naming the descriptor, and 2**53 itself still passes."""
    from lamina.store import oci
    from lamina.store.errors import CorruptContent

    desc = {"mediaType": oci.OCI_LAYER_GZIP, "digest": "sha256:" + "a" * 64}
    oci.check_descriptor({**desc, "size": 2**53}, "layer 1")
    for size in (2**53 + 1, 2**63):
        with pytest.raises(CorruptContent, match="larger than any blob"):
            oci.check_descriptor({**desc, "size": size}, "layer 1")
