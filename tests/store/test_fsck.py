"""fsck: a clean store is clean; a flipped byte in a blob, a missing blob, a
missing layer dir, a dangling tag and a layer blob that does not match its
diff_id are each reported by name, and `lamina fsck` exits non-zero."""

from __future__ import annotations

import shutil
import sqlite3

import pytest

from store.store import Store
from tests.store.storefix import lamina, make_rootfs, make_tar


@pytest.fixture
def imported(tmp_path, busybox_path):
    tar = make_tar(make_rootfs(tmp_path / "rootfs", busybox_path), tmp_path / "bb.tar")
    root = tmp_path / "store"
    with Store(root) as s:
        img = s.import_rootfs(tar, "bb:1")
    return root, img


def flip_byte(path, offset):
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


def test_clean_store_is_clean(imported):
    root, img = imported
    with Store(root) as s:
        rep = s.fsck(deep=True)
        assert rep.ok, rep.problems
        assert rep.blobs_checked == 3 and rep.images_checked == 1 and rep.layers_checked == 1
    p = lamina(root, "fsck")
    assert p.returncode == 0 and "ok" in p.stdout


@pytest.mark.parametrize("which", ["layer", "config", "manifest"])
def test_flipped_byte_in_a_blob(imported, which):
    root, img = imported
    digest = {"layer": img.layers[0].digest, "config": img.config_digest, "manifest": img.manifest_digest}[which]
    with Store(root) as s:
        flip_byte(s.blobs.path(digest), 100)
        rep = s.fsck()
    assert any(digest in p and "does not match its digest" in p for p in rep.problems), rep.problems
    p = lamina(root, "fsck", check=False)
    assert p.returncode == 1
    assert digest in p.stdout and "damaged" in p.stderr
    assert "Traceback" not in p.stderr


def test_missing_blob(imported):
    root, img = imported
    with Store(root) as s:
        s.blobs.path(img.layers[0].digest).unlink()
        rep = s.fsck()
    assert any(img.layers[0].digest in p and "missing" in p for p in rep.problems)


def test_missing_layer_dir(imported):
    root, img = imported
    with Store(root) as s:
        d = s.layer_dir(img.layers[0].diff_id)
        shutil.rmtree(d)
        rep = s.fsck()
        assert rep.problems == [f"layer {img.layers[0].diff_id}: extracted directory {d} is missing"]
        # the next use re-extracts it, and the store is clean again
        assert s.layer_dir(img.layers[0].diff_id) == d and d.is_dir()
        assert s.fsck().ok


def test_dangling_tag(imported):
    root, img = imported
    c = sqlite3.connect(root / "lamina.db")
    c.execute("PRAGMA foreign_keys=OFF")
    c.execute("INSERT INTO tags(name, manifest_digest, tagged) VALUES (?,?,0)",
              ("docker.io/library/ghost:latest", "sha256:" + "9" * 64))
    c.commit()
    c.close()
    with Store(root) as s:
        rep = s.fsck()
    assert len(rep.problems) == 1
    assert "tag ghost:latest" in rep.problems[0] and "dangling" in rep.problems[0]
    p = lamina(root, "fsck", check=False)
    assert p.returncode == 1 and "ghost:latest" in p.stdout


def test_deep_check_finds_a_layer_that_is_not_its_diff_id(imported, tmp_path):
    root, img = imported
    c = sqlite3.connect(root / "lamina.db")
    wrong = "sha256:" + "7" * 64
    c.execute("PRAGMA foreign_keys=OFF")
    c.execute("UPDATE layer_blobs SET diff_id=? WHERE digest=?", (wrong, img.layers[0].digest))
    c.execute("UPDATE layers SET diff_id=? WHERE diff_id=?", (wrong, img.layers[0].diff_id))
    c.execute("UPDATE image_layers SET diff_id=? WHERE digest=?", (wrong, img.layers[0].digest))
    c.commit()
    c.close()
    with Store(root) as s:
        shallow = s.fsck()
        deep = s.fsck(deep=True)
    # the config still names the real diff_id: even the shallow check sees the mismatch
    assert any("diff_ids differ" in p for p in shallow.problems)
    assert any(f"decompresses to {img.layers[0].diff_id}" in p for p in deep.problems)


def test_leftovers_are_notes_not_problems(imported):
    root, img = imported
    with Store(root) as s:
        s.blobs.put(b"unreferenced")
        (s.layers_root / "abcdefabcdef").mkdir()
        rep = s.fsck()
    assert rep.ok
    assert any("unreferenced blob" in n for n in rep.notes)
    assert any("unrecorded layer dir" in n for n in rep.notes)
