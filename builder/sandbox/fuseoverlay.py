"""fuse-overlayfs: the overlay of a RUN, COPY or ADD step where the kernel refuses
overlayfs in a user namespace (Linux < 5.11, or distributions that turn it off).

Which one a process uses (``use_fuse()``, decided once, the note printed once):
env ``LAMINA_OVERLAY`` = ``kernel`` (never fuse), ``fuse`` (always: tests, and a
kernel whose overlayfs misbehaves) or ``auto`` (default: fuse only in a user
namespace whose kernel refuses a probe overlay mount).

    use_fuse(scratch) -> bool
    mount(lower_dirs, upper, work, target, scratch) -> FuseMount   (upper None: read-only)
    unmount(fm)                 flush: umount2, then wait for the daemon to exit
    convert_upper(upper, lower_dirs)

The read-only merged views of other stages and images (COPY --from, outputs, the
SBOM scan: builder.sandbox.overlay.mount_overlay_readonly) follow the same choice;
a RUN --mount of another stage and containers (`lamina run`) still need the kernel's.

``mount`` runs ``fuse-overlayfs -f`` as a child of the caller, killed with it
(PR_SET_PDEATHSIG), mounting on `target` in the caller's mount namespace (the caller
is in a private one: a killed step leaves no mount). ``unmount`` must run once no
process uses the mount: the kernel writes back what it still holds, then tells the
daemon, which exits — only then is the upper dir complete. A daemon that does not
exit within FLUSH_TIMEOUT is killed and the step fails (never a partial layer).

fuse-overlayfs writes its upper dir in a form of its own (read from its source and
checked on this machine, version 1.10):

- whiteout: char device 0/0 (as overlayfs), or an empty file ``.wh.<name>`` when
  mknod is refused;
- opaque dir: every directory it creates (mkdir, not copy-up) gets
  ``trusted.overlay.opaque=y`` (privileged) or ``user.fuseoverlayfs.opaque=y``, an
  empty file ``.wh..wh..opq`` and usually a whiteout node ``.wh..opq`` inside;
- ``user.fuseoverlayfs.origin`` on copied-up files, and
  ``user.fuseoverlayfs.override_stat`` ("uid:gid:mode[:type]") where it could not
  chown/chmod for real;
- a copied-up directory gets the copy-up time as mtime (overlayfs keeps the lower's
  and restores the parent's times after each copy-up);
- a directory made in a setgid directory keeps the maker's group and no setgid bit
  (it is made in the work dir and moved; files get both right), and a copied-up
  directory loses its setgid bit; a copied-up file loses its setgid bit when its group
  is not root's and its setuid bit when its owner is not root (the copy is chowned
  after it is made, which clears them).

``convert_upper`` turns that, in one walk after the daemon has exited, into the
overlay form of this process (store.overlayform): overlayfs marks a new directory
opaque only when it is made where the upper dir held a whiteout, i.e. where the
merged lower layers show an entry — so a directory stays opaque exactly when the
lower layers (seen through its parents) have something at its path; the markers
and fuse-overlayfs's xattrs go, ``override_stat`` is applied, ``.wh.<name>`` files
become char 0/0 whiteouts, a directory made in a directory that is setgid after
the step gets its group and setgid bit (as mkdir gives; wrong only where the step
set the bit after making the subdirectory, or changed the group of the new dir), a
copied-up directory gets back its lower's setgid bit (unless the step changed its
group or mode otherwise), what was made in a directory given its bit back takes the
directory's group (not a hard link), and a copied-up directory whose entries are all
copy-ups (nothing new, nothing removed) gets its lower directory's times back.
Each directory keeps its own times across the walk.

Not converted back: the setuid/setgid bits a copied-up *file* lost (see above) — a
step may have removed them on purpose (`chmod a-s` hardening), so they are not
guessed back; such a layer differs from the kernel's (a missing bit, never an added
one). tests/builder/test_fuse_overlay.py keeps this known difference visible.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from lamina.builder.errors import SandboxError
from lamina.builder.sandbox import linux
from lamina.builder.sandbox.layerstack import distinct as _distinct
from lamina.store import overlayform

ENV = "LAMINA_OVERLAY"
FUSE_SUPER_MAGIC = 0x65735546
FLUSH_TIMEOUT = 60.0
START_TIMEOUT = 20.0
OPAQUE_FILE = ".wh..wh..opq"
OPAQUE_NODE = ".wh..opq"
_FUSE_PREFIXES = ("user.fuseoverlayfs.", "security.fuseoverlayfs.", "trusted.fuseoverlayfs.")
_OPAQUE_NAMES = ("trusted.overlay.opaque", "user.overlay.opaque", "user.fuseoverlayfs.opaque")
_OVERRIDE_NAMES = ("user.fuseoverlayfs.override_stat", "security.fuseoverlayfs.override_stat")


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
    _note(f"{why}: RUN, COPY and ADD steps use fuse-overlayfs (slower than overlayfs); "
          "layers and image IDs are the same")
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


# --- the upper dir --------------------------------------------------------------

def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:
        return None


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _has_opaque(path: str, name: str) -> bool:
    try:
        return os.getxattr(path, name, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _lower_view(alive: list[str], name: str) -> tuple[os.stat_result | None, list[str]]:
    """What the lower layers (the dirs `alive`, top-most first, of one image path)
    show at `name`: the visible entry's stat (None: nothing) and, when it is a
    directory, the dirs that merge into it."""
    found = None
    merged: list[str] = []
    opaque = overlayform.opaque_xattr()
    for d in alive:
        p = os.path.join(d, name)
        st = _lstat(p)
        if st is None:
            continue
        if _is_whiteout(st):
            break
        if found is None:
            found = st
        if not stat.S_ISDIR(st.st_mode):
            break
        merged.append(p)
        if _has_opaque(p, opaque):
            break
    return found, merged


def _strip_xattrs(path: str, is_link: bool) -> bool:
    """Apply override_stat and remove fuse-overlayfs's xattrs and every opaque
    marker from `path`; return whether it carried a fuse opaque marker."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return False
    opaque = False
    for name in names:
        if name in _OVERRIDE_NAMES:
            try:
                raw = os.getxattr(path, name, follow_symlinks=False).decode()
                uid, gid, mode = raw.split(":")[:3]
                os.chown(path, int(uid), int(gid), follow_symlinks=False)
                if not is_link:
                    os.chmod(path, int(mode, 8) & 0o7777)
            except (OSError, ValueError) as exc:
                raise SandboxError(f"fuse-overlayfs left owner/mode {name} on {path} that "
                                   f"cannot be applied: {exc}") from None
        if name in _OPAQUE_NAMES:
            opaque = opaque or _has_opaque(path, name)
        if name in _OPAQUE_NAMES or name.startswith(_FUSE_PREFIXES):
            os.removexattr(path, name, follow_symlinks=False)
    return opaque


