"""fuse-overlayfs: the overlays lamina mounts where the kernel refuses overlayfs in a
user namespace (Linux < 5.11, or distributions that turn it off).

Which one a process uses (``use_fuse()``, decided once, the note printed once):
env ``LAMINA_OVERLAY`` = ``kernel`` (never fuse), ``fuse`` (always: tests, and a
kernel whose overlayfs misbehaves) or ``auto`` (default: fuse only in a user
namespace whose kernel refuses a probe overlay mount).

    use_fuse(scratch) -> bool
    mount(lower_dirs, upper, work, target, scratch) -> FuseMount   (upper None: read-only)
    unmount(fm)                 flush: umount2, then wait for the daemon to exit
    discard(fm)                 a mount whose writes are thrown away: detach, kill, reap
    sync_mount(path)            syncfs: the kernel's cached writes reach the daemon
    convert_upper(upper, lower_dirs)    (builder.sandbox.fuseupper)

Every overlay follows the same choice: the root of a RUN step (builder.sandbox.sandbox)
and of COPY/ADD (builder.sandbox.mountedroot), the read-only merged views of other
stages and images (COPY --from, outputs, the SBOM scan, a cache seeded with `from=`:
builder.sandbox.overlay.mount_overlay_readonly), a `RUN --mount` of another stage or
image or a writable bind of the context (builder.sandbox.fuseviews: mounted beside the
step's root, writes discarded) and a container's root (builder.containers.fuseroot:
mounted by its monitor, flushed before the container is recorded exited; `commit`
syncs a running one first and converts its copy of the upper dir).

``mount`` runs ``fuse-overlayfs -f`` as a child of the caller, killed with it
(PR_SET_PDEATHSIG), mounting on `target` in the caller's mount namespace (the caller
is in a private one: a killed step leaves no mount). ``unmount`` must run once no
process uses the mount: the kernel writes back what it still holds, then tells the
daemon, which exits — only then is the upper dir complete. A daemon that does not
exit within FLUSH_TIMEOUT is killed and the step fails (never a partial layer).
fuse-overlayfs mounts with the kernel's writeback cache: what a process wrote to a
file it still holds open may be in the page cache only, not yet in the upper dir,
until ``sync_mount`` (or the unmount) — checked on this machine.

fuse-overlayfs writes its upper dir in a form of its own (whiteout files, an opaque
marker in every new directory, its own xattrs, copy-up times...): ``convert_upper``
(builder.sandbox.fuseupper, which lists them) turns it into lamina's overlay form.
"""


from __future__ import annotations

import errno
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from lamina.builder.errors import SandboxError
from lamina.builder.sandbox import linux
from lamina.builder.sandbox.fuseupper import convert_upper  # noqa: F401 - re-exported
from lamina.builder.sandbox.layerstack import distinct as _distinct
from lamina.store import overlayform

ENV = "LAMINA_OVERLAY"
FUSE_SUPER_MAGIC = 0x65735546
FLUSH_TIMEOUT = 60.0
START_TIMEOUT = 20.0


# --- choosing -------------------------------------------------------------------

def _note(text: str) -> None:
    print(f"lamina: note: {text}", file=sys.stderr, flush=True)


_DECIDED: list[bool] = []
_DECIDING = threading.Lock()  # stages build in threads (builder.executor)


def use_fuse(scratch: Path | None = None) -> bool:
    """Whether this process's step overlays are fuse-overlayfs (decided once, a probe
    mount under `scratch` in auto mode; says so once on stderr when they are)."""
    if _DECIDED:  # no lock: a forked child may hold a copy another thread had taken
        return _DECIDED[0]
    with _DECIDING:
        if not _DECIDED:
            _DECIDED.append(_decide(scratch))
        return _DECIDED[0]


def _decide(scratch: Path | None) -> bool:
    choice = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if choice not in ("auto", "kernel", "fuse"):
        raise SandboxError(f"{ENV}={choice!r}: expected auto, kernel or fuse")
    if choice == "kernel":
        return False
    if choice == "auto":
        if not overlayform.unprivileged() or _kernel_overlay_works(scratch):
            return False
        why = "this kernel does not let a user namespace mount overlayfs"
    else:
        why = f"{ENV}=fuse"
    _binary()
    _note(f"{why}: the overlays of RUN, COPY and ADD steps, RUN --mount and containers "
          "use fuse-overlayfs (slower than overlayfs); layers and image IDs are the same")
    return True


def _binary() -> str:
    found = shutil.which("fuse-overlayfs")
    if not found:
        raise SandboxError("fuse-overlayfs is needed here (the kernel refuses overlayfs in "
                           "this user namespace, or LAMINA_OVERLAY=fuse) but is not "
                           "installed: Debian package fuse-overlayfs")
    return found


def _kernel_overlay_works(scratch: Path | None) -> bool:
    """Probe: can this process mount an overlay (userxattr) in a new mount namespace?"""
    base = Path(tempfile.mkdtemp(prefix="lamina-ovl-probe-", dir=scratch))
    try:
        for d in ("l", "u", "w", "m"):
            (base / d).mkdir()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                linux.unshare(linux.CLONE_NEWNS)
                linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
                # the mount a rootless step makes (builder.sandbox.overlay), in its
                # simplest form: one lower dir, the user.* xattr namespace
                linux.mount("overlay", base / "m", "overlay", 0,
                            f"lowerdir={base / 'l'},upperdir={base / 'u'},workdir={base / 'w'},"
                            "userxattr")
                code = 0
            except BaseException:  # noqa: BLE001 - the answer is the exit code
                pass
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status) == 0
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --- mounting -------------------------------------------------------------------

@dataclass(frozen=True)
class FuseMount:
    pid: int        # the fuse-overlayfs daemon, a child of the mounting process
    target: Path
    log: Path       # its stderr


