"""Making a fresh mount namespace private — also when lamina itself runs inside a
plain chroot, where its / is a directory of some mount, not a mount point.

    make_private(root_mount: bool) -> None

Call it right after unshare(CLONE_NEWNS), in the forked child that owns the new
namespace. Normally it is `mount --make-rprivate /`. In a chroot that call fails
(EINVAL: / is not the root of a mount) and the mount holding the chroot directory
cannot be named from inside the chroot; leaving it as it is would let every mount
of the step propagate to the host's namespace whenever that mount is shared (it is
on systemd hosts). So the child, which is root and alone in its new namespace,
steps out of the chroot for a moment (chroot into a subdirectory, then `..` up to
the namespace's real root, the classic way), makes that whole tree private — in its
own namespace only, the host's mounts are not changed — and goes back to exactly
the root it had, through a descriptor opened before leaving. With `root_mount`,
it then clones the chroot's tree (open_tree) and attaches the clone on the chroot
directory, a now private mount, and enters it: its / is then a mount point, as
pivot_root requires. Nothing of the Dockerfile runs before all this is done.
"""

from __future__ import annotations

import ctypes
import errno
import os

from lamina.builder.errors import SandboxError
from lamina.builder.sandbox import linux

# open_tree(2) and move_mount(2) have the same numbers on every architecture
# (system calls added since Linux 5.1 share one table)
_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_OPEN_TREE_CLONE = 1
_AT_EMPTY_PATH = 0x1000
_AT_RECURSIVE = 0x8000
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_MOVE_MOUNT_T_EMPTY_PATH = 0x40

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def make_private(root_mount: bool) -> None:
    """Make every mount of the current (new) namespace private; with `root_mount`,
    also make sure / is a mount point. Raises SandboxError in one sentence."""
    try:
        linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
        return
    except SandboxError as exc:
        if getattr(exc, "errno", None) != errno.EINVAL:
            raise
    try:
        _from_chroot(root_mount)
    except (OSError, SandboxError) as exc:
        detail = (linux.errno_text(exc.errno or 0) if isinstance(exc, OSError) else str(exc))
        raise SandboxError("lamina runs in a chroot (its / is not a mount point) and could not "
                           f"make the build's mount namespace private there: {detail}") from None


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _leave_chroot(root_fd: int) -> None:
    """Move this process's root to its mount namespace's real root."""
    sub = next((e.path for e in os.scandir("/") if e.is_dir(follow_symlinks=False)), None)
    if sub is None:
        raise SandboxError("the chroot has no directory to step through")
    os.fchdir(root_fd)
    os.chroot(sub)  # the working directory now lies outside the root: `..` is not clamped
    for _ in range(4096):
        if _same(os.stat("."), os.stat("..")):
            break
        os.chdir("..")
    else:
        raise SandboxError("no top directory found above the chroot")
    os.chroot(".")


def _open_tree(dirfd: int) -> int:
    fd = _libc.syscall(ctypes.c_long(_SYS_OPEN_TREE), ctypes.c_int(dirfd), b"",
                       ctypes.c_uint(_OPEN_TREE_CLONE | _AT_RECURSIVE | _AT_EMPTY_PATH
                                     | os.O_CLOEXEC))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"open_tree: {os.strerror(err)}")
    return fd


def _move_mount(from_fd: int, to_fd: int) -> None:
    res = _libc.syscall(ctypes.c_long(_SYS_MOVE_MOUNT), ctypes.c_int(from_fd), b"",
                        ctypes.c_int(to_fd), b"",
                        ctypes.c_uint(_MOVE_MOUNT_F_EMPTY_PATH | _MOVE_MOUNT_T_EMPTY_PATH))
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"move_mount: {os.strerror(err)}")


def _from_chroot(root_mount: bool) -> None:
    try:
        cwd = os.getcwd()
    except OSError:
        cwd = "/"
    root_fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _leave_chroot(root_fd)
        linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
        os.fchdir(root_fd)
        os.chroot(".")  # back to exactly the root lamina was given
        if root_mount:
            tree = _open_tree(root_fd)
            try:
                _move_mount(tree, root_fd)
                os.fchdir(tree)
                os.chroot(".")
            finally:
                os.close(tree)
    finally:
        os.close(root_fd)
    try:
        os.chdir(cwd)
    except OSError:
        os.chdir("/")