def convert_upper(upper: Path, lower_dirs) -> None:
    """Turn fuse-overlayfs's upper dir into lamina's overlay form (module docstring);
    `lower_dirs` are the step's lower layers, top-most first."""
    opaque_attr = overlayform.opaque_xattr()
    root_alive: list[str] = []
    for d in _distinct(lower_dirs):
        root_alive.append(str(d))
        if _has_opaque(str(d), opaque_attr):
            break
    # (dir path, the lower dirs that merge into it)
    todo: list[tuple[str, list[str]]] = [(str(upper), root_alive)]
    regained: set[str] = set()  # dirs given back a setgid bit: their new files' group
    while todo:
        path, alive = todo.pop()
        before = os.lstat(path)
        with os.scandir(path) as it:
            names = sorted(e.name for e in it)
        if OPAQUE_FILE in names:
            _remove_marker(path, OPAQUE_FILE, names)
        if OPAQUE_NODE in names:
            st = _lstat(os.path.join(path, OPAQUE_NODE))
            if st is not None and _is_whiteout(st):  # fuse-overlayfs's own node
                _remove_marker(path, OPAQUE_NODE, names)
        modified = False
        for name in list(names):
            if name.startswith(".wh.") and name not in (OPAQUE_FILE, OPAQUE_NODE):
                name = _convert_wh_file(path, name, names)
            child = os.path.join(path, name)
            st = os.lstat(child)
            lower, merged = _lower_view(alive, name)
            if _is_whiteout(st):
                modified = True
                continue
            new = lower is None or stat.S_IFMT(lower.st_mode) != stat.S_IFMT(st.st_mode)
            modified = modified or new
            fuse_opaque = _strip_xattrs(child, stat.S_ISLNK(st.st_mode))
            if not stat.S_ISDIR(st.st_mode):
                if (new and path in regained and st.st_nlink == 1
                        and st.st_gid != before.st_gid):
                    os.chown(child, -1, before.st_gid, follow_symlinks=False)
                continue
            if not fuse_opaque:
                fuse_opaque = os.path.lexists(os.path.join(child, OPAQUE_FILE))
            if fuse_opaque and before.st_mode & stat.S_ISGID:
                if _inherit_setgid(child, st, before):
                    regained.add(child)
            elif not fuse_opaque and lower is not None and stat.S_ISDIR(lower.st_mode):
                if _keep_setgid(child, st, lower):
                    regained.add(child)
            if fuse_opaque and lower is not None:
                os.setxattr(child, opaque_attr, b"y", follow_symlinks=False)
                merged = []
            todo.append((child, merged))
        if alive and not modified and path != str(upper):
            top = os.lstat(alive[0])  # a copy-up only: overlayfs keeps the lower's times
            os.utime(path, ns=(top.st_atime_ns, top.st_mtime_ns), follow_symlinks=False)
        else:
            os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns), follow_symlinks=False)


