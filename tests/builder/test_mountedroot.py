"""in_mounted_root: Python code writing through a private overlay mount leaves exactly
the diff in the upper dir, and no mount behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from lamina.builder.errors import BuildError
from lamina.builder.sandbox.mountedroot import in_mounted_root

pytestmark = pytest.mark.root


def _dirs(tmp_path: Path):
    lower = tmp_path / "lower"
    (lower / "etc").mkdir(parents=True)
    (lower / "etc" / "keep").write_text("keep")
    (lower / "etc" / "gone").write_text("gone")
    upper, work, scratch = tmp_path / "upper", tmp_path / "work", tmp_path / "scratch"
    for d in (upper, work, scratch):
        d.mkdir()
    return lower, upper, work, scratch


def _mounts() -> str:
    return Path("/proc/self/mounts").read_text()


def test_writes_land_in_upper_as_a_diff(tmp_path):
    lower, upper, work, scratch = _dirs(tmp_path)

    def change(root: Path, views) -> list[str]:
        (root / "etc" / "new").write_text("new")
        (root / "etc" / "gone").unlink()
        return sorted(os.listdir(root / "etc"))

    seen = in_mounted_root([lower], upper, work, scratch, change)
    assert seen == ["keep", "new"]
    assert (upper / "etc" / "new").read_text() == "new"
    st = os.lstat(upper / "etc" / "gone")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0       # overlay whiteout
    assert not (upper / "etc" / "keep").exists()              # untouched lower file: no copy-up
    assert str(scratch) not in _mounts()


def test_build_error_comes_back_and_mount_is_gone(tmp_path):
    lower, upper, work, scratch = _dirs(tmp_path)

    def fail(root: Path, views):
        raise BuildError("no such source: x")

    with pytest.raises(BuildError, match="no such source: x"):
        in_mounted_root([lower], upper, work, scratch, fail)
    assert str(scratch) not in _mounts()


def test_other_exceptions_become_build_errors(tmp_path):
    lower, upper, work, scratch = _dirs(tmp_path)
    with pytest.raises(BuildError, match="ZeroDivisionError"):
        in_mounted_root([lower], upper, work, scratch, lambda root, views: 1 // 0)


def test_views_are_readonly_merged_stacks(tmp_path):
    lower, upper, work, scratch = _dirs(tmp_path)
    top = tmp_path / "top"
    (top / "etc").mkdir(parents=True)
    (top / "etc" / "extra").write_text("extra")
    os.mknod(top / "etc" / "gone", stat.S_IFCHR | 0o000, os.makedev(0, 0))  # whiteout

    def look(root: Path, views) -> tuple:
        view = views["stage:build"]
        names = sorted(os.listdir(view / "etc"))
        try:
            (view / "etc" / "x").write_text("x")
            wrote = True
        except OSError:
            wrote = False
        return names, wrote

    names, wrote = in_mounted_root([lower], upper, work, scratch, look,
                                   views={"stage:build": (top, lower)})
    assert names == ["extra", "keep"]        # the whiteout hides lower's "gone"
    assert wrote is False                    # read-only
    assert os.listdir(upper) == []           # nothing leaked into the step's diff
