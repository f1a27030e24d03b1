"""fsck: a clean store is clean; a flipped byte in a blob, a missing blob, a
missing layer dir, a dangling tag and a layer blob that does not match its
diff_id are each reported by name, and `lamina fsck` exits non-zero. Extracted
layer dirs are compared with their layers (imported, and a built image's adopted
upper dir): each kind of damage is named, `--repair` removes the dir and the next
use re-extracts it, `--quick` skips the comparison."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import sqlite3
import subprocess
import tarfile

import pytest

from lamina.store.store import Store
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


# -- extracted layer dirs compared with their layers ----------------------------------------

def test_fresh_import_verifies_its_layer_dir(imported):
    root, img = imported
    with Store(root) as s:
        rep = s.fsck()
        assert rep.ok, rep.problems
        assert rep.layer_dirs_verified == 1 and not rep.quick
        quick = s.fsck(quick=True)
        assert quick.ok and quick.layer_dirs_verified == 0 and quick.quick


def damage_import(root, img):
    """Same-size content change, an extra file and a removed symlink in the dir."""
    with Store(root) as s:
        d = s.layer_dir(img.layers[0].diff_id)
    motd = d / "etc/motd"
    old = motd.read_bytes()
    new = old.upper()
    assert len(new) == len(old) and new != old
    motd.write_bytes(new)
    (d / "etc/extra").write_bytes(b"x")
    (d / "bin/cat").unlink()
    return d, hashlib.sha256(new).hexdigest(), hashlib.sha256(old).hexdigest()


def test_import_damage_is_named_and_quick_skips_it(imported):
    root, img = imported
    d, new_sha, old_sha = damage_import(root, img)
    with Store(root) as s:
        rep = s.fsck()
        quick = s.fsck(quick=True)
    assert len(rep.problems) == 1, rep.problems
    p = rep.problems[0]
    assert p.startswith(f"layer {img.layers[0].diff_id}: extracted directory {d} differs from the layer (3 paths)")
    assert f"/etc/motd: content sha256:{new_sha[:12]}..., the layer has sha256:{old_sha[:12]}..." in p
    assert "/etc/extra: not in the layer" in p and "/bin/cat: missing (the layer has a symlink)" in p
    assert [x.diff_id for x in rep.damaged_dirs] == [img.layers[0].diff_id]
    assert quick.ok and quick.layer_dirs_verified == 0
    # the CLI: the default is the full check, --deep its hidden alias, --quick skips the dirs
    for args in (("fsck",), ("fsck", "--deep")):
        cli = lamina(root, *args, check=False)
        assert cli.returncode == 1 and img.layers[0].diff_id in cli.stdout and str(d) in cli.stdout
        assert "--repair" in cli.stderr and "Traceback" not in cli.stderr
    cli = lamina(root, "fsck", "--quick")
    assert "quick" in cli.stdout and cli.stdout.strip().endswith("ok")
    assert "--deep" not in lamina(root, "fsck", "--help").stdout


def test_repair_removes_the_damaged_dir_and_the_layer_is_extracted_again(imported):
    root, img = imported
    d, _, old_sha = damage_import(root, img)
    cli = lamina(root, "fsck", "--repair")  # every problem repaired: exit 0
    assert f"repaired: layer {img.layers[0].diff_id}" in cli.stdout and "1 repaired" in cli.stdout
    assert not d.exists()
    assert lamina(root, "fsck").stdout.strip().endswith("ok")
    with Store(root) as s:
        again = s.layer_dir(img.layers[0].diff_id)
        assert hashlib.sha256((again / "etc/motd").read_bytes()).hexdigest() == old_sha
        assert os.readlink(again / "bin/cat") == "busybox" and not (again / "etc/extra").exists()
        rep = s.fsck()
        assert rep.ok and rep.layer_dirs_verified == 1


def test_repair_spares_a_dir_without_a_good_blob_or_held_by_a_build(imported):
    root, img = imported
    diff_id = img.layers[0].diff_id
    d, _, _ = damage_import(root, img)
    with Store(root) as s:
        with s.lease() as lease:
            lease.hold(layers=[diff_id])
            rep = s.fsck(repair=True)
            assert rep.repaired == [] and d.is_dir()
            assert any("a running build uses it" in n for n in rep.not_repaired)
            assert rep.unresolved == rep.problems
        flip_byte(s.blobs.path(img.layers[0].digest), 200)
        rep = s.fsck(repair=True)
        assert rep.repaired == [] and d.is_dir()
        assert any("does not match its digest" in p for p in rep.problems)
        # against a corrupt blob the dir is not even compared: nothing to repair from
        assert any("not verified: the layer has no good blob" in n for n in rep.notes)


def test_repair_of_a_missing_dir_clears_its_record(imported):
    root, img = imported
    with Store(root) as s:
        d = s.layer_dir(img.layers[0].diff_id)
        shutil.rmtree(d)
        rep = s.fsck(repair=True)
        assert [r.diff_id for r in rep.repaired] == [img.layers[0].diff_id] and rep.unresolved == []
        assert s.fsck().ok
        assert s.layer_dir(img.layers[0].diff_id).is_dir() and s.fsck().layer_dirs_verified == 1


# -- a built image: the RUN's upper dir adopted as the layer dir ------------------------------

DOCKERFILE = """\
FROM base:1
RUN mkdir -p /data/sub && echo hello > /data/f && ln /data/f /data/hl && ln -s f /data/sym \\
 && chmod 4755 /data/f && mkfifo /data/fifo && rm /gone && rm -rf /etc/dir && mkdir /etc/dir \\
 && echo c > /etc/dir/c
