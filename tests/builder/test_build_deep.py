"""Deep trees (a RUN may create a directory nested past Python's recursion limit) are
a layer like any other: built, cached, exported; never an internal error."""

from __future__ import annotations

import pytest

from lamina.store.locks import remove_tree
from tests.builder.buildkit import build, build_rootfs, make_base, make_context

pytestmark = pytest.mark.root

DEPTH = 1200  # past Python's default recursion limit of 1000


def test_run_creating_a_very_deep_tree(tmp_path):
    root = tmp_path / "store"
    make_base(root, tmp_path / "base")
    ctx = make_context(tmp_path / "ctx", f"""\
FROM bb
RUN i=0; d=/deep; while [ $i -lt {DEPTH} ]; do d=$d/d; i=$((i+1)); done; mkdir -p $d && echo bottom > $d/f
RUN rm -rf /deep/d/d && echo gone > /deep/marker
""", {})
    rootfs = tmp_path / "rootfs"
    run = build_rootfs(root, ctx, rootfs)
    assert "Traceback" not in run.stderr and "internal error" not in run.stderr
    assert (rootfs / "deep" / "marker").read_text() == "gone\n"
    assert not (rootfs / "deep" / "d" / "d").exists()     # the second layer's whiteout applies
    try:
        again = build(root, ctx).check()                    # and the cache holds both steps
        assert [s.cached for s in again.steps] == [True, True]
    finally:  # pytest's own temp cleanup is recursive: leave no deep tree behind
        remove_tree(root)
        remove_tree(rootfs)
