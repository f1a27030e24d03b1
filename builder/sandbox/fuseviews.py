"""The RUN --mount views a step sees through fuse-overlayfs (builder.sandbox.fuseoverlay)
where the kernel's overlayfs is not used: a `RUN --mount=type=bind,from=STAGE|IMAGE`
(read-only, or `rw` with its writes discarded) and a writable bind of the build
context (`RUN --mount=type=bind,rw`), which the kernel path mounts as overlays inside
the step (builder.sandbox.rootmounts).

    mounts, views = mount_views(mounts, run_dir)    # in the sandbox's C1
    ...                                             # the step runs
    discard_views(views)

``mount_views`` runs in the sandbox's C1, in the step's private mount namespace and
outside its PID namespace and cgroup, right after the step's own fuse-overlayfs root
(builder.sandbox.sandbox): each view is a fuse-overlayfs mount on
``run_dir/v<i>/view`` — the layers of the other stage or image (or the context dir)
as lower dirs and, for a writable one, a fresh upper and work dir beside it on a tmpfs
mounted on ``run_dir/v<i>``, as the kernel path has them (a directory's st_size is the
upper filesystem's: the same listing either way), or on the store's filesystem where
that tmpfs refuses the xattrs fuse-overlayfs writes (user.* rootless: Linux < 6.6) —
and the mount it returns carries that path (``LayerMount.view``/``BindMount.view``),
which the step's init only binds to the target. The daemons are C1's children (PR_SET_PDEATHSIG: a killed lamina kills C1,
which kills them), invisible to the step's processes; their mounts live in C1's
namespace and the step's copy of it, so they go with those processes. Nothing of a
view is kept: ``discard_views`` detaches each mount (and its tmpfs) and kills its daemon
(no flush is owed: the writes are thrown away); the dirs go with the sandbox's run dir.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from lamina.builder.errors import SandboxError
from lamina.builder.sandbox import fuseoverlay, linux
from lamina.builder.sandbox.rootmounts import BindMount, LayerMount, Mount
from lamina.store import overlayform


def needs_view(m: Mount) -> bool:
    """Whether the kernel path would mount an overlay for `m` inside the step."""
    if isinstance(m, LayerMount):
        return True
    return isinstance(m, BindMount) and not m.readonly and Path(m.source).is_dir()


def mount_views(mounts: tuple[Mount, ...], run_dir: Path
                ) -> tuple[tuple[Mount, ...], list[fuseoverlay.FuseMount]]:
    """Mount a fuse-overlayfs view for every mount that needs one (see needs_view);
    return the mounts, those given their view, and the fuse mounts to discard. On a
    failure the views mounted so far are discarded before the error goes on."""
    out: list[Mount] = []
    views: list[fuseoverlay.FuseMount] = []
    try:
        for i, m in enumerate(mounts):
            if not needs_view(m):
                out.append(m)
                continue
            base = Path(run_dir) / f"v{i}"
            base.mkdir(mode=0o700)
            if isinstance(m, LayerMount):
                lowers, writable = tuple(m.lower_dirs), not m.readonly
            else:
                lowers, writable = (Path(m.source),), True
            if writable:
                _scratch_tmpfs(base)
            view = base / "view"
            view.mkdir(mode=0o755)
            upper = work = None
            if writable:
                upper, work = base / "u", base / "w"
                for d in (upper, work):
                    d.mkdir(mode=0o755)
                    os.chmod(d, 0o755)  # the view's root shows the upper's (as the kernel's)
            views.append(fuseoverlay.mount(lowers, upper, work, view, base))
            out.append(replace(m, view=view))
    except BaseException:
        discard_views(views)
        raise
    return tuple(out), views


def _scratch_tmpfs(base: Path) -> None:
    """A tmpfs on `base` for a view's upper and work dirs, kept only if it takes the
    xattrs of this process's overlay form (else they stay on the store's filesystem)."""
    linux.mount("tmpfs", base, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "mode=700")
    probe = overlayform.prefix() + "lamina-probe"
    try:
        os.setxattr(base, probe, b"1")
        os.removexattr(base, probe)
    except OSError:
        linux.umount2(base, linux.MNT_DETACH)


def discard_views(views: list[fuseoverlay.FuseMount]) -> None:
    for fm in views:
        fuseoverlay.discard(fm)
        try:  # the tmpfs of its upper, if any (else gone with C1's mount namespace)
            linux.umount2(fm.target.parent, linux.MNT_DETACH)
        except SandboxError:
            pass