"""
EPOCH = 1_000_000


@pytest.fixture(scope="module")
def built(tmp_path_factory, busybox_path):
    """A store holding `t:1`, built by the CLI FROM an imported busybox, and the diff_id
    of its RUN layer. Tests copy it (cp -a keeps devices, xattrs and hard links)."""
    tmp = tmp_path_factory.mktemp("built")
    rootfs = make_rootfs(tmp / "rootfs", busybox_path, extra={"gone": b"g", "etc/dir/a": b"a"})
    root = tmp / "store"
    lamina(root, "import", str(make_tar(rootfs, tmp / "base.tar")), "base:1")
    ctx = tmp / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    lamina(root, "build", "-t", "t:1", str(ctx), env={"SOURCE_DATE_EPOCH": str(EPOCH)})
    with Store(root) as s:
        diff_id = s.resolve("t:1").layers[-1].diff_id
    return root, diff_id


@pytest.fixture
def built_copy(built, tmp_path):
    root, diff_id = built
    dst = tmp_path / "store"
    subprocess.run(["cp", "-a", str(root), str(dst)], check=True)
    return dst, diff_id


def layer_members(store, diff_id) -> dict[str, tarfile.TarInfo]:
    """The RUN layer's tar as Python's tarfile reads it (an independent reader)."""
    data = subprocess.run(["zstd", "-dcq"], input=store.blobs.read(store.layer(diff_id).digest),
                          capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        return {m.name: m for m in t.getmembers()}


@pytest.mark.root
def test_built_image_is_clean(built_copy):
    # the image's RUN layer is the step's layer with its times clamped to the epoch at
    # commit (the step's own layer, with real times, stays the cache's and the next
    # step's lower dir); each layer dir is checked against its own tar
    root, diff_id = built_copy
    with Store(root) as s:
        d = s.layer_dir(diff_id)
        members = layer_members(s, diff_id)
        # the layer is what the RUN made, in OCI form
        assert {"data/f", "data/hl", "data/sym", "data/fifo", ".wh.gone", "etc/dir/.wh..wh..opq",
                "etc/dir/c"} <= set(members)
        assert members["data/hl"].islnk() and members["data/f"].mode == 0o4755
        assert members["data/f"].mtime <= EPOCH
        assert os.lstat(d / "gone").st_rdev == 0 and os.getxattr(d / "etc/dir", "trusted.overlay.opaque") == b"y"
        rep = s.fsck()
        assert rep.ok, rep.problems
        dirs = rep.layer_dirs_verified
        assert dirs >= 2 and rep.images_checked == 2
    assert lamina(root, "fsck").stdout.strip().endswith(f"{dirs} layer dirs: ok")


def _content(d):
    (d / "data/f").write_bytes(b"HELLO\n")  # same size, same inode (data/hl shares it)
    return "/data/f: content sha256:" + hashlib.sha256(b"HELLO\n").hexdigest()[:12]


DAMAGE = {
    "content": _content,
    "mode": lambda d: os.chmod(d / "data/f", 0o755) or "/data/f: mode 0755, the layer has 4755",
    "removed file": lambda d: (d / "etc/dir/c").unlink() or "/etc/dir/c: missing (the layer has a regular file)",
    "extra file": lambda d: (d / "data/sub/new").write_bytes(b"") or "/data/sub/new: not in the layer",
    "removed whiteout": lambda d: (d / "gone").unlink() or "/gone: whiteout missing",
    "removed opaque xattr": lambda d: os.removexattr(d / "etc/dir", "trusted.overlay.opaque")
    or "/etc/dir: not opaque (no trusted.overlay.opaque=y), the layer has .wh..wh..opq",
}


@pytest.mark.root
@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_each_kind_of_damage_is_named(built_copy, kind):
    root, diff_id = built_copy
    with Store(root) as s:
        d = s.layer_dir(diff_id)
        expected = DAMAGE[kind](d)
        rep = s.fsck()
    assert len(rep.problems) == 1, rep.problems
    p = rep.problems[0]
    assert p.startswith(f"layer {diff_id}: extracted directory {d} differs from the layer (1 path): ")
    assert expected in p


@pytest.mark.root
def test_built_layer_repaired_then_built_on(built_copy, tmp_path):
    root, diff_id = built_copy
    with Store(root) as s:
        d = s.layer_dir(diff_id)
    for damage in DAMAGE.values():
        damage(d)
    assert "(5 paths)" in lamina(root, "fsck", check=False).stdout  # content and mode: both /data/f
    lamina(root, "fsck", "--repair")
    assert lamina(root, "fsck").returncode == 0
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM t:1\nRUN cat /data/f /etc/dir/c > /out && test ! -e /gone "
                                    "&& test ! -e /etc/dir/a && test -u /data/f\n")
    lamina(root, "build", "--no-cache", "-t", "t:2", str(ctx))
    with Store(root) as s:
        again = s.layer_dir(diff_id)  # re-extracted from the blob by the build
        assert (again / "data/f").read_bytes() == b"hello\n" and os.lstat(again / "gone").st_rdev == 0
        top = s.layer_dir(s.resolve("t:2").layers[-1].diff_id)
        assert (top / "out").read_bytes() == b"hello\nc\n"
        assert s.fsck().ok


def test_loose_store_modes_are_problems_and_repair_tightens_them(imported):
    """Issue 7: the store root and every directory in it that holds layer content are
    0700 from the first mkdir; a looser mode (a `chmod -R 755`, a restore that lost
    modes) is a problem fsck names, and --repair takes group/other bits away."""
    import stat as stat_

    root, _ = imported
    with Store(root):
        pass
    made = {p.name: stat_.S_IMODE(p.stat().st_mode) for p in root.iterdir() if p.is_dir()}
    assert {"blobs", "layers", "tmp", "cache", "buildinfo", "containers"} <= set(made)
    assert set(made.values()) == {0o700}, made
    os.chmod(root, 0o755)
    os.chmod(root / "layers", 0o755)
    os.chmod(root / "cache", 0o777)
    cli = lamina(root, "fsck", check=False)
    assert cli.returncode == 1
    assert f"ERROR: store permissions: {root / 'layers'} is 0755" in cli.stdout
    assert f"ERROR: store permissions: {root / 'cache'} is 0777" in cli.stdout
    # the root itself, the gate, is tightened as soon as lamina opens the store
    assert f"note: the store {root} was 0755" in cli.stdout
    assert stat_.S_IMODE(root.stat().st_mode) == 0o700
    assert "lamina fsck --repair" in cli.stderr
    fixed = lamina(root, "fsck", "--repair")
    assert "2 repaired" in fixed.stdout
    assert stat_.S_IMODE((root / "layers").stat().st_mode) == 0o700
    assert stat_.S_IMODE((root / "cache").stat().st_mode) == 0o700
    assert lamina(root, "fsck").stdout.strip().endswith("ok")
