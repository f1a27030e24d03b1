"""Our layers read by umoci (a real OCI tool), and umoci's layers read by us.

The blob store's directory layout (ROOT/blobs/sha256/<hex>) is that of an OCI image
layout, so a BlobStore root plus `oci-layout` and `index.json` is an image umoci opens.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess

import pytest

from lamina.store.blobs import BlobStore
from lamina.store.layers import LayerBlob, extract_layer, write_layer
from tartrees import CAPABILITY, Node, build, snapshot

pytestmark = [pytest.mark.root, pytest.mark.interop]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"


def make_image(layout, blobs: BlobStore, layers: list[LayerBlob], ref: str = "t") -> None:
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [l.diff_id for l in layers]},
    }, sort_keys=True).encode()
    cdig = blobs.put(config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": cdig, "size": len(config)},
        "layers": [{"mediaType": l.media_type, "digest": l.digest, "size": l.size} for l in layers],
    }, sort_keys=True).encode()
    mdig = blobs.put(manifest)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (layout / "index.json").write_text(json.dumps({
        "schemaVersion": 2,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": mdig, "size": len(manifest),
                       "annotations": {"org.opencontainers.image.ref.name": ref}}]}))


def unpack(umoci: str, layout, bundle) -> str:
    shutil.rmtree(layout / "tmp", ignore_errors=True)
    r = subprocess.run([umoci, "unpack", "--image", f"{layout}:t", str(bundle)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return str(bundle / "rootfs")


def _base_tree() -> Node:
    return Node("dir", mode=0o755, children={
        "bin": Node("dir", mode=0o755, children={
            "ping": Node("file", mode=0o4755, content=b"ping" * 100, xattrs={
                "security.capability": CAPABILITY, "user.note": b"n"}),
            "ping6": Node("link", target="ping"),
        }),
        "dev": Node("dir", mode=0o755, children={
            "null": Node("chr", mode=0o666, rdev=(1, 3)), "fifo": Node("fifo", mode=0o600)}),
        "etc": Node("dir", mode=0o755, children={
            "keep": Node("file", content=b"k"), "drop": Node("file", content=b"d"),
            "conf.d": Node("dir", mode=0o755, children={"old": Node("file", content=b"o")}),
        }),
        "tmp": Node("dir", mode=0o1777, uid=0, gid=0),
        "home": Node("dir", mode=0o750, uid=1000, gid=1000, children={
            "ü n i": Node("file", content=b"x", uid=1000, gid=1000, mode=0o600),
            "l" * 120: Node("symlink", target="../" * 50)}),
    })


# Debian's umoci 0.4.7 refuses tar+zstd layers ("blob is not correct mediatype"), so
# umoci sees gzip and plain layers here; zstd is checked against the zstd CLI elsewhere.
@pytest.mark.parametrize("kind", ["gzip", "none"])
def test_umoci_unpacks_our_layer(tmp_path, kind):
    from tests.conftest import require_tool
    umoci = require_tool("umoci")
    src = tmp_path / "src"
    src.mkdir()
    build(_base_tree(), str(src))
    layout = tmp_path / "layout"
    blobs = BlobStore(layout)
    layer = write_layer(blobs, src, compression=kind, source_date_epoch=1_500_000_000)
    make_image(layout, blobs, [layer])
    rootfs = unpack(umoci, layout, tmp_path / "bundle")
    got = snapshot(rootfs)
    want = snapshot(str(src), epoch=1_500_000_000, layer=True)
    assert got == want


def test_umoci_applies_our_whiteouts_and_opaque_dirs(tmp_path):
    from tests.conftest import require_tool
    umoci = require_tool("umoci")
    src1, src2 = tmp_path / "l1", tmp_path / "l2"
    src1.mkdir()
    build(_base_tree(), str(src1))
    # layer 2 in overlay upper form: etc/drop deleted, etc/conf.d replaced (opaque), a new file
    (src2 / "etc" / "conf.d").mkdir(parents=True)
    os.mknod(src2 / "etc" / "drop", stat.S_IFCHR, os.makedev(0, 0))
    os.setxattr(src2 / "etc" / "conf.d", "trusted.overlay.opaque", b"y")
    (src2 / "etc" / "conf.d" / "new").write_text("n")
    layout = tmp_path / "layout"
    blobs = BlobStore(layout)
    layers = [write_layer(blobs, src1, compression="none"),
              write_layer(blobs, src2, compression="gzip")]
    make_image(layout, blobs, layers)
    rootfs = tmp_path / "bundle" / "rootfs"
    unpack(umoci, layout, tmp_path / "bundle")
    assert sorted(os.listdir(rootfs / "etc")) == ["conf.d", "keep"]
    assert os.listdir(rootfs / "etc" / "conf.d") == ["new"]


def test_we_read_umoci_layers_with_whiteouts(tmp_path):
    """umoci repack writes a layer for the changes made to an unpacked rootfs; extracting
    it gives overlay form: deleted file -> char 0/0, new file, new dir."""
    from tests.conftest import require_tool
    umoci = require_tool("umoci")
    src = tmp_path / "src"
    src.mkdir()
    build(_base_tree(), str(src))
    layout = tmp_path / "layout"
    blobs = BlobStore(layout)
    make_image(layout, blobs, [write_layer(blobs, src, compression="gzip")])
    bundle = tmp_path / "bundle"
    rootfs = unpack(umoci, layout, bundle)
    os.unlink(os.path.join(rootfs, "etc", "drop"))
    shutil.rmtree(os.path.join(rootfs, "etc", "conf.d"))
    os.mkdir(os.path.join(rootfs, "srv"))
    with open(os.path.join(rootfs, "srv", "data"), "wb") as f:
        f.write(b"umoci")
    subprocess.run([umoci, "repack", "--image", f"{layout}:t2", str(bundle)], check=True,
                   capture_output=True)
    index = json.loads((layout / "index.json").read_text())
    mdig = next(m["digest"] for m in index["manifests"]
                if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == "t2")
    manifest = json.loads(BlobStore(layout).read(mdig))
    top = manifest["layers"][-1]
    config = json.loads(BlobStore(layout).read(manifest["config"]["digest"]))
    dest = tmp_path / "dest"
    dest.mkdir()
    diff_id = extract_layer(BlobStore(layout), top["digest"], dest,
                            expected_diff_id=config["rootfs"]["diff_ids"][-1])
    assert diff_id == config["rootfs"]["diff_ids"][-1]
    for gone in ("drop", "conf.d"):
        s = os.lstat(dest / "etc" / gone)
        assert stat.S_ISCHR(s.st_mode) and s.st_rdev == 0, gone
    assert (dest / "srv" / "data").read_bytes() == b"umoci"
