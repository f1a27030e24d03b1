"""store.db: schema, WAL, transactions (all or nothing), and many processes
writing one database at once without losing an update."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
from pathlib import Path

import pytest

from lamina.store.db import CacheEntry, Database
from lamina.store.errors import StoreError


def test_schema_wal_and_pragmas(tmp_path):
    db = Database(tmp_path / "lamina.db")
    assert db.query_one("PRAGMA journal_mode")[0] == "wal"
    assert db.query_one("PRAGMA foreign_keys")[0] == 1
    assert db.query_one("PRAGMA busy_timeout")[0] >= 10_000
    tables = {r[0] for r in db.query("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"images", "image_layers", "tags", "layers", "layer_blobs", "cache", "leases",
            "lease_items", "content", "meta"} <= tables
    # opening again keeps the data and the schema version
    with db.write() as c:
        c.execute("INSERT INTO meta(key, value) VALUES ('x', '1')")
    db2 = Database(tmp_path / "lamina.db")
    assert db2.query_one("SELECT value FROM meta WHERE key='x'")[0] == "1"


def test_a_failed_transaction_writes_nothing(tmp_path):
    db = Database(tmp_path / "lamina.db")
    with pytest.raises(RuntimeError):
        with db.write() as c:
            c.execute("INSERT INTO layers(diff_id, size) VALUES ('sha256:a', 1)")
            c.execute("INSERT INTO layers(diff_id, size) VALUES ('sha256:b', 2)")
            raise RuntimeError("boom")
    assert db.query("SELECT * FROM layers") == []
    # a constraint violation half-way also leaves nothing
    with pytest.raises(sqlite3.IntegrityError):
        with db.write() as c:
            c.execute("INSERT INTO layers(diff_id, size) VALUES ('sha256:a', 1)")
            c.execute("INSERT INTO tags(name, manifest_digest, tagged) VALUES ('t', 'sha256:none', 0)")
    assert db.query("SELECT * FROM layers") == []


def test_newer_schema_is_refused(tmp_path):
    db = Database(tmp_path / "lamina.db")
    with db.write() as c:
        c.execute("UPDATE meta SET value='99' WHERE key='schema'")
    with pytest.raises(StoreError, match="newer"):
        Database(tmp_path / "lamina.db")


def test_not_a_database_is_a_store_error(tmp_path):
    (tmp_path / "lamina.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="corrupt|not a database"):
        Database(tmp_path / "lamina.db")


def test_cache_entry_round_trip(tmp_path):
    db = Database(tmp_path / "lamina.db")
    e = CacheEntry(None, {"Env": ["A=1"], "Cmd": ["sh"]}, parent="k0")
    with db.write() as c:
        db.cache_put(c, "k1", e, 123.0)
    got = db.cache_lookup("k1")
    assert (got.diff_id, dict(got.config_change), got.parent, got.created, got.last_used) == \
        (None, {"Env": ["A=1"], "Cmd": ["sh"]}, "k0", 123.0, 123.0)
    assert db.cache_lookup("nope") is None


def _writer(path: str, worker: int, n: int) -> None:
    db = Database(Path(path))
    for i in range(n):
        with db.write() as c:
            # read-modify-write: lost updates would show in the counter
            v = int(c.execute("SELECT value FROM meta WHERE key='counter'").fetchone()[0])
            c.execute("UPDATE meta SET value=? WHERE key='counter'", (str(v + 1),))
            c.execute("INSERT INTO layers(diff_id, size) VALUES (?, ?)", (f"sha256:{worker}-{i}", i))


def _reader(path: str, n: int, q) -> None:
    db = Database(Path(path))
    bad = 0
    for _ in range(n):
        with db.read() as c:
            counter = int(c.execute("SELECT value FROM meta WHERE key='counter'").fetchone()[0])
            rows = c.execute("SELECT count(*) FROM layers").fetchone()[0]
        if counter != rows:  # a reader must never see half of a transaction
            bad += 1
    q.put(bad)


def test_many_processes_never_lose_or_tear_an_update(tmp_path):
    path = tmp_path / "lamina.db"
    db = Database(path)
    with db.write() as c:
        c.execute("INSERT INTO meta(key, value) VALUES ('counter', '0')")
    ctx = mp.get_context("fork")
    workers, n = 6, 40
    q = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(str(path), w, n)) for w in range(workers)]
    procs += [ctx.Process(target=_reader, args=(str(path), 200, q)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert [q.get(timeout=5), q.get(timeout=5)] == [0, 0]
    assert db.query_one("SELECT value FROM meta WHERE key='counter'")[0] == str(workers * n)
    assert db.query_one("SELECT count(*) FROM layers")[0] == workers * n


def test_connection_is_per_process_after_fork(tmp_path):
    db = Database(tmp_path / "lamina.db")
    parent_conn = db.conn
    ctx = mp.get_context("fork")
    q = ctx.Queue()

    def child():
        q.put(db.conn is not parent_conn)
        with db.write() as c:
            c.execute("INSERT INTO layers(diff_id, size) VALUES ('sha256:child', 1)")

    p = ctx.Process(target=child)
    p.start()
    p.join(30)
    assert p.exitcode == 0 and q.get(timeout=5) is True
    assert db.query_one("SELECT size FROM layers WHERE diff_id='sha256:child'")[0] == 1
