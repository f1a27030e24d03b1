"""Tars that are not valid tars, where a user hands them over: `lamina import` of a
root filesystem tarball and a Dockerfile's ADD of a local archive. Truncated data, a
size field (octal or base-256) larger than the data that follows: one clear error
naming the file, no traceback, nothing stored (the tar makers are those of
tests/store/test_bad_layers).

ADD follows docker (moby's archive.IsArchivePath, BuildKit's unpack check): a file
is an archive when its first tar header reads; then a damaged body fails the build.
A first header whose checksum does not match makes it no archive at all, and ADD
copies it as the file it is."""

from __future__ import annotations

import gzip

import pytest

from lamina.store.store import Store
from tests.builder.buildkit import build, build_rootfs, lamina, make_context
from tests.store.test_bad_layers import BAD, _good_tar

DAMAGED = ("truncated", "size-octal", "size-base256")


def _state(root):
    with Store(root) as store:
        return sorted(store.blobs.digests()), [(i.manifest_digest, i.tags) for i in store.images()]


def _one_error(run, name: str) -> None:
    assert run.code == 1
    assert "Traceback" not in run.stderr
    errors = [l for l in run.stderr.splitlines() if l.startswith(("lamina:", "error", "ERROR"))]
    assert len(errors) == 1, run.stderr
    assert name in errors[0], run.stderr


@pytest.mark.parametrize("kind", sorted(BAD))
@pytest.mark.parametrize("compress", [False, True])
def test_import_refuses_a_tar_that_is_not_one(tmp_path, kind, compress):
    data = BAD[kind]()
    name = f"rootfs-{kind}.tar" + (".gz" if compress else "")
    tarball = tmp_path / name
    tarball.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    root = tmp_path / "s"
    good = tmp_path / "good.tar"
    good.write_bytes(_good_tar())
    assert lamina(root, "import", good, "good:1").code == 0  # (a store with something in it)
    before = _state(root)
    run = lamina(root, "import", tarball, "bad:1")
    _one_error(run, name)
    assert _state(root) == before
    assert lamina(root, "fsck").code == 0


@pytest.mark.root
@pytest.mark.parametrize("kind", DAMAGED)
def test_add_of_a_damaged_local_archive_fails_the_build(tmp_path, kind):
    root = tmp_path / "s"
    ctx = make_context(tmp_path / "ctx", "FROM scratch\nADD layer.tar /dst/\n", {"layer.tar": BAD[kind]()})
    run = build(root, ctx, "-t", "bad:1")
    assert run.code == 1
    assert "Traceback" not in run.stderr
    assert "layer.tar" in run.stderr and "Dockerfile:2" in run.stderr, run.stderr
    with Store(root) as store:
        assert store.images() == []
    assert lamina(root, "fsck").code == 0


@pytest.mark.root
def test_add_of_a_file_whose_first_header_is_bad_copies_it(tmp_path):
    data = BAD["checksum"]()
    ctx = make_context(tmp_path / "ctx", "FROM scratch\nADD layer.tar /dst/\n", {"layer.tar": data})
    out = tmp_path / "out"
    build_rootfs(tmp_path / "s", ctx, out)
    assert (out / "dst" / "layer.tar").read_bytes() == data
