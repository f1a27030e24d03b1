"""A container's root through fuse-overlayfs (builder.sandbox.fuseoverlay), where the
kernel's overlayfs is not used (``use_fuse()``: a user namespace whose kernel refuses
it, or LAMINA_OVERLAY=fuse).

    overlay_kind(scratch) -> "fuse" | "kernel"     # `lamina run`, recorded in the container
    fm = mount_root(lower_dirs, upper, work, run_dir)  # in the monitor, before start()
    end_root(fm) -> str                            # after PID 1 is reaped: "" or an error
    sync_running(c)                                # `lamina commit` of a running container

The choice is made once, by the `lamina run` that creates the container (so the note
reaches its user), and recorded (``Container.overlay``): the monitor mounts what the
record says and `commit` reads the upper dir in the form the record says.

Where the daemon lives: the kernel's overlay is mounted by PID 1's parent C2 inside
the container's mount namespace, but a fuse daemon must outlive the container's
processes long enough to flush, and must not be one of them (a PID 1 that reaps or
signals every process would kill it). So the monitor — whose mount namespace is
otherwise the host's — moves into a private mount namespace of its own
(``mount_root``), mounts fuse-overlayfs on ``run/root`` there, its daemon a child of
the monitor killed with it (PR_SET_PDEATHSIG); C2 copies that namespace when it
unshares its own and pivots into the mount as usual (``ContainerSpec.root_mounted``).
Killing the monitor kills PID 1 and the daemon and with them both namespaces: nothing
stays mounted or running. ``end_root`` unmounts and waits for the daemon once PID 1 is
gone: the kernel writes back what it still caches, the daemon exits, and only then does
the monitor record the container exited — an exited container's upper dir is complete.
(A SIGKILLed monitor leaves an upper dir without the writes the kernel still held.)

Committing: fuse-overlayfs writes its upper dir in a form of its own, so `commit`
converts its copy (builder.containers.commit: ``fuseupper.convert_upper`` on the
snapshot, never on the live dir, which the daemon still reads). For a running
container it first flushes the kernel's writeback cache into the upper dir
(``sync_running``: syncfs on the container's root seen through /proc/<PID 1>/root);
a container that exits meanwhile is waited for until its monitor has flushed.
"""

from __future__ import annotations

import time
from pathlib import Path

from lamina.builder.containers.state import Container, ContainerStore, process_is
from lamina.builder.errors import SandboxError
from lamina.builder.sandbox import fuseoverlay, linux
from lamina.builder.sandbox.privateroot import make_private


def overlay_kind(scratch: Path | None) -> str:
    """What this process mounts a container's root with (says so once on stderr)."""
    return "fuse" if fuseoverlay.use_fuse(scratch) else "kernel"


def mount_root(lower_dirs, upper: Path, work: Path, run_dir: Path) -> fuseoverlay.FuseMount:
    """Move this process (the monitor) into a private mount namespace and mount the
    container's fuse-overlayfs root on run_dir/root there."""
    linux.unshare(linux.CLONE_NEWNS)
    make_private(root_mount=False)
    root = Path(run_dir) / "root"
    root.mkdir(parents=True, exist_ok=True)
    return fuseoverlay.mount(tuple(lower_dirs), Path(upper), Path(work), root, Path(run_dir))


def end_root(fm: fuseoverlay.FuseMount | None) -> str:
    """Unmount (flush) and reap the daemon; "" or what went wrong, for the record."""
    if fm is None:
        return ""
    try:
        fuseoverlay.unmount(fm)
    except SandboxError as exc:
        return f"the container's files may be incomplete: {exc}"
    return ""


def sync_running(cs: ContainerStore, c: Container, timeout: float = fuseoverlay.FLUSH_TIMEOUT
                 ) -> Container:
    """Make the upper dir of fuse container `c` hold everything written so far: syncfs
    through its running PID 1, or, once PID 1 is gone, wait for the monitor to record
    it exited (it flushes first). Returns the record as it is then."""
    c = cs.reconcile(cs.read(c.id) or c)
    if c.status == "running" and process_is(c.init_pid, c.init_start):
        try:
            fuseoverlay.sync_mount(f"/proc/{c.init_pid}/root")
            if process_is(c.init_pid, c.init_start):  # still that process: it was its root
                return c
        except (OSError, SandboxError):
            if process_is(c.init_pid, c.init_start):
                raise
    deadline = time.monotonic() + timeout
    while c.status == "running":  # PID 1 gone: the monitor is unmounting (flushing)
        if time.monotonic() > deadline:
            raise SandboxError(f"container {c.short_id} exited but its monitor did not "
                               f"finish writing its files within {timeout:.0f} s")
        time.sleep(0.02)
        c = cs.reconcile(cs.read(c.id) or c)
    return c
