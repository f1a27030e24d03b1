"""store.layertimes: a layer written with real times, re-stamped for an epoch, is byte
for byte the layer written for that epoch in the first place; stored once per
(layer, epoch)."""

from __future__ import annotations

import io
import os
import tarfile
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lamina.store.layers import LayerBlob
from lamina.store.layertimes import clamp_tar, clamped_layer
from lamina.store.store import Store
from lamina.store.tarlayer import write_tar
from tartrees import build, trees

EPOCHS = st.sampled_from([0, 1, 1_000_000_000, 1_700_000_000, 2_000_000_000, 2**40])


def _tar(src, epoch=None) -> bytes:
    buf = io.BytesIO()
    write_tar(src, buf, source_date_epoch=epoch)
    return buf.getvalue()


@pytest.mark.root  # whiteouts (char 0/0), devices, owners
@given(tree=trees, epoch=EPOCHS)
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_clamping_the_real_times_tar_is_writing_with_the_epoch(tree, epoch):
    with tempfile.TemporaryDirectory() as tmp:
        build(tree, tmp)
        out = io.BytesIO()
        clamp_tar(io.BytesIO(_tar(tmp)), out, epoch)
        assert out.getvalue() == _tar(tmp, epoch)


def test_clamp_changes_only_times_after_the_epoch(tmp_path):
    (tmp_path / "old").write_text("old\n")
    (tmp_path / "new").write_text("new\n")
    os.utime(tmp_path / "old", (100, 100))
    os.utime(tmp_path / "new", (5000, 5000))
    os.utime(tmp_path, (5000, 5000))
    out = io.BytesIO()
    assert clamp_tar(io.BytesIO(_tar(tmp_path)), out, 1000) == 1
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tf:  # Python's reader as oracle
        got = {m.name: (m.mtime, tf.extractfile(m).read()) for m in tf.getmembers()}
    assert got == {"new": (1000, b"new\n"), "old": (100, b"old\n")}


def _layer(store: Store, src) -> LayerBlob:
    return store.write_layer(src)


def test_clamped_layer_is_stored_once_per_layer_and_epoch(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("data\n")
    os.utime(src / "f", (5000, 5000))
    with Store(tmp_path / "store") as store:
        real = _layer(store, src)
        with store.lease() as lease:
            c1 = clamped_layer(store, real, 1000, lease=lease)
            assert lease.items()["layer"] >= {c1.diff_id}
        assert c1.diff_id != real.diff_id and c1.media_type == real.media_type
        assert store.layer(c1.diff_id) == c1
        # the same bytes write_layer gives for that epoch
        assert c1 == store.write_layer(src, source_date_epoch=1000)
        blobs = set(os.listdir(store.blobs.path(c1.digest).parent))
        assert clamped_layer(store, real, 1000) == c1  # remembered: nothing written
        assert set(os.listdir(store.blobs.path(c1.digest).parent)) == blobs
        # nothing newer than the epoch: the layer itself
        assert clamped_layer(store, real, 10_000) == real
        # another epoch, another layer
        c2 = clamped_layer(store, real, 2000)
        assert c2.diff_id not in (c1.diff_id, real.diff_id)


@pytest.mark.root  # whiteouts (char 0/0), devices, owners
@given(tree=trees, epoch=EPOCHS)
@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_the_clamped_tar_of_the_same_walk_is_writing_with_the_epoch(tree, epoch):
    with tempfile.TemporaryDirectory() as tmp:
        build(tree, tmp)
        real, clamped = io.BytesIO(), io.BytesIO()
        changed = write_tar(tmp, real, clamped=(clamped, epoch))
        assert real.getvalue() == _tar(tmp)
        assert clamped.getvalue() == _tar(tmp, epoch)
        assert changed == clamp_tar(io.BytesIO(real.getvalue()), io.BytesIO(), epoch)


def test_a_step_layer_written_with_its_clamped_form_needs_no_second_pass(tmp_path, monkeypatch):
    from lamina.store import layertimes

    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("data\n")
    os.utime(src / "f", (5000, 5000))
    with Store(tmp_path / "store") as store, store.lease() as lease:
        real = store.write_layer(src, lease=lease, clamp_epoch=1000)
        assert real == store.write_layer(src)  # the step's layer is unchanged
        monkeypatch.setattr(layertimes, "clamp_tar", lambda *a: pytest.fail("clamped again"))
        c = clamped_layer(store, real, 1000, lease=lease)
        assert c == store.write_layer(src, source_date_epoch=1000)
        assert store.blobs.exists(c.digest) and lease.items()["layer"] >= {real.diff_id, c.diff_id}
        # nothing newer than the epoch: no second blob, the layer is its own clamped form
        same = store.write_layer(src, clamp_epoch=10_000)
        assert clamped_layer(store, same, 10_000) == same