def _inherit_setgid(child: str, st: os.stat_result, parent: os.stat_result) -> bool:
    """A dir made in a setgid dir takes that dir's group and setgid bit (what the
    kernel does at mkdir; fuse-overlayfs makes dirs in its work dir and moves them).
    Whether the bit was missing (what was made inside then missed the group too)."""
    if st.st_gid != parent.st_gid:
        os.chown(child, -1, parent.st_gid, follow_symlinks=False)
    mode = stat.S_IMODE(os.lstat(child).st_mode)
    if not mode & stat.S_ISGID:
        os.chmod(child, mode | stat.S_ISGID)
        return True
    return False


def _keep_setgid(child: str, st: os.stat_result, lower: os.stat_result) -> bool:
    """A copied-up dir gets back the setgid bit of its lower dir, which fuse-overlayfs
    drops (mkdir ignores it), unless the step changed its group or other bits."""
    mode = stat.S_IMODE(st.st_mode)
    if (lower.st_mode & stat.S_ISGID and not mode & stat.S_ISGID and st.st_gid == lower.st_gid
            and mode == stat.S_IMODE(lower.st_mode) & ~stat.S_ISGID):
        os.chmod(child, mode | stat.S_ISGID)
        return True
    return False


def _remove_marker(path: str, name: str, names: list[str]) -> None:
    p = os.path.join(path, name)
    if os.path.isdir(p) and not os.path.islink(p):
        return
    os.unlink(p)
    names.remove(name)


def _convert_wh_file(path: str, name: str, names: list[str]) -> str:
    """fuse-overlayfs's whiteout file `.wh.<x>` (empty, regular) -> char 0/0 `<x>`;
    returns the name the entry has now."""
    p = os.path.join(path, name)
    st = os.lstat(p)
    target = name[4:]
    if not stat.S_ISREG(st.st_mode) or st.st_size or not target or target in names:
        return name
    os.unlink(p)
    try:
        os.mknod(os.path.join(path, target), stat.S_IFCHR, os.makedev(0, 0))
    except OSError as exc:
        raise SandboxError(f"cannot make the whiteout {os.path.join(path, target)} "
                           f"({linux.errno_text(exc.errno or 0)}): this kernel refuses "
                           "whiteout devices here (Linux >= 5.8 allows them)") from None
    names[names.index(name)] = target
    return target
