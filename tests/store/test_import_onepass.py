"""extract_as_layer (one-pass `lamina import`): whatever the input tar, the stored layer
is byte-identical to write_layer of the extracted tree; the one pass (TarMirror) is
taken for tars already in lamina's form and given up for any other."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lamina.store.layers as layers
from lamina.store.blobs import BlobStore
from lamina.store.layers import extract_as_layer, write_layer
from lamina.store.tarwrite import TarMirror, write_tar
from tartrees import build, trees

pytestmark = pytest.mark.root  # devices, chown, trusted.* xattrs


class _Spy(TarMirror):
    stops: list[str] = []

    def stop(self, reason: str) -> bool:
        _Spy.stops.append(reason)
        return super().stop(reason)


@pytest.fixture(autouse=True)
def spy(monkeypatch):
    _Spy.stops = []
    monkeypatch.setattr(layers, "TarMirror", _Spy)
    return _Spy


def one_pass(blobs: BlobStore, data: bytes, dest: Path, epoch=None):
    """(layer from extract_as_layer, layer write_layer makes of the same tree, mirror kept?)"""
    dest.mkdir()
    got = extract_as_layer(blobs, io.BytesIO(data), dest, source_date_epoch=epoch)
    kept = not _Spy.stops
    want = write_layer(blobs, dest, source_date_epoch=epoch)
    return got, want, kept


@given(tree=trees, epoch=st.one_of(st.none(), st.sampled_from([0, 1_000_000_000])))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_lamina_form_tar_in_one_pass(tree, epoch):
    _Spy.stops = []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "src")
        src.mkdir()
        build(tree, str(src))
        buf = io.BytesIO()
        write_tar(src, buf)
        data = buf.getvalue()
        got, want, kept = one_pass(BlobStore(Path(tmp, "store")), data, Path(tmp, "dest"), epoch)
        assert got == want
        if epoch is None and not tree.opaque:  # a lamina-form tar re-archives to itself
            # (an opaque root's marker takes the extraction dir's own mtime: not in the tar)
            assert got.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
        assert kept == (not tree.opaque), _Spy.stops  # an opaque root is left to write_tar


def _plain_tree(root: Path) -> None:
    (root / "etc" / "ssl").mkdir(parents=True)
    (root / "etc" / "hosts").write_bytes(b"127.0.0.1 localhost\n")
    (root / "etc" / "ssl" / "cert.pem").write_bytes(os.urandom(3000))
    (root / "bin").mkdir()
    (root / "bin" / "sh").write_bytes(b"\x7fELF" + os.urandom(70000))
    os.chmod(root / "bin" / "sh", 0o4755)
    os.link(root / "bin" / "sh", root / "bin" / "ash")
    os.symlink("sh", root / "bin" / "dash")
    os.mkfifo(root / "etc" / "fifo")
    os.chown(root / "etc" / "hosts", 1000, 1001)
    (root / "a-b").write_bytes(b"")  # sorts before "a.b", "a/" and "a0" bytewise
    (root / "a").mkdir()
    (root / "a" / "x").write_bytes(b"x")
    (root / "a.b").write_bytes(b"y")
    for p in sorted(root.rglob("*"), reverse=True):
        os.utime(p, (1_600_000_000, 1_600_000_000), follow_symlinks=False)


def test_gnu_tar_sorted_by_name_in_one_pass(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _plain_tree(src)
    tar = tmp_path / "in.tar"
    subprocess.run(["tar", "-C", str(src), "--sort=name", "--numeric-owner", "-cf", str(tar), "."],
                   check=True)
    got, want, kept = one_pass(BlobStore(tmp_path / "store"), tar.read_bytes(), tmp_path / "dest")
    assert kept, _Spy.stops
    assert got == want


def _tar(members: list[tuple[str, bytes | None, str]]) -> bytes:
    """A tar of (name, data or None for a dir, type) members in the order given."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data, kind in members:
            ti = tarfile.TarInfo(name)
            ti.mtime = 1_500_000_000
            if kind == "dir":
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(ti)
            elif kind == "link":
                ti.type, ti.linkname = tarfile.LNKTYPE, data.decode()
                tf.addfile(ti)
            else:
                ti.size, ti.mode = len(data), 0o644
                tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("members, reason", [
    ([("b", b"1", "file"), ("a", b"2", "file")], "order"),
    ([("a", b"1", "file"), ("a", b"2", "file")], "order"),  # duplicate: the later wins
    ([("d/f", b"1", "file")], "parent"),  # implied parent dir
    ([("d/", None, "dir"), ("d/.wh.f", b"", "file"), ("d/f", b"x", "file")], "whited-out"),
    ([("d/", None, "dir"), ("d/-f", b"x", "file"), ("d/.wh.-f", b"", "file")], "whiteout"),
    ([(".wh..wh..opq", b"", "file"), ("a", b"1", "file")], "opaque root"),
    ([("a", b"1", "file"), ("./", None, "dir")], "root"),
    ([("d/", None, "dir"), ("d/f", b"1", "file"), ("d", b"2", "file")], "order"),
])
def test_other_tars_fall_back_to_the_same_layer(tmp_path, members, reason):
    got, want, kept = one_pass(BlobStore(tmp_path / "store"), _tar(members), tmp_path / "dest")
    assert not kept and reason in _Spy.stops[0], _Spy.stops
    assert got == want


def test_header_not_matching_the_extracted_file_falls_back(tmp_path, monkeypatch):
    """A member whose extracted metadata is not its header (here: a mode the extractor
    is made to change) is caught by the check, and the tree is archived instead."""
    from lamina.store import tarextract
    real = tarextract.os.fchmod
    monkeypatch.setattr(tarextract.os, "fchmod", lambda fd, mode: real(fd, mode & ~0o004))
    data = _tar([("d/", None, "dir"), ("d/f", b"1", "file")])
    got, want, kept = one_pass(BlobStore(tmp_path / "store"), data, tmp_path / "dest")
    assert not kept and "differs" in _Spy.stops[0]
    assert got == want
