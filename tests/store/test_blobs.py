"""BlobStore: content addressing, dedup, atomicity, validation, verify."""

from __future__ import annotations

import hashlib
import io
import os

import pytest

from lamina.store.blobs import BlobStore
from lamina.store.errors import BlobNotFound, CorruptContent, StoreError


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def blobs(tmp_path) -> BlobStore:
    return BlobStore(tmp_path / "root")


def test_layout_and_put(blobs, tmp_path):
    assert (tmp_path / "root/blobs/sha256").is_dir()
    assert (tmp_path / "root/tmp").is_dir()
    d = blobs.put(b"hello")
    assert d == sha(b"hello")
    assert (tmp_path / "root/blobs/sha256" / d.split(":")[1]).read_bytes() == b"hello"
    assert blobs.exists(d) and blobs.read(d) == b"hello" and blobs.size(d) == 5
    assert list(blobs.digests()) == [d]
    assert blobs.verify(d)
    assert os.listdir(blobs.tmp_dir) == []


def test_empty_blob(blobs):
    d = blobs.put(b"")
    assert d == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert blobs.read(d) == b""


def test_second_put_writes_nothing_new(blobs):
    d = blobs.put(b"same")
    before = os.stat(blobs.path(d))
    assert blobs.put(b"same") == d
    after = os.stat(blobs.path(d))
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    with blobs.writer() as w:
        w.write(b"same")
        assert w.commit() == (d, 4)
    assert os.stat(blobs.path(d)).st_ino == before.st_ino
    assert os.listdir(blobs.tmp_dir) == []


def test_writer_streams_and_returns_size(blobs):
    data = os.urandom(3 << 20)
    with blobs.writer() as w:
        for i in range(0, len(data), 4096 + 17):
            w.write(data[i:i + 4096 + 17])
        d, n = w.commit()
    assert (d, n) == (sha(data), len(data))
    assert blobs.read(d) == data


def test_writer_exception_leaves_nothing(blobs):
    with pytest.raises(RuntimeError):
        with blobs.writer() as w:
            w.write(b"partial")
            assert len(os.listdir(blobs.tmp_dir)) == 1  # it really was being written
            raise RuntimeError("boom")
    assert os.listdir(blobs.tmp_dir) == []
    assert list(blobs.digests()) == []


def test_writer_without_commit_leaves_nothing(blobs):
    with blobs.writer() as w:
        w.write(b"forgotten")
    assert os.listdir(blobs.tmp_dir) == []
    assert list(blobs.digests()) == []


def test_commit_expected_mismatch(blobs):
    with pytest.raises(CorruptContent) as err:
        with blobs.writer() as w:
            w.write(b"abc")
            w.commit(sha(b"abd"))
    assert sha(b"abd") in str(err.value)
    assert os.listdir(blobs.tmp_dir) == []
    assert list(blobs.digests()) == []


def test_ingest(blobs):
    data = os.urandom(100_000)
    assert blobs.ingest(io.BytesIO(data)) == (sha(data), len(data))
    assert blobs.ingest(io.BytesIO(data), expected=sha(data)) == (sha(data), len(data))
    with pytest.raises(CorruptContent):
        blobs.ingest(io.BytesIO(b"x"), expected=sha(b"y"))
    assert list(blobs.digests()) == [sha(data)]


@pytest.mark.parametrize("bad", [
    "sha256:abc", "sha512:" + "a" * 64, "sha256:" + "A" * 64, "a" * 64,
    "sha256:" + "a" * 63 + "g", "sha256:../" + "a" * 61, "",
])
def test_digest_validation(blobs, bad):
    with pytest.raises(StoreError):
        blobs.path(bad)
    with pytest.raises(StoreError):
        blobs.exists(bad)


def test_missing_blob(blobs):
    d = sha(b"nope")
    assert not blobs.exists(d)
    with pytest.raises(BlobNotFound):
        blobs.open(d)
    with pytest.raises(BlobNotFound):
        blobs.size(d)
    with pytest.raises(BlobNotFound):
        blobs.verify(d)
    blobs.delete(d)  # idempotent


def test_delete(blobs):
    d = blobs.put(b"gone soon")
    blobs.delete(d)
    assert not blobs.exists(d)
    assert list(blobs.digests()) == []


def test_verify_detects_corruption(blobs):
    d = blobs.put(b"original")
    os.chmod(blobs.path(d), 0o644)
    blobs.path(d).write_bytes(b"tampered")
    assert not blobs.verify(d)


def test_digests_skips_foreign_names(blobs):
    d = blobs.put(b"x")
    (blobs.blob_dir / "README").write_text("not a blob")
    (blobs.blob_dir / ("f" * 63)).write_text("short")
    assert list(blobs.digests()) == [d]


def test_clean_tmp(blobs):
    old = blobs.tmp_dir / "blob-old"
    old.write_bytes(b"x")
    os.utime(old, (0, 0))
    young = blobs.tmp_dir / "blob-young"
    young.write_bytes(b"y")
    other = blobs.tmp_dir / "not-mine"
    other.write_bytes(b"z")
    os.utime(other, (0, 0))
    assert blobs.clean_tmp(older_than=3600) == 1
    assert sorted(os.listdir(blobs.tmp_dir)) == ["blob-young", "not-mine"]


def test_concurrent_writers_same_content(blobs):
    data = b"raced" * 1000
    w1, w2 = blobs.writer(), blobs.writer()
    w1.write(data)
    w2.write(data)
    assert w1.commit() == w2.commit() == (sha(data), len(data))
    assert blobs.read(sha(data)) == data
    assert os.listdir(blobs.tmp_dir) == []
