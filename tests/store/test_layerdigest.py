"""LayerDigester (a layer's diff_id while it downloads, in two threads): the same
diff_id, size and verdict as layers.diff_id_of for good and damaged layers, in any
chunking, and it never hangs whichever thread fails first."""

from __future__ import annotations

import gzip
import io
import tarfile
import threading

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lamina.store.errors import CorruptContent, StoreError
from lamina.store.layerdigest import LayerDigester
from lamina.store.layers import diff_id_of


def _tar(n: int = 20) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for i in range(n):
            data = bytes([i]) * (i * 997)
            info = tarfile.TarInfo(f"d/f{i}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _digest(data: bytes, chunk: int):
    d = LayerDigester()
    result: list = []

    def run() -> None:
        try:
            for i in range(0, len(data), chunk):
                d.feed(data[i:i + chunk])
            result.append(d.finish())
        except StoreError as e:
            result.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(30)
    assert not t.is_alive(), "LayerDigester hung"
    return result[0]


def _expected(data: bytes):
    try:
        return diff_id_of(io.BytesIO(data))
    except StoreError as e:
        return e


TAR = _tar()
LAYERS = {"none": TAR, "gzip": gzip.compress(TAR), "zstd": zstandard.ZstdCompressor().compress(TAR)}


@pytest.mark.parametrize("kind", sorted(LAYERS))
@pytest.mark.parametrize("chunk", [1, 333, 65536])
def test_same_diff_id_as_diff_id_of(kind, chunk):
    data = LAYERS[kind]
    diff_id, size, got_kind = _digest(data, chunk)
    assert (diff_id, size) == diff_id_of(io.BytesIO(data)) and got_kind == kind


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(LAYERS)), st.integers(min_value=0), st.integers(0, 255),
       st.one_of(st.none(), st.integers(min_value=0)), st.integers(1, 70000))
def test_damaged_layers_get_the_verdict_of_diff_id_of(kind, pos, value, cut, chunk):
    data = bytearray(LAYERS[kind])
    data[pos % len(data)] = value
    if cut is not None:
        data = data[:cut % (len(data) + 1)]
    data = bytes(data)
    got, want = _digest(data, chunk), _expected(data)
    if isinstance(want, StoreError):
        assert isinstance(got, StoreError), (got, want)
    else:
        assert not isinstance(got, StoreError) and got[:2] == want, (got, want)


def test_abandon_after_a_partial_stream_returns():
    d = LayerDigester()
    d.feed(LAYERS["gzip"][:1000])
    done = threading.Event()
    threading.Thread(target=lambda: (d.abandon(), done.set()), daemon=True).start()
    assert done.wait(30)


def test_corrupt_gzip_is_refused():
    data = bytearray(LAYERS["gzip"])
    data[len(data) // 2] ^= 0xFF
    assert isinstance(_digest(bytes(data), 4096), CorruptContent)
