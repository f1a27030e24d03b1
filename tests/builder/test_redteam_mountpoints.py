"""Red-team: a RUN --mount target under a cache mount that a RUN of a concurrent build
rewrites (cache dirs are shared by every build of a store).

The mount point walk used to re-resolve host path strings component by component, so a
directory swapped for a symlink to `/` between two steps made the sandbox create the
rest of the target on the host (as root) and mount there. Now every step is an openat
O_NOFOLLOW from the previous directory's descriptor, and the mount goes on the
descriptor (/proc/self/fd/N)."""

from __future__ import annotations

import os

import pytest

from lamina.builder.errors import SandboxError
from lamina.builder.sandbox.mountpoints import StubRecorder


@pytest.fixture
def swapping(tmp_path, monkeypatch):
    """An image root with /cache/x, and a host dir `outside`; the first time the walk
    looks at `x`, a concurrent RUN replaces it by a symlink to the host dir."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "cache" / "x").mkdir(parents=True)
    outside.mkdir()
    state = {"swapped": False}

    def hook(real):
        def wrapper(path, *args, **kw):
            st = real(path, *args, **kw)
            name = os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else ""
            if not state["swapped"] and os.path.basename(name) == "x":
                state["swapped"] = True
                os.rename(root / "cache" / "x", root / "cache" / "x.old")
                os.symlink(outside, root / "cache" / "x")
            return st
        return wrapper

    monkeypatch.setattr(os, "lstat", hook(os.lstat))
    monkeypatch.setattr(os, "stat", hook(os.stat))
    return root, outside, state


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_a_component_swapped_for_a_symlink_creates_nothing_on_the_host(swapping, kind):
    root, outside, state = swapping
    rec = StubRecorder(str(root))
    try:
        rec.ensure("/cache/x/sub/target", kind)
    except SandboxError:
        pass  # refusing is fine; writing outside is not
    assert state["swapped"]
    assert os.listdir(outside) == [], "a mount point was created outside the image root"


def test_symlinks_met_by_the_walk_stay_inside_the_root(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "cache").mkdir(parents=True)
    outside.mkdir()
    os.symlink(str(outside), root / "cache" / "abs")
    os.symlink("../../../../../../" + str(outside), root / "cache" / "rel")
    rec = StubRecorder(str(root))
    for link in ("abs", "rel"):
        os.close(rec.ensure_fd(f"/cache/{link}/made", "file"))
    assert os.listdir(outside) == []
    assert (root / str(outside).lstrip("/") / "made").is_file()
