"""Red-team: fsck --repair's mode tightening when a loose directory in ROOT is
swapped for a symlink between the check and the repair."""

from __future__ import annotations

import os
import stat

import pytest

from lamina.store.storemodes import loose_modes, tighten


def test_redteam_tighten_never_follows_a_swapped_in_symlink(tmp_path):
    root = tmp_path / "root"
    root.mkdir(mode=0o700)
    os.chmod(root, 0o700)
    cache = root / "cache"
    cache.mkdir()
    os.chmod(cache, 0o755)
    outside = tmp_path / "outside"
    outside.mkdir()
    os.chmod(outside, 0o755)
    (found,) = loose_modes(root)
    assert found.path == str(cache)
    os.rmdir(cache)                      # swapped before the repair
    os.symlink(outside, cache)
    with pytest.raises(OSError):         # fsck.repair reports an OSError as not repaired
        tighten(found)
    assert stat.S_IMODE(os.stat(outside).st_mode) == 0o755
    os.unlink(cache)
    cache.write_text("")                 # a file now: not a directory to tighten either
    with pytest.raises(OSError):
        tighten(found)


def test_redteam_tighten_a_directory(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    os.chmod(d, 0o775)
    (found,) = [m for m in loose_modes(tmp_path) if m.path == str(d)]
    tighten(found)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
