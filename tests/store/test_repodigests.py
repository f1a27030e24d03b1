"""RepoDigests records, and a store made before they existed (schema 1) gaining
their table on first open."""

from __future__ import annotations

import sqlite3

from lamina.store import repodigests
from lamina.store.db import SCHEMA_VERSION
from lamina.store.store import Store
from tests.store.test_archive import committed


def test_schema_1_store_is_upgraded(tmp_path):
    with Store(tmp_path / "s"):
        pass
    db = tmp_path / "s" / "lamina.db"
    conn = sqlite3.connect(db)
    conn.execute("DROP TABLE repo_digests")
    conn.execute("UPDATE meta SET value='1' WHERE key='schema'")
    conn.commit()
    conn.close()
    with Store(tmp_path / "s") as store:
        assert store.db.query_one("SELECT value FROM meta WHERE key='schema'")["value"] == str(SCHEMA_VERSION)
        assert store.db.query("SELECT * FROM repo_digests") == []


def test_recorded_digests_are_shown_per_image_id(tmp_path):
    with Store(tmp_path / "s") as store:
        img = committed(store, tmp_path / "own", [{"a": b"a"}], "app:1")
        d1, d2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64
        repodigests.record(store, "docker.io/library/app", d1, img.manifest_digest)
        repodigests.record(store, "registry.example.com/team/app", d2, img.manifest_digest)
        assert repodigests.for_image(store, img.config_digest) == [
            f"app@{d1}", f"registry.example.com/team/app@{d2}"]
        assert store.inspect("app:1")["RepoDigests"] == repodigests.for_image(store, img.config_digest)
