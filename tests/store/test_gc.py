"""gc: removes exactly what no image, kept cache entry or live lease reaches;
never what a live lease holds, never bytes a writer is about to record; the
cache policy (age, size, ancestors kept)."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from datetime import timedelta
from pathlib import Path


from lamina.store import oci
from lamina.store.cache import CacheEntry
from lamina.store.layers import LayerBlob
from lamina.store.store import Store


def make_layer(store: Store, tmp: Path, name: str, data: bytes) -> LayerBlob:
    d = tmp / name
    d.mkdir()
    (d / name).write_bytes(data)
    return store.write_layer(d, compression="gzip", source_date_epoch=0)


def commit(store: Store, layers, tag: str):
    cfg = oci.build_config(diff_ids=[l.diff_id for l in layers],
                           history=[{"created": "1970-01-01T00:00:00Z", "created_by": f"L{i}"}
                                    for i in range(len(layers))])
    return store.commit_image(cfg, layers, [tag] if tag else [])


def _leaseholder(root: str, tmp: str, ready, go, die: bool) -> None:
    with Store(Path(root)) as s:
        with s.lease() as lease:
            d = Path(tmp) / ("dead" if die else "live")
            d.mkdir()
            (d / "f").write_bytes(b"leased " + (b"dead" if die else b"live"))
            layer = s.write_layer(d, compression="gzip", source_date_epoch=0, lease=lease)
            s.layer_dir(layer.diff_id)
            ready.send(layer)
            if die:
                time.sleep(60)  # SIGKILLed here
            go.recv()


def test_gc_removes_exactly_the_unreachable(tmp_path):
    root = tmp_path / "store"
    s = Store(root)
    L1 = make_layer(s, tmp_path, "one", b"1" * 1000)
    L2 = make_layer(s, tmp_path, "two", b"2" * 1000)
    L3 = make_layer(s, tmp_path, "three", b"3" * 1000)  # only the cache holds it
    orphan = make_layer(s, tmp_path, "orphan", b"o")      # recorded, but nothing holds it
    stray_blob = s.blobs.put(b"nobody references me")
    X = commit(s, [L1], "x")
    Y = commit(s, [L1, L2], "y")
    s.cache.put("k1", CacheEntry(L3.diff_id, {}, None))
    s.cache.put("k2", CacheEntry(None, {"Cmd": ["sh"]}, "k1"))
    for l in (L1, L2, L3, orphan):
        s.layer_dir(l.diff_id)

    ctx = mp.get_context("fork")
    # a lease whose holder was SIGKILLed, and a live one
    dead_r, dead_w = ctx.Pipe(False)
    live_r, live_w = ctx.Pipe(False)
    go_r, go_w = ctx.Pipe(False)
    dead = ctx.Process(target=_leaseholder, args=(str(root), str(tmp_path), dead_w, go_r, True))
    live = ctx.Process(target=_leaseholder, args=(str(root), str(tmp_path), live_w, go_r, False))
    dead.start()
    live.start()
    L4 = dead_r.recv()
    L5 = live_r.recv()
    os.kill(dead.pid, signal.SIGKILL)
    dead.join()

    rep = s.gc()
    expected_blobs = {X.manifest_digest, X.config_digest, Y.manifest_digest, Y.config_digest,
                      L1.digest, L2.digest, L3.digest, L5.digest}
    assert set(s.blobs.digests()) == expected_blobs
    assert set(rep.removed_digests) == {orphan.digest, stray_blob, L4.digest}
    assert rep.leases_expired == 1
    assert {r[0] for r in s.db.query("SELECT diff_id FROM layers")} == \
        {L1.diff_id, L2.diff_id, L3.diff_id, L5.diff_id}
    dirs = {r[0] for r in s.db.query("SELECT dir FROM layers WHERE dir IS NOT NULL")}
    assert set(os.listdir(s.layers_root)) == dirs and len(dirs) == 4
    assert s.fsck().ok

    # rmi y: its manifest, config and L2 go; L1 (shared with x) stays
    s.remove_image("y")
    s.gc()
    assert set(s.blobs.digests()) == expected_blobs - {Y.manifest_digest, Y.config_digest, L2.digest}
    assert s.layer_dir(L1.diff_id).is_dir()

    # the live lease ends: its layer is collectable; prune the cache: L3 goes
    go_w.send(True)
    live.join(30)
    assert live.exitcode == 0
    rep = s.gc(cache_max_age=timedelta(0))
    assert rep.cache_entries_removed == 2
    assert set(s.blobs.digests()) == {X.manifest_digest, X.config_digest, L1.digest}
    assert len(os.listdir(s.layers_root)) == 1
    assert s.fsck().ok and s.resolve("x").id == X.id
    s.close()


def test_cache_age_keeps_ancestors_of_recent_entries(tmp_path):
    s = Store(tmp_path / "store")
    la = make_layer(s, tmp_path, "a", b"a")
    lb = make_layer(s, tmp_path, "b", b"b")
    lc = make_layer(s, tmp_path, "c", b"c")
    s.cache.put("old-parent", CacheEntry(la.diff_id, {}, None))
    s.cache.put("new-child", CacheEntry(lb.diff_id, {}, "old-parent"))
    s.cache.put("old-leaf", CacheEntry(lc.diff_id, {}, None))
    ten_days_ago = time.time() - 10 * 86400
    with s.db.write() as c:
        c.execute("UPDATE cache SET last_used=? WHERE key IN ('old-parent', 'old-leaf')", (ten_days_ago,))
    s.gc(cache_max_age=timedelta(days=1))
    assert {r[0] for r in s.db.query("SELECT key FROM cache")} == {"old-parent", "new-child"}
    assert not s.blobs.exists(lc.digest) and s.blobs.exists(la.digest)
    s.close()


def test_cache_size_limit_drops_least_recently_used_leaves(tmp_path):
    s = Store(tmp_path / "store")
    layers = {k: make_layer(s, tmp_path, k, os.urandom(10_000)) for k in ("k1", "k2", "k3")}
    for i, (k, l) in enumerate(layers.items()):
        s.cache.put(k, CacheEntry(l.diff_id, {}, None))
        with s.db.write() as c:
            c.execute("UPDATE cache SET last_used=? WHERE key=?", (1000.0 + i, k))
    size = layers["k1"].uncompressed_size
    s.cache.lookup("k1")  # used now: the most recent
    s.gc(cache_max_bytes=2 * size)
    assert {r[0] for r in s.db.query("SELECT key FROM cache")} == {"k1", "k3"}
    s.gc(cache_max_bytes=0)
    assert s.db.query("SELECT key FROM cache") == []
    s.close()


def test_cache_lookup_with_a_lease_protects_the_entry(tmp_path):
    s = Store(tmp_path / "store")
    l = make_layer(s, tmp_path, "a", b"a")
    s.cache.put("k", CacheEntry(l.diff_id, {}, None))
    with s.lease() as lease:
        assert s.cache.lookup("k", lease=lease).diff_id == l.diff_id
        assert lease.items()["cache"] == {"k"} and lease.items()["layer"] == {l.diff_id}
        s.gc(cache_max_age=timedelta(0))
        assert s.cache.lookup("k") is not None and s.blobs.exists(l.digest)
    s.gc(cache_max_age=timedelta(0))
    assert s.cache.lookup("k") is None and not s.blobs.exists(l.digest)
    s.close()


def _slow_writer(root: str, tmp: str, ready) -> None:
    with Store(Path(root)) as s:
        with s.writing():
            d = Path(tmp) / "slow"
            d.mkdir()
            (d / "f").write_bytes(b"slow")
            from lamina.store.layers import write_layer
            layer = write_layer(s.blobs, d, compression="gzip")  # bytes, not yet recorded
            ready.send(True)
            time.sleep(1.0)
            commit(s, [layer], "slow")


def test_gc_waits_for_a_writer_between_bytes_and_record(tmp_path):
    root = tmp_path / "store"
    Store(root).close()
    ctx = mp.get_context("fork")
    r, w = ctx.Pipe(False)
    p = ctx.Process(target=_slow_writer, args=(str(root), str(tmp_path), w))
    p.start()
    assert r.recv()
    with Store(root) as s:
        t0 = time.monotonic()
        rep = s.gc()
        waited = time.monotonic() - t0
        p.join(30)
        assert p.exitcode == 0
        assert waited > 0.5 and rep.blobs_removed == 0
        img = s.resolve("slow")
        assert all(s.blobs.exists(l.digest) for l in img.layers) and s.fsck().ok


def test_gc_removes_stray_dirs_and_dead_temp(tmp_path):
    s = Store(tmp_path / "store")
    (s.layers_root / "0123456789ab").mkdir()       # renamed in, never recorded (a crash)
    stale = s.tmp_dir / "p999999-dead.extract-1-aa"  # temp entry of a dead process
    stale.mkdir()
    (stale / "x").write_bytes(b"x")
    rep = s.gc()
    assert rep.dirs_removed == 1 and os.listdir(s.layers_root) == []
    assert not stale.exists()
    s.close()


def _deep_tree(top: Path, depth: int) -> None:
    top.mkdir()
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):  # deeper than Python's recursion limit
            os.mkdir("d", dir_fd=fd)
            nfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        os.close(os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    finally:
        os.close(fd)


def test_deep_stray_trees_are_removed(tmp_path):
    # a hostile layer may nest dirs thousands deep: its leftovers must not make every
    # later Store() / gc fail (shutil.rmtree recurses once per level)
    root = tmp_path / "store"
    Store(root).close()
    _deep_tree(root / "tmp" / "p999999-dead.extract-1-aa", 1500)
    _deep_tree(root / "layers" / "0123456789ab", 1500)
    s = Store(root)  # cleans the dead process's temp entries
    assert not (root / "tmp" / "p999999-dead.extract-1-aa").exists()
    s.gc()
    assert os.listdir(s.layers_root) == []
    s.close()
