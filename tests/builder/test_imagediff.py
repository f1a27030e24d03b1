"""`lamina diff` / builder.imagediff on crafted image pairs (tests/store/imagefiles.py:
layers made with Python's tarfile): each kind of difference, semantic mode, JSON,
exit codes, archives against store references."""

from __future__ import annotations

import json

import pytest

from lamina.builder.imagediff import compare, render_text
from lamina.store.archive import load
from lamina.store.imagesource import open_image
from tests.builder.buildkit import lamina
from tests.store.imagefiles import (M, craft, image_config, layer_tar, write_docker_archive,
                                    write_layout, write_oci_archive)

MOTD = b"".join(b"line %d\n" % i for i in range(20))
BASE = [M("etc", "dir", mode=0o755), M("etc/motd", data=MOTD),
        M("bin", "dir"), M("bin/tool", data=b"\x7fELF\x00" + bytes(70_000), mode=0o755),
        M("bin/ash", "symlink", linkname="busybox"),
        M("dev", "dir"), M("dev/tty0", "char", mode=0o620, devmajor=4, devminor=0),
        M("data", data=b"d", xattrs={"user.origin": "a"})]


def _with(members: list[M], name: str, **changes) -> list[M]:
    out = []
    for m in members:
        if m.name == name:
            m = M(**{**m.__dict__, **changes})
        out.append(m)
    return out


def _pair(tmp_path, a_layers, b_layers, *, a_kw=None, b_kw=None):
    a = write_layout(tmp_path / "a", craft([layer_tar(l) for l in a_layers], **(a_kw or {})))
    b = write_layout(tmp_path / "b", craft([layer_tar(l) for l in b_layers], **(b_kw or {})))
    return a, b


def _compare(a, b, semantic=False):
    with open_image(str(a)) as sa, open_image(str(b)) as sb:
        return compare(sa, sb, semantic=semantic)


def _file(report, path):
    found = [f for f in report.files if f.path == path]
    assert len(found) == 1, render_text(report)
    return found[0]


def _fields(fd) -> dict:
    return {c.field: (c.a, c.b) for c in fd.changes}


def test_identical_images(tmp_path):
    a, b = _pair(tmp_path, [BASE], [BASE])
    r = _compare(a, b)
    assert r.equal and r.same_image_id and r.count() == 0
    run = lamina(tmp_path / "store", "diff", str(a), str(b))
    assert run.code == 0 and run.stdout.strip().endswith("identical")


def test_text_content_gives_a_unified_diff(tmp_path):
    changed = MOTD.replace(b"line 7\n", b"line seven\n")
    a, b = _pair(tmp_path, [BASE], [_with(BASE, "etc/motd", data=changed)])
    r = _compare(a, b)
    f = _file(r, "etc/motd")
    assert f.status == "changed" and f.layer_a == f.layer_b == 0 and f.step_a == "step 0"
    assert _fields(f)["size"] == (len(MOTD), len(changed))
    assert _fields(f)["content"][0] != _fields(f)["content"][1]
    assert "-line 7" in f.text_diff and "+line seven" in f.text_diff
    assert f.text_diff[0] == "--- a/etc/motd" and f.text_diff[1] == "+++ b/etc/motd"
    assert not r.same_image_id and [c.field for c in r.layers] == ["layers[0].diff_id"]


def test_large_or_binary_content_gives_sizes_and_digests(tmp_path):
    a, b = _pair(tmp_path, [BASE], [_with(BASE, "bin/tool", data=b"\x7fELF\x01" + bytes(80_000))])
    f = _file(_compare(a, b), "bin/tool")
    assert _fields(f)["size"] == (70_005, 80_005)
    assert all(v.startswith("sha256:") for v in _fields(f)["content"])
    assert f.text_diff == ()


def test_added_and_removed_files(tmp_path):
    b_layer = [m for m in BASE if m.name != "data"] + [M("etc/new", data=b"n\n")]
    r = _compare(*_pair(tmp_path, [BASE], [b_layer]))
    assert _file(r, "data").status == "removed" and _file(r, "data").layer_a == 0
    assert _file(r, "etc/new").status == "added" and _file(r, "etc/new").layer_b == 0


