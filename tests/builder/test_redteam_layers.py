"""Red-team: a layer stack the Dockerfile shapes must still mount.

Two steps that write the same bytes give the same diff_id, so one layer dir stands
twice in the next step's stack; overlayfs refuses a lowerdir given twice ("conflicting
lowerdir path", ELOOP), which made every later RUN/COPY of such a Dockerfile (or of an
image that repeats a layer) fail."""

from __future__ import annotations

import pytest

from tests.builder.buildkit import build, make_context

pytestmark = pytest.mark.root


def test_a_layer_repeated_in_the_stack_still_mounts(build_store, tmp_path):
    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", "FROM bb\nCOPY f /srv/f\nRUN rm /srv/f\nCOPY f /srv/f\n"
                       "COPY f /srv/f\nRUN cat /srv/f\nCOPY f /srv/g\n", {"f": "same bytes\n"})
    run = build(root, ctx, "--no-cache")
    assert run.code == 0, run.stderr
    assert run.step("RUN cat /srv/f").output == ["same bytes"]


def test_mount_overlay_keeps_the_topmost_of_repeated_lowers(tmp_path):
    """Dropping the lower copies of a repeated layer changes nothing in the merged view
    (the top-most copy already shows every entry and hides what lies below)."""
    from lamina.builder.sandbox import overlay
    from lamina.builder.sandbox.mountedroot import run_in_namespace

    a, b = tmp_path / "a", tmp_path / "b"
    (a / "d").mkdir(parents=True)
    (b / "d").mkdir(parents=True)
    (a / "d" / "x").write_text("a")
    (b / "d" / "x").write_text("b")
    (b / "d" / "y").write_text("b")
    upper, work, target, scratch = (tmp_path / n for n in ("u", "w", "t", "s"))
    for d in (upper, work, target, scratch):
        d.mkdir()

    def inside():
        overlay.mount_overlay((a, b, a), upper, work, target, scratch)
        return sorted((p.name, p.read_text()) for p in (target / "d").iterdir())

    assert run_in_namespace(inside) == [("x", "a"), ("y", "b")]
