"""store.imagesource (an image read where it lies) and store.layerfiles (its layers as
file records, the final filesystem after whiteouts), on images crafted with Python's
tarfile (tests/store/imagefiles.py)."""

from __future__ import annotations

import hashlib
import io

import pytest

from lamina.store.archive import load
from lamina.store.errors import ImageNotFound, StoreError
from lamina.store.imagesource import open_image
from lamina.store.layerfiles import layer_files, merge_layers, read_files
from lamina.store.store import Store
from tests.store.imagefiles import (M, craft, layer_tar, write_docker_archive, write_layout,
                                    write_oci_archive)

BASE = [M("etc", "dir", mode=0o755), M("etc/motd", data=b"hello\n"),
        M("bin", "dir"), M("bin/sh", data=b"\x7fELF" + bytes(100), mode=0o755),
        M("bin/ash", "symlink", linkname="sh"),
        M("dev", "dir"), M("dev/null", "char", mode=0o666, devmajor=1, devminor=3)]
TOP = [M("etc", "dir", mode=0o755), M("etc/.wh.motd", mtime=0), M("etc/new", data=b"x"),
       M("bin/.wh..wh..opq", mode=0), M("bin", "dir"), M("bin/sh2", "hardlink", linkname="etc/new")]


def _records(data: bytes):
    return list(layer_files(io.BytesIO(data)))


def test_layer_records_carry_every_field():
    recs = {r.path: r for r in _records(layer_tar(
        BASE + [M("x", data=b"abc", uid=1000, gid=50, xattrs={"user.k": "v"})]))}
    assert recs["etc"].type == "dir" and recs["etc"].mode == 0o755
    assert recs["etc/motd"].digest == "sha256:" + hashlib.sha256(b"hello\n").hexdigest()
    assert recs["etc/motd"].size == 6 and recs["etc/motd"].mtime == 1_600_000_000
    assert recs["bin/ash"].type == "symlink" and recs["bin/ash"].linkname == "sh"
    assert (recs["dev/null"].type, recs["dev/null"].devmajor, recs["dev/null"].devminor) == ("char", 1, 3)
    assert (recs["x"].uid, recs["x"].gid, recs["x"].xattrs) == (1000, 50, (("user.k", "v"),))
    assert [r.position for r in recs.values()] == list(range(len(recs)))


def test_whiteouts_and_the_final_filesystem():
    top = _records(layer_tar(TOP))
    wh = {r.path: r for r in top if r.whiteout is not None}
    assert wh["etc/.wh.motd"].whiteout == "etc" + "/motd" and not wh["etc/.wh.motd"].opaque
    assert wh["bin/.wh..wh..opq"].whiteout == "bin" and wh["bin/.wh..wh..opq"].opaque
    final = merge_layers([_records(layer_tar(BASE)), top])
    assert sorted(final) == ["bin", "bin/sh2", "dev", "dev/null", "etc", "etc/new"]
    assert final["etc/new"].layer == 1 and final["dev/null"].layer == 0
    # a hard link has its target's content
    assert final["bin/sh2"].record.digest == final["etc/new"].record.digest


def test_read_files_takes_only_small_named_files():
    data = layer_tar([M("a", data=b"A" * 10), M("b", data=b"B" * 100), M("c", data=b"c")])
    assert read_files(io.BytesIO(data), ["a", "b"], limit=50) == {"a": b"A" * 10}


@pytest.fixture()
def crafted():
    return craft([layer_tar(BASE), layer_tar(TOP)])


def _check(src, c, kind):
    d = src.documents
    assert d.kind == kind
    assert d.config == c.config and d.config_digest == c.config_digest
    assert [l.diff_id for l in d.layers] == ["sha256:" + hashlib.sha256(l).hexdigest()
                                             for l in c.layers]
    for i, l in enumerate(c.layers):
        assert src.open_layer(i).read() == l


def test_layout_dir_oci_archive_docker_archive_and_store(tmp_path, crafted):
    with open_image(str(write_layout(tmp_path / "layout", crafted))) as src:
        _check(src, crafted, "oci-layout")
        assert src.documents.manifest == crafted.manifest
    with open_image(str(write_oci_archive(tmp_path / "img.tar", crafted))) as src:
        _check(src, crafted, "oci-archive")
    with open_image(f"docker-archive:{write_docker_archive(tmp_path / 'd.tar', crafted)}") as src:
        _check(src, crafted, "docker-archive")
        assert src.documents.manifest is None
    with Store(tmp_path / "store") as store:
        load(store, tmp_path / "img.tar")
        with open_image("example.org/crafted:1", store=store) as src:
            _check(src, crafted, "store")
            assert src.documents.manifest_digest == crafted.manifest_digest
        with pytest.raises(ImageNotFound):
            open_image("nothere:1", store=store)


def test_wrong_or_missing_inputs_are_store_errors(tmp_path, crafted):
    with pytest.raises(StoreError, match="not an OCI image layout"):
        open_image(str(tmp_path))
    with pytest.raises(StoreError, match="no such file"):
        open_image(str(tmp_path / "missing" / "x.tar"))
    write_oci_archive(tmp_path / "img.tar", crafted)
    with pytest.raises(StoreError, match="not a docker"):
        open_image(f"docker-archive:{tmp_path / 'img.tar'}")
    with pytest.raises(StoreError, match="no store"):
        open_image("app:1")
