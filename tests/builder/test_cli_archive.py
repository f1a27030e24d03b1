"""`lamina save` / `lamina load` on the command line: files and pipes, both formats,
docker's messages, one clear error line (no traceback) for user mistakes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from lamina.store import oci
from lamina.store.store import Store

REPO = Path(__file__).resolve().parents[2]
EPOCH = "1970-01-01T00:00:00Z"


def lamina(root: Path, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lamina", "--root", str(root), *args],
                          cwd=REPO, input=stdin, capture_output=True, timeout=120)


@pytest.fixture
def src(tmp_path) -> Store:
    store = Store(tmp_path / "src")
    tree = tmp_path / "tree"
    (tree / "bin").mkdir(parents=True)
    (tree / "bin" / "hello").write_bytes(b"#!/bin/sh\necho hello\n")
    layer = store.write_layer(tree, source_date_epoch=0)
    cfg = oci.build_config(diff_ids=[layer.diff_id], history=[{"created": EPOCH, "created_by": "x"}],
                           container_config={"Cmd": ["/bin/hello"]}, created=EPOCH)
    store.commit_image(cfg, [layer], ["hello:1"])
    return store


@pytest.mark.parametrize("fmt", ["docker", "oci"])
def test_save_then_load_via_files(src, tmp_path, fmt):
    out = tmp_path / "hello.tar"
    p = lamina(src.root, "save", "--format", fmt, "-o", str(out), "hello:1")
    assert p.returncode == 0, p.stderr
    with tarfile.open(out) as tf:
        names = set(tf.getnames())
    assert ("manifest.json" in names) == (fmt == "docker")
    assert ("index.json" in names) == (fmt == "oci")
    p = lamina(tmp_path / "dst", "load", "-i", str(out))
    assert p.returncode == 0, p.stderr
    assert p.stdout.decode() == "Loaded image: hello:1\n"
    assert Store(tmp_path / "dst").resolve("hello:1").config_digest == src.resolve("hello:1").config_digest


def test_save_to_stdout_and_load_from_stdin(src, tmp_path):
    p = lamina(src.root, "save", "hello:1")
    assert p.returncode == 0, p.stderr
    with open(tmp_path / "f.tar", "wb") as f:
        f.write(p.stdout)
    file_save = lamina(src.root, "save", "-o", str(tmp_path / "g.tar"), "hello:1")
    assert file_save.returncode == 0
    assert (tmp_path / "g.tar").read_bytes() == p.stdout  # same bytes either way
    q = lamina(tmp_path / "dst", "load", stdin=p.stdout)
    assert q.returncode == 0, q.stderr
    assert b"Loaded image: hello:1" in q.stdout


def test_load_untagged_prints_the_id(src, tmp_path):
    img = src.resolve("hello:1")
    out = tmp_path / "byid.tar"
    assert lamina(src.root, "save", "-o", str(out), img.config_digest).returncode == 0
    manifest = json.loads(tarfile.open(out).extractfile("manifest.json").read())
    assert manifest[0]["RepoTags"] is None
    p = lamina(tmp_path / "dst", "load", "-i", str(out))
    assert p.stdout.decode() == f"Loaded image ID: {img.config_digest}\n"


@pytest.mark.parametrize("args,message", [
    (["save", "-o", "{tmp}/x.tar", "nope:1"], "no such image"),
    (["save", "--format", "zip", "-o", "{tmp}/x.tar", "hello:1"], "Invalid value"),
    (["save", "-o", "{tmp}/missing/dir/x.tar", "hello:1"], "does not exist"),
    (["load", "-i", "{tmp}/nonexistent.tar"], "not found"),
    (["load", "-i", "{tmp}/junk"], "not a valid tar"),
])
def test_user_mistakes_give_one_clear_line(src, tmp_path, args, message):
    (tmp_path / "junk").write_bytes(b"junk" * 1000)
    p = lamina(src.root, *[a.format(tmp=tmp_path) for a in args])
    assert p.returncode != 0
    err = p.stderr.decode()
    assert message in err
    assert "Traceback" not in err
    assert not os.path.exists(tmp_path / "x.tar")


# -- OCI layer compression (store.recompress) -----------------------------------------

def _oci_layers(path: Path) -> tuple[str, list[dict]]:
    with tarfile.open(path) as tf:
        index = json.load(tf.extractfile("index.json"))
        digest = index["manifests"][0]["digest"]
        if index["manifests"][0]["mediaType"] == oci.OCI_INDEX:  # a built image with its attestations
            inner = json.load(tf.extractfile("blobs/sha256/" + digest.split(":")[1]))
            digest = next(m["digest"] for m in inner["manifests"] if m["platform"]["os"] != "unknown")
        manifest = json.load(tf.extractfile("blobs/sha256/" + digest.split(":")[1]))
    return digest, manifest["layers"]


def test_save_oci_is_gzip_by_default_and_zstd_on_request(src, tmp_path):
    img = src.resolve("hello:1")
    assert [l.media_type for l in img.layers] == [oci.OCI_LAYER_ZSTD]
    p = lamina(src.root, "save", "--format", "oci", "-o", str(tmp_path / "g.tar"), "hello:1")
    assert p.returncode == 0, p.stderr
    digest, layers = _oci_layers(tmp_path / "g.tar")
    assert digest != img.manifest_digest
    assert [l["mediaType"] for l in layers] == [oci.OCI_LAYER_GZIP]
    p = lamina(src.root, "save", "--format", "oci", "--compression", "zstd", "-o", str(tmp_path / "z.tar"),
               "hello:1")
    assert p.returncode == 0, p.stderr
    assert _oci_layers(tmp_path / "z.tar") == (img.manifest_digest, [dict(img.manifest["layers"][0])])
    p = lamina(tmp_path / "dst", "load", "-i", str(tmp_path / "g.tar"))
    assert p.returncode == 0, p.stderr
    assert Store(tmp_path / "dst").resolve("hello:1").config_digest == img.config_digest


def test_compression_with_docker_format_is_one_clear_error(src, tmp_path):
    p = lamina(src.root, "save", "--compression", "gzip", "-o", str(tmp_path / "x.tar"), "hello:1")
    assert p.returncode != 0
    assert "--compression applies to --format oci only" in p.stderr.decode()
    assert "Traceback" not in p.stderr.decode()
    assert not (tmp_path / "x.tar").exists()


def test_build_output_parses_compression():
    from lamina.builder.errors import BuildError
    from lamina.builder.outputs import parse_output

    assert parse_output("type=oci,dest=a.tar").compression is None
    assert parse_output("type=oci,dest=a.tar,compression=zstd").compression == "zstd"
    with pytest.raises(BuildError, match="compression must be one of gzip, zstd"):
        parse_output("type=oci,dest=a.tar,compression=xz")
    with pytest.raises(BuildError, match="type=oci only"):
        parse_output("type=docker,dest=a.tar,compression=gzip")


@pytest.mark.root
def test_gzip_export_never_changes_a_rebuilt_image(tmp_path):
    """build -> --output type=oci (gzip blobs join the store) -> rebuild from cache: the
    same manifest digest, since the build keeps the zstd blobs whatever the sizes (a
    smaller gzip blob: tests/store/test_archive_compression.py)."""
    from tests.builder.buildkit import build, make_context

    ctx = make_context(tmp_path / "ctx", "FROM scratch\nCOPY a /a\nCOPY b /b\n", {"a": "a\n", "b": "b" * 100})
    root = tmp_path / "root"
    gz, zs = tmp_path / "gz.tar", tmp_path / "zs.tar"
    first = build(root, ctx, "-t", "x:1", "--output", f"type=oci,dest={gz}",
                  "--output", f"type=oci,dest={zs},compression=zstd").check()
    with Store(root) as store:
        img = store.resolve("x:1")
        for l in img.layers:
            kinds = {b.media_type for b in store.layer_blobs(l.diff_id)}
            assert kinds == {oci.OCI_LAYER_GZIP, oci.OCI_LAYER_ZSTD}
    assert [l["mediaType"] for l in _oci_layers(gz)[1]] == [oci.OCI_LAYER_GZIP] * 2
    assert _oci_layers(zs)[0] == img.manifest_digest
    again = build(root, ctx, "-t", "x:2").check()
    assert all(s.cached for s in again.steps if "COPY" in s.title), again.stderr
    assert again.image_id == first.image_id
    with Store(root) as store:
        assert store.resolve("x:2").manifest_digest == img.manifest_digest
