"""Red-team: `--output type=tar,dest=FILE` into a directory other users can write
(/tmp). The rootfs tar used to be written, as root and following symlinks, to the
predictable `.FILE.<pid>.tmp` next to DEST: another local user could plant a symlink
there and have lamina overwrite any host file with a tar the Dockerfile shapes."""

from __future__ import annotations

import os
import tarfile

import pytest

from tests.builder.buildkit import build, make_context

pytestmark = pytest.mark.root


def test_tar_output_never_follows_a_planted_temp_symlink(build_store, tmp_path):
    root, _ = build_store
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    for pid in {os.getpid(), os.getppid()}:  # the build runs in-process
        os.symlink(victim, shared / f".out.tar.{pid}.tmp")
    ctx = make_context(tmp_path / "ctx", "FROM bb\nRUN echo built > /built\n")
    dest = shared / "out.tar"
    run = build(root, ctx, "--output", f"type=tar,dest={dest}")
    assert run.code == 0, run.stderr
    assert victim.read_text() == "precious\n"
    with tarfile.open(dest) as t:
        assert t.extractfile("built").read() == b"built\n"
    assert oct(os.stat(dest).st_mode & 0o777) == oct(0o644)
    assert sorted(p.name for p in shared.iterdir() if not p.is_symlink()) == ["out.tar"]
