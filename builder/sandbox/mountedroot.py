"""Work on a step's merged root from lamina's own Python code (COPY, ADD, WORKDIR),
so that the overlay upper dir again holds exactly the diff.

`in_mounted_root(lower_dirs, upper_dir, work_dir, scratch_dir, fn, views=)` forks a
child that dies with lamina (PR_SET_PDEATHSIG), enters a private mount namespace,
mounts the overlay (lowerdirs = the parent layers, upperdir = the step's fresh dir)
and, read-only, the merged view of every other layer stack named in `views` (the
stages and images a `COPY --from` reads), then calls `fn(root, view_roots)` there. The mount lives only in the child's namespace: when the
child ends — normally, with an error, or killed — the kernel undoes it, so no
mount ever outlives the step. `fn`'s return value (picklable) comes back to the
caller; a `BuildError` raised by `fn` is raised again in the caller, any other
exception becomes a BuildError naming it.
"""

from __future__ import annotations

import os
import pickle
import signal
import struct
import time
import traceback
from pathlib import Path
from typing import Callable, Mapping, TypeVar

from lamina.builder.sandbox import fuseoverlay, linux
from lamina.builder.errors import BuildError
from lamina.builder.sandbox.overlay import finalize_upper, mount_overlay, mount_overlay_readonly
from lamina.builder.sandbox.privateroot import make_private

T = TypeVar("T")


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        data = os.read(fd, 1 << 16)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def _child(fn: Callable[[], T], wfd: int) -> None:
    linux.set_pdeathsig(signal.SIGKILL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        linux.unshare(linux.CLONE_NEWNS)
        make_private(root_mount=False)  # also inside a chroot
        result = ("ok", fn())
    except BuildError as e:
        result = ("build-error", e)
    except OSError as e:  # e.g. a name too long for the filesystem: the user's to fix
        where = f": {os.fsdecode(e.filename)}" if e.filename else ""
        result = ("build-error", BuildError(f"{e.strerror or e}{where}"))
    except BaseException as e:  # noqa: BLE001 - reported to the parent as a BuildError
        result = ("error", f"{type(e).__name__}: {e}", traceback.format_exc())
    try:
        payload = pickle.dumps(result)
    except Exception as e:  # an unpicklable result or error
        payload = pickle.dumps(("error", f"unpicklable result: {e}", ""))
    os.write(wfd, struct.pack("!Q", len(payload)))
    view = memoryview(payload)
    while view:
        n = os.write(wfd, view)
        view = view[n:]


def run_in_namespace(fn: Callable[[], T]) -> T:
    """Call `fn()` in a forked child inside a private mount namespace (its mounts die
    with it); return its (picklable) result, re-raise its BuildError."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(rfd)
            _child(fn, wfd)
        except BaseException:  # noqa: BLE001
            code = 1
        finally:
            os._exit(code)
    os.close(wfd)
    try:
        data = _read_all(rfd)
        _, status = os.waitpid(pid, 0)
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    finally:
        os.close(rfd)
    if len(data) < 8:
        raise BuildError(f"the filesystem step process died (wait status {status})")
    (size,) = struct.unpack("!Q", data[:8])
    result = pickle.loads(data[8:8 + size])
    if result[0] == "ok":
        return result[1]
    if result[0] == "build-error":
        raise result[1]
    detail = f"\n{result[2]}" if os.environ.get("LAMINA_DEBUG") else ""
    raise BuildError(f"internal error in a filesystem step: {result[1]}{detail}")


def in_mounted_root(lower_dirs, upper_dir: Path, work_dir: Path, scratch_dir: Path,
                    fn: Callable[[Path, dict], T], *,
                    views: Mapping[str, tuple] | None = None) -> T:
    """Run `fn(root, view_roots)` on the merged overlay of `lower_dirs` (top-most
    first) with `upper_dir` as upper; returns what `fn` returns. See the module
    docstring."""
    upper_dir, work_dir, scratch_dir = Path(upper_dir), Path(work_dir), Path(scratch_dir)
    views = dict(views or {})
    lower_dirs = tuple(lower_dirs)
    fuse = fuseoverlay.use_fuse(work_dir.parent)
    since = time.time()  # before the mount: no copy-up is older (fuseupper.convert_upper)

    def inside() -> T:
        target = scratch_dir / "root"
        target.mkdir(parents=True, exist_ok=True)
        if fuse:  # flushed before the result goes back (builder.sandbox.fuseoverlay)
            mounted = fuseoverlay.mount(lower_dirs, upper_dir, work_dir, target, scratch_dir)
            try:
                return _views_and_call(target)
            finally:
                fuseoverlay.unmount(mounted)
        mount_overlay(tuple(lower_dirs), upper_dir, work_dir, target, scratch_dir)
        return _views_and_call(target)

    def _views_and_call(target: Path) -> T:
        view_roots = {}
        for i, (name, stack) in enumerate(sorted(views.items())):
            where = scratch_dir / f"view{i}"
            where.mkdir(exist_ok=True)
            mount_overlay_readonly(stack, where, scratch_dir)
            view_roots[name] = where
        return fn(target, view_roots)

    try:
        return run_in_namespace(inside)
    finally:
        if fuse:
            fuseoverlay.convert_upper(upper_dir, lower_dirs, since=since)
        finalize_upper(upper_dir)
