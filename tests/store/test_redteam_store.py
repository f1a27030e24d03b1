"""Red-team: a store root another user owns. Its owner can rename and replace every
entry (layers/, tmp/, blobs/) with links of their choosing, and lamina used it as it
was - not even tightened to 0700, so setuid-root files of layers were theirs to run.
Such a store is now refused."""

from __future__ import annotations

import os

import pytest

from lamina.store.errors import StoreError
from lamina.store.store import Store

pytestmark = pytest.mark.root


def test_store_root_owned_by_another_user_is_refused(tmp_path):
    root = tmp_path / "shared-store"
    root.mkdir(mode=0o755)
    os.chown(root, 1000, 1000)
    with pytest.raises(StoreError, match="belongs to uid 1000"):
        Store(root)
    assert os.listdir(root) == []  # nothing made in it


def test_own_looser_store_root_is_tightened(tmp_path):
    root = tmp_path / "store"
    root.mkdir(mode=0o755)
    root.chmod(0o755)
    with Store(root):
        pass
    assert os.stat(root).st_mode & 0o777 == 0o700


def test_store_root_that_is_another_users_symlink_is_refused(tmp_path):
    victim = tmp_path / "root-owned"
    victim.mkdir(mode=0o755)
    victim.chmod(0o755)
    link = tmp_path / "store"
    link.symlink_to(victim)
    os.lchown(link, 1000, 1000)
    with pytest.raises(StoreError, match="symlink of uid 1000"):
        Store(link)
    assert os.listdir(victim) == [] and victim.stat().st_mode & 0o777 == 0o755