@pytest.mark.parametrize("name, change, field, expected", [
    ("etc/motd", {"mode": 0o600}, "mode", ("0644", "0600")),
    ("etc/motd", {"uid": 1000, "gid": 50}, "owner", ("0:0", "1000:50")),
    ("bin/ash", {"linkname": "sh"}, "link target", ("busybox", "sh")),
    ("dev/tty0", {"devminor": 1}, "device", ("4,0", "4,1")),
    ("etc/motd", {"mtime": 1_700_000_000}, "mtime", (1_600_000_000, 1_700_000_000)),
    ("data", {"xattrs": {"user.origin": "b"}}, "xattr user.origin", ("a", "b")),
    ("data", {"xattrs": {}}, "xattr user.origin", ("a", None)),
    ("bin/ash", {"type": "file", "linkname": ""}, "type", ("symlink", "file")),
])
def test_each_metadata_difference(tmp_path, name, change, field, expected):
    r = _compare(*_pair(tmp_path, [BASE], [_with(BASE, name, **change)]))
    f = _file(r, name)
    assert _fields(f)[field] == expected
    text = render_text(r)
    assert f"~ /{name}" in text and field in text


def test_timestamps_only_are_equal_in_semantic_mode(tmp_path):
    b_layers = [_with(BASE, "etc/motd", mtime=1)]
    a, b = _pair(tmp_path, [BASE], b_layers,
                 b_kw={"config": image_config([layer_tar(l) for l in b_layers],
                                              created="2024-01-01T00:00:00Z")})
    plain = _compare(a, b)
    assert not plain.equal
    assert {c.field for c in plain.config} == {"created"}
    assert {c.field for c in plain.history} == {"history[0].created"}
    assert _fields(_file(plain, "etc/motd")) == {"mtime": (1_600_000_000, 1)}
    assert _compare(a, b, semantic=True).equal
    assert lamina(tmp_path / "s", "diff", "--semantic", str(a), str(b)).code == 0
    assert lamina(tmp_path / "s", "diff", str(a), str(b)).code == 1


def test_config_and_history_fields(tmp_path):
    layers = [layer_tar(BASE)]
    cfg = image_config(layers, Env=["PATH=/bin", "MODE=prod"], Labels={"v": "2"})
    cfg["history"][0]["created_by"] = "RUN make"
    a, b = _pair(tmp_path, [BASE], [BASE], b_kw={"config": cfg})
    r = _compare(a, b)
    fields = {c.field: (c.a, c.b) for c in r.config}
    assert fields["config.Env"] == (["PATH=/usr/bin:/bin"], ["PATH=/bin", "MODE=prod"])
    assert fields["config.Labels"] == (None, {"v": "2"})
    assert [(c.field, c.a, c.b) for c in r.history] == [("history[0].created_by", "step 0", "RUN make")]
    assert r.files == ()  # same layers: not even read
    assert _compare(a, b, semantic=True).config  # a config change is behaviour


def test_whiteouts(tmp_path):
    top = [M("etc", "dir", mode=0o755), M("etc/.wh.motd")]
    r = _compare(*_pair(tmp_path, [BASE, [M("etc", "dir", mode=0o755)]], [BASE, top]))
    f = _file(r, "etc/.wh.motd")
    assert f.status == "added" and f.whiteout == "etc/motd" and f.layer_b == 1
    assert "(whiteout of /etc/motd)" in render_text(r)
    # semantically: the final filesystems (motd gone on one side only)
    sem = _compare(tmp_path / "a", tmp_path / "b", semantic=True)
    assert [(f.path, f.status) for f in sem.files] == [("etc/motd", "removed")]


def test_layer_boundaries_that_only_move_files(tmp_path):
    first = [m for m in BASE if not m.name.startswith("dev")]
    second = [m for m in BASE if m.name.startswith("dev")]
    a, b = _pair(tmp_path, [BASE], [first, second])
    r = _compare(a, b)
    assert ("layers.count", 1, 2) in [(c.field, c.a, c.b) for c in r.layers]
    assert r.files == () and any("layer boundaries" in n for n in r.notes)
    assert not r.equal
    assert _compare(a, b, semantic=True).equal


def test_tar_entry_order(tmp_path):
    a, b = _pair(tmp_path, [BASE], [list(reversed(BASE))])
    r = _compare(a, b)
    assert [c.field for c in r.layers] == ["layers[0].diff_id", "layers[0].order"]
    assert r.files == ()
    assert _compare(a, b, semantic=True).equal


def test_compression_only(tmp_path):
    a, b = _pair(tmp_path, [BASE], [BASE], b_kw={"compression": "zstd"})
    r = _compare(a, b)
    assert r.same_image_id and r.files == () and r.layers == ()
    assert {c.field for c in r.manifest} == {"layers[0].digest", "layers[0].mediaType",
                                             "layers[0].size"}
    assert any("compression" in n for n in r.notes)
    assert _compare(a, b, semantic=True).equal