def _escape_free(paths) -> bool:
    return not any(c in str(p) for p in paths for c in ":,\\=")


def mount(lower_dirs, upper: Path | None, work: Path | None, target: Path,
          scratch: Path) -> FuseMount:
    """Mount fuse-overlayfs on `target` (lower dirs top-most first, may be empty;
    without `upper` and `work`: the read-only merged view); return once the mount
    answers."""
    _check_device()
    lowers = _distinct(lower_dirs)
    if not lowers:
        empty = scratch / "empty"
        empty.mkdir(exist_ok=True)
        lowers = [empty]
    writable = upper is not None
    paths = [*lowers, upper, work] if writable else list(lowers)
    cwd = "/"
    if not _escape_free(paths):  # short names in scratch, as overlay's classic mount
        links = scratch / "fl"
        links.mkdir(exist_ok=True)
        short = []
        for i, p in enumerate(paths):
            link = links / format(i, "x")
            if link.is_symlink():
                link.unlink()
            link.symlink_to(os.path.abspath(p))
            short.append(f"fl/{i:x}")
        paths, cwd = short, str(scratch)
    if writable:
        opts = (f"lowerdir={':'.join(map(str, paths[:-2]))},upperdir={paths[-2]},"
                f"workdir={paths[-1]},allow_other,suid")
    else:
        opts = f"lowerdir={':'.join(map(str, paths))},allow_other,suid"
    argv = [_binary(), "-f", "-o", opts, os.path.abspath(target)]
    log, log_fd = _new_log(scratch)
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            linux.set_pdeathsig(signal.SIGKILL)
            if os.getppid() != parent:
                os._exit(1)
            null = os.open("/dev/null", os.O_RDWR)
            os.dup2(null, 0)
            os.dup2(log_fd, 1)
            os.dup2(log_fd, 2)
            os.closerange(3, 1 << 16)  # none of lamina's files (store, locks, pipes)
            os.chdir(cwd)
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    os.close(log_fd)
    fm = FuseMount(pid, Path(target), log)
    parent_dev = os.stat(Path(target).parent).st_dev
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            raise SandboxError(f"fuse-overlayfs could not mount {target} (exit status "
                               f"{os.waitstatus_to_exitcode(status)}): {_log_text(log)}")
        try:
            if (os.stat(target).st_dev != parent_dev
                    and linux.statfs_type(target) == FUSE_SUPER_MAGIC):
                return fm
        except (OSError, SandboxError):
            pass
        if time.monotonic() > deadline:
            _kill(pid)
            raise SandboxError(f"fuse-overlayfs did not mount {target} within "
                               f"{START_TIMEOUT:.0f} s: {_log_text(log)}")
        time.sleep(0.002)


def _new_log(scratch: Path) -> tuple[Path, int]:
    """A fresh file for the daemon's messages (no tempfile: its lock may have been
    copied taken into a forked child)."""
    for n in range(1000):
        path = scratch / f"fuse-overlayfs.{os.getpid()}.{n}.log"
        try:
            return path, os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                                 | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            continue
    raise SandboxError(f"cannot make a log file for fuse-overlayfs in {scratch}")


def _check_device() -> None:
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC))
    except OSError as exc:
        raise SandboxError(f"fuse-overlayfs needs /dev/fuse, which this process cannot "
                           f"open ({linux.errno_text(exc.errno or 0)}): load the fuse module "
                           "or give /dev/fuse its usual mode 0666") from None


def _log_text(log: Path) -> str:
    try:
        text = log.read_text(errors="replace").strip()
    except OSError:
        text = ""
    return " ".join(text.splitlines()[-3:]) or "no message"


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def unmount(fm: FuseMount) -> None:
    """Unmount and wait until the daemon has written everything and exited."""
    for attempt in range(50):
        try:
            linux.umount2(fm.target)
            break
        except SandboxError as exc:
            err = getattr(exc, "errno", None)
            if err == errno.EBUSY and attempt < 49:
                time.sleep(0.01)
                continue
            if err == errno.EBUSY:  # a user left: the kernel flushes when it goes
                linux.umount2(fm.target, linux.MNT_DETACH)
                break
            if err not in (errno.EINVAL, errno.ENOENT):  # EINVAL: not mounted (daemon died)
                _kill(fm.pid)
                raise
            break
    deadline = time.monotonic() + FLUSH_TIMEOUT
    while True:
        done, status = os.waitpid(fm.pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            if code != 0:
                raise SandboxError(f"fuse-overlayfs ended with status {code}; the step's "
                                   f"files may be incomplete: {_log_text(fm.log)}")
            return
        if time.monotonic() > deadline:
            _kill(fm.pid)
            raise SandboxError(f"fuse-overlayfs did not finish writing {fm.target} within "
                               f"{FLUSH_TIMEOUT:.0f} s after the step; the step failed")
        time.sleep(0.002)


def discard(fm: FuseMount) -> None:
    """End a mount whose writes are thrown away (a RUN --mount's view): detach it,
    kill the daemon, reap it. Never raises for a daemon already gone."""
    try:
        linux.umount2(fm.target, linux.MNT_DETACH)
    except SandboxError:
        pass  # not mounted any more (the daemon died), or not in this namespace
    _kill(fm.pid)


_libc = None


def sync_mount(path: str | Path) -> None:
    """syncfs(2) on the filesystem of `path` (a fuse-overlayfs mount, possibly seen
    through /proc/PID/root): the writes the kernel still caches (writeback cache) reach
    the daemon, which writes them to the upper dir before answering."""
    global _libc
    import ctypes

    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise SandboxError(f"syncfs {path}: {linux.errno_text(err)}")
    finally:
        os.close(fd)
