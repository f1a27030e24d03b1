"""The store's layer compression (`lamina --store-compression zstd|gzip`, env
LAMINA_STORE_COMPRESSION; store.layers.store_compression): new layer blobs are written
in it, the image ID does not depend on it, and a store written under both settings
keeps working - every manifest names each blob with the media type of its real bytes
(OCI image-spec: +gzip is RFC 1952, +zstd RFC 8878, checked here by their magic
numbers), a cache hit reuses the blob of the store's compression when the layer has
both, and an export of such an image loads elsewhere."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from tests.builder.buildkit import build, busybox_binary, lamina, make_context

pytestmark = pytest.mark.root

GZIP_MAGIC, ZSTD_MAGIC = b"\x1f\x8b", b"\x28\xb5\x2f\xfd"
MEDIA = {"gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
         "zstd": "application/vnd.oci.image.layer.v1.tar+zstd"}
DOCKERFILE = """FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
COPY a.txt /a.txt
"""


def manifest_layers(root, ref):
    """[(media type, compression of the blob's bytes)] of the stored image's manifest."""
    from lamina.store.store import Store

    with Store(root) as store:
        image = store.resolve(ref)
        manifest = json.loads(store.blobs.read(image.manifest_digest))
        out = []
        for desc in manifest["layers"]:
            with store.blobs.open(desc["digest"]) as f:
                head = f.read(4)
            kind = "gzip" if head.startswith(GZIP_MAGIC) else "zstd" if head == ZSTD_MAGIC else "other"
            out.append((desc["mediaType"], kind))
        return image.config_digest, image.manifest_digest, out


def context(tmp_path, text="a\n"):
    ctx = make_context(tmp_path / "ctx", DOCKERFILE, {"a.txt": text})
    shutil.copy2(busybox_binary(), ctx / "busybox")
    return ctx


def test_the_setting_and_its_errors(tmp_path, monkeypatch):
    from lamina.store.errors import StoreError
    from lamina.store.layers import store_compression
    from lamina.store.store import Store

    with Store(tmp_path / "s", compression="gzip") as s:
        assert s.layer_compression == "gzip"
    with Store(tmp_path / "s") as s:
        assert s.layer_compression == "zstd"  # the default
    with pytest.raises(StoreError, match="unknown store compression 'xz'"):
        Store(tmp_path / "s", compression="xz")
    monkeypatch.setenv("LAMINA_STORE_COMPRESSION", "bz2")
    bad = lamina(tmp_path / "s", "images")
    assert bad.code == 2 and "LAMINA_STORE_COMPRESSION" in bad.stderr and "'bz2'" in bad.stderr
    monkeypatch.setenv("LAMINA_STORE_COMPRESSION", "gzip")
    ctx = context(tmp_path)
    gz = build(tmp_path / "gz", ctx, "-t", "x:1").check()
    monkeypatch.delenv("LAMINA_STORE_COMPRESSION")
    assert store_compression() == "zstd"  # an in-process command does not leave it set
    zs = build(tmp_path / "zs", ctx, "-t", "x:1").check()
    opt = build(tmp_path / "opt", ctx, "-t", "x:1", "--store-compression", "gzip")
    assert opt.code == 2  # a global option: before the command, as --root
    opt = lamina(tmp_path / "opt", "--store-compression", "gzip", "build", "-t", "x:1", ctx)
    assert opt.code == 0, opt.stderr
    ids = {}
    for name, kind in (("gz", "gzip"), ("zs", "zstd"), ("opt", "gzip")):
        ids[name] = manifest_layers(tmp_path / name, "x:1")
        assert ids[name][2] == [(MEDIA[kind], kind)] * 3
    assert gz.image_id == zs.image_id == ids["gz"][0] == ids["zs"][0] == ids["opt"][0]
    assert ids["gz"][1] == ids["opt"][1] != ids["zs"][1]
    assert "LAMINA_STORE_COMPRESSION" not in os.environ  # the option's export was undone
    # bake builds in child processes: they write with the option of the bake command
    (ctx / "compose.yaml").write_text("services:\n  x:\n    build:\n      context: .\n    image: baked:1\n")
    baked = lamina(tmp_path / "bake", "--store-compression", "gzip", "bake", "-f", ctx / "compose.yaml")
    assert baked.code == 0, baked.stdout + baked.stderr
    assert manifest_layers(tmp_path / "bake", "baked:1")[1:] == ids["gz"][1:]


def test_a_store_written_under_both_settings(tmp_path):
    root = tmp_path / "store"
    first = build(root, context(tmp_path), "-t", "x:1").check()  # zstd
    # a changed last step under gzip: cached layers keep their zstd blobs, the new one is gzip
    other = context(tmp_path / "2", "b\n")
    second = lamina(root, "--store-compression", "gzip", "build", "--progress", "plain", "-t", "x:2", other)
    assert second.code == 0, second.stderr
    assert second.stderr.count("CACHED") == 2
    _, _, layers = manifest_layers(root, "x:2")
    assert layers == [(MEDIA["zstd"], "zstd")] * 2 + [(MEDIA["gzip"], "gzip")]
    assert lamina(root, "fsck").code == 0
    # an export (gzip: the zstd layers converted, the gzip one as it is) loads in a fresh store,
    # which checks each blob against its media type
    archive = tmp_path / "x2.tar"
    assert lamina(root, "save", "--format", "oci", "-o", archive, "x:2").code == 0
    loaded = lamina(tmp_path / "fresh", "load", "-i", archive)
    assert loaded.code == 0, loaded.stderr
    fresh_config, _, fresh_layers = manifest_layers(tmp_path / "fresh", "x:2")
    assert fresh_config == manifest_layers(root, "x:2")[0] and fresh_layers == [(MEDIA["gzip"], "gzip")] * 3
    # the layers of x:1 now have a gzip blob too (the export made them): a gzip build's
    # cache hits use those, a zstd build's the zstd ones - the manifest of each setting
    regz = lamina(root, "--store-compression", "gzip", "build", "-t", "x:1gz", tmp_path / "ctx")
    assert regz.code == 0, regz.stderr
    config, manifest, layers = manifest_layers(root, "x:1gz")
    assert config == first.image_id
    assert layers == [(MEDIA["gzip"], "gzip")] * 2 + [(MEDIA["zstd"], "zstd")]  # a.txt's: only zstd
    rezs = build(root, tmp_path / "ctx", "-t", "x:1zs").check()
    assert manifest_layers(root, "x:1zs")[1] == manifest_layers(root, "x:1")[1] != manifest
    assert rezs.image_id == first.image_id