def test_json_output_and_exit_codes(tmp_path):
    a, b = _pair(tmp_path, [BASE], [_with(BASE, "etc/motd", mode=0o600)])
    run = lamina(tmp_path / "s", "diff", "--format", "json", str(a), str(b))
    assert run.code == 1
    doc = json.loads(run.stdout)
    assert doc["equal"] is False and doc["same_image_id"] is False
    assert doc["a"]["kind"] == "oci-layout" and doc["semantic"] is False
    assert doc["files"] == [{"path": "etc/motd", "status": "changed", "layer_a": 0, "layer_b": 0,
                             "step_a": "step 0", "step_b": "step 0",
                             "changes": [{"field": "mode", "a": "0644", "b": "0600"}],
                             "text_diff": [], "whiteout": None}]
    same = lamina(tmp_path / "s", "diff", "--format", "json", str(a), str(a))
    assert same.code == 0 and json.loads(same.stdout)["equal"] is True
    # trouble is 2, as diff(1): a missing file, an image not in the store, a usage error
    missing = lamina(tmp_path / "s", "diff", str(a), str(tmp_path / "nope" / "x.tar"))
    assert missing.code == 2 and "no such file" in missing.stderr
    assert lamina(tmp_path / "s", "diff", str(a), "sha256:" + "0" * 64).code == 2
    assert lamina(tmp_path / "s", "diff", str(a)).code == 2
    assert lamina(tmp_path / "s", "diff", "--format", "yaml", str(a), str(b)).code == 2


def test_archives_against_store_references(tmp_path):
    c = craft([layer_tar(BASE), layer_tar([M("etc", "dir", mode=0o755), M("etc/.wh.motd")])])
    oci = write_oci_archive(tmp_path / "img.tar", c)
    docker = write_docker_archive(tmp_path / "img.docker.tar", c)
    root = tmp_path / "store"
    assert lamina(root, "load", "-i", str(oci)).code == 0
    run = lamina(root, "diff", "example.org/crafted:1", str(oci))
    assert run.code == 0, run.stdout + run.stderr
    # a docker-archive has no manifest: said, not counted
    run = lamina(root, "diff", "example.org/crafted:1", f"docker-archive:{docker}")
    assert run.code == 0 and "B has no manifest" in run.stdout
    # the saved archive of the stored image, in both formats
    saved = tmp_path / "saved.tar"
    assert lamina(root, "save", "-o", str(saved), "--format", "oci", "example.org/crafted:1").code == 0
    assert lamina(root, "diff", "--semantic", str(saved), "oci-archive:" + str(oci)).code == 0
    # another image in the store against the archive: a difference, with the step
    other = craft([layer_tar(_with(BASE, "etc/motd", data=b"other\n"))])
    write_oci_archive(tmp_path / "other.tar", other, name="example.org/other:1")
    with __import__("lamina.store.store", fromlist=["Store"]).Store(root) as store:
        load(store, tmp_path / "other.tar")
    run = lamina(root, "diff", "example.org/crafted:1", "example.org/other:1")
    assert run.code == 1
    assert "layers.count: 2 -> 1" in run.stdout and "~ /etc/motd" not in run.stdout
    assert "+ /etc/motd" in run.stdout  # whited out in A's final filesystem, present in B


def test_registry_images_are_pulled_into_a_throw_away_store(tmp_path):
    from tests.store.registryfix import registry

    c = craft([layer_tar(BASE)])
    root = tmp_path / "store"
    assert lamina(root, "load", "-i", str(write_oci_archive(tmp_path / "img.tar", c))).code == 0
    with registry(tmp_path / "reg") as host:
        assert lamina(root, "push", "example.org/crafted:1", f"{host}/team/app:1").code == 0
        run = lamina(root, "diff", f"docker://{host}/team/app:1", "example.org/crafted:1")
        assert run.code == 0, run.stdout + run.stderr
        assert f"A: docker://{host}/team/app:1 (store)" in run.stdout
        # a reference the store does not hold is looked up in its registry
        assert lamina(root, "diff", f"{host}/team/app:1", str(tmp_path / "img.tar")).code == 0
        missing = lamina(root, "diff", f"docker://{host}/team/none:1", "example.org/crafted:1")
        assert missing.code == 2 and "lamina:" in missing.stderr
    # nothing pulled into the user's store: one image, one tag (the push gave it a repo
    # digest in team/app, which `images` shows as a <none> row, as docker does)
    ids = lamina(root, "images", "-q", "--no-trunc").stdout.split()
    assert len(set(ids)) == 1
    rows = lamina(root, "images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    assert [r for r in rows if not r.endswith(":<none>")] == ["example.org/crafted:1"]
