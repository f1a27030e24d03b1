"""The Store facade: import of a busybox rootfs, resolving references, images,
inspect, history, tag, rmi, commit_image / add_manifest, layer dirs with dedup,
du, disk full, and concurrent imports + tags + gc from several processes."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

from lamina.store import oci
from lamina.store.errors import BlobNotFound, CorruptContent, ImageNotFound, StoreError
from lamina.store.layers import write_layer
from lamina.store.refs import InvalidReference
from lamina.store.store import Store
from tests.conftest import IN_CI, require_tool
from tests.store.storefix import make_rootfs, make_tar

ARCH = {"x86_64": "amd64", "aarch64": "arm64"}  # OCI image-spec platform names


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory, busybox_path) -> Path:
    return make_rootfs(tmp_path_factory.mktemp("rootfs") / "root", busybox_path)


@pytest.fixture(scope="module")
def busybox_tar(tmp_path_factory, rootfs) -> Path:
    return make_tar(rootfs, tmp_path_factory.mktemp("tar") / "busybox.tar")


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "store") as s:
        yield s


@pytest.fixture
def dedup_store(tmp_path):
    with Store(tmp_path / "dedup-store", file_dedup=True) as s:
        yield s


def decompressed(store: Store, digest: str) -> bytes:
    blob = store.blobs.read(digest)
    return subprocess.run(["zstd", "-dcq"], input=blob, capture_output=True, check=True).stdout


def tree_listing(root: Path) -> dict[str, tuple]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st = p.lstat()
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("l", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("d", st.st_mode & 0o7777)
            else:
                out[rel] = ("f", st.st_mode & 0o7777, hashlib.sha256(p.read_bytes()).hexdigest(),
                            int(st.st_mtime))
    return out


# -- import and what it produces --------------------------------------------------------

def test_import_makes_a_valid_one_layer_image(store, busybox_tar, rootfs):
    require_tool("zstd")
    img = store.import_rootfs(busybox_tar, "bb:1", source_date_epoch=0)
    assert img.tags == ("bb:1",)
    # the image ID is the digest of the config blob; the manifest names it
    config_bytes = store.blobs.read(img.config_digest)
    assert sha(config_bytes) == img.config_digest
    manifest_bytes = store.blobs.read(img.manifest_digest)
    assert sha(manifest_bytes) == img.manifest_digest
    m = json.loads(manifest_bytes)
    assert m["schemaVersion"] == 2 and m["mediaType"] == oci.OCI_MANIFEST
    assert m["config"] == {"mediaType": oci.OCI_CONFIG, "digest": img.config_digest, "size": len(config_bytes)}
    (layer,) = m["layers"]
    # diff_id = sha256 of the decompressed layer (decompressed by the zstd CLI)
    tar = decompressed(store, layer["digest"])
    cfg = json.loads(config_bytes)
    assert cfg["rootfs"] == {"type": "layers", "diff_ids": [sha(tar)]}
    assert cfg["architecture"] == ARCH.get(platform.machine(), cfg["architecture"]) and cfg["os"] == "linux"
    assert cfg["created"] == "1970-01-01T00:00:00Z"
    assert cfg["history"] == [{"created": "1970-01-01T00:00:00Z", "comment": "Imported from busybox.tar"}]
    # compact JSON, Go struct field order
    assert list(cfg)[:4] == ["created", "architecture", "os", "config"] and b": " not in config_bytes
    assert list(m) == ["schemaVersion", "mediaType", "config", "layers"]
    # the layer holds the root filesystem (listed by GNU tar, the peer tool)
    names = subprocess.run(["tar", "-tf", "-"], input=tar, capture_output=True, check=True).stdout.decode().split()
    assert {"bin/", "bin/busybox", "bin/sh", "etc/motd"} <= set(names)


def test_import_is_deterministic_and_compression_independent(tmp_path, rootfs):
    ids = set()
    for comp in ("none", "gzip", "zstd", "xz", "bzip2"):
        (tmp_path / comp).mkdir()
        tar = make_tar(rootfs, tmp_path / comp / "root.tar", comp)  # same name: same history comment
        with Store(tmp_path / f"s-{comp}") as s:
            ids.add(s.import_rootfs(tar, "x", source_date_epoch=0).id)
    assert len(ids) == 1


def test_import_uses_source_date_epoch_from_env(store, busybox_tar, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "86400")
    img = store.import_rootfs(busybox_tar, "x")
    assert img.config["created"] == "1970-01-02T00:00:00Z"
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(StoreError, match="SOURCE_DATE_EPOCH"):
        store.import_rootfs(busybox_tar, "y")


def test_import_of_garbage_fails_and_leaves_the_store_as_it_was(store, tmp_path, busybox_tar):
    store.import_rootfs(busybox_tar, "keep")
    before = (sorted(store.blobs.digests()), sorted(os.listdir(store.layers_root)),
              [(i.manifest_digest, i.tags) for i in store.images()])
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00" + os.urandom(3000))
    with pytest.raises(StoreError):
        store.import_rootfs(bad, "broken")
    with pytest.raises(InvalidReference):
        store.import_rootfs(busybox_tar, "Bad:Name")
    after = (sorted(store.blobs.digests()), sorted(os.listdir(store.layers_root)),
             [(i.manifest_digest, i.tags) for i in store.images()])
    assert after == before
    assert [p for p in os.listdir(store.tmp_dir) if not p.endswith(".owner")] == []


def test_the_imported_tree_is_the_layer_dir(store, busybox_tar, rootfs):
    img = store.import_rootfs(busybox_tar, "bb")
    d = store.layer_dir(img.layers[0].diff_id)
    assert d.parent == store.layers_root and len(d.name) == 12
    assert tree_listing(d) == tree_listing(rootfs)
    # remove it: the next use extracts it again from the blob, identical
    shutil.rmtree(d)
    assert store.layer_dir(img.layers[0].diff_id) == d
    assert tree_listing(d) == tree_listing(rootfs)


# -- resolving --------------------------------------------------------------------------

def test_resolve_by_every_kind_of_reference(store, busybox_tar):
    img = store.import_rootfs(busybox_tar, "docker.io/library/bb:latest")
    hex_ = img.id.split(":")[1]
    for ref in ("bb", "bb:latest", "docker.io/library/bb", "library/bb:latest", img.id, hex_,
                hex_[:12], "sha256:" + hex_[:12], img.manifest_digest, f"bb@{img.manifest_digest}"):
        assert store.resolve(ref).manifest_digest == img.manifest_digest, ref
    for ref in ("bb:2", "other", hex_[:11] + "x" if False else "0" * 12, "sha256:" + "0" * 64):
        with pytest.raises(ImageNotFound, match="no such image"):
            store.resolve(ref)
    with pytest.raises(InvalidReference):
        store.resolve("BB")


# -- tag / rmi ---------------------------------------------------------------------------

def test_tag_untag_and_rmi_semantics(store, busybox_tar, tmp_path, rootfs):
    img = store.import_rootfs(busybox_tar, "app:1")
    store.tag("app:2", "app:1")
    store.tag("localhost:5000/team/app:1", img.short_id)
    assert store.resolve("app:2").id == img.id
    assert set(store.resolve("app:1").tags) == {"app:1", "app:2", "localhost:5000/team/app:1"}
    # by ID with tags in two repositories: refused without force
    with pytest.raises(StoreError, match="must be forced"):
        store.remove_image(img.short_id)
    # by tag: only untag while other tags remain
    assert store.remove_image("app:2") == ["Untagged: app:2"]
    assert store.resolve(img.id).tags == ("app:1", "localhost:5000/team/app:1")
    assert store.remove_image("localhost:5000/team/app:1") == ["Untagged: localhost:5000/team/app:1"]
    # the last tag takes the image with it
    assert store.remove_image("app:1") == ["Untagged: app:1", f"Deleted: {img.id}"]
    with pytest.raises(ImageNotFound):
        store.resolve(img.id)
    assert store.images() == []
    # force by ID removes every tag
    img2 = store.import_rootfs(busybox_tar, "a:1")
    store.tag("b:1", "a:1")
    out = store.remove_image(img2.short_id, force=True)
    assert out == ["Untagged: a:1", "Untagged: b:1", f"Deleted: {img2.id}"]
    with pytest.raises(InvalidReference):
        store.tag("x@sha256:" + "0" * 64, img2.id)


def test_retagging_moves_the_tag(store, tmp_path, busybox_path):
    a = store.import_rootfs(make_tar(make_rootfs(tmp_path / "ra", busybox_path), tmp_path / "a.tar"), "app")
    b = store.import_rootfs(make_tar(make_rootfs(tmp_path / "rb", busybox_path, extra={"x": b"x"}),
                                     tmp_path / "b.tar"), "other")
    store.tag("app", "other")
    assert store.resolve("app").id == b.id
    assert store.untag("other") == b.manifest_digest  # untag alone never deletes the image
    assert store.resolve(b.id).tags == ("app:latest",)
    with pytest.raises(ImageNotFound):
        store.untag("other")
    store.tag("other", "app")
    assert store.resolve(a.id).tags == ()  # dangling, like docker's <none>
    assert {s.config_digest: s.tags for s in store.images()} == {a.id: (), b.id: ("app:latest", "other:latest")}


# -- commit_image / add_manifest ----------------------------------------------------------

def _layer(store, tmp_path, files, name):
    d = tmp_path / name
    d.mkdir()
    for n, data in files.items():
        (d / n).write_bytes(data)
        os.utime(d / n, (0, 0))
    return write_layer(store.blobs, d, compression="gzip", source_date_epoch=0)


def test_commit_image_is_deterministic_and_escapes_like_go(tmp_path):
    ids = []
    for i in range(2):
        with Store(tmp_path / f"s{i}") as s:
            l = _layer(s, tmp_path, {"a": b"a"}, f"l{i}")
            cfg = oci.build_config(diff_ids=[l.diff_id], container_config={"Cmd": ["sh"], "Labels": {"b": "2", "a": "1"}},
                                   history=[{"created": "1970-01-01T00:00:00Z",
                                             "created_by": "RUN echo a > b && c < d"}],
                                   platform_={"architecture": "amd64", "os": "linux"})
            img = s.commit_image(cfg, [l], ["x:1"])
            ids.append((img.id, img.manifest_digest))
            raw = s.blobs.read(img.config_digest)
            # Go's encoding/json escapes <, > and & inside strings; maps sorted by key
            assert b"echo a \\u003e b \\u0026\\u0026 c \\u003c d" in raw
            assert b'"Labels":{"a":"1","b":"2"}' in raw
            assert json.loads(raw)["history"][0]["created_by"] == "RUN echo a > b && c < d"
    assert ids[0] == ids[1]


def test_commit_image_checks_its_inputs(store, tmp_path):
    l = _layer(store, tmp_path, {"a": b"a"}, "l")
    with pytest.raises(StoreError, match="diff_ids"):
        store.commit_image({"rootfs": {"type": "layers", "diff_ids": ["sha256:" + "1" * 64]}}, [l])
    ghost = type(l)(l.diff_id, "sha256:" + "2" * 64, 1, l.media_type, 1)
    with pytest.raises(BlobNotFound):
        store.commit_image({}, [ghost])
    assert store.images() == []


def test_add_manifest_keeps_the_bytes(store, tmp_path):
    l = _layer(store, tmp_path, {"a": b"a"}, "l")
    config = json.dumps({"architecture": "arm64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [l.diff_id]}}, indent=2).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
                           "config": {"mediaType": oci.OCI_CONFIG, "digest": sha(config), "size": len(config)},
                           "layers": [{"mediaType": l.media_type, "digest": l.digest, "size": l.size}]},
                          indent=3).encode()
    img = store.add_manifest(manifest, config, [l], ["loaded:1"])
    assert img.manifest_digest == sha(manifest) and img.id == sha(config)
    assert store.blobs.read(img.manifest_digest) == manifest
    with pytest.raises(CorruptContent, match="config"):
        store.add_manifest(manifest, config + b" ", [l])


# -- history / inspect ---------------------------------------------------------------------

def test_history_and_inspect(store, tmp_path):
    l1 = _layer(store, tmp_path, {"a": b"a" * 1000}, "l1")
    l2 = _layer(store, tmp_path, {"b": b"b" * 5000}, "l2")
    t = "1970-01-01T00:00:00Z"
    cfg = oci.build_config(diff_ids=[l1.diff_id, l2.diff_id], container_config={"Cmd": ["sh"], "Env": ["A=1"]},
                           history=[{"created": t, "created_by": "ADD a /"},
                                    {"created": t, "created_by": "ENV A=1", "empty_layer": True},
                                    {"created": t, "created_by": "COPY b /", "comment": "c"}])
    img = store.commit_image(cfg, [l1, l2], ["h:1"])
    h = store.history("h:1")
    assert [(e.created_by, e.size, e.empty_layer) for e in h] == [
        ("COPY b /", l2.uncompressed_size, False), ("ENV A=1", 0, True), ("ADD a /", l1.uncompressed_size, False)]
    assert h[0].image_id == img.id and h[1].image_id is None and h[0].comment == "c"
    i = store.inspect("h:1")
    assert i["Id"] == img.id and i["RepoTags"] == ["h:1"]
    assert i["Config"] == {"Cmd": ["sh"], "Env": ["A=1"]}
    assert i["RootFS"] == {"Type": "layers", "Layers": [l1.diff_id, l2.diff_id]}
    assert i["Size"] == l1.uncompressed_size + l2.uncompressed_size
    assert i["Os"] == "linux" and i["Created"] == t
    assert i["Descriptor"]["digest"] == img.manifest_digest


# -- dedup and du ----------------------------------------------------------------------------

def test_identical_files_across_layers_share_an_inode_and_du_reports_it(dedup_store, tmp_path, busybox_path):
    big = os.urandom(300_000)
    ra = make_rootfs(tmp_path / "ra", busybox_path, extra={"data/big": big, "data/only-a": b"A" * 5000})
    rb = make_rootfs(tmp_path / "rb", busybox_path, extra={"data/big": big, "data/only-b": b"B" * 7000})
    a = dedup_store.import_rootfs(make_tar(ra, tmp_path / "a.tar"), "a")
    b = dedup_store.import_rootfs(make_tar(rb, tmp_path / "b.tar"), "b")
    assert a.layers[0].diff_id != b.layers[0].diff_id
    da, db_ = dedup_store.layer_dir(a.layers[0].diff_id), dedup_store.layer_dir(b.layers[0].diff_id)
    for rel in ("bin/busybox", "data/big", "etc/motd"):
        assert (da / rel).stat().st_ino == (db_ / rel).stat().st_ino, rel
    assert (da / "data/only-a").stat().st_nlink == 1
    # linking did not change what the layer shows: same content, modes and times
    assert tree_listing(db_) == tree_listing(rb)
    shared = os.path.getsize(busybox_path) + len(big) + len("hello from lamina tests\n")
    du = dedup_store.du()
    logical = sum(f.stat().st_size for d in (da, db_) for f in d.rglob("*") if f.is_file() and not f.is_symlink())
    assert du.logical_bytes == du.layer_dir_bytes == du.image_layer_bytes == logical
    assert du.dedup_saved_bytes == shared
    assert du.unique_bytes == logical - shared
    assert du.layer_dirs == 2 and du.images == 2
    assert du.shared_layers == 0 and du.sharing_saved_bytes == du.sharing_saved_blob_bytes == 0


def regular_file_bytes(d: Path) -> int:
    return sum(os.lstat(os.path.join(p, n)).st_size for p, _, names in os.walk(d) for n in names
               if os.path.isfile(os.path.join(p, n)) and not os.path.islink(os.path.join(p, n)))


def allocated(paths) -> int:
    seen, total = set(), 0
    for top in paths:
        for p, dirs, names in os.walk(top):
            for x in [p] + [os.path.join(p, n) for n in dirs + names]:
                st = os.lstat(x)
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
    return total


def test_du_counts_a_shared_base_layer_once(store, tmp_path, busybox_tar):
    """Two images on one base layer: logical counts the base for each, stored once;
    the saving is the base layer, compressed and extracted; file dedup saved nothing."""
    base = store.import_rootfs(busybox_tar, "base")
    top = tmp_path / "top"
    (top / "app").mkdir(parents=True)
    (top / "app" / "data").write_bytes(os.urandom(20_000))
    l1, l2 = base.layers[0], store.write_layer(top)
    store.commit_image({"config": {"Cmd": ["sh"]}}, [l1, l2], ["app:1"])
    d1, d2 = store.layer_dir(l1.diff_id), store.layer_dir(l2.diff_id)
    b1, b2 = (os.stat(store.blobs.path(l.digest)).st_size for l in (l1, l2))
    x1, x2 = regular_file_bytes(d1), regular_file_bytes(d2)
    assert x2 == 20_000 and x1 > os.path.getsize("/bin/busybox")

    du = store.du()
    assert (du.images, du.layers, du.shared_layers, du.layer_dirs) == (2, 2, 1, 2)
    assert du.logical_blob_bytes == b1 + (b1 + b2) and du.image_blob_bytes == b1 + b2
    assert du.sharing_saved_blob_bytes == b1
    assert du.logical_bytes == x1 + (x1 + x2) and du.image_layer_bytes == x1 + x2
    assert du.sharing_saved_bytes == x1
    assert du.layer_dir_bytes == du.unique_bytes == x1 + x2 and du.dedup_saved_bytes == 0
    blob_files = list((store.root / "blobs" / "sha256").iterdir())
    assert du.blob_count == len(blob_files) == 6  # 2 layers, 2 configs, 2 manifests
    assert du.blob_bytes == sum(os.lstat(f).st_blocks * 512 for f in blob_files)
    assert du.stored_bytes == allocated([d1, d2])
    assert du.total_bytes == du.blob_bytes + du.stored_bytes + os.path.getsize(store.root / "lamina.db") + sum(
        os.path.getsize(f) for f in (store.root / "lamina.db-wal", store.root / "lamina.db-shm") if f.exists())


def test_files_differing_in_metadata_are_not_linked(dedup_store, tmp_path, busybox_path):
    ra = make_rootfs(tmp_path / "ra", busybox_path, extra={"f": b"same"})
    rb = make_rootfs(tmp_path / "rb", busybox_path, extra={"f": b"same"})
    os.chmod(rb / "f", 0o600)
    os.utime(rb / "f", (1_600_000_000, 1_600_000_000))
    a = dedup_store.import_rootfs(make_tar(ra, tmp_path / "a.tar"), "a")
    b = dedup_store.import_rootfs(make_tar(rb, tmp_path / "b.tar"), "b")
    fa = dedup_store.layer_dir(a.layers[0].diff_id) / "f"
    fb = dedup_store.layer_dir(b.layers[0].diff_id) / "f"
    assert fa.stat().st_ino != fb.stat().st_ino


def test_adopt_layer_dir_renames(store, tmp_path):
    src = store.temp_path("upper")
    src.mkdir()
    (src / "f").write_bytes(b"x")
    l = store.write_layer(src, compression="gzip")
    upper = store.temp_path("upper2")
    shutil.copytree(src, upper)
    ino = (upper / "f").stat().st_ino
    d = store.adopt_layer_dir(l.diff_id, upper)
    assert not upper.exists() and (d / "f").stat().st_ino == ino
    # a second adoption of the same layer keeps the first dir and drops the new one
    again = store.temp_path("upper3")
    shutil.copytree(src, again)
    assert store.adopt_layer_dir(l.diff_id, again) == d and not again.exists()


# -- disk full -------------------------------------------------------------------------------

@pytest.mark.root
def test_disk_full_is_one_clear_error_and_changes_nothing(tmp_path, busybox_tar, rootfs):
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], check=True)
    try:
        with Store(mnt / "store") as s:
            with pytest.raises(StoreError, match="disk full") as e:
                s.import_rootfs(busybox_tar, "bb")  # ~2 MB extracted + blob: does not fit
            assert "\n" not in str(e.value)
            assert s.images() == [] and s.fsck().ok
            assert [p for p in os.listdir(s.tmp_dir) if not p.endswith(".owner")] == []
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


# -- several processes at once ---------------------------------------------------------------

def _worker(root: str, tars: list[str], w: int, rounds: int) -> None:
    with Store(Path(root)) as s:
        for i in range(rounds):
            tar = tars[(w + i) % len(tars)]
            img = s.import_rootfs(Path(tar), f"w{w}:{i}")
            s.tag(f"shared:{i % 3}", img.id)
            s.tag(f"w{w}:latest", f"w{w}:{i}")
            if i % 2:
                s.remove_image(f"w{w}:{i}")
            s.layer_dir(img.layers[0].diff_id)


def _collector(root: str, n: int) -> None:
    with Store(Path(root)) as s:
        for _ in range(n):
            s.gc(cache_max_age=None)


def test_concurrent_imports_tags_and_gc(tmp_path, busybox_path):
    tars = [str(make_tar(make_rootfs(tmp_path / f"r{i}", busybox_path, extra={"n": str(i).encode()}),
                         tmp_path / f"{i}.tar")) for i in range(3)]
    root = str(tmp_path / "store")
    Store(Path(root)).close()
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_worker, args=(root, tars, w, 4)) for w in range(4)]
    procs += [ctx.Process(target=_collector, args=(root, 6))]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
        assert p.exitcode == 0
    with Store(Path(root)) as s:
        rep = s.fsck()
        assert rep.ok, rep.problems
        for w in range(4):
            img = s.resolve(f"w{w}:latest")
            assert img.tags and s.layer_dir(img.layers[0].diff_id).is_dir()
            assert s.resolve(f"w{w}:2").id  # even rounds keep their tag
        s.gc()
        assert s.fsck().ok
        # after gc only referenced blobs remain
        assert not [n for n in s.fsck().notes if "unreferenced" in n]


# -- the layer dirs serve as overlay lower dirs; peers read the documents -----------------

@pytest.mark.root
def test_deduplicated_layer_dirs_mount_as_overlay_lowers(dedup_store, tmp_path, busybox_path):
    big = os.urandom(50_000)
    a = dedup_store.import_rootfs(make_tar(make_rootfs(tmp_path / "ra", busybox_path, extra={"d/big": big}),
                                     tmp_path / "a.tar"), "a")
    b = dedup_store.import_rootfs(make_tar(make_rootfs(tmp_path / "rb", busybox_path,
                                                 extra={"d/big": big, "d/b": b"b"}), tmp_path / "b.tar"), "b")
    lowers = [dedup_store.layer_dir(b.layers[0].diff_id), dedup_store.layer_dir(a.layers[0].diff_id)]
    assert (lowers[0] / "d/big").stat().st_ino == (lowers[1] / "d/big").stat().st_ino
    upper, work, merged = tmp_path / "upper", tmp_path / "work", tmp_path / "merged"
    for d in (upper, work, merged):
        d.mkdir()
    opts = (f"lowerdir={':'.join(map(str, lowers))},upperdir={upper},workdir={work},"
            "redirect_dir=off,metacopy=off,index=off")
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(merged)], check=True)
    try:
        assert (merged / "d/big").read_bytes() == big and (merged / "d/b").read_bytes() == b"b"
        with open(merged / "d/big", "r+b") as f:  # copy-up: the shared lower inode is untouched
            f.write(b"changed")
    finally:
        subprocess.run(["umount", str(merged)], check=True)
    assert (lowers[1] / "d/big").read_bytes() == big and (upper / "d/big").read_bytes()[:7] == b"changed"


def test_skopeo_reads_the_manifest_and_config(store, busybox_tar, tmp_path):
    skopeo = require_tool("skopeo")
    img = store.import_rootfs(busybox_tar, "bb")
    layout = tmp_path / "layout"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    for d in [img.manifest_digest, img.config_digest] + [l.digest for l in img.layers]:
        shutil.copyfile(store.blobs.path(d), layout / "blobs" / "sha256" / d.split(":")[1])
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    desc = {"mediaType": oci.OCI_MANIFEST, "digest": img.manifest_digest,
            "size": store.blobs.size(img.manifest_digest), "annotations": {oci.ANNOTATION_REF_NAME: "bb"}}
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [desc]}))
    cfg = subprocess.run([skopeo, "inspect", "--config", f"oci:{layout}:bb"], capture_output=True, text=True,
                         check=True).stdout
    assert json.loads(cfg) == img.config
    # skopeo verifies every digest while copying
    subprocess.run([skopeo, "copy", "-q", f"oci:{layout}:bb", f"dir:{tmp_path / 'copy'}"], check=True)
    assert (tmp_path / "copy" / "manifest.json").read_bytes() == store.blobs.read(img.manifest_digest)


def test_default_store_never_links_files_across_layers(store, tmp_path, busybox_path):
    """Without file_dedup, identical files of two layers stay separate inodes: a build
    must never see st_nlink > 1 (or a hard link) that the image does not contain."""
    big = os.urandom(10_000)
    a = store.import_rootfs(make_tar(make_rootfs(tmp_path / "ra", busybox_path, extra={"d/big": big}),
                                     tmp_path / "a.tar"), "a")
    b = store.import_rootfs(make_tar(make_rootfs(tmp_path / "rb", busybox_path,
                                                 extra={"d/big": big, "d/b": b"b"}), tmp_path / "b.tar"), "b")
    fa = store.layer_dir(a.layers[0].diff_id) / "d/big"
    fb = store.layer_dir(b.layers[0].diff_id) / "d/big"
    assert fa.read_bytes() == fb.read_bytes() == big
    assert fa.stat().st_ino != fb.stat().st_ino
    assert fa.stat().st_nlink == fb.stat().st_nlink == 1


def test_store_tmp_is_an_orlov_top_directory(tmp_path):
    """ROOT/tmp, where every step's upper dir is made, carries ext4's top-directory
    flag (chattr +T): its subdirectories go to block groups with free inodes."""
    import array
    import fcntl

    fstype = subprocess.run(["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True,
                            text=True).stdout.strip()
    if fstype != "ext2/ext3":  # how stat(1) names ext4
        if IN_CI:
            pytest.fail(f"CI's tmp is on {fstype}: expected ext4 as on the project's machines")
        pytest.skip(f"{tmp_path} is on {fstype}, not ext4")
    Store(tmp_path / "store")
    fd = os.open(tmp_path / "store" / "tmp", os.O_RDONLY | os.O_DIRECTORY)
    try:
        flags = array.array("i", [0])
        fcntl.ioctl(fd, 0x80086601, flags, True)  # FS_IOC_GETFLAGS
    finally:
        os.close(fd)
    assert flags[0] & 0x00020000  # FS_TOPDIR_FL
    lsattr = subprocess.run(["lsattr", "-d", str(tmp_path / "store" / "tmp")], capture_output=True,
                            text=True, check=True).stdout
    assert "T" in lsattr.split()[0]  # e2fsprogs reads the same flag
