"""overlayfs for lamina: mounting a layer stack, checking upper/work dirs, reading
the merged view of layer dirs without mounting, and tidying an upper dir so that it
is exactly a layer.

Public API:

- ``OVERLAY_OPTIONS``: the options every lamina overlay mount sets explicitly,
  ``redirect_dir=off,metacopy=off,index=off,xino=off,nfs_export=off``. With
  redirect_dir a renamed dir becomes an xattr, with metacopy a chmod leaves a
  data-less file: either breaks "the upper dir is the layer". xino only changes
  reported inode numbers, set off so the host's module default never matters.
  As root userxattr stays off: whiteouts are char 0/0, opaque dirs carry
  ``trusted.overlay.opaque=y``. In a user namespace (rootless, builder.sandbox.userns)
  ``mount_options()`` adds ``userxattr`` and says ``redirect_dir=nofollow`` (the
  kernel refuses "off" with userxattr; neither creates redirects): whiteouts are
  still char 0/0, opaque dirs carry ``user.overlay.opaque=y`` (store.overlayform).
- ``check_upper_work(upper, work)``: raise SandboxError unless both exist, are on
  one filesystem, that filesystem is not overlayfs and takes trusted xattrs (user
  xattrs in a user namespace).
- ``mount_overlay(lower_dirs, upper, work, target, scratch_dir, api="auto")``:
  mount (in the caller's mount namespace), ``nodev`` (builder.sandbox.devices). ``lower_dirs`` are top-most first and
  may be empty (an empty dir under ``scratch_dir`` stands in); a dir given twice
  (two steps wrote the same diff) is kept at its top-most place only. ``api``: "new"
  (fsopen/fsconfig ``lowerdir+`` — no page-size limit), "classic" (mount(2) with
  the data shortened through symlinks ``scratch_dir/l/<n>`` so 500 layers fit in
  one page) or "auto" (new, falling back to classic when the kernel lacks it).
  Where a user namespace may not mount overlayfs (or LAMINA_OVERLAY=fuse), every
  overlay is fuse-overlayfs instead (builder.sandbox.fuseoverlay: step roots, RUN
  --mount views, containers) and this function is not called.
- ``finalize_upper(upper)``: remove overlay bookkeeping xattrs (origin, impure,
  uuid, nlink...) that the kernel leaves in an upper dir; keeps opaque markers.
  Both take the prefix of this process's overlay form (trusted./user.overlay.).
- ``empty_dir(path)``: remove everything inside a dir (the overlay workdir).
- ``LayerStack(lower_dirs)``: the merged view of layer dirs read without a mount:
  ``lookup(path)`` follows symlinks inside the root and honours whiteouts and
  opaque dirs; ``read_file(path)`` gives the bytes of a regular file or None.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from lamina.builder.sandbox import devices, linux
from lamina.builder.sandbox.layerstack import distinct as _distinct
from lamina.store import overlayform
from lamina.store.layerdirs import walk
from lamina.store.locks import remove_tree
from lamina.builder.errors import SandboxError

OVERLAY_OPTIONS: tuple[tuple[str, str], ...] = (
    ("redirect_dir", "off"),
    ("metacopy", "off"),
    ("index", "off"),
    ("xino", "off"),
    ("nfs_export", "off"),
)
# the overlay form of this process (store.overlayform): trusted.overlay.* as root,
# user.overlay.* in a user namespace, where the mounts add userxattr
XATTR_PREFIX = overlayform.prefix()
OPAQUE_XATTR = overlayform.opaque_xattr()
_KEEP_XATTRS = {OPAQUE_XATTR}


def mount_options() -> tuple[tuple[str, str], ...]:
    """OVERLAY_OPTIONS as this process mounts them (userxattr in a user namespace)."""
    if not overlayform.unprivileged():
        return OVERLAY_OPTIONS
    return (tuple((k, "nofollow" if k == "redirect_dir" else v) for k, v in OVERLAY_OPTIONS)
            + (("userxattr", ""),))
_PAGE_LIMIT = 4095  # mount(2) copies one page of data, NUL-terminated
_MAX_SYMLINK_HOPS = 40


# --- checks ---------------------------------------------------------------------

def check_upper_work(upper: Path, work: Path) -> None:
    for role, path in (("upper dir", upper), ("overlay work dir", work)):
        if not path.is_dir():
            raise SandboxError(f"{role} {path} does not exist or is not a directory")
        if linux.statfs_type(path) == linux.OVERLAYFS_SUPER_MAGIC:
            raise SandboxError(
                f"{role} {path} is on an overlayfs filesystem; overlayfs cannot use an "
                "overlayfs upper/work dir. Put the lamina store on a regular filesystem "
                "(ext4, xfs, btrfs, tmpfs), e.g. with --root or LAMINA_ROOT")
    if upper.stat().st_dev != work.stat().st_dev:
        raise SandboxError(f"upper dir {upper} and overlay work dir {work} are on different "
                           "filesystems; overlayfs needs them on one")
    space = XATTR_PREFIX.split(".", 1)[0]
    probe = f"{space}.lamina-probe"
    try:
        os.setxattr(upper, probe, b"1")
        os.removexattr(upper, probe)
    except OSError as exc:
        raise SandboxError(
            f"the filesystem of upper dir {upper} does not take {space}.* xattrs "
            f"({linux.errno_text(exc.errno or 0)}); overlayfs needs them for opaque dirs "
            "(put the store on ext4, xfs, btrfs or tmpfs)") from None


# --- mounting -------------------------------------------------------------------

def _option_string() -> str:
    return ",".join(f"{k}={v}" if v else k for k, v in mount_options())


def mount_overlay(lower_dirs: tuple[Path, ...] | list[Path], upper: Path, work: Path,
                  target: Path, scratch_dir: Path, api: str = "auto") -> str:
    """Mount the overlay on `target`; return which API did it ("new" or "classic")."""
    lowers = _distinct(lower_dirs)
    if not lowers:
        empty = scratch_dir / "empty"
        empty.mkdir(exist_ok=True)
        lowers = [empty]
    for p in lowers:
        if not p.is_dir():
            raise SandboxError(f"layer dir {p} does not exist or is not a directory")
    if api in ("auto", "new"):
        try:
            _mount_new_api(lowers, upper, work, target)
            return "new"
        except SandboxError as exc:
            err = getattr(exc, "errno", None)
            # ENOSYS: no new mount API; EINVAL on lowerdir+: kernel older than 6.5.
            if api == "new" or err not in (38, 22, 1):
                raise
            if err == 22 and "lowerdir+" not in str(exc):
                raise
    try:
        _mount_classic(lowers, upper, work, target, scratch_dir)
    except SandboxError as exc:
        if overlayform.unprivileged() and getattr(exc, "errno", None) == 1:
            raise SandboxError(
                f"{exc}: this kernel does not let a user namespace mount overlayfs (Linux "
                ">= 5.11 does); with LAMINA_OVERLAY=auto (the default) or fuse lamina "
                "mounts fuse-overlayfs instead (builder.sandbox.fuseoverlay)") from None
        raise
    return "classic"


def mount_overlay_readonly(lower_dirs, target: Path, scratch_dir: Path) -> None:
    """Mount the merged, read-only view of a layer stack (top-most first) on `target`:
    an overlay without an upper dir (empty dirs pad a stack of 0 or 1 layers: two
    distinct ones for the empty stack of `--from=scratch`, as overlayfs refuses a dir
    given twice, ELOOP); with fuse-overlayfs (builder.sandbox.fuseoverlay) its daemon
    lives until the caller, always a short-lived child in a private mount namespace,
    exits."""
    lowers = _distinct(lower_dirs)
    for pad in (scratch_dir / "empty", scratch_dir / "empty2")[:max(0, 2 - len(lowers))]:
        pad.mkdir(exist_ok=True)
        lowers.append(pad)
    from lamina.builder.sandbox import fuseoverlay
    if fuseoverlay.use_fuse(scratch_dir):  # the daemon dies with the caller (read-only)
        fuseoverlay.mount(lowers, None, None, target, scratch_dir)
        return
    _mount_new_api(lowers, None, None, target)




def _mount_new_api(lowers: list[Path], upper: Path | None, work: Path | None,
                   target: Path) -> None:
    fsfd = linux.fsopen("overlay")
    try:
        for p in lowers:
            linux.fsconfig(fsfd, linux.FSCONFIG_SET_STRING, "lowerdir+", str(p))
        if upper is not None:
            linux.fsconfig(fsfd, linux.FSCONFIG_SET_STRING, "upperdir", str(upper))
            linux.fsconfig(fsfd, linux.FSCONFIG_SET_STRING, "workdir", str(work))
        for key, value in mount_options():
            if value:
                linux.fsconfig(fsfd, linux.FSCONFIG_SET_STRING, key, value)
            else:
                linux.fsconfig(fsfd, linux.FSCONFIG_SET_FLAG, key)
        try:
            linux.fsconfig(fsfd, linux.FSCONFIG_CMD_CREATE)
        except SandboxError as exc:
            raise SandboxError(f"mount overlay on {target} ({len(lowers)} layers, upper "
                               f"{upper}): {exc}") from None
        # nodev: a node a step makes on the layer stack cannot be opened (devices)
        mntfd = linux.fsmount(fsfd, attr_flags=_nodev_attr())
        try:
            linux.move_mount_fd(mntfd, target)
        finally:
            os.close(mntfd)
    finally:
        os.close(fsfd)


def _needs_escape(p: str) -> bool:
    return any(c in p for c in ":,\\")


def _mount_classic(lowers: list[Path], upper: Path, work: Path, target: Path,
                   scratch_dir: Path) -> None:
    paths = [str(p) for p in lowers]
    data = (f"lowerdir={':'.join(paths)},upperdir={upper},workdir={work},"
            f"{_option_string()}")
    all_paths = paths + [str(upper), str(work)]
    if len(data) > _PAGE_LIMIT or any(_needs_escape(p) for p in all_paths):
        links = scratch_dir / "l"
        links.mkdir(exist_ok=True)
        short = []
        for i, p in enumerate(all_paths):
            link = links / format(i, "x")
            if link.is_symlink():
                link.unlink()
            link.symlink_to(p)
            short.append(f"l/{i:x}")
        data = (f"lowerdir={':'.join(short[:-2])},upperdir={short[-2]},"
                f"workdir={short[-1]},{_option_string()}")
        if len(data) > _PAGE_LIMIT:
            raise SandboxError(f"cannot mount {len(lowers)} layers with mount(2): the "
                               f"option string needs {len(data)} bytes, more than one page; "
                               "this kernel lacks fsconfig lowerdir+ (Linux >= 6.5)")
        old_cwd = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.chdir(scratch_dir)
            linux.mount("overlay", str(target), "overlay", _nodev_flag(), data)
        finally:
            os.fchdir(old_cwd)
            os.close(old_cwd)
        return
    linux.mount("overlay", str(target), "overlay", _nodev_flag(), data)


def _nodev_flag() -> int:
    return linux.MS_NODEV if devices.NODEV_MOUNTS else 0


def _nodev_attr() -> int:
    return devices.MOUNT_ATTR_NODEV if devices.NODEV_MOUNTS else 0


# --- after the run --------------------------------------------------------------

def finalize_upper(upper: Path) -> None:
    """Strip the kernel's trusted.overlay.* (user.overlay.* rootless) bookkeeping
    (origin, impure, uuid, nlink, upper) from every entry of an unmounted upper dir;
    opaque markers stay."""
    for dirpath, dirnames, filenames in walk(upper):  # iterative: any depth
        for name in [None, *dirnames, *filenames]:
            path = dirpath if name is None else os.path.join(dirpath, name)
            try:
                names = os.listxattr(path, follow_symlinks=False)
            except OSError:
                continue
            for attr in names:
                if attr.startswith(XATTR_PREFIX) and attr not in _KEEP_XATTRS:
                    try:
                        os.removexattr(path, attr, follow_symlinks=False)
                    except OSError:
                        pass


def empty_dir(path: Path) -> None:
    """Remove everything inside `path` (never following symlinks), keep `path`."""
    with os.scandir(path) as it:
        entries = list(it)
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            remove_tree(Path(entry.path))  # copes with any depth and read-only modes
        else:
            os.unlink(entry.path)


# --- reading layer dirs without a mount -----------------------------------------

def is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_opaque(path: str) -> bool:
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


@dataclass(frozen=True)
class Entry:
    """A path of the merged view: the layer dir that provides it and its host path."""
    layer: Path
    host_path: Path
    image_path: str
    st: os.stat_result


class LayerStack:
    """The merged view of overlay-form layer dirs (top-most first), read directly."""

    def __init__(self, lower_dirs: tuple[Path, ...] | list[Path]) -> None:
        self.layers = [Path(p) for p in lower_dirs]

    def lookup(self, path: str, follow: bool = True) -> Entry | None:
        """The entry at image path `path`, symlinks resolved inside the root (the last
        component only if `follow`). None if it does not exist."""
        parts = [p for p in path.split("/") if p and p != "."]
        hops = 0
        done: list[str] = []
        alive = self._root_layers()
        while parts:
            name = parts.pop(0)
            if name == "..":
                if done:
                    done.pop()
                alive = self._alive_for(done)
                continue
            found, next_alive = self._step(alive, done, name)
            if found is None:
                return None
            layer, st = found
            if stat.S_ISLNK(st.st_mode) and (parts or follow):
                hops += 1
                if hops > _MAX_SYMLINK_HOPS:
                    return None
                target = os.readlink(layer.joinpath(*done, name))
                if target.startswith("/"):
                    done = []
                parts = [p for p in target.split("/") if p and p != "."] + parts
                alive = self._alive_for(done)
                continue
            done.append(name)
            if parts and not stat.S_ISDIR(st.st_mode):
                return None
            alive = next_alive
            if not parts:
                return Entry(layer, layer.joinpath(*done), "/" + "/".join(done), st)
        top = alive[0] if alive else None
        if top is None:
            return None
        return Entry(top, top.joinpath(*done), "/" + "/".join(done),
                     os.lstat(top.joinpath(*done)))

    def read_file(self, path: str) -> bytes | None:
        entry = self.lookup(path)
        if entry is None or not stat.S_ISREG(entry.st.st_mode):
            return None
        return entry.host_path.read_bytes()

    def _root_layers(self) -> list[Path]:
        alive = []
        for layer in self.layers:
            alive.append(layer)
            if is_opaque(str(layer)):
                break
        return alive

    def _alive_for(self, done: list[str]) -> list[Path]:
        alive = self._root_layers()
        for i, name in enumerate(done):
            _, alive = self._step(alive, done[:i], name)
        return alive

    @staticmethod
    def _step(alive: list[Path], done: list[str], name: str
              ) -> tuple[tuple[Path, os.stat_result] | None, list[Path]]:
        """Look `name` up in the dir `done` of every alive layer, top-most first:
        return the providing (layer, stat) and the layers in which it is a merged dir."""
        found: tuple[Path, os.stat_result] | None = None
        next_alive: list[Path] = []
        for layer in alive:
            host = layer.joinpath(*done, name)
            try:
                st = os.lstat(host)
            except OSError:
                continue
            if is_whiteout(st):
                break
            if found is None:
                found = (layer, st)
            if not stat.S_ISDIR(st.st_mode):
                break
            next_alive.append(layer)
            if is_opaque(str(host)):
                break
        return found, next_alive
