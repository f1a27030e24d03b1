"""write_layer / extract_layer and compression: one pass, digests checked against the
real gzip/zstd tools and hashlib, determinism, corruption detected, bounded memory."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import subprocess
import tracemalloc

import pytest
import zstandard

from lamina.store.blobs import BlobStore
from lamina.store.compression import (MEDIA_TYPES, compress_stream, kind_for_media_type, media_type_for,
                               open_decompressed)
from lamina.store.errors import CorruptContent, StoreError
from lamina.store.layers import (DEFAULT_COMPRESSION, LayerBlob, describe_layer, diff_id_of, extract_layer,
                          write_layer, write_layer_from_tar)
from lamina.store.tarlayer import write_tar
from tartrees import snapshot

KINDS = ["zstd", "gzip", "none"]


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def blobs(tmp_path) -> BlobStore:
    return BlobStore(tmp_path / "root")


@pytest.fixture
def tree(tmp_path):
    src = tmp_path / "src"
    (src / "usr" / "bin").mkdir(parents=True)
    (src / "usr" / "bin" / "tool").write_bytes(os.urandom(70_000) + b"\0" * 200_000)
    (src / "etc").mkdir()
    (src / "etc" / "conf").write_text("key = value\n" * 500)
    os.symlink("usr/bin", src / "bin")
    return src


def external_decompress(kind: str, path) -> bytes:
    """The uncompressed bytes as the real command-line tools see them."""
    if kind == "none":
        return path.read_bytes()
    tool = {"gzip": ["gzip", "-dc"], "zstd": ["zstd", "-dcq"]}[kind]
    return subprocess.run([*tool, str(path)], check=True, capture_output=True).stdout


@pytest.mark.parametrize("size", [0, 1, 32 << 10, 1 << 20, (1 << 20) + 1, (5 << 20) + 333])
def test_gzip_blocks_are_the_same_for_any_thread_count_and_read_by_gzip(monkeypatch, tmp_path, size):
    """The gzip body is deflated in CHUNK blocks on worker threads (pigz's scheme): the
    bytes must not depend on the thread count, and GNU gzip must read them as one
    member equal to the input."""
    import gzip
    import subprocess

    from lamina.store import compression
    rnd = os.urandom(1 << 12)
    data = b"".join(rnd[i % 5:] + b"%d" % i for i in range(size // 4000 + 1))[:size]
    outs = []
    for workers in (1, 2, 4):
        monkeypatch.setattr(compression, "GZIP_WORKERS", workers)
        out = io.BytesIO()
        with compress_stream("gzip", out) as w:
            for i in range(0, len(data), 77_777):
                w.write(data[i:i + 77_777])
        outs.append(out.getvalue())
    assert outs[0] == outs[1] == outs[2]
    assert gzip.decompress(outs[0]) == data
    (tmp_path / "x.gz").write_bytes(outs[0])
    done = subprocess.run(["gzip", "-dc", str(tmp_path / "x.gz")], capture_output=True)
    assert done.returncode == 0 and done.stdout == data


@pytest.mark.parametrize("kind", KINDS)
def test_write_layer_digests(blobs, tree, kind):
    layer = write_layer(blobs, tree, compression=kind, source_date_epoch=0)
    raw = blobs.path(layer.digest).read_bytes()
    plain = external_decompress(kind, blobs.path(layer.digest))
    buf = io.BytesIO()
    write_tar(tree, buf, source_date_epoch=0)
    assert plain == buf.getvalue()
    assert layer == LayerBlob(diff_id=sha(plain), digest=sha(raw), size=len(raw),
                              media_type=MEDIA_TYPES[kind], uncompressed_size=len(plain))
    assert os.listdir(blobs.tmp_dir) == []


@pytest.mark.root
@pytest.mark.parametrize("kind", KINDS)
def test_layer_round_trip(blobs, tree, tmp_path, kind):
    layer = write_layer(blobs, tree, compression=kind, source_date_epoch=1_000)
    dest = tmp_path / f"dest-{kind}"
    dest.mkdir()
    assert extract_layer(blobs, layer.digest, dest, expected_diff_id=layer.diff_id) == layer.diff_id
    assert snapshot(str(dest)) == snapshot(str(tree), epoch=1_000)
    assert describe_layer(blobs, layer.digest) == layer


def test_default_compression_is_zstd(blobs, tree):
    assert DEFAULT_COMPRESSION == "zstd"
    layer = write_layer(blobs, tree)
    assert layer.media_type == "application/vnd.oci.image.layer.v1.tar+zstd"
    assert blobs.read(layer.digest)[:4] == b"\x28\xb5\x2f\xfd"


@pytest.mark.parametrize("kind", KINDS)
def test_layer_deterministic(tmp_path, tree, kind):
    a = write_layer(BlobStore(tmp_path / "a"), tree, compression=kind, source_date_epoch=5)
    b = write_layer(BlobStore(tmp_path / "b"), tree, compression=kind, source_date_epoch=5)
    assert a == b


def test_gzip_header_fixed():
    out = io.BytesIO()
    with compress_stream("gzip", out) as w:
        w.write(b"payload" * 100)
    data = out.getvalue()
    # RFC 1952: magic, CM=8, FLG=0 (no name), MTIME=0, XFL=0, OS=255
    assert data[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    assert gzip.decompress(data) == b"payload" * 100


def test_zstd_frame_fixed():
    out = io.BytesIO()
    with compress_stream("zstd", out) as w:
        w.write(b"payload" * 100)
    params = zstandard.get_frame_parameters(out.getvalue())
    assert params.content_size == zstandard.CONTENTSIZE_UNKNOWN
    assert params.has_checksum and params.dict_id == 0


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_output_independent_of_write_pattern(kind):
    data = os.urandom(1 << 16) * 40 + b"tail"
    outs = []
    for step in (1, 511, 4096, 1 << 20, len(data)):
        out = io.BytesIO()
        with compress_stream(kind, out) as w:
            for i in range(0, len(data), step if step > 1 else 1 << 10):
                w.write(data[i:i + (step if step > 1 else 1 << 10)])
        outs.append(out.getvalue())
    assert len(set(outs)) == 1


def test_zstd_bytes_independent_of_worker_count(monkeypatch):
    """The zstd worker count is pinned, and libzstd's streaming multi-threaded output is
    the same for any count >= 1 (zstd issues #2238/#2327): check it on an input of
    several jobs (level 3 cuts jobs of 4 windows = 8 MiB), so the pin could move."""
    from lamina.store import compression
    rnd = os.urandom(1 << 16)
    data = b"".join(rnd[i % 7:] + b"%d" % i for i in range(400))  # ~26 MB, compressible
    outs = []
    for workers in (1, 2, 3):
        monkeypatch.setattr(compression, "ZSTD_WORKERS", workers)
        out = io.BytesIO()
        with compress_stream("zstd", out) as w:
            w.write(data)
        outs.append(out.getvalue())
    assert outs[0] == outs[1] == outs[2]
    assert zstandard.ZstdDecompressor().decompress(outs[0], max_output_size=len(data)) == data
    assert compression.ZSTD_WORKERS >= 1


@pytest.mark.parametrize("kind", KINDS)
def test_open_decompressed_detects(kind):
    data = b"A" * 100_000 + os.urandom(1000)
    out = io.BytesIO()
    with compress_stream(kind, out) as w:
        w.write(data)
    r = open_decompressed(io.BytesIO(out.getvalue()))
    got = b""
    while chunk := r.read(333):
        got += chunk
    assert got == data


def test_open_decompressed_foreign_streams():
    data = os.urandom(5000) * 3
    multi = gzip.compress(data[:7000], mtime=1) + gzip.compress(data[7000:]) + b"\0" * 512
    assert open_decompressed(io.BytesIO(multi)).read() == data
    zs = zstandard.ZstdCompressor(level=19, threads=2).compress(data)
    assert open_decompressed(io.BytesIO(zs)).read() == data
    with pytest.raises(CorruptContent):
        open_decompressed(io.BytesIO(gzip.compress(data)[:-30])).read()
    with pytest.raises(CorruptContent):
        open_decompressed(io.BytesIO(zs[:-10])).read()
    with pytest.raises(StoreError, match="xz"):
        open_decompressed(io.BytesIO(b"\xfd7zXZ\x00rest"))


def test_media_types():
    assert media_type_for("gzip") == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert kind_for_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip") == "gzip"
    assert kind_for_media_type("application/vnd.oci.image.layer.v1.tar") == "none"
    with pytest.raises(StoreError):
        kind_for_media_type("application/vnd.oci.image.config.v1+json")
    with pytest.raises(StoreError):
        media_type_for("lz4")


@pytest.mark.root
def test_extract_layer_detects_corruption(blobs, tree, tmp_path):
    layer = write_layer(blobs, tree, compression="none", source_date_epoch=0)
    with pytest.raises(CorruptContent, match="expected"):
        (tmp_path / "d1").mkdir()
        extract_layer(blobs, layer.digest, tmp_path / "d1", expected_diff_id=sha(b"other"))
    # flip one content byte on disk: the blob digest no longer matches
    p = blobs.path(layer.digest)
    os.chmod(p, 0o644)
    data = bytearray(p.read_bytes())
    data[2000] ^= 0xFF
    p.write_bytes(bytes(data))
    (tmp_path / "d2").mkdir()
    with pytest.raises(CorruptContent, match="does not match"):
        extract_layer(blobs, layer.digest, tmp_path / "d2")


def test_write_layer_from_tar_and_diff_id_of(blobs, tree):
    buf = io.BytesIO()
    write_tar(tree, buf)
    plain = buf.getvalue()
    gz = gzip.compress(plain)
    layer = write_layer_from_tar(blobs, io.BytesIO(gz), compression="zstd")
    assert layer.diff_id == sha(plain) and layer.uncompressed_size == len(plain)
    assert zstandard.ZstdDecompressor().decompressobj().decompress(blobs.read(layer.digest)) == plain
    assert diff_id_of(io.BytesIO(gz)) == (sha(plain), len(plain))


def test_failed_write_layer_leaves_nothing(blobs, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / ".wh.bad").write_text("reserved name")  # write_tar refuses it mid-stream
    (src / "a").write_bytes(b"x" * 100_000)
    with pytest.raises(StoreError):
        write_layer(blobs, src)
    assert os.listdir(blobs.tmp_dir) == [] and list(blobs.digests()) == []


def test_write_layer_memory_bounded(blobs, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "big", "wb") as f:
        for _ in range(48):
            f.write(os.urandom(1 << 20))  # incompressible: the blob is ~48 MiB too
    tracemalloc.start()
    layer = write_layer(blobs, src, compression="zstd")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert layer.uncompressed_size > 48 << 20
    assert peak < 12 << 20, peak


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_every_truncation_detected(kind):
    data = os.urandom(100_000) + b"\0" * 400_000
    out = io.BytesIO()
    with compress_stream(kind, out) as w:
        w.write(data)
    full = out.getvalue()
    foreign = zstandard.ZstdCompressor(level=19, threads=2).compress(data) if kind == "zstd" \
        else gzip.compress(data, compresslevel=9)
    for stream in (full, foreign):
        for cut in range(6, len(stream), max(1, len(stream) // 200)):
            with pytest.raises(CorruptContent):
                open_decompressed(io.BytesIO(stream[:cut])).read()
        assert open_decompressed(io.BytesIO(stream)).read() == data


def test_fork_during_zstd_stream_does_not_hang_the_child():
    """A child forked while the parent has a multi-threaded zstd stream open must not
    free the inherited context (that joins worker threads the child lacks: a hang, as
    in the forked workers of test_store/test_gc); it can compress on its own."""
    import gc
    import signal
    import time
    out = io.BytesIO()
    w = compress_stream("zstd", out)
    data = os.urandom(1 << 20) * 12
    w.write(data)  # workers busy / idle in the pool
    pid = os.fork()
    if pid == 0:  # child: drop the inherited stream, collect, compress, exit normally
        try:
            del w
            gc.collect()
            o2 = io.BytesIO()
            with compress_stream("zstd", o2) as w2:
                w2.write(b"child" * 400_000)
            code = 0 if zstandard.ZstdDecompressor().decompressobj().decompress(o2.getvalue()) \
                == b"child" * 400_000 else 1
        except BaseException:
            code = 2
        os._exit(code)
    deadline = time.monotonic() + 20
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("child hung on the inherited zstd context")
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(status) == 0
    w.close()  # the parent's stream still finishes
    assert zstandard.ZstdDecompressor().decompressobj().decompress(out.getvalue()) == data
